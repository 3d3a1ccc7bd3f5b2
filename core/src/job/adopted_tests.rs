//! A worker adopted by a restarted agent ends with no known exit status: it counts as clean
//! when the other ranks exit 0, as a fault when they do not within the grace.

use super::tests::{self, exited, launched, plain_spec};
use super::*;

const LIMITS: JobLimits = JobLimits {
    replacement_timeout_ms: 0,
    ..tests::LIMITS
};

fn running() -> Job {
    launched(plain_spec(2), &["a", "b"], &LIMITS, (1, 2))
}

fn unconfirmed(node: &str) -> JobEvent {
    exited(node, 1, None, None, false)
}

fn clean(node: &str) -> JobEvent {
    exited(node, 1, Some(0), None, false)
}

#[test]
fn an_unknown_exit_followed_by_clean_exits_is_a_success() {
    let mut job = running();
    let fx = step(&mut job, unconfirmed("b"), 100, &LIMITS);
    assert_eq!(job.state, JobState::Running, "{fx:?}");
    step(&mut job, clean("a"), 200, &LIMITS);
    assert_eq!(job.state, JobState::Succeeded);
    assert!(job.message.contains("status inferred"), "{}", job.message);
    assert_eq!(job.generation, 1);
}

#[test]
fn an_unknown_exit_not_followed_by_the_others_is_a_worker_fault() {
    let mut job = running();
    step(&mut job, unconfirmed("b"), 100, &LIMITS);
    step(
        &mut job,
        JobEvent::Tick,
        100 + UNCONFIRMED_EXIT_GRACE_MS - 1,
        &LIMITS,
    );
    assert_eq!(job.state, JobState::Running);
    let fx = step(
        &mut job,
        JobEvent::Tick,
        100 + UNCONFIRMED_EXIT_GRACE_MS,
        &LIMITS,
    );
    assert!(
        matches!(job.state, JobState::Recovering(_)),
        "{:?}",
        job.state
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        JobEffect::OpenIncident { node, cause: FaultCause::WorkerExited { code: None, signal: None }, .. } if node == "b"
    )));
}

#[test]
fn every_rank_unknown_confirms_nothing() {
    let mut job = running();
    step(&mut job, unconfirmed("a"), 100, &LIMITS);
    step(&mut job, unconfirmed("b"), 110, &LIMITS);
    assert!(
        matches!(job.state, JobState::Recovering(_)),
        "{:?}",
        job.state
    );
}
