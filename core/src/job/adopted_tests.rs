//! A worker adopted by a restarted agent ends with no known exit status: it counts as clean
//! when the other ranks exit 0, as a fault when they do not within the grace.

use super::*;

const LIMITS: JobLimits = JobLimits {
    stop_deadline_ms: 5_000,
    replacement_timeout_ms: 0,
    resolve_retry_ms: 1_000,
    resolve_attempts: 3,
    restart_backoff_ms: 0,
    restart_backoff_max_ms: 0,
    quarantine_after: 0,
    quarantine_window_ms: 0,
    startup_grace_ms: 0,
};

fn running() -> Job {
    let spec = JobSpec {
        command: vec!["train".into()],
        nodes: 2,
        checkpoint_uri: String::new(),
        stall_timeout_ms: 0,
        restart_budget: 3,
        progress_regex: crate::DEFAULT_PROGRESS_REGEX.into(),
        env: BTreeMap::new(),
        total_steps: 0,
        min_nodes: 0,
    };
    let mut job = Job::new("j".into(), spec, vec!["a".into(), "b".into()], 0);
    step(&mut job, JobEvent::CheckpointResolved(Ok(None)), 1, &LIMITS);
    for node in ["a", "b"] {
        let started = JobEvent::WorkerStarted {
            node: node.into(),
            generation: 1,
        };
        step(&mut job, started, 2, &LIMITS);
    }
    assert_eq!(job.state, JobState::Running);
    job
}

fn exited(node: &str, code: Option<i32>) -> JobEvent {
    JobEvent::WorkerExited {
        at: None,
        node: node.into(),
        generation: 1,
        code,
        signal: None,
        stopped_by_agent: false,
    }
}

#[test]
fn an_unknown_exit_followed_by_clean_exits_is_a_success() {
    let mut job = running();
    let fx = step(&mut job, exited("b", None), 100, &LIMITS);
    assert_eq!(job.state, JobState::Running, "{fx:?}");
    step(&mut job, exited("a", Some(0)), 200, &LIMITS);
    assert_eq!(job.state, JobState::Succeeded);
    assert!(job.message.contains("status inferred"), "{}", job.message);
    assert_eq!(job.generation, 1);
}

#[test]
fn an_unknown_exit_not_followed_by_the_others_is_a_worker_fault() {
    let mut job = running();
    step(&mut job, exited("b", None), 100, &LIMITS);
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
    step(&mut job, exited("a", None), 100, &LIMITS);
    step(&mut job, exited("b", None), 110, &LIMITS);
    assert!(
        matches!(job.state, JobState::Recovering(_)),
        "{:?}",
        job.state
    );
}
