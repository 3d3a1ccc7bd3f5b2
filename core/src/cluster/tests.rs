//! The decision core driven end to end with a fake clock: no sockets, no sleeps.

use super::testing::*;
use super::*;
use crate::incident::RecoveryAction;

/// A cluster running job-1 on a and b at generation 1, its workers started at t=30.
fn running_job() -> Cluster {
    let mut c = three_nodes();
    let job = run_job(&mut c, job(2), 10);
    assert_eq!(
        job.nodes(),
        vec!["a", "b"],
        "workers are picked before spares"
    );
    c
}

#[test]
fn hello_registers_a_ready_node_and_welcomes_it() {
    let mut c = Cluster::new(CoordinatorConfig::default());
    let (welcome, fx) = connect(&mut c, 1, agent("a", Role::Worker, 5), 5).unwrap();
    assert_eq!(welcome.node_id, "a");
    assert_eq!(welcome.heartbeat_interval_ms, 500);
    assert_eq!((welcome.coordinator_unix_ms, welcome.term), (5, c.term));
    assert!(c.nodes["a"].state.is_ready());
    assert!(!events(&fx, EventKind::NodeState).is_empty());
}

#[test]
fn new_node_ids_past_max_nodes_are_refused_and_known_ones_still_come_back() {
    let mut c = Cluster::new(CoordinatorConfig {
        max_nodes: 2,
        ..Default::default()
    });
    connect(&mut c, 1, agent("a", Role::Worker, 5), 5).unwrap();
    connect(&mut c, 2, agent("b", Role::Worker, 5), 5).unwrap();
    let err = connect(&mut c, 3, agent("c", Role::Worker, 5), 5).unwrap_err();
    assert!(
        matches!(err, CoreError::TooManyNodes { max: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("max_nodes"), "{err}");
    assert_eq!(c.nodes.len(), 2, "nothing stored for the refused id");
    // A known node reconnects (a new stream after its old one closed).
    let fx = c.step(
        Input::Disconnected {
            node: "a".into(),
            conn: 1,
        },
        6,
    );
    drop(fx);
    connect(&mut c, 4, agent("a", Role::Worker, 7), 7).unwrap();
}

#[test]
fn a_second_agent_with_a_connected_node_id_is_refused() {
    let mut c = three_nodes();
    let err = connect(&mut c, 99, agent("a", Role::Worker, 5), 5).unwrap_err();
    assert!(matches!(err, CoreError::DuplicateNode { .. }));
    assert!(err.to_string().contains("already connected"));
    // The first connection is untouched.
    assert_eq!(c.nodes["a"].link.conn(), Some(1));
    let err = connect(&mut c, 100, agent(" ", Role::Worker, 5), 5).unwrap_err();
    assert!(err.to_string().contains("hello.node_id"), "{err}");
}

#[test]
fn bad_job_specs_are_refused_naming_the_field_and_nothing_is_allocated() {
    // A checkpoint URI's scheme is checked by the coordinator's shell, which knows the stores.
    let mut c = three_nodes();
    let cases = [
        (
            JobRequest {
                nodes: 1,
                ..Default::default()
            },
            "command",
        ),
        (
            JobRequest {
                command: vec!["".into()],
                nodes: 1,
                ..Default::default()
            },
            "command",
        ),
        (job(0), "nodes"),
        (job(4), "needs 4 nodes but only 3 are ready"),
        (
            JobRequest {
                progress_regex: "step (".into(),
                ..job(1)
            },
            "progress_regex",
        ),
        (
            JobRequest {
                progress_regex: "step \\d+".into(),
                ..job(1)
            },
            "capture group",
        ),
        (
            JobRequest {
                stall_timeout_s: f64::NAN,
                ..job(1)
            },
            "stall_timeout_s",
        ),
        (
            JobRequest {
                stall_timeout_s: -1.0,
                ..job(1)
            },
            "stall_timeout_s",
        ),
        (
            JobRequest {
                nproc_per_node: Some(0),
                ..job(1)
            },
            "nproc_per_node must be 1 to 256, got 0",
        ),
        (
            JobRequest {
                nproc_per_node: Some(257),
                ..job(1)
            },
            "nproc_per_node must be 1 to 256, got 257",
        ),
        (
            JobRequest {
                warm_imports: vec!["torch".into()],
                ..job(1)
            },
            "warm_imports needs the native launcher",
        ),
        (
            JobRequest {
                nproc_per_node: Some(2),
                warm_imports: vec!["torch; import os".into()],
                ..job(1)
            },
            "warm_imports \"torch; import os\" is not a Python module name",
        ),
        (
            JobRequest {
                restart: "in_process".into(),
                ..job(1)
            },
            "restart in_process needs the native launcher",
        ),
        (
            JobRequest {
                nproc_per_node: Some(1),
                restart: "sideways".into(),
                ..job(1)
            },
            "restart must be relaunch or in_process, got \"sideways\"",
        ),
    ];
    for (request, expected) in cases {
        let err = submit(&mut c, request, 10).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    assert!(c.jobs.is_empty());
    assert!(c.nodes.values().all(|n| n.state.is_ready()));
    let named = || JobRequest {
        job_id: "x".into(),
        ..job(1)
    };
    submit(&mut c, named(), 10).unwrap();
    let err = submit(&mut c, named(), 10).unwrap_err();
    assert!(matches!(err, CoreError::JobExists(_)));
}

#[test]
fn a_lost_agent_is_fenced_and_its_rank_moves_to_the_spare() {
    let mut c = running_job();
    worker(&mut c, "a", 1, Step(35), 40);
    let fx = disconnect(&mut c, "b", 1_000);
    assert!(matches!(
        &c.nodes["b"].state,
        NodeState::Fenced {
            cause: FaultCause::AgentLost
        }
    ));
    // The survivor is told to stop generation 1.
    assert_eq!(stops(&fx), [("a", 1)]);
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
    let fx = worker(&mut c, "a", 1, Stopped, 1_050);
    let resolving = resolves(&fx);
    assert_eq!(resolving.len(), 1, "{fx:?}");
    let (job_id, fenced) = resolving[0];
    assert_eq!(job_id, JOB);
    assert!(fenced.len() == 1 && fenced[0].generation == 1, "{fenced:?}");
    assert!(matches!(&c.nodes["s"].state, NodeState::Allocated { job_id } if job_id == JOB));
    assert_eq!(c.jobs[JOB].nodes(), vec!["a", "s"]);
    let resume = Checkpoint {
        step: 30,
        uri: "file:///c/step-30".into(),
        generation: Some(Generation(1)),
    };
    let fx = resolved(&mut c, JOB, Ok(Some(resume)), 1_060);
    let la = launch_to(&fx, "a").unwrap();
    let ls = launch_to(&fx, "s").unwrap();
    assert_eq!(
        (la.generation, ls.generation, ls.node_rank),
        (Generation(2), Generation(2), 1)
    );
    assert_eq!(ls.resume_from, "file:///c/step-30");
    assert_eq!(la.rdzv_id, "job-1-g2");
    assert!(launch_to(&fx, "b").is_none());
    worker(&mut c, "a", 2, Started, 1_100);
    worker(&mut c, "s", 2, Started, 1_120);
    worker(&mut c, "s", 2, Step(30), 1_200);
    assert!(
        c.incidents[0].is_open(),
        "progress at the resumed step does not close it"
    );
    worker(&mut c, "s", 2, Step(31), 1_300);
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
        (Some("s"), Some(30), Some(Generation(2)))
    );
    assert_eq!(i.action, RecoveryAction::ReplaceNode);
}

#[test]
fn each_generation_gets_a_fresh_rendezvous_id_and_port() {
    let mut c = three_nodes();
    submit(&mut c, job(2), 10).unwrap();
    let fx = resolved(&mut c, JOB, Ok(None), 20);
    let g1 = launch_to(&fx, "a").unwrap().clone();
    worker(&mut c, "a", 1, Started, 30);
    worker(&mut c, "b", 1, Started, 30);
    worker(&mut c, "b", 1, Killed, 100);
    worker(&mut c, "a", 1, Stopped, 110);
    let fx = resolved(&mut c, JOB, Ok(None), 120);
    let g2 = launch_to(&fx, "a").unwrap();
    assert_eq!(
        (g1.generation, g2.generation),
        (Generation(1), Generation(2))
    );
    assert_ne!(g1.master_port, g2.master_port);
    assert_ne!(g1.rdzv_id, g2.rdzv_id);
    let range = 29500..29500 + 500;
    assert!(range.contains(&g1.master_port) && range.contains(&g2.master_port));
}

#[test]
fn a_killed_worker_restarts_in_place_without_replacement() {
    let mut c = running_job();
    let fx = worker(&mut c, "b", 1, Killed, 500);
    assert_eq!(
        c.nodes["b"].state,
        NodeState::Allocated { job_id: JOB.into() }
    );
    assert_eq!(stops(&fx), [("a", 1)]);
    worker(&mut c, "a", 1, Stopped, 520);
    let fx = resolved(&mut c, JOB, Ok(None), 530);
    assert!(launch_to(&fx, "a").is_some() && launch_to(&fx, "b").is_some());
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
    let fx = tick_alive(&mut c, &["a", "s"], 2_000);
    assert!(disconnects(&fx).is_empty(), "{fx:?}");
    let fx = tick(&mut c, 2_001);
    assert_eq!(disconnects(&fx), ["b"]);
    assert!(matches!(
        &c.nodes["b"].state,
        NodeState::Fenced {
            cause: FaultCause::HeartbeatTimeout
        }
    ));
    assert_eq!(c.incidents[0].cause, "heartbeat_timeout");
    // Fault time estimate: last heartbeat plus one interval.
    assert_eq!(c.incidents[0].fault_at, 500);
}

#[test]
fn an_idle_node_that_goes_quiet_is_offline_not_fenced() {
    let mut c = three_nodes();
    disconnect(&mut c, "s", 100);
    assert_eq!(c.nodes["s"].state, NodeState::Offline);
    assert!(c.incidents.is_empty());
    hello(&mut c, "s", Role::Spare, 9, 200);
    assert!(c.nodes["s"].state.is_ready());
}

#[test]
fn a_fatal_health_check_fences_the_node() {
    let mut c = running_job();
    let health = HealthSummary::fatal("xid", "Xid 79: GPU has fallen off the bus", 100);
    let node = "b".into();
    c.step(Input::HealthReport { node, health }, 100);
    match &c.nodes["b"].state {
        NodeState::Fenced {
            cause: FaultCause::HealthFatal(reason),
        } => assert!(reason.contains("Xid 79")),
        other => panic!("expected fenced, got {other:?}"),
    }
    assert_eq!(c.incidents[0].cause, "health_fatal");
}

#[test]
fn a_fenced_node_that_returns_stays_fenced_and_its_stale_worker_is_stopped() {
    let mut c = running_job();
    disconnect(&mut c, "b", 100);
    let fx = hello_running(&mut c, "b", 10, 1, 200);
    assert!(matches!(c.nodes["b"].state, NodeState::Fenced { .. }));
    assert_eq!(stops(&fx), [("b", 1)]);
    assert_eq!(fences(&fx), ["b"]);
}

#[test]
fn a_reconnecting_node_of_the_current_generation_keeps_running() {
    let mut c = running_job();
    leave(&mut c, "b", true, 100);
    assert!(c.incidents.is_empty(), "an announced restart is no fault");
    let fx = hello_running(&mut c, "b", 11, 1, 300);
    assert!(sent(&fx, "b").is_empty(), "{fx:?}");
    assert_eq!(c.jobs[JOB].state, JobState::Running);
    assert_eq!(c.jobs[JOB].generation, 1);
}

#[test]
fn an_announced_restart_that_does_not_come_back_is_a_fault() {
    let mut c = running_job();
    leave(&mut c, "b", true, 100);
    heartbeat(&mut c, "a", 9_000);
    heartbeat(&mut c, "s", 9_000);
    tick(&mut c, 100 + 5 * 2_000 - 1);
    assert!(c.incidents.is_empty());
    tick_alive(&mut c, &["a", "s"], 100 + 5 * 2_000);
    assert_eq!(c.incidents.len(), 1);
    assert!(matches!(c.nodes["b"].state, NodeState::Fenced { .. }));
}

#[test]
fn a_job_waits_for_a_replacement_and_takes_one_that_registers_later() {
    let mut c = running_job();
    disconnect(&mut c, "s", 50);
    disconnect(&mut c, "b", 100);
    worker(&mut c, "a", 1, Stopped, 110);
    assert!(matches!(
        c.jobs[JOB].state,
        JobState::Recovering(job::RecoveryPhase::Replacing { .. })
    ));
    tick_alive(&mut c, &["a"], 500);
    assert!(c.jobs[JOB].message.contains("waiting for a replacement"));
    let fx = hello(&mut c, "s2", Role::Spare, 20, 600);
    assert_eq!(resolves(&fx).len(), 1, "{fx:?}");
    assert_eq!(c.jobs[JOB].nodes(), vec!["a", "s2"]);
}

#[test]
fn cordon_and_uncordon_through_the_operator_api() {
    let mut c = three_nodes();
    let (node, _) = cordon(&mut c, "s", "", 10).unwrap();
    assert_eq!(node.state.name(), "cordoned");
    let err = submit(&mut c, job(3), 11).unwrap_err().to_string();
    assert!(err.contains("only 2 are ready"), "{err}");
    let (node, _) = uncordon(&mut c, "s", 12).unwrap();
    assert_eq!(node.state.name(), "ready");
    assert!(matches!(
        uncordon(&mut c, "s", 13),
        Err(CoreError::Transition(_))
    ));
    assert!(matches!(
        cordon(&mut c, "nope", "", 13),
        Err(CoreError::NoSuchNode(_))
    ));
}

#[test]
fn stop_job_releases_the_nodes() {
    let mut c = running_job();
    let (job, fx) = stop_job(&mut c, JOB, 100).unwrap();
    assert_eq!(job.state.name(), "stopped");
    assert_eq!(sent(&fx, "a").len(), 1);
    assert_eq!(stops(&fx), [("a", 1), ("b", 1)]);
    assert!(c.nodes["a"].state.is_ready() && c.nodes["b"].state.is_ready());
    assert!(matches!(
        stop_job(&mut c, "nope", 1),
        Err(CoreError::NoSuchJob(_))
    ));
}

#[test]
fn stale_disconnects_of_an_old_connection_are_ignored() {
    let mut c = running_job();
    leave(&mut c, "b", true, 10);
    hello(&mut c, "b", Role::Worker, 50, 12);
    let stale = Input::Disconnected {
        node: "b".into(),
        conn: 2,
    };
    assert!(c.step(stale, 13).is_empty());
    assert_eq!(c.nodes["b"].link.conn(), Some(50));
}

#[test]
fn clock_offset_is_estimated_from_heartbeats() {
    let mut c = three_nodes();
    // Agent clock 300 ms ahead; one-way delays 5 and 50 ms.
    for (sent_at, now) in [(1_000 + 300 - 5, 1_000), (2_000 + 300 - 50, 2_000)] {
        let node = "a".into();
        let health = None;
        c.step(
            Input::Heartbeat {
                node,
                sent_at,
                health,
                echo: None,
            },
            now,
        );
    }
    assert_eq!(c.nodes["a"].clock_offset_ms, 295);
}

#[test]
fn every_launch_carries_the_native_launcher_a_job_asked_for() {
    let mut c = three_nodes();
    let (native, fx) = submit(
        &mut c,
        JobRequest {
            nproc_per_node: Some(2),
            warm_imports: vec!["torch".into()],
            ..job(2)
        },
        10,
    )
    .unwrap();
    assert_eq!(resolves(&fx).len(), 1);
    let fx = resolved(&mut c, &native.id, Ok(None), 20);
    let launched = launches(&fx);
    assert_eq!(launched.len(), 2);
    for (_, launch) in launched {
        assert_eq!(
            launch.launcher,
            crate::job::Launcher::Native {
                nproc_per_node: 2,
                warm_imports: vec!["torch".into()],
            }
        );
    }
    // A job that did not ask runs its command as given (torchrun is its own launcher).
    let mut c = three_nodes();
    let (plain, _) = submit(&mut c, job(1), 10).unwrap();
    let fx = resolved(&mut c, &plain.id, Ok(None), 20);
    assert_eq!(launches(&fx)[0].1.launcher, crate::job::Launcher::Command);
}

#[test]
fn a_running_jobs_progress_and_evidence_save_nothing_and_a_worker_fault_saves_the_job() {
    let mut c = running_job();
    let job_id = JobId::from("job-1");
    let generation = c.jobs[&job_id].generation;
    c.take_changes().unwrap();
    let progress = Progress {
        job_id: job_id.clone(),
        generation,
        step: 7,
        memory: Vec::new(),
        state_fallback: String::new(),
    };
    c.step(
        Input::Progress {
            node: "a".into(),
            progress,
        },
        100,
    );
    let evidence = crate::evidence::WorkerEvidence {
        job_id: job_id.clone(),
        generation,
        state: crate::evidence::ProcessState::Running,
        cpu_permille: 900,
        output_quiet_ms: Some(10),
    };
    c.step(
        Input::Evidence {
            node: "a".into(),
            evidence,
        },
        110,
    );
    assert_eq!(c.jobs[&job_id].step, 7);
    assert!(
        !c.has_changes(),
        "progress and evidence alone are not saved"
    );
    let exited = WorkerEvent {
        job_id: job_id.clone(),
        generation,
        at: 120,
        kind: WorkerEventKind::Exited {
            code: Some(1),
            signal: None,
            stopped_by_agent: false,
        },
    };
    c.step(
        Input::Worker {
            node: "b".into(),
            event: exited,
        },
        120,
    );
    let changes = c.take_changes().unwrap();
    assert!(
        changes.records.iter().any(|(key, _)| key == "job/job-1"),
        "the worker fault changed the job's record: {:?}",
        changes.records.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}
