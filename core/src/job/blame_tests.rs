//! A survivor's worker exit handed to the peer whose loss caused it.

use super::tests::{self, exited, fault, launched, plain_spec};
use super::*;
use crate::incident::IncidentEvent;

/// Quarantine after two worker faults, a 2 s backoff from the second restart, and node faults
/// within 3 s of a worker exit taken for its cause.
const LIMITS: JobLimits = JobLimits {
    restart_backoff_ms: 2_000,
    restart_backoff_max_ms: 8_000,
    quarantine_after: 2,
    quarantine_window_ms: 600_000,
    peer_loss_window_ms: 3_000,
    ..tests::LIMITS
};

fn running() -> Job {
    launched(plain_spec(3), &["a", "b", "c"], &LIMITS, (1, 2))
}

/// `node`'s worker of `job`'s current generation exits 1 at `now`.
fn crash(job: &mut Job, node: &str, now: UnixMillis) -> Vec<JobEffect> {
    let event = exited(node, job.generation.0, Some(1), None, false);
    step(job, event, now, &LIMITS)
}

fn opened(fx: &[JobEffect]) -> Vec<(&str, &str)> {
    (fx.iter())
        .filter_map(|e| match e {
            JobEffect::OpenIncident { node, cause, .. } => Some((node.as_str(), cause.code())),
            _ => None,
        })
        .collect()
}

fn handed(fx: &[JobEffect]) -> Vec<(&str, &str, &str)> {
    (fx.iter())
        .filter_map(|e| match e {
            JobEffect::ReattributeIncident {
                from, node, cause, ..
            } => Some((from.as_str(), node.as_str(), cause.code())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_survivors_exit_then_its_peers_loss_is_one_incident_on_the_lost_node() {
    let mut job = running();
    let fx = crash(&mut job, "a", 1_000);
    assert_eq!(opened(&fx), [("a", "worker_exited")]);
    assert_eq!(job.restarts, 1);

    let fx = step(&mut job, fault("b", FaultCause::AgentLost), 1_200, &LIMITS);
    assert!(opened(&fx).is_empty(), "{fx:?}");
    assert_eq!(handed(&fx), [("a", "b", "agent_lost")]);
    assert!(fx
        .iter()
        .any(|e| matches!(e, JobEffect::FenceNode { node, .. } if node == "b")));
    // The exit is no fault of a's: no restart spent, nothing counted towards its quarantine.
    assert_eq!(job.restarts, 0);
    assert_eq!(job.relaunch_not_before, None);
    assert!(job.worker_faults.is_empty(), "{:?}", job.worker_faults);
    assert!(job.ranks[1].needs_node && !job.ranks[0].needs_node);
    assert!(
        job.message.contains("worker exit on a followed from it"),
        "{}",
        job.message
    );
    assert_eq!(job.exit_blame, None, "handed over once");
}

#[test]
fn a_node_fault_after_the_window_is_an_incident_of_its_own() {
    let mut job = running();
    crash(&mut job, "a", 1_000);
    let fx = step(
        &mut job,
        fault("b", FaultCause::HeartbeatTimeout),
        4_000,
        &LIMITS,
    );
    assert_eq!(opened(&fx), [("b", "heartbeat_timeout")]);
    assert!(handed(&fx).is_empty());
    assert_eq!(job.restarts, 1, "a's restart stands");
}

/// `node`'s agent is declared lost, silent since `since`.
fn lost_since(node: &str, since: UnixMillis) -> JobEvent {
    JobEvent::Fault {
        node: node.into(),
        cause: FaultCause::AgentLost,
        silent_since: Some(since),
    }
}

#[test]
fn a_node_silent_since_before_the_exit_takes_it_over_however_late_its_loss_is_declared() {
    let mut job = running();
    crash(&mut job, "a", 1_000);
    let fx = step(&mut job, lost_since("b", 900), 30_000, &LIMITS);
    assert_eq!(handed(&fx), [("a", "b", "agent_lost")]);
    // Heard from after the exit, a late loss is a fault of its own.
    let mut job = running();
    crash(&mut job, "a", 1_000);
    let fx = step(&mut job, lost_since("b", 1_100), 30_000, &LIMITS);
    assert_eq!(opened(&fx), [("b", "agent_lost")]);
}

#[test]
fn a_fault_on_the_exited_node_itself_is_an_incident_of_its_own() {
    let mut job = running();
    crash(&mut job, "a", 1_000);
    let fx = step(&mut job, fault("a", FaultCause::AgentLost), 1_100, &LIMITS);
    assert_eq!(opened(&fx), [("a", "agent_lost")]);
    assert!(handed(&fx).is_empty());
}

#[test]
fn a_restart_that_waited_out_its_backoff_is_given_back_with_it() {
    let mut job = running();
    // A first crash restarts at once; the second waits for its backoff.
    crash(&mut job, "c", 1_000);
    settle_in_place(&mut job, 1_100);
    let fx = crash(&mut job, "a", 5_000);
    assert_eq!(opened(&fx), [("a", "worker_exited")]);
    assert_eq!(job.restarts, 2);
    assert!(job.relaunch_not_before.is_some());

    let fx = step(&mut job, fault("b", FaultCause::AgentLost), 5_050, &LIMITS);
    assert_eq!(handed(&fx), [("a", "b", "agent_lost")]);
    assert_eq!(job.restarts, 1, "only a's restart goes back");
    assert_eq!(job.relaunch_not_before, None);
    assert_eq!(job.worker_faults.keys().collect::<Vec<_>>(), ["c"]);
}

#[test]
fn exits_that_reach_quarantine_or_follow_a_node_fault_are_never_handed_over() {
    // A node fault first: the survivors' exits change nothing and nothing is kept for them.
    let mut job = running();
    step(&mut job, fault("b", FaultCause::AgentLost), 1_000, &LIMITS);
    let fx = crash(&mut job, "a", 1_050);
    assert!(opened(&fx).is_empty() && handed(&fx).is_empty(), "{fx:?}");
    assert_eq!(job.exit_blame, None);

    // A second crash on one node within the window quarantines it: that is its own fault.
    let mut job = running();
    crash(&mut job, "a", 1_000);
    settle_in_place(&mut job, 1_100);
    let fx = crash(&mut job, "a", 2_000);
    assert_eq!(opened(&fx), [("a", "repeated_faults")]);
    assert_eq!(job.exit_blame, None);
}

#[test]
fn a_node_heard_from_after_the_exit_has_a_fault_of_its_own() {
    // It confirmed its stop, then was lost: alive after the exit, so not its cause.
    let mut job = running();
    crash(&mut job, "a", 1_000);
    step(&mut job, tests::stopped("b", 1), 1_010, &LIMITS);
    let fx = step(&mut job, fault("b", FaultCause::AgentLost), 1_020, &LIMITS);
    assert_eq!(opened(&fx), [("b", "agent_lost")]);
    // It started in the next generation, then was lost.
    let mut job = running();
    crash(&mut job, "a", 1_000);
    settle_in_place(&mut job, 1_100);
    let fx = step(&mut job, fault("b", FaultCause::AgentLost), 1_200, &LIMITS);
    assert_eq!(opened(&fx), [("b", "agent_lost")]);
    assert_eq!(job.restarts, 1, "a's restart stands");
}

#[test]
fn a_lost_node_the_next_generation_launched_on_unheard_takes_the_exit_over() {
    let mut job = running();
    crash(&mut job, "a", 1_000);
    step(&mut job, tests::stopped("c", 1), 1_010, &LIMITS);
    // b cannot be reached to stop: the restart in place goes on without its news.
    let unreachable = JobEvent::NodeUnreachable { node: "b".into() };
    step(&mut job, unreachable, 1_020, &LIMITS);
    step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        1_030,
        &LIMITS,
    );
    for node in ["a", "c"] {
        let started = JobEvent::WorkerStarted {
            node: node.into(),
            generation: job.generation,
        };
        step(&mut job, started, 1_040, &LIMITS);
    }
    assert_eq!(job.state, JobState::Launching);
    let fx = step(
        &mut job,
        fault("b", FaultCause::HeartbeatTimeout),
        2_500,
        &LIMITS,
    );
    assert!(opened(&fx).is_empty(), "{fx:?}");
    assert_eq!(handed(&fx), [("a", "b", "heartbeat_timeout")]);
    assert!(job.ranks[1].needs_node);
    assert_eq!(job.restarts, 0);
}

/// Why the job failed (it must have).
fn failed_for(job: &Job) -> &str {
    match &job.state {
        JobState::Failed { reason } => reason,
        other => panic!("expected failed, got {other:?}"),
    }
}

fn spent() -> Job {
    let spec = JobSpec {
        restart_budget: 0,
        ..plain_spec(3)
    };
    launched(spec, &["a", "b", "c"], &LIMITS, (1, 2))
}

#[test]
fn with_the_budget_spent_an_exit_fails_the_job_once_the_other_ranks_stopped() {
    let mut job = spent();
    let fx = crash(&mut job, "a", 1_000);
    assert!(fx.iter().any(|e| matches!(
        e,
        JobEffect::OpenIncident { node, action: RecoveryAction::None, .. } if node == "a"
    )));
    assert!(
        matches!(
            job.state,
            JobState::Recovering(RecoveryPhase::Fencing { .. })
        ),
        "{:?}",
        job.state
    );
    assert!(
        job.message.contains("the restart budget is spent"),
        "{}",
        job.message
    );
    step(&mut job, tests::stopped("b", 1), 1_010, &LIMITS);
    assert!(matches!(job.state, JobState::Recovering(_)));
    let fx = step(&mut job, tests::stopped("c", 1), 1_020, &LIMITS);
    let reason = failed_for(&job);
    assert!(reason.contains("restart budget of 0 exhausted"), "{reason}");
    assert!(reason.contains("last fault on a"), "{reason}");
    assert!(fx
        .iter()
        .any(|e| matches!(e, JobEffect::Incident(IncidentEvent::Abandoned { .. }))));
}

#[test]
fn with_the_budget_spent_a_lost_peer_found_meanwhile_is_replaced_and_the_job_lives() {
    let mut job = spent();
    crash(&mut job, "a", 1_000);
    let fx = step(&mut job, fault("b", FaultCause::AgentLost), 1_300, &LIMITS);
    assert_eq!(handed(&fx), [("a", "b", "agent_lost")]);
    step(&mut job, tests::stopped("c", 1), 1_310, &LIMITS);
    assert!(
        matches!(
            job.state,
            JobState::Recovering(RecoveryPhase::Replacing { .. })
        ),
        "{:?}",
        job.state
    );
    assert_eq!(job.restarts, 0);
}

#[test]
fn with_the_budget_spent_a_loss_that_did_not_cause_the_exit_still_leaves_the_job_failing() {
    let mut job = spent();
    crash(&mut job, "a", 1_000);
    // Lost past the window, heard from after the exit: a fault of its own.
    let fx = step(&mut job, lost_since("b", 1_500), 6_000, &LIMITS);
    assert_eq!(opened(&fx), [("b", "agent_lost")]);
    step(&mut job, tests::stopped("c", 1), 6_010, &LIMITS);
    let reason = failed_for(&job);
    assert!(reason.contains("restart budget of 0 exhausted"), "{reason}");
}

#[test]
fn with_the_budget_spent_and_no_other_rank_running_an_exit_fails_the_job_at_once() {
    let mut job = spent();
    for node in ["b", "c"] {
        step(
            &mut job,
            exited(node, 1, Some(0), None, false),
            900,
            &LIMITS,
        );
    }
    crash(&mut job, "a", 1_000);
    assert!(
        matches!(job.state, JobState::Failed { .. }),
        "{:?}",
        job.state
    );
}

/// The survivors of the restart in place opened at `now` confirm their stop, the checkpoint
/// resolves and every rank starts: the next generation runs.
fn settle_in_place(job: &mut Job, now: UnixMillis) {
    let generation = job.generation.0;
    for node in job.nodes() {
        step(job, tests::stopped(&node, generation), now, &LIMITS);
    }
    if let Some(at) = job.relaunch_not_before {
        step(job, JobEvent::Tick, at, &LIMITS);
    }
    step(job, JobEvent::CheckpointResolved(Ok(None)), now, &LIMITS);
    tests::start_all(job, &LIMITS, now);
}
