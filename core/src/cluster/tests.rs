//! The decision core driven end to end with a fake clock: no sockets, no sleeps.

use super::*;
use crate::incident::RecoveryAction;
use crate::node::FenceCause;

fn hello(node: &str, role: Role) -> Hello {
    Hello {
        node_id: node.into(),
        hostname: format!("{node}.local"),
        role,
        address: format!("10.0.0.{}", node.len()),
        boot_id: "boot".into(),
        agent_version: "test".into(),
        gpus: Vec::new(),
        sent_at: 0,
        worker: None,
        agent_started_at: 0,
    }
}

/// Two workers (a, b) and one spare (s), all connected at t=0.
fn cluster() -> Cluster {
    let mut c = Cluster::new(CoordinatorConfig::default());
    for (i, (node, role)) in [("a", Role::Worker), ("b", Role::Worker), ("s", Role::Spare)]
        .into_iter()
        .enumerate()
    {
        c.hello(i as u64 + 1, hello(node, role), 0).unwrap();
    }
    c
}

fn spec(nodes: u32) -> pb::JobSpec {
    pb::JobSpec {
        command: vec!["train".into()],
        nodes,
        ..Default::default()
    }
}

fn sends<'a>(fx: &'a [Effect], node: &str) -> Vec<&'a ToAgent> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { node: n, message } if n == node => Some(message),
            _ => None,
        })
        .collect()
}

fn launch_of<'a>(fx: &'a [Effect], node: &str) -> Option<&'a pb::Launch> {
    sends(fx, node).into_iter().find_map(|m| match m {
        ToAgent::Launch(l) => Some(l),
        _ => None,
    })
}

fn started(c: &mut Cluster, node: &str, generation: u64, now: i64) -> Vec<Effect> {
    c.worker_event(
        node,
        pb::WorkerEvent {
            job_id: "job-1".into(),
            generation,
            kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted {
                pid: 42,
            })),
            at_unix_ms: now,
        },
        now,
    )
}

fn exited(
    c: &mut Cluster,
    node: &str,
    generation: u64,
    signal: Option<i32>,
    by_agent: bool,
    now: i64,
) -> Vec<Effect> {
    c.worker_event(
        node,
        pb::WorkerEvent {
            job_id: "job-1".into(),
            generation,
            kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
                code: if signal.is_some() { None } else { Some(1) },
                signal,
                stopped_by_agent: by_agent,
            })),
            at_unix_ms: now,
        },
        now,
    )
}

fn progress(c: &mut Cluster, node: &str, generation: u64, step: u64, now: i64) -> Vec<Effect> {
    c.progress(
        node,
        pb::Progress {
            job_id: "job-1".into(),
            generation,
            step,
            at_unix_ms: now,
        },
        now,
    )
}

/// A cluster running job-1 on a and b at generation 1, with fresh heartbeats at `now`.
fn running_job() -> Cluster {
    let mut c = cluster();
    let (job, fx) = c.submit(spec(2), 10).unwrap();
    assert_eq!(
        job.nodes,
        vec!["a", "b"],
        "workers are picked before spares"
    );
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::ResolveCheckpoint { job_id, .. } if job_id == "job-1")));
    let fx = c.checkpoint_resolved("job-1", Ok(None), 20);
    let la = launch_of(&fx, "a").unwrap();
    let lb = launch_of(&fx, "b").unwrap();
    assert_eq!((la.node_rank, lb.node_rank, la.nnodes), (0, 1, 2));
    assert_eq!(la.master_addr, c.nodes["a"].address);
    assert_eq!(la.master_port, lb.master_port);
    assert_eq!(la.rdzv_id, "job-1-g1");
    started(&mut c, "a", 1, 30);
    started(&mut c, "b", 1, 30);
    assert_eq!(c.jobs["job-1"].state, JobState::Running);
    c
}

#[test]
fn hello_registers_a_ready_node_and_welcomes_it() {
    let mut c = Cluster::new(CoordinatorConfig::default());
    let (welcome, fx) = c.hello(1, hello("a", Role::Worker), 5).unwrap();
    assert_eq!(welcome.node_id, "a");
    assert_eq!(welcome.heartbeat_interval_ms, 500);
    assert!(c.nodes["a"].state.is_ready());
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Publish(ev) if ev.kind == "node_state")));
}

#[test]
fn a_second_agent_with_a_connected_node_id_is_refused() {
    let mut c = cluster();
    let err = c.hello(99, hello("a", Role::Worker), 5).unwrap_err();
    assert!(matches!(err, CoordinatorError::DuplicateNode { .. }));
    assert!(err.to_string().contains("already connected"));
    // The first connection is untouched.
    assert_eq!(c.nodes["a"].conn, Some(1));
    let err = c.hello(100, hello(" ", Role::Worker), 5).unwrap_err();
    assert!(err.to_string().contains("node_id is empty"));
}

#[test]
fn bad_job_specs_are_refused_naming_the_field_and_nothing_is_allocated() {
    let mut c = cluster();
    let cases = [
        (
            pb::JobSpec {
                nodes: 1,
                ..Default::default()
            },
            "command",
        ),
        (
            pb::JobSpec {
                command: vec!["".into()],
                nodes: 1,
                ..Default::default()
            },
            "command",
        ),
        (spec(0), "nodes"),
        (spec(4), "needs 4 nodes but only 3 are ready"),
        (
            pb::JobSpec {
                progress_regex: "step (".into(),
                ..spec(1)
            },
            "progress_regex",
        ),
        (
            pb::JobSpec {
                progress_regex: "step \\d+".into(),
                ..spec(1)
            },
            "capture group",
        ),
        (
            pb::JobSpec {
                checkpoint_uri: "ftp://x/y".into(),
                ..spec(1)
            },
            "checkpoint_uri",
        ),
        (
            pb::JobSpec {
                stall_timeout_s: f64::NAN,
                ..spec(1)
            },
            "stall_timeout_s",
        ),
        (
            pb::JobSpec {
                stall_timeout_s: -1.0,
                ..spec(1)
            },
            "stall_timeout_s",
        ),
    ];
    for (spec, expected) in cases {
        let err = c.submit(spec, 10).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    assert!(c.jobs.is_empty());
    assert!(c.nodes.values().all(|n| n.state.is_ready()));
    c.submit(
        pb::JobSpec {
            job_id: "x".into(),
            ..spec(1)
        },
        10,
    )
    .unwrap();
    let err = c
        .submit(
            pb::JobSpec {
                job_id: "x".into(),
                ..spec(1)
            },
            10,
        )
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::JobExists(_)));
}

#[test]
fn a_lost_agent_is_fenced_and_its_rank_moves_to_the_spare() {
    let mut c = running_job();
    progress(&mut c, "a", 1, 35, 40);
    let fx = c.disconnected("b", 2, 1_000);
    assert!(matches!(
        &c.nodes["b"].state,
        NodeState::Fenced {
            cause: FenceCause::AgentLost
        }
    ));
    // The survivor is told to stop generation 1.
    assert!(sends(&fx, "a")
        .iter()
        .any(|m| matches!(m, ToAgent::Stop(s) if s.generation == 1)));
    let incident = &c.incidents[0];
    assert_eq!(
        (
            incident.cause.as_str(),
            incident.node_id.as_str(),
            incident.detected_at
        ),
        ("agent_lost", "b", 1_000)
    );
    // The survivor confirms; the spare takes rank 1; the checkpoint is resolved.
    let fx = exited(&mut c, "a", 1, Some(15), true, 1_050);
    assert!(fx.iter().any(|e| matches!(e, Effect::ResolveCheckpoint { fenced, .. } if fenced.len() == 1 && fenced[0].generation == 1)));
    assert!(matches!(&c.nodes["s"].state, NodeState::Allocated { job_id } if job_id == "job-1"));
    assert_eq!(c.jobs["job-1"].nodes(), vec!["a", "s"]);
    let resume = Checkpoint {
        step: 30,
        uri: "file:///c/step-30".into(),
        generation: Some(1),
    };
    let fx = c.checkpoint_resolved("job-1", Ok(Some(resume)), 1_060);
    let la = launch_of(&fx, "a").unwrap();
    let ls = launch_of(&fx, "s").unwrap();
    assert_eq!((la.generation, ls.generation, ls.node_rank), (2, 2, 1));
    assert_eq!(ls.resume_from, "file:///c/step-30");
    assert_eq!(la.rdzv_id, "job-1-g2");
    assert!(launch_of(&fx, "b").is_none());
    started(&mut c, "a", 2, 1_100);
    started(&mut c, "s", 2, 1_120);
    progress(&mut c, "s", 2, 30, 1_200);
    assert!(
        c.incidents[0].is_open(),
        "progress at the resumed step does not close it"
    );
    progress(&mut c, "s", 2, 31, 1_300);
    let i = &c.incidents[0];
    assert_eq!(
        (i.fenced_at, i.replaced_at, i.relaunched_at, i.resumed_at),
        (Some(1_050), Some(1_050), Some(1_120), Some(1_300))
    );
    assert_eq!(
        (
            i.replacement_node_id.as_deref(),
            i.resumed_from_step,
            i.to_generation
        ),
        (Some("s"), Some(30), Some(2))
    );
    assert_eq!(i.action, RecoveryAction::ReplaceNode);
}

#[test]
fn each_generation_gets_a_fresh_rendezvous_id_and_port() {
    let mut c = cluster();
    c.submit(spec(2), 10).unwrap();
    let fx = c.checkpoint_resolved("job-1", Ok(None), 20);
    let g1 = launch_of(&fx, "a").unwrap().clone();
    started(&mut c, "a", 1, 30);
    started(&mut c, "b", 1, 30);
    exited(&mut c, "b", 1, Some(9), false, 100);
    exited(&mut c, "a", 1, Some(15), true, 110);
    let fx = c.checkpoint_resolved("job-1", Ok(None), 120);
    let g2 = launch_of(&fx, "a").unwrap();
    assert_eq!((g1.generation, g2.generation), (1, 2));
    assert_ne!(g1.master_port, g2.master_port);
    assert_ne!(g1.rdzv_id, g2.rdzv_id);
    let range = 29500..29500 + 500;
    assert!(range.contains(&g1.master_port) && range.contains(&g2.master_port));
}

#[test]
fn a_killed_worker_restarts_in_place_without_replacement() {
    let mut c = running_job();
    let fx = exited(&mut c, "b", 1, Some(9), false, 500);
    assert!(
        c.nodes["b"].state
            == NodeState::Allocated {
                job_id: "job-1".into()
            }
    );
    assert!(sends(&fx, "a")
        .iter()
        .any(|m| matches!(m, ToAgent::Stop(_))));
    exited(&mut c, "a", 1, Some(15), true, 520);
    let fx = c.checkpoint_resolved("job-1", Ok(None), 530);
    assert!(launch_of(&fx, "a").is_some() && launch_of(&fx, "b").is_some());
    assert!(
        matches!(c.nodes["s"].state, NodeState::Ready),
        "the spare stays a spare"
    );
    assert_eq!(c.incidents[0].action, RecoveryAction::RestartInPlace);
    assert_eq!(c.incidents[0].fault_at, 500);
}

#[test]
fn heartbeat_timeout_disconnects_and_fences() {
    let mut c = running_job();
    c.heartbeat("a", 1_900, None, 1_900);
    c.heartbeat("s", 1_900, None, 1_900);
    assert!(c
        .tick(2_000)
        .iter()
        .all(|e| !matches!(e, Effect::Disconnect { .. })));
    let fx = c.tick(2_001);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Disconnect { node, .. } if node == "b")));
    assert!(matches!(
        &c.nodes["b"].state,
        NodeState::Fenced {
            cause: FenceCause::HeartbeatTimeout
        }
    ));
    assert_eq!(c.incidents[0].cause, "heartbeat_timeout");
    // Fault time estimate: last heartbeat plus one interval.
    assert_eq!(c.incidents[0].fault_at, 500);
}

#[test]
fn an_idle_node_that_goes_quiet_is_offline_not_fenced() {
    let mut c = cluster();
    c.disconnected("s", 3, 100);
    assert_eq!(c.nodes["s"].state, NodeState::Offline);
    assert!(c.incidents.is_empty());
    c.hello(9, hello("s", Role::Spare), 200).unwrap();
    assert!(c.nodes["s"].state.is_ready());
}

#[test]
fn a_fatal_health_check_fences_the_node() {
    let mut c = running_job();
    let health = pb::HealthSummary {
        state: pb::HealthState::Unhealthy as i32,
        checks: vec![pb::HealthCheck {
            check: "xid".into(),
            state: pb::HealthState::Unhealthy as i32,
            reason: "Xid 79: GPU has fallen off the bus".into(),
            action: pb::HealthAction::ReplaceNode as i32,
            observed_unix_ms: 100,
        }],
    };
    c.health_report("b", health, 100);
    match &c.nodes["b"].state {
        NodeState::Fenced {
            cause: FenceCause::HealthFatal(reason),
        } => assert!(reason.contains("Xid 79")),
        other => panic!("expected fenced, got {other:?}"),
    }
    assert_eq!(c.incidents[0].cause, "gpu_fatal");
}

#[test]
fn a_fenced_node_that_returns_stays_fenced_and_its_stale_worker_is_stopped() {
    let mut c = running_job();
    c.disconnected("b", 2, 100);
    let mut h = hello("b", Role::Worker);
    h.worker = Some(("job-1".into(), 1, 42, true));
    let (_, fx) = c.hello(10, h, 200).unwrap();
    assert!(matches!(c.nodes["b"].state, NodeState::Fenced { .. }));
    let to_b = sends(&fx, "b");
    assert!(to_b
        .iter()
        .any(|m| matches!(m, ToAgent::Stop(s) if s.generation == 1)));
    assert!(to_b.iter().any(|m| matches!(m, ToAgent::Fence(_))));
}

#[test]
fn a_reconnecting_node_of_the_current_generation_keeps_running() {
    let mut c = running_job();
    c.goodbye("b", true, 100);
    c.disconnected("b", 2, 101);
    assert!(c.incidents.is_empty(), "an announced restart is no fault");
    let mut h = hello("b", Role::Worker);
    h.worker = Some(("job-1".into(), 1, 42, true));
    let (_, fx) = c.hello(11, h, 300).unwrap();
    assert!(sends(&fx, "b").is_empty());
    assert_eq!(c.jobs["job-1"].state, JobState::Running);
    assert_eq!(c.jobs["job-1"].generation, 1);
}

#[test]
fn an_announced_restart_that_does_not_come_back_is_a_fault() {
    let mut c = running_job();
    c.goodbye("b", true, 100);
    c.disconnected("b", 2, 101);
    c.heartbeat("a", 9_000, None, 9_000);
    c.heartbeat("s", 9_000, None, 9_000);
    c.tick(100 + 5 * 2_000 - 1);
    assert!(c.incidents.is_empty());
    c.heartbeat("a", 10_050, None, 10_050);
    c.heartbeat("s", 10_050, None, 10_050);
    c.tick(100 + 5 * 2_000);
    assert_eq!(c.incidents.len(), 1);
    assert!(matches!(c.nodes["b"].state, NodeState::Fenced { .. }));
}

#[test]
fn a_job_waits_for_a_replacement_and_takes_one_that_registers_later() {
    let mut c = running_job();
    c.disconnected("s", 3, 50);
    c.disconnected("b", 2, 100);
    exited(&mut c, "a", 1, Some(15), true, 110);
    assert!(matches!(
        c.jobs["job-1"].state,
        JobState::Recovering(job::RecoveryPhase::Replacing { .. })
    ));
    c.heartbeat("a", 500, None, 500);
    c.tick(500);
    assert!(c.jobs["job-1"]
        .message
        .contains("waiting for a replacement"));
    let (_, fx) = c.hello(20, hello("s2", Role::Spare), 600).unwrap();
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::ResolveCheckpoint { .. })));
    assert_eq!(c.jobs["job-1"].nodes(), vec!["a", "s2"]);
}

#[test]
fn cordon_and_uncordon_through_the_operator_api() {
    let mut c = cluster();
    let (node, _) = c.cordon("s", "", 10).unwrap();
    assert_eq!(node.state, "cordoned");
    let err = c.submit(spec(3), 11).unwrap_err().to_string();
    assert!(err.contains("only 2 are ready"), "{err}");
    let (node, _) = c.uncordon("s", 12).unwrap();
    assert_eq!(node.state, "ready");
    assert!(matches!(
        c.uncordon("s", 13),
        Err(CoordinatorError::Transition(_))
    ));
    assert!(matches!(
        c.cordon("nope", "", 13),
        Err(CoordinatorError::NoSuchNode(_))
    ));
}

#[test]
fn stop_job_releases_the_nodes() {
    let mut c = running_job();
    let (job, fx) = c.stop_job("job-1", 100).unwrap();
    assert_eq!(job.state, "stopped");
    assert_eq!(sends(&fx, "a").len(), 1);
    assert!(c.nodes["a"].state.is_ready() && c.nodes["b"].state.is_ready());
    assert!(matches!(
        c.stop_job("nope", 1),
        Err(CoordinatorError::NoSuchJob(_))
    ));
}

#[test]
fn stale_disconnects_of_an_old_connection_are_ignored() {
    let mut c = running_job();
    c.goodbye("b", true, 10);
    c.disconnected("b", 2, 11);
    c.hello(50, hello("b", Role::Worker), 12).unwrap();
    assert!(c.disconnected("b", 2, 13).is_empty());
    assert_eq!(c.nodes["b"].conn, Some(50));
}

#[test]
fn clock_offset_is_estimated_from_heartbeats() {
    let mut c = cluster();
    // Agent clock 300 ms ahead; one-way delays 5 and 50 ms.
    c.heartbeat("a", 1_000 + 300 - 5, None, 1_000);
    c.heartbeat("a", 2_000 + 300 - 50, None, 2_000);
    assert_eq!(c.nodes["a"].clock_offset_ms, 295);
}
