//! Recovery policy in the job lifecycle: restart backoff, escalation from restart-in-place to
//! replacement (quarantine), and what happens when no replacement comes (shrink or fail).

use super::tests::{self, exited, fault, launched, plain_spec, start_all, stopped};
use super::*;

const LIMITS: JobLimits = JobLimits {
    restart_backoff_ms: 2_000,
    restart_backoff_max_ms: 5_000,
    quarantine_after: 3,
    quarantine_window_ms: 100_000,
    ..tests::LIMITS
};

fn running(nodes: &[&str], min_nodes: u32, budget: u32) -> Job {
    let spec = JobSpec {
        restart_budget: budget,
        min_nodes,
        ..plain_spec(nodes.len() as u32)
    };
    launched(spec, nodes, &LIMITS, (1, 2))
}

/// Every rank of the current generation started.
fn relaunched(job: &mut Job, now: UnixMillis) {
    start_all(job, &LIMITS, now);
}

/// The survivors of a fault on `node` confirm their stop.
fn survivors_stop(job: &mut Job, node: &str, now: UnixMillis) -> Vec<JobEffect> {
    let survivors: Vec<NodeId> = job.nodes().into_iter().filter(|n| n != node).collect();
    let generation = job.generation.get();
    survivors
        .iter()
        .flat_map(|other| step(job, stopped(other, generation), now, &LIMITS))
        .collect()
}

fn crash(job: &mut Job, node: &str, now: UnixMillis) -> Vec<JobEffect> {
    let crashed = exited(node, job.generation.get(), Some(1), None, false);
    let mut fx = step(job, crashed, now, &LIMITS);
    fx.extend(survivors_stop(job, node, now));
    fx
}

/// A worker fault on `node` at `now` that restarts in place; the job runs again `wait` later.
fn restart_in_place(job: &mut Job, node: &str, now: UnixMillis, wait: UnixMillis) {
    let fx = crash(job, node, now);
    let in_place = fx.iter().any(|e| {
        matches!(
            e,
            JobEffect::OpenIncident {
                action: RecoveryAction::RestartInPlace,
                ..
            }
        )
    });
    assert!(in_place, "the fault at {now} restarts in place: {fx:?}");
    step(job, JobEvent::Tick, now + wait, &LIMITS);
    let resolved = JobEvent::CheckpointResolved(Ok(None));
    step(job, resolved, now + wait + 1, &LIMITS);
    relaunched(job, now + wait + 2);
}

fn resolves(fx: &[JobEffect]) -> bool {
    fx.iter().any(|e| matches!(e, JobEffect::ResolveCheckpoint))
}

#[test]
fn backoff_is_zero_first_then_doubles_to_the_cap() {
    let delays: Vec<u64> = (1..=5).map(|n| LIMITS.restart_backoff(n)).collect();
    assert_eq!(delays, [0, 2_000, 4_000, 5_000, 5_000]);
}

#[test]
fn the_first_restart_is_immediate_and_the_second_waits_its_backoff() {
    let mut job = running(&["a", "b"], 0, 5);
    let fx = crash(&mut job, "a", 1_000);
    assert!(resolves(&fx), "first restart at once");
    step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        1_010,
        &LIMITS,
    );
    relaunched(&mut job, 1_020);

    let fx = crash(&mut job, "b", 5_000);
    assert!(!resolves(&fx), "second restart waits");
    assert!(job.message.contains("backoff"), "{}", job.message);
    assert!(!resolves(&step(&mut job, JobEvent::Tick, 6_999, &LIMITS)));
    assert!(resolves(&step(&mut job, JobEvent::Tick, 7_000, &LIMITS)));
}

#[test]
fn repeated_worker_faults_on_one_node_escalate_to_replacing_and_quarantining_it() {
    let mut job = running(&["a", "b"], 0, 10);
    for t in [1_000, 20_000] {
        restart_in_place(&mut job, "a", t, 10_000);
    }
    // A fault on another node does not count against a.
    let fx = crash(&mut job, "a", 40_000);
    let escalated = fx.iter().any(|e| {
        matches!(e, JobEffect::OpenIncident { action: RecoveryAction::ReplaceNode, cause: FaultCause::RepeatedFaults { faults: 3, .. }, node, .. } if node == "a")
    });
    assert!(escalated, "{fx:?}");
    assert!(fx.iter().any(|e| matches!(
        e,
        JobEffect::FenceNode { node, cause: FaultCause::RepeatedFaults { .. } } if node == "a"
    )));
    assert_eq!(job.phase(), "replacing");
    assert_eq!(job.restarts, 2, "a replacement uses no restart budget");
}

#[test]
fn faults_outside_the_window_do_not_add_up() {
    let mut job = running(&["a", "b"], 0, 10);
    for t in [1_000, 120_000, 240_000] {
        restart_in_place(&mut job, "a", t, 60_000);
    }
}

fn lose_node(job: &mut Job, node: &str, now: UnixMillis) {
    step(job, fault(node, FaultCause::AgentLost), now, &LIMITS);
    survivors_stop(job, node, now);
    assert_eq!(job.phase(), "replacing");
}

#[test]
fn without_a_replacement_a_job_that_allows_it_shrinks_to_its_survivors() {
    let mut job = running(&["a", "b", "c"], 2, 3);
    lose_node(&mut job, "c", 1_000);
    assert!(!resolves(&step(&mut job, JobEvent::Tick, 60_999, &LIMITS)));
    let fx = step(&mut job, JobEvent::Tick, 61_000, &LIMITS);
    assert!(resolves(&fx), "{fx:?}");
    assert_eq!(job.nodes(), ["a", "b"]);
    assert!(
        job.message.contains("shrunk from 3 to 2"),
        "{}",
        job.message
    );
    let fx = step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        61_010,
        &LIMITS,
    );
    assert!(matches!(
        fx.iter().find(|e| matches!(e, JobEffect::Launch { .. })),
        Some(JobEffect::Launch {
            generation: Generation(2),
            ..
        })
    ));
    relaunched(&mut job, 61_020);
}

#[test]
fn without_a_replacement_a_job_below_its_minimum_fails_with_the_reason() {
    let mut job = running(&["a", "b"], 2, 3);
    lose_node(&mut job, "b", 1_000);
    step(&mut job, JobEvent::Tick, 61_000, &LIMITS);
    let JobState::Failed { reason } = &job.state else {
        panic!("{:?}", job.state)
    };
    assert!(
        reason.contains("no replacement node within 60 s"),
        "{reason}"
    );
}
