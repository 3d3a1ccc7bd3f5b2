//! An agent crash (stream closed without goodbye) with `agent_lost_grace_ms`: the node may
//! come back and re-adopt its worker within the grace; after it, the node is lost.

use super::testing::*;
use super::*;

/// Nodes a and b run generation 1 of job-1; a lost stream gets 3 s of grace.
fn running() -> Cluster {
    let config = CoordinatorConfig {
        agent_lost_grace_ms: 3_000,
        ..Default::default()
    };
    let mut c = workers(config, &["a", "b"]);
    run_job(&mut c, job(2), 10);
    c
}

#[test]
fn a_crashed_agent_that_returns_within_the_grace_keeps_the_generation() {
    let mut c = running();
    disconnect(&mut c, "b", 1_000);
    assert!(c.incidents.is_empty());
    tick_alive(&mut c, &["a"], 2_500);
    let fx = hello_running(&mut c, "b", 3, 1, 2_600);
    assert!(stops(&fx).is_empty(), "the adopted worker is left alone");
    tick_alive(&mut c, &["a", "b"], 4_500);
    assert!(c.incidents.is_empty());
    assert_eq!(c.jobs[JOB].state, JobState::Running);
    assert_eq!(c.jobs[JOB].generation, 1);
    assert_eq!(c.nodes["b"].worker, Some((JOB.into(), Generation(1), PID)));
}

#[test]
fn a_crashed_agent_that_does_not_return_is_lost_after_the_grace() {
    let mut c = running();
    disconnect(&mut c, "b", 1_000);
    heartbeat(&mut c, "a", 3_900);
    tick(&mut c, 3_999);
    assert!(c.incidents.is_empty());
    tick(&mut c, 4_000);
    assert_eq!(c.incidents.len(), 1);
    assert_eq!(c.incidents[0].cause, "agent_lost");
    assert!(matches!(c.nodes["b"].state, NodeState::Fenced { .. }));
}

#[test]
fn without_a_grace_a_closed_stream_is_lost_at_once() {
    let mut c = running();
    c.config.agent_lost_grace_ms = 0;
    disconnect(&mut c, "b", 1_000);
    assert_eq!(c.incidents.len(), 1);
}
