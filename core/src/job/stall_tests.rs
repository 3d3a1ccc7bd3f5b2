//! The stall detector: a starting rank gets `startup_grace_ms` before its first progress, then
//! the job's own stall timeout; a rank past the last step is left to exit.

use super::tests::{self, launched, plain_spec, progress};
use super::*;
use crate::evidence::{ProcessState, WorkerEvidence};

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

/// A 3-rank synchronous job, running, quarantining a node after two worker faults.
fn gang() -> (Job, JobLimits) {
    let limits = JobLimits {
        quarantine_after: 2,
        quarantine_window_ms: 600_000,
        ..LIMITS
    };
    let spec = JobSpec {
        stall_timeout_ms: 5_000,
        restart_budget: 10,
        ..plain_spec(3)
    };
    (launched(spec, &["n0", "n1", "n2"], &limits, (0, 0)), limits)
}

fn evidence(state: ProcessState, cpu_permille: u32) -> WorkerEvidence {
    WorkerEvidence {
        job_id: "j".into(),
        generation: Generation(1),
        state,
        cpu_permille,
        output_quiet_ms: Some(5_000),
    }
}

/// Every rank steps to 5 at `t` and stops; each rank's agent then reports a waiting worker,
/// except rank `stuck`'s, which reports `odd` (none at all with `reports` false); the stall is
/// judged at `t` + 5 s. Returns the incident's node and cause.
fn judge(
    job: &mut Job,
    limits: &JobLimits,
    t: UnixMillis,
    reports: bool,
    stuck: Option<(usize, WorkerEvidence)>,
) -> (NodeId, FaultCause) {
    let generation = job.generation.get();
    for (i, node) in job.nodes().into_iter().enumerate() {
        step(job, progress(&node, generation, 5), t, limits);
        let mut e = match &stuck {
            Some((rank, odd)) if *rank == i => odd.clone(),
            _ => evidence(ProcessState::Sleeping, 10),
        };
        e.generation = Generation(generation);
        if reports {
            step(
                job,
                JobEvent::Evidence { node, evidence: e },
                t + 4_500,
                limits,
            );
        }
    }
    let fx = step(job, JobEvent::Tick, t + 5_000, limits);
    fx.into_iter()
        .find_map(|e| match e {
            JobEffect::OpenIncident { node, cause, .. } => Some((node, cause)),
            _ => None,
        })
        .expect("the stall opens an incident")
}

/// Whichever rank's process is the odd one out (in `state` at `cpu_permille`), the stall is
/// blamed on its node, and the detail says `why`.
fn assert_blamed_on_the_odd_rank(state: ProcessState, cpu_permille: u32, why: &str) {
    for stuck in 0..3 {
        let (mut job, limits) = gang();
        let odd = evidence(state, cpu_permille);
        let (node, cause) = judge(&mut job, &limits, 1_000, true, Some((stuck, odd)));
        assert_eq!(node, format!("n{stuck}"), "{cause:?}");
        assert!(cause.detail().contains(why), "{}", cause.detail());
        assert!(matches!(
            cause,
            FaultCause::ProgressStalled { blamed: true, .. }
        ));
    }
}

#[test]
fn a_gang_stall_is_blamed_on_the_stopped_rank_not_the_first() {
    assert_blamed_on_the_odd_rank(ProcessState::Stopped, 0, "stopped");
}

#[test]
fn a_gang_stall_is_blamed_on_the_spinning_rank_not_the_waiting_ones() {
    assert_blamed_on_the_odd_rank(ProcessState::Running, 1_000, "spins");
}

#[test]
fn a_gang_stall_nothing_singles_out_counts_against_no_node() {
    let (mut job, limits) = gang();
    // No evidence, then evidence alike from every rank: past quarantine_after twice over.
    for round in 0..4 {
        let t = 1_000 + round * 10_000;
        let (node, cause) = judge(&mut job, &limits, t, round > 0, None);
        assert!(
            matches!(&cause, FaultCause::ProgressStalled { blamed: false, why, .. }
                if why.contains("could not single out a rank")),
            "{cause:?} on {node}"
        );
        // Restarted in place: every worker stops, the next generation starts.
        let generation = job.generation;
        for node in job.nodes() {
            let exit = JobEvent::WorkerExited {
                node,
                generation,
                code: None,
                signal: Some(15),
                stopped_by_agent: true,
                at: None,
            };
            step(&mut job, exit, t + 5_001, &limits);
        }
        step(
            &mut job,
            JobEvent::CheckpointResolved(Ok(None)),
            t + 5_002,
            &limits,
        );
        tests::start_all(&mut job, &limits, t + 5_003);
        assert_eq!(job.state, JobState::Running);
    }
    assert!(job.worker_faults.is_empty(), "{:?}", job.worker_faults);
    assert_eq!(job.restarts, 4);
}

#[test]
fn evidence_older_than_the_stall_timeout_blames_none() {
    let (mut job, limits) = gang();
    let generation = job.generation.get();
    for node in job.nodes() {
        step(&mut job, progress(&node, generation, 5), 1_000, &limits);
    }
    // n1's agent reported its worker stopped, then went quiet for longer than the timeout.
    let stopped = JobEvent::Evidence {
        node: "n1".into(),
        evidence: evidence(ProcessState::Stopped, 0),
    };
    step(&mut job, stopped, 500, &limits);
    for node in ["n0", "n2"] {
        let waiting = JobEvent::Evidence {
            node: node.into(),
            evidence: evidence(ProcessState::Sleeping, 10),
        };
        step(&mut job, waiting, 5_800, &limits);
    }
    let fx = step(&mut job, JobEvent::Tick, 6_000, &limits);
    let cause = fx
        .into_iter()
        .find_map(|e| match e {
            JobEffect::OpenIncident { cause, .. } => Some(cause),
            _ => None,
        })
        .expect("the stall opens an incident");
    assert!(
        matches!(&cause, FaultCause::ProgressStalled { blamed: false, why, .. } if why.contains("no evidence from rank 1")),
        "{cause:?}"
    );
}
