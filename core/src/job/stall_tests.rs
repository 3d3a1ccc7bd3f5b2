//! The stall detector: a starting rank gets `startup_grace_ms` before its first progress, then
//! the job's own stall timeout; a rank past the last step is left to exit.

use super::tests::{self, launched, plain_spec, progress};
use super::*;

const LIMITS: JobLimits = JobLimits {
    replacement_timeout_ms: 0,
    startup_grace_ms: 30_000,
    ..tests::LIMITS
};

fn running_job() -> Job {
    let spec = JobSpec {
        stall_timeout_ms: 5_000,
        progress_regex: String::new(),
        total_steps: 10,
        ..plain_spec(1)
    };
    launched(spec, &["n1"], &LIMITS, (0, 0))
}

fn stalled(job: &Job) -> bool {
    matches!(job.state, JobState::Recovering(_))
}

#[test]
fn a_starting_rank_gets_the_startup_grace_then_the_stall_timeout() {
    let mut job = running_job();
    step(&mut job, JobEvent::Tick, 20_000, &LIMITS);
    assert!(
        !stalled(&job),
        "silent for 20 s while starting: within the 30 s grace"
    );
    step(&mut job, progress("n1", 1, 1), 21_000, &LIMITS);
    step(&mut job, JobEvent::Tick, 25_000, &LIMITS);
    assert!(!stalled(&job));
    step(&mut job, JobEvent::Tick, 26_000, &LIMITS);
    assert!(
        stalled(&job),
        "5 s without progress after the first step is a stall"
    );
}

#[test]
fn a_rank_that_never_starts_stalls_after_the_grace() {
    let mut job = running_job();
    step(&mut job, JobEvent::Tick, 29_999, &LIMITS);
    assert!(!stalled(&job));
    step(&mut job, JobEvent::Tick, 30_000, &LIMITS);
    assert!(stalled(&job));
}

#[test]
fn a_rank_past_the_last_step_is_not_stalled_while_it_exits() {
    let mut job = running_job();
    step(&mut job, progress("n1", 1, 10), 1_000, &LIMITS);
    step(&mut job, JobEvent::Tick, 60_000, &LIMITS);
    assert!(!stalled(&job));
}
