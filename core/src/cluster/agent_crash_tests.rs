//! An agent crash (stream closed without goodbye) with `agent_lost_grace_ms`: the node may
//! come back and re-adopt its worker within the grace; after it, the node is lost.

use super::*;

fn hello(node: &str, worker: Option<(String, u64, u32, bool)>) -> Hello {
    Hello {
        node_id: node.into(),
        hostname: node.into(),
        role: Role::Worker,
        address: "10.0.0.1".into(),
        boot_id: "boot".into(),
        agent_version: "test".into(),
        gpus: Vec::new(),
        sent_at: 0,
        worker,
        agent_started_at: 0,
    }
}

/// Nodes a and b run generation 1 of job-1; a lost stream gets 3 s of grace.
fn running() -> Cluster {
    let mut c = Cluster::new(CoordinatorConfig {
        agent_lost_grace_ms: 3_000,
        ..Default::default()
    });
    c.hello(1, hello("a", None), 0).unwrap();
    c.hello(2, hello("b", None), 0).unwrap();
    let spec = pb::JobSpec {
        command: vec!["train".into()],
        nodes: 2,
        ..Default::default()
    };
    c.submit(spec, 10).unwrap();
    c.checkpoint_resolved("job-1", Ok(None), 20);
    for node in ["a", "b"] {
        let started = pb::WorkerEvent {
            job_id: "job-1".into(),
            generation: 1,
            kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted {
                pid: 42,
            })),
            at_unix_ms: 30,
        };
        c.worker_event(node, started, 30);
    }
    assert_eq!(c.jobs["job-1"].state, JobState::Running);
    c
}

#[test]
fn a_crashed_agent_that_returns_within_the_grace_keeps_the_generation() {
    let mut c = running();
    c.disconnected("b", 2, 1_000);
    assert!(c.incidents.is_empty());
    c.heartbeat("a", 2_500, None, 2_500);
    c.tick(2_500);
    let (_, fx) = c
        .hello(3, hello("b", Some(("job-1".into(), 1, 42, true))), 2_600)
        .unwrap();
    assert!(
        !fx.iter().any(|e| matches!(
            e,
            Effect::Send {
                message: ToAgent::Stop(_),
                ..
            }
        )),
        "the adopted worker is left alone"
    );
    c.heartbeat("a", 4_500, None, 4_500);
    c.heartbeat("b", 4_500, None, 4_500);
    c.tick(4_500);
    assert!(c.incidents.is_empty());
    assert_eq!(c.jobs["job-1"].state, JobState::Running);
    assert_eq!(c.jobs["job-1"].generation, 1);
    assert_eq!(c.nodes["b"].worker, Some(("job-1".into(), 1, 42)));
}

#[test]
fn a_crashed_agent_that_does_not_return_is_lost_after_the_grace() {
    let mut c = running();
    c.disconnected("b", 2, 1_000);
    c.heartbeat("a", 3_900, None, 3_900);
    c.tick(3_999);
    assert!(c.incidents.is_empty());
    c.tick(4_000);
    assert_eq!(c.incidents.len(), 1);
    assert_eq!(c.incidents[0].cause, "agent_lost");
    assert!(matches!(c.nodes["b"].state, NodeState::Fenced { .. }));
}

#[test]
fn without_a_grace_a_closed_stream_is_lost_at_once() {
    let mut c = running();
    c.config.agent_lost_grace_ms = 0;
    c.disconnected("b", 2, 1_000);
    assert_eq!(c.incidents.len(), 1);
}
