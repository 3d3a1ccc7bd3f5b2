//! The `{placeholder}` values a launch's command is written with (`{node_rank}`,
//! `{rdzv_endpoint}`, …); the worker also gets each as a `HOLDFAST_NAME` variable.

use holdfast_proto::v1 as pb;

/// The values a launch makes available as `{name}` placeholders and `HOLDFAST_NAME` variables.
pub fn placeholders(
    launch: &pb::Launch,
    node_id: &str,
    local_addr: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("job_id", launch.job_id.clone()),
        ("node_id", node_id.to_string()),
        ("node_rank", launch.node_rank.to_string()),
        ("nnodes", launch.nnodes.to_string()),
        ("master_addr", launch.master_addr.clone()),
        ("master_port", launch.master_port.to_string()),
        (
            "rdzv_endpoint",
            format!("{}:{}", launch.master_addr, launch.master_port),
        ),
        ("rdzv_id", launch.rdzv_id.clone()),
        ("generation", launch.generation.to_string()),
        ("resume_from", launch.resume_from.clone()),
        ("resume_step", launch.resume_step.to_string()),
        ("checkpoint_uri", launch.checkpoint_uri.clone()),
        ("local_addr", local_addr.to_string()),
    ]
}

/// Replaces every `{name}` of `vars` in `arg`, in one pass over `arg`: a value is never read
/// again, so a value holding `{…}` (a checkpoint URI, an address) stays as it is. Braces that
/// name no placeholder are kept.
pub fn substitute(arg: &str, vars: &[(&'static str, String)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (v, close))
        });
        match value {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted() {
        let launch = pb::Launch {
            job_id: "j".into(),
            generation: 3,
            node_rank: 1,
            nnodes: 2,
            master_addr: "10.0.0.1".into(),
            master_port: 29501,
            rdzv_id: "j-g3".into(),
            ..Default::default()
        };
        let vars = placeholders(&launch, "n1", "10.0.0.2");
        assert_eq!(
            substitute(
                "--rdzv-endpoint={rdzv_endpoint} --node-rank={node_rank} --local-addr={local_addr}",
                &vars
            ),
            "--rdzv-endpoint=10.0.0.1:29501 --node-rank=1 --local-addr=10.0.0.2"
        );
        assert_eq!(substitute("{unknown}", &vars), "{unknown}");
    }
}
