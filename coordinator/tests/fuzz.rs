//! The fuzz tier, coordinator side: arbitrary input to the operator-method classification, the
//! token file parser, the metrics renderer and the config loader, with bounded cases so it runs
//! in the ordinary test command. Each property is what an attacker would need to break.

use std::path::Path;

use holdfast_coordinator::auth::{operator_method, required_role, OperatorTokens, Role};
use holdfast_coordinator::CoordinatorConfig;
use holdfast_proto::v1 as pb;
use proptest::prelude::*;

const VIEWER: &str = "viewer-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";

/// The calls that only read; every other operator method mutates.
const READS: &[&str] = &[
    "GetJob",
    "ListJobs",
    "ListNodes",
    "ListIncidents",
    "WatchEvents",
];

fn tokens() -> OperatorTokens {
    OperatorTokens::parse(
        &format!("viewer {VIEWER}\noperator {OPERATOR}\n"),
        Path::new("tokens"),
    )
    .unwrap()
}

/// Checks one line of the Prometheus text format: `# HELP|TYPE …`, or
/// `name{label="value",…} number` with only `\\`, `\"` and `\n` escapes inside values.
fn valid_exposition_line(line: &str) -> Result<(), String> {
    if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
        return Ok(());
    }
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line:?}"))?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        let mut chars = labels.char_indices();
        let mut in_value = false;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match (in_value, c) {
                (true, '\\') => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    other => return Err(format!("bad escape {other:?} in {line:?}")),
                },
                (true, '"') => in_value = false,
                (true, '\n') => return Err(format!("raw newline in {line:?}")),
                (false, '"') => in_value = true,
                (false, '}') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| format!("unclosed labels: {line:?}"))?;
        rest = &labels[end + 1..];
    }
    let value = rest.trim();
    value
        .parse::<f64>()
        .map(drop)
        .map_err(|_| format!("bad value {value:?} in {line:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A viewer is never allowed a mutating call, whatever the path says.
    #[test]
    fn a_viewer_never_gets_a_mutating_call(path in ".{0,80}", method in "[A-Za-z]{0,20}") {
        let tokens = tokens();
        for path in [path.clone(), format!("/holdfast.v1.OperatorService/{method}")] {
            let Some(method) = operator_method(&path) else { continue };
            let viewer = format!("Bearer {VIEWER}");
            let operator = format!("Bearer {OPERATOR}");
            let allowed = tokens.authorize(method, Some(&viewer)).is_ok();
            prop_assert_eq!(allowed, READS.contains(&method), "{}", path);
            prop_assert!(tokens.authorize(method, Some(&operator)).is_ok());
            prop_assert!(tokens.authorize(method, None).is_err());
            prop_assert!(tokens.authorize(method, Some("Bearer not-a-token-of-ours")).is_err());
            if !READS.contains(&method) {
                prop_assert_eq!(required_role(method), Role::Operator);
            }
        }
    }

    /// Any token file text is parsed or refused, never a panic; what parses has no short token.
    #[test]
    fn token_files_parse_or_are_refused(text in "(\\PC{0,40}\n){0,6}") {
        if let Ok(parsed) = OperatorTokens::parse(&text, Path::new("t")) {
            prop_assert!(parsed.role_of("short").is_none());
        }
    }

    /// Node, job and incident fields of any text render as valid exposition lines.
    #[test]
    fn metrics_render_valid_exposition_for_any_label(
        node_id in "\\PC{0,24}|[\"\\\\\n{}=,]{1,8}",
        job_id in "\\PC{0,24}|[\"\\\\\n{}=,]{1,8}",
        state in "\\PC{0,12}",
        step in any::<u64>(),
    ) {
        let nodes = vec![pb::Node { node_id: node_id.clone(), state: state.clone(), ..Default::default() }];
        let jobs = vec![pb::Job { job_id: job_id.clone(), state, step, nodes: vec![node_id.clone()], ..Default::default() }];
        let incidents = vec![pb::Incident { job_id, node_id, ..Default::default() }];
        let text = holdfast_coordinator::metrics::render(&nodes, &jobs, &incidents, 1_790_000_000_000);
        for line in text.lines() {
            if let Err(e) = valid_exposition_line(line) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    /// Any config text loads or is refused naming a key or the syntax, never a panic.
    #[test]
    fn configs_load_or_are_refused(text in "([a-z_]{1,24} = (\\PC{0,12}|[0-9]{1,20}|-[0-9]{1,20}|\"\\PC{0,12}\"|\\[\\]|true)\n){0,6}") {
        let dir = std::env::temp_dir().join(format!("holdfast-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = CoordinatorConfig::load(&path) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
