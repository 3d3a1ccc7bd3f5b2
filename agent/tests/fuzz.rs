//! The fuzz tier, agent side: the kernel-log parser, placeholder substitution, the config
//! loader and the agent's command handling (the fencing decisions every coordinator command
//! goes through, and a launch's placeholders) under arbitrary input, with bounded cases so it
//! runs in the ordinary test command.

use holdfast_agent::fencing::{Fencing, Refusal};
use holdfast_agent::health::kmsg::{parse_all, parse_line};
use holdfast_agent::session::command_term;
use holdfast_agent::worker::placeholders::{placeholders, substitute};
use holdfast_agent::AgentConfig;
use holdfast_proto::v1 as pb;
use pb::coordinator_message::Body as FromCoordinator;
use proptest::prelude::*;

/// Numbers where arithmetic breaks: the ends of the range and their neighbours.
fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        0u64..16,
        any::<u64>(),
    ]
}

/// A command as a coordinator (or a rogue) could send it: every kind, extreme terms and
/// generations, a job among a few so generations meet.
fn command() -> impl Strategy<Value = FromCoordinator> {
    let job = prop_oneof![Just("a".to_string()), Just("b".to_string()), "\\PC{0,40}"];
    prop_oneof![
        (job.clone(), extreme(), extreme(), extreme()).prop_map(
            |(job_id, generation, term, port)| {
                FromCoordinator::Launch(pb::Launch {
                    job_id,
                    generation,
                    term,
                    master_port: port as u32,
                    node_rank: generation as u32,
                    nnodes: term as u32,
                    resume_step: port,
                    command: vec!["{rdzv_endpoint}".into(), "{generation}".into()],
                    ..Default::default()
                })
            }
        ),
        (job, extreme(), extreme(), extreme()).prop_map(|(job_id, generation, term, grace_ms)| {
            FromCoordinator::Stop(pb::Stop {
                job_id,
                generation,
                term,
                grace_ms,
                ..Default::default()
            })
        }),
        extreme().prop_map(|term| FromCoordinator::Fence(pb::Fence {
            term,
            ..Default::default()
        })),
        (extreme(), extreme(), any::<bool>()).prop_map(|(term, n, script)| match script {
            true => FromCoordinator::RunScript(pb::RunScript {
                term,
                timeout_ms: n,
                ..Default::default()
            }),
            false => FromCoordinator::DumpStacks(pb::DumpStacks {
                term,
                incident_id: n,
                ..Default::default()
            }),
        }),
        extreme().prop_map(|term| FromCoordinator::RestartAgent(pb::RestartAgent {
            term,
            ..Default::default()
        })),
    ]
}

/// A placeholder value: text, huge text, or text that is itself a placeholder (which must come
/// out as it is, never expanded again).
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        // Up to 4 KiB (a checkpoint URI's limit), made by repeating a short unit: cheap.
        ("[a-z{}_:]{1,8}", 0usize..4096).prop_map(|(unit, len)| unit.repeat(len / unit.len())),
        Just("{node_id}".to_string()),
        Just("{job_id}{rdzv_endpoint}{".to_string()),
        "\\{(job_id|node_id|master_addr|checkpoint_uri|generation)\\}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any kernel-log line, XID-shaped or not, is parsed or passed over; never a panic.
    #[test]
    fn kmsg_lines_never_panic(
        line in "\\PC{0,200}",
        pci in "[0-9a-fA-F:.]{0,16}",
        code in "[0-9]{0,12}|-[0-9]{1,4}",
        rest in "\\PC{0,60}",
    ) {
        let _ = parse_line(&line);
        let shaped = format!("4,1234,{code},-;NVRM: Xid (PCI:{pci}): {code}, {rest}");
        if let Some(xid) = parse_line(&shaped) {
            prop_assert!(xid.code.to_string() == code.trim_start_matches('0') || code.chars().all(|c| c == '0'));
        }
        let _ = parse_all(format!("{line}\n{shaped}\n").as_bytes());
    }

    /// A substituted value is never expanded again, whatever braces it holds; unknown
    /// placeholders and lone braces stay as they are.
    #[test]
    fn substitution_never_reexpands_a_value(
        a in "\\PC{0,20}",
        b in "\\PC{0,20}",
        literal in "[^{}]{0,10}",
    ) {
        let vars = vec![("node_id", a.clone()), ("job_id", b.clone())];
        let arg = format!("{literal}{{node_id}}-{{job_id}}{{unknown}}{{");
        prop_assert_eq!(substitute(&arg, &vars), format!("{literal}{a}-{b}{{unknown}}{{"));
    }

    /// Any config text loads or is refused with a message, never a panic.
    #[test]
    fn configs_load_or_are_refused(text in "([a-z_]{1,24} = (\\PC{0,12}|[0-9]{1,20}|-[0-9]{1,20}|\"\\PC{0,12}\"|\\[\\]|true)\n){0,6}") {
        if let Err(e) = AgentConfig::from_toml(&text, "fuzz.toml") {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    // Each case is a sequence of commands or a launch of values up to 4 KiB: fewer cases.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any sequence of commands, with extreme terms and generations: the fencing never panics,
    /// its term and each job's generation never go back, a command of a term older than one
    /// seen is refused and changes nothing, a launch runs only a generation newer than any
    /// seen, and the state round-trips through its file's JSON.
    #[test]
    fn commands_with_extreme_numbers_keep_the_fencing_rules(
        commands in prop::collection::vec(command(), 1..40),
    ) {
        let mut fencing = Fencing::default();
        for body in commands {
            let before = fencing.clone();
            let term = command_term(&body).expect("every command carries a term");
            let stale = term < before.term();
            prop_assert_eq!(fencing.admit_term(term).is_err(), stale);
            let verdict = match &body {
                FromCoordinator::Launch(l) => fencing.admit_launch(&l.job_id, l.generation, l.term),
                FromCoordinator::Stop(s) => fencing.admit_stop(&s.job_id, s.generation, s.term),
                _ => fencing.observe(term).map_err(Refusal::from),
            };
            if stale {
                prop_assert!(matches!(verdict, Err(Refusal::OlderTerm(_))), "{:?}", verdict);
                prop_assert_eq!(&fencing, &before, "a stale command changed the state");
                continue;
            }
            prop_assert_eq!(fencing.term(), term);
            if let FromCoordinator::Launch(l) = &body {
                let seen = before.generation(&l.job_id);
                prop_assert_eq!(verdict.is_ok(), l.generation > seen);
                prop_assert_eq!(fencing.generation(&l.job_id), seen.max(l.generation));
            }
            for job in ["a", "b"] {
                prop_assert!(fencing.generation(job) >= before.generation(job));
            }
            let json = serde_json::to_string(&fencing).unwrap();
            prop_assert_eq!(serde_json::from_str::<Fencing>(&json).unwrap(), fencing.clone());
        }
    }

    /// A launch with extreme numbers and any values: each placeholder becomes its value exactly,
    /// once, whatever the value holds (another placeholder, a lone brace, 4 KiB of braces).
    #[test]
    fn a_launchs_placeholders_never_reexpand(
        job_id in value(),
        master_addr in value(),
        checkpoint_uri in value(),
        resume_from in value(),
        node_id in value(),
        local_addr in value(),
        numbers in (extreme(), extreme(), extreme()),
    ) {
        let launch = pb::Launch {
            job_id,
            master_addr,
            checkpoint_uri,
            resume_from,
            generation: numbers.0,
            resume_step: numbers.1,
            master_port: numbers.2 as u32,
            node_rank: numbers.2 as u32,
            nnodes: numbers.0 as u32,
            ..Default::default()
        };
        let vars = placeholders(&launch, &node_id, &local_addr);
        for (name, value) in &vars {
            prop_assert_eq!(&substitute(&format!("{{{name}}}"), &vars), value);
        }
        let all: String = vars.iter().map(|(name, _)| format!("<{{{name}}}>")).collect();
        let expected: String = vars.iter().map(|(_, value)| format!("<{value}>")).collect();
        prop_assert_eq!(substitute(&all, &vars), expected);
    }
}
