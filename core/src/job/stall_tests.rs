//! The stall detector: a starting rank gets `startup_grace_ms` before its first progress, then
//! the job's own stall timeout; a rank past the last step is left to exit.

use super::*;

fn limits() -> JobLimits {
    JobLimits {
        stop_deadline_ms: 5_000,
        replacement_timeout_ms: 0,
        resolve_retry_ms: 1_000,
        resolve_attempts: 3,
        startup_grace_ms: 30_000,
        restart_backoff_ms: 0,
        restart_backoff_max_ms: 0,
        quarantine_after: 0,
        quarantine_window_ms: 0,
    }
}

fn running_job() -> Job {
    let spec = JobSpec {
        command: vec!["train".into()],
        nodes: 1,
        checkpoint_uri: String::new(),
        stall_timeout_ms: 5_000,
        restart_budget: 3,
        progress_regex: String::new(),
        env: BTreeMap::new(),
        total_steps: 10,
        min_nodes: 0,
    };
    let mut job = Job::new("j".into(), spec, vec!["n1".into()], 0);
    step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        0,
        &limits(),
    );
    step(
        &mut job,
        JobEvent::WorkerStarted {
            node: "n1".into(),
            generation: 1,
        },
        0,
        &limits(),
    );
    assert_eq!(job.state, JobState::Running);
    job
}

fn stalled(job: &Job) -> bool {
    matches!(job.state, JobState::Recovering(_))
}

#[test]
fn a_starting_rank_gets_the_startup_grace_then_the_stall_timeout() {
    let mut job = running_job();
    step(&mut job, JobEvent::Tick, 20_000, &limits());
    assert!(
        !stalled(&job),
        "silent for 20 s while starting: within the 30 s grace"
    );
    step(
        &mut job,
        JobEvent::Progress {
            node: "n1".into(),
            generation: 1,
            step: 1,
        },
        21_000,
        &limits(),
    );
    step(&mut job, JobEvent::Tick, 25_000, &limits());
    assert!(!stalled(&job));
    step(&mut job, JobEvent::Tick, 26_000, &limits());
    assert!(
        stalled(&job),
        "5 s without progress after the first step is a stall"
    );
}

#[test]
fn a_rank_that_never_starts_stalls_after_the_grace() {
    let mut job = running_job();
    step(&mut job, JobEvent::Tick, 29_999, &limits());
    assert!(!stalled(&job));
    step(&mut job, JobEvent::Tick, 30_000, &limits());
    assert!(stalled(&job));
}

#[test]
fn a_rank_past_the_last_step_is_not_stalled_while_it_exits() {
    let mut job = running_job();
    step(
        &mut job,
        JobEvent::Progress {
            node: "n1".into(),
            generation: 1,
            step: 10,
        },
        1_000,
        &limits(),
    );
    step(&mut job, JobEvent::Tick, 60_000, &limits());
    assert!(!stalled(&job));
}
