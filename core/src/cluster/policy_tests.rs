//! The circuit breaker on fencing, and a job shrinking when no replacement comes, driven
//! through the cluster core with a fake clock.

use super::*;

fn hello(node: &str) -> Hello {
    Hello {
        node_id: node.into(),
        hostname: node.into(),
        role: Role::Worker,
        address: "10.0.0.1".into(),
        boot_id: "boot".into(),
        agent_version: "test".into(),
        gpus: Vec::new(),
        sent_at: 0,
        worker: None,
        agent_started_at: 0,
    }
}

/// `nodes` workers, one job on all of them (min_nodes as given), running in generation 1.
fn running(config: CoordinatorConfig, nodes: &[&str], min_nodes: u32) -> Cluster {
    let mut c = Cluster::new(config);
    for (i, node) in nodes.iter().enumerate() {
        c.hello(i as u64 + 1, hello(node), 0).unwrap();
    }
    let spec = pb::JobSpec {
        command: vec!["train".into()],
        nodes: nodes.len() as u32,
        min_nodes,
        ..Default::default()
    };
    c.submit(spec, 10).unwrap();
    c.checkpoint_resolved("job-1", Ok(None), 20);
    for node in nodes {
        let started = pb::WorkerEvent {
            job_id: "job-1".into(),
            generation: 1,
            kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted {
                pid: 7,
            })),
            at_unix_ms: 30,
        };
        c.worker_event(node, started, 30);
    }
    assert_eq!(c.jobs["job-1"].state, JobState::Running);
    c
}

fn alerts(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Publish(ev) if ev.kind == "alert" => Some(ev.message.clone()),
            _ => None,
        })
        .collect()
}

fn conn(c: &Cluster, node: &str) -> u64 {
    c.nodes[node].conn.unwrap()
}

#[test]
fn the_circuit_breaker_stops_fencing_past_the_share_and_alerts_once() {
    let config = CoordinatorConfig {
        circuit_breaker_share: 0.5,
        circuit_breaker_window_ms: 60_000,
        ..Default::default()
    };
    let mut c = running(config, &["a", "b", "c", "d"], 0);
    // Half of four nodes may be fenced within the window.
    for (node, t) in [("a", 1_000), ("b", 1_100)] {
        let id = conn(&c, node);
        let fx = c.disconnected(node, id, t);
        assert!(alerts(&fx).is_empty());
        assert!(
            matches!(c.nodes[node].state, NodeState::Fenced { .. }),
            "{node}"
        );
    }
    assert!(!c.fence_breaker_open());
    let id = conn(&c, "c");
    let fx = c.disconnected("c", id, 1_200);
    let raised = alerts(&fx);
    assert_eq!(raised.len(), 1, "{fx:?}");
    assert!(
        raised[0].contains("circuit breaker open: 2 of 4 nodes"),
        "{}",
        raised[0]
    );
    assert_eq!(
        c.nodes["c"].state,
        NodeState::Offline,
        "released, not fenced"
    );
    assert!(c.fence_breaker_open());
    // Still open: no second alert, still no fence.
    let id = conn(&c, "d");
    let fx = c.disconnected("d", id, 1_300);
    assert!(alerts(&fx).is_empty());
    assert_eq!(c.nodes["d"].state, NodeState::Offline);

    // Once the window has passed fencing is allowed again, and the breaker says it closed.
    let mut fx = Vec::new();
    assert!(c.fence_allowed("c", 70_000, &mut fx));
    assert!(alerts(&fx)[0].contains("circuit breaker closed"), "{fx:?}");
}

#[test]
fn a_job_that_allows_it_shrinks_when_no_replacement_comes_in_time() {
    let config = CoordinatorConfig {
        replacement_timeout_ms: 5_000,
        ..Default::default()
    };
    let mut c = running(config, &["a", "b", "c"], 2);
    let id = conn(&c, "c");
    c.disconnected("c", id, 1_000);
    for node in ["a", "b"] {
        let stopped = pb::WorkerEvent {
            job_id: "job-1".into(),
            generation: 1,
            kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
                code: None,
                signal: Some(15),
                stopped_by_agent: true,
            })),
            at_unix_ms: 1_100,
        };
        c.worker_event(node, stopped, 1_100);
    }
    assert_eq!(c.jobs["job-1"].phase(), "replacing");
    for node in ["a", "b"] {
        c.heartbeat(node, 5_900, None, 5_900);
    }
    assert!(!c
        .tick(6_099)
        .iter()
        .any(|e| matches!(e, Effect::ResolveCheckpoint { .. })));
    let fx = c.tick(6_100);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::ResolveCheckpoint { .. })),
        "{fx:?}"
    );
    let fx = c.checkpoint_resolved("job-1", Ok(None), 6_010);
    let launches: Vec<&pb::Launch> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                message: ToAgent::Launch(l),
                ..
            } => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(launches.len(), 2);
    assert!(launches.iter().all(|l| l.nnodes == 2 && l.generation == 2));
    assert_eq!(c.jobs["job-1"].nodes(), ["a", "b"]);
    let view = c.job_view(&c.jobs["job-1"]);
    assert!(
        view.message.contains("on 2 of 3 nodes (shrunk"),
        "{}",
        view.message
    );
}

#[test]
fn an_exec_provider_is_asked_once_per_missing_host_and_fences_the_lost_one() {
    let config = CoordinatorConfig {
        provider: "exec".into(),
        provider_dir: "/etc/holdfast/providers".into(),
        ..Default::default()
    };
    let mut c = running(config, &["a", "b"], 0);
    let id = conn(&c, "b");
    let fx = c.disconnected("b", id, 1_000);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::FenceHost { node, .. } if node == "b")));
    let stopped = pb::WorkerEvent {
        job_id: "job-1".into(),
        generation: 1,
        kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
            code: None,
            signal: Some(15),
            stopped_by_agent: true,
        })),
        at_unix_ms: 1_100,
    };
    let fx = c.worker_event("a", stopped, 1_100);
    let asks: Vec<u32> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Provision { job_id, count, .. } if job_id == "job-1" => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(asks, [1]);
    // Ticks while the host is on its way ask for nothing more.
    c.heartbeat("a", 1_500, None, 1_500);
    let fx = c.tick(1_500);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Provision { .. })));
    // A failed provision is told to the operator, and the next search asks again.
    c.provision_result("job-1", 1, Err("capacity".into()), 1_600);
    assert!(c.jobs["job-1"].message.contains("capacity"));
    // The new host registers and takes the rank.
    c.hello(9, hello("new-1"), 2_000).unwrap();
    assert_eq!(c.jobs["job-1"].nodes(), ["a", "new-1"]);
}
