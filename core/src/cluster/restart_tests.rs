//! The core's restart behaviour, driven with a fake clock: save, restore, reconcile.

use super::*;

fn hello(node: &str, role: Role, worker: Option<(&str, u64, bool)>) -> Hello {
    Hello {
        node_id: node.into(),
        hostname: node.into(),
        role,
        address: "127.0.0.1".into(),
        boot_id: "b".into(),
        agent_version: "t".into(),
        gpus: Vec::new(),
        sent_at: 0,
        worker: worker.map(|(j, g, running)| (j.to_string(), g, 42, running)),
        agent_started_at: 0,
    }
}

fn spec() -> pb::JobSpec {
    pb::JobSpec {
        command: vec!["train".into()],
        nodes: 2,
        ..Default::default()
    }
}

fn started(job: &str, generation: u64) -> pb::WorkerEvent {
    pb::WorkerEvent {
        job_id: job.into(),
        generation,
        kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted {
            pid: 42,
        })),
        at_unix_ms: 0,
    }
}

fn launches(fx: &[Effect]) -> Vec<(String, u64, u64)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send {
                node,
                message: ToAgent::Launch(l),
            } => Some((node.clone(), l.generation, l.term)),
            _ => None,
        })
        .collect()
}

fn stops(fx: &[Effect]) -> Vec<(String, u64)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send {
                node,
                message: ToAgent::Stop(s),
            } => Some((node.clone(), s.generation)),
            _ => None,
        })
        .collect()
}

/// Two workers and a spare, a job running generation 1.
fn running_cluster() -> Cluster {
    let mut c = Cluster::new(CoordinatorConfig::default());
    let mut conn = 0;
    for (n, role) in [("a", Role::Worker), ("b", Role::Worker), ("s", Role::Spare)] {
        conn += 1;
        c.hello(conn, hello(n, role, None), 0).unwrap();
    }
    let (job, _) = c.submit(spec(), 0).unwrap();
    let fx = c.checkpoint_resolved(&job.job_id, Ok(None), 10);
    assert_eq!(launches(&fx).len(), 2);
    c.worker_event("a", started("job-1", 1), 20);
    c.worker_event("b", started("job-1", 1), 20);
    assert_eq!(c.jobs["job-1"].state, JobState::Running);
    c
}

fn restart(c: &Cluster, now: UnixMillis) -> (Cluster, Vec<Effect>) {
    let records = c.to_records().unwrap();
    Cluster::restore(CoordinatorConfig::default(), &records, now)
        .unwrap()
        .unwrap()
}

#[test]
fn heartbeats_and_progress_change_nothing_durable_but_transitions_do() {
    let mut c = running_cluster();
    let v = c.durable_version();
    c.heartbeat("a", 100, None, 100);
    c.progress(
        "a",
        pb::Progress {
            job_id: "job-1".into(),
            generation: 1,
            step: 5,
            at_unix_ms: 100,
        },
        100,
    );
    assert_eq!(c.durable_version(), v);
    c.disconnected("b", 2, 200);
    assert!(c.durable_version() > v);
}

#[test]
fn a_restart_bumps_the_term_and_keeps_a_running_generation_running() {
    let c = running_cluster();
    let (mut r, fx) = restart(&c, 1_000);
    assert_eq!(r.term, c.term + 1);
    assert!(launches(&fx).is_empty() && stops(&fx).is_empty());
    assert!(r
        .nodes
        .values()
        .all(|n| n.conn.is_none() && n.restarting_until == Some(11_000)));
    // Agents come back reporting generation 1: nothing is stopped or launched again.
    let (_, fx) = r
        .hello(
            10,
            hello("a", Role::Worker, Some(("job-1", 1, true))),
            1_100,
        )
        .unwrap();
    assert!(launches(&fx).is_empty() && stops(&fx).is_empty(), "{fx:?}");
    let (_, fx) = r
        .hello(
            11,
            hello("b", Role::Worker, Some(("job-1", 1, true))),
            1_100,
        )
        .unwrap();
    assert!(launches(&fx).is_empty() && stops(&fx).is_empty(), "{fx:?}");
    r.hello(12, hello("s", Role::Spare, None), 1_100).unwrap();
    // Past the grace nobody is lost: every node came back.
    for n in ["a", "b", "s"] {
        r.heartbeat(n, 20_000, None, 20_000);
    }
    r.tick(20_000);
    let job = &r.jobs["job-1"];
    assert_eq!((job.state.clone(), job.generation), (JobState::Running, 1));
    assert!(r.incidents.is_empty());
}

#[test]
fn a_node_that_does_not_come_back_within_the_grace_is_a_fault_after_the_restart() {
    let c = running_cluster();
    let (mut r, _) = restart(&c, 1_000);
    r.hello(
        10,
        hello("a", Role::Worker, Some(("job-1", 1, true))),
        1_100,
    )
    .unwrap();
    r.hello(12, hello("s", Role::Spare, None), 1_100).unwrap();
    for n in ["a", "s"] {
        r.heartbeat(n, 5_000, None, 5_000);
    }
    r.tick(5_000);
    assert!(r.incidents.is_empty());
    for n in ["a", "s"] {
        r.heartbeat(n, 11_000, None, 11_000);
    }
    let fx = r.tick(11_000);
    assert_eq!(r.incidents.len(), 1);
    assert_eq!(r.incidents[0].node_id, "b");
    assert_eq!(stops(&fx), vec![("a".to_string(), 1)]);
}

#[test]
fn a_stale_generation_is_stopped_and_a_lost_launch_is_sent_again_once() {
    let mut c = running_cluster();
    // b's worker crashes: restart in place, generation 2 resolved and launched…
    c.worker_event(
        "b",
        pb::WorkerEvent {
            job_id: "job-1".into(),
            generation: 1,
            kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
                code: Some(1),
                signal: None,
                stopped_by_agent: false,
            })),
            at_unix_ms: 30,
        },
        30,
    );
    c.worker_event(
        "a",
        pb::WorkerEvent {
            job_id: "job-1".into(),
            generation: 1,
            kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
                code: None,
                signal: Some(15),
                stopped_by_agent: true,
            })),
            at_unix_ms: 40,
        },
        40,
    );
    let fx = c.checkpoint_resolved("job-1", Ok(None), 50);
    assert_eq!(launches(&fx).len(), 2);
    assert_eq!(c.jobs["job-1"].generation, 2);
    // …and the coordinator dies before either agent heard of it.
    let (mut r, fx) = restart(&c, 1_000);
    assert!(launches(&fx).is_empty());
    // a still runs generation 1 (it never got the stop): stopped. Then generation 2 again.
    let (_, fx) = r
        .hello(
            10,
            hello("a", Role::Worker, Some(("job-1", 1, true))),
            1_100,
        )
        .unwrap();
    assert_eq!(stops(&fx), vec![("a".to_string(), 1)]);
    assert_eq!(launches(&fx), vec![("a".to_string(), 2, r.term)]);
    // b runs generation 2 already: kept, no second launch.
    let (_, fx) = r
        .hello(
            11,
            hello("b", Role::Worker, Some(("job-1", 2, true))),
            1_100,
        )
        .unwrap();
    assert!(launches(&fx).is_empty() && stops(&fx).is_empty(), "{fx:?}");
    assert_eq!(r.jobs["job-1"].generation, 2);
    assert_eq!(r.incidents.len(), 1);
}

#[test]
fn a_checkpoint_resolution_in_flight_is_asked_for_again_and_applied_once() {
    let mut c = running_cluster();
    c.disconnected("b", 2, 100);
    // b was fenced, a stopped (unreachable counts once a's stop is confirmed).
    c.worker_event(
        "a",
        pb::WorkerEvent {
            job_id: "job-1".into(),
            generation: 1,
            kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
                code: None,
                signal: Some(15),
                stopped_by_agent: true,
            })),
            at_unix_ms: 110,
        },
        110,
    );
    assert_eq!(c.jobs["job-1"].phase(), "relaunching");
    let (mut r, fx) = restart(&c, 1_000);
    let resolves = fx
        .iter()
        .filter(|e| matches!(e, Effect::ResolveCheckpoint { .. }))
        .count();
    assert_eq!(resolves, 1);
    assert!(r.is_fenced("b"));
    r.checkpoint_resolved("job-1", Ok(None), 1_100);
    r.checkpoint_resolved("job-1", Ok(None), 1_200);
    assert_eq!(r.jobs["job-1"].generation, 2);
    assert_eq!(r.incidents.len(), 1);
    // The fenced node comes back running its old worker: stopped and kept fenced.
    let (_, fx) = r
        .hello(
            20,
            hello("b", Role::Worker, Some(("job-1", 1, true))),
            1_300,
        )
        .unwrap();
    assert_eq!(stops(&fx), vec![("b".to_string(), 1)]);
    assert!(launches(&fx).is_empty());
    assert!(r.is_fenced("b"));
}
