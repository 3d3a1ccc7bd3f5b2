//! The fuzz tier, decision core: `Cluster::step` driven by arbitrary agent and operator inputs
//! with extreme numbers and times that jump either way, and `Cluster::restore` from arbitrary
//! records. Properties: no panic; after every step the records round-trip through `restore`; no
//! running job has a rank without a node; a step writes a bounded number of records. Bounded
//! cases, so it runs in the ordinary test command.

use std::collections::BTreeMap;

use holdfast_core::cluster::{Cluster, Hello, Input, Role};
use holdfast_core::job::JobState;
use holdfast_core::protocol::{CommandResult, JobRequest, Progress, WorkerEvent, WorkerEventKind};
use holdfast_core::{CoordinatorConfig, Generation, JobId, NodeId, UnixMillis};
use proptest::prelude::*;

/// Node ids from a small pool (so inputs meet the same nodes), and a few hostile ones.
fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        (0..6u8).prop_map(|i| NodeId::from(format!("n{i}").as_str())),
        Just(NodeId::from("")),
        Just(NodeId::from("x".repeat(300).as_str())),
    ]
}

fn job_id() -> impl Strategy<Value = JobId> {
    prop_oneof![
        Just(JobId::from("job-1")),
        Just(JobId::from("j2")),
        Just(JobId::from(""))
    ]
}

/// Times around now, far away, and at the extremes.
fn time() -> impl Strategy<Value = UnixMillis> {
    prop_oneof![
        4 => 1_700_000_000_000i64..1_700_000_100_000,
        1 => Just(0i64),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => any::<i64>(),
    ]
}

fn generation() -> impl Strategy<Value = Generation> {
    prop_oneof![
        (0..4u64).prop_map(Generation),
        any::<u64>().prop_map(Generation)
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (node(), any::<u64>(), time(), any::<bool>()).prop_map(|(node, conn, at, spare)| {
            Input::Hello {
                request: conn,
                conn: conn % 8,
                hello: Hello {
                    node_id: node.clone(),
                    hostname: format!("{node}.local"),
                    role: if spare { Role::Spare } else { Role::Worker },
                    address: "10.0.0.1".into(),
                    boot_id: "boot".into(),
                    agent_version: "fuzz".into(),
                    gpus: Vec::new(),
                    sent_at: at,
                    worker: None,
                    agent_started_at: at,
                },
            }
        }),
        (node(), time()).prop_map(|(node, sent_at)| Input::Heartbeat {
            node,
            sent_at,
            health: None,
            echo: None,
        }),
        (node(), job_id(), generation(), any::<u64>(), "\\PC{0,40}").prop_map(
            |(node, job_id, generation, step, state_fallback)| {
                Input::Progress {
                    node,
                    progress: Progress {
                        job_id,
                        generation,
                        step,
                        memory: Vec::new(),
                        state_fallback,
                    },
                }
            }
        ),
        (
            node(),
            job_id(),
            generation(),
            time(),
            any::<Option<i32>>(),
            any::<bool>()
        )
            .prop_map(|(node, job_id, generation, at, code, stopped_by_agent)| {
                Input::Worker {
                    node,
                    event: WorkerEvent {
                        job_id,
                        generation,
                        at,
                        kind: match code {
                            Some(c) if c % 3 == 0 => WorkerEventKind::Started {
                                pid: c.unsigned_abs(),
                            },
                            code => WorkerEventKind::Exited {
                                code,
                                signal: None,
                                stopped_by_agent,
                            },
                        },
                    },
                }
            }),
        (node(), any::<u64>()).prop_map(|(node, conn)| Input::Disconnected {
            node,
            conn: conn % 8
        }),
        (node(), any::<bool>()).prop_map(|(node, restarting)| Input::Goodbye { node, restarting }),
        (node(), any::<bool>(), "\\PC{0,40}").prop_map(|(node, ok, output)| Input::ScriptResult {
            node,
            result: CommandResult {
                command_id: "on-fence".into(),
                ok,
                output,
                ..Default::default()
            },
        }),
        (0..8u32, any::<f64>(), any::<u64>(), any::<u32>()).prop_map(
            |(nodes, stall, total_steps, min_nodes)| Input::Submit {
                request: 1,
                job: JobRequest {
                    job_id: "job-1".into(),
                    command: vec!["train".into()],
                    nodes,
                    stall_timeout_s: stall,
                    total_steps,
                    min_nodes,
                    ..Default::default()
                },
            }
        ),
        job_id().prop_map(|job_id| Input::StopJob { request: 2, job_id }),
        (node(), "\\PC{0,20}").prop_map(|(node, reason)| Input::Cordon {
            request: 3,
            node,
            reason
        }),
        node().prop_map(|node| Input::Uncordon { request: 4, node }),
        (job_id(), any::<u32>()).prop_map(|(job_id, count)| Input::ProvisionResult {
            job_id,
            count,
            result: Err("no capacity".into()),
        }),
        (job_id(), proptest::collection::vec(".{0,64}", 0..4)).prop_map(|(job_id, skipped)| {
            Input::CheckpointResolved {
                job_id,
                result: Ok(None),
                skipped,
            }
        }),
        Just(Input::Tick),
        Just(Input::Archived { result: Ok(()) }),
        Just(Input::Archived {
            result: Err("No space left on device".into())
        }),
    ]
}

/// The clock of each step: mostly forward a little, sometimes a jump either way.
fn clock() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..3_000, 1 => -60_000i64..0, 1 => 0i64..600_000]
}

fn check(
    cluster: &Cluster,
    config: &CoordinatorConfig,
    now: UnixMillis,
) -> Result<(), TestCaseError> {
    let records = cluster
        .to_records()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let restored = Cluster::restore(config.clone(), &records, now)
        .map_err(|e| TestCaseError::fail(format!("records do not restore: {e}")))?;
    prop_assert!(restored.is_some() || cluster.nodes.is_empty() && cluster.jobs.is_empty());
    // Incident ids only grow, whatever retention archived.
    let ids: Vec<u64> = cluster.incidents.iter().map(|i| i.id).collect();
    prop_assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "incident ids {:?}",
        ids
    );
    for job in cluster.jobs.values() {
        if matches!(job.state, JobState::Running | JobState::Launching) {
            prop_assert!(!job.ranks.is_empty(), "{} runs with no rank", job.id);
            for rank in &job.ranks {
                prop_assert!(!rank.needs_node, "{} runs with an empty rank", job.id);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_inputs_keeps_the_core_whole(
        steps in prop::collection::vec((clock(), input()), 1..80),
    ) {
        // Retention at its smallest, so archiving runs among everything else.
        let config = CoordinatorConfig {
            finished_retention_ms: 1,
            max_finished_jobs: 1,
            max_closed_incidents: 1,
            ..CoordinatorConfig::default()
        };
        let mut cluster = Cluster::new(config.clone());
        let mut now: UnixMillis = 1_700_000_000_000;
        for (delta, input) in steps {
            now = now.saturating_add(delta);
            let before = cluster.to_records().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = cluster.step(input, now);
            let after = cluster.to_records().map_err(|e| TestCaseError::fail(e.to_string()))?;
            // One message changes a bounded part of the state (its node, its job, an incident).
            let changed = after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).count();
            prop_assert!(changed <= 16, "one step rewrote {} records", changed);
            check(&cluster, &config, now)?;
        }
    }

    #[test]
    fn restore_takes_any_records_or_refuses_them(
        records in prop::collection::btree_map(
            prop_oneof![Just("meta".to_string()), "(node|job|incident)/[a-z0-9]{1,4}"],
            prop_oneof![
                Just(b"{}".to_vec()),
                Just(b"null".to_vec()),
                "\\PC{0,60}".prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..40),
            ],
            0..6,
        ),
        now in time(),
    ) {
        let records: BTreeMap<String, Vec<u8>> = records;
        let _ = Cluster::restore(CoordinatorConfig::default(), &records, now);
    }
}
