//! The relaunch's choice across state tiers: the memory tier (each rank's state in host memory
//! on its own host and a peer's, as the agents report holding it) when it is newer than the
//! durable checkpoint and every rank's state is held by a live node; durable otherwise, with
//! the reason in the incident — and durable after all when the relaunched workers report they
//! could not load the memory copy.

use super::testing::*;
use super::*;
use crate::checkpoint::{MemoryHolding, StateTier};

/// `node`'s worker of generation 1 reports `step` and the memory-tier `held` (step, ranks).
fn holds(c: &mut Cluster, node: &str, step: u64, held: &[(u64, &[u32])], now: UnixMillis) {
    let memory = held
        .iter()
        .map(|(step, ranks)| MemoryHolding {
            step: *step,
            world: 2,
            ranks: ranks.to_vec(),
        })
        .collect();
    let progress = Progress {
        job_id: JOB.into(),
        generation: Generation(1),
        step,
        memory,
        state_fallback: String::new(),
    };
    let node = node.into();
    c.step(Input::Progress { node, progress }, now);
}

/// `node`'s worker of `job` generation `generation` reports `step` and that it fell back from
/// the memory tier to the durable checkpoint because of `reason`.
fn fell_back(c: &mut Cluster, node: &str, job: &str, generation: u64, step: u64, reason: &str) {
    let progress = Progress {
        job_id: job.into(),
        generation: Generation(generation),
        step,
        memory: Vec::new(),
        state_fallback: reason.into(),
    };
    let node = node.into();
    c.step(Input::Progress { node, progress }, 2_000);
}

/// Loses b's agent (fenced, replaced by the spare s), resolves the durable checkpoint at
/// `durable_step`, and returns the spare's launch and the incident.
fn lose_b(c: &mut Cluster, durable_step: u64) -> (Launch, Incident) {
    disconnect(c, "b", 1_000);
    worker(c, "a", 1, Stopped, 1_050);
    assert_eq!(c.jobs[JOB].nodes(), vec!["a", "s"]);
    let durable = Checkpoint {
        step: durable_step,
        uri: format!("s3://ckpt/run/step-{durable_step}"),
        generation: Some(Generation(1)),
    };
    let fx = resolved(c, JOB, Ok(Some(durable)), 1_060);
    let launch = launch_to(&fx, "s").expect("the spare is launched").clone();
    let a = launch_to(&fx, "a").expect("the survivor is launched");
    assert_eq!(
        (&a.resume_from, a.resume_step, &a.env),
        (&launch.resume_from, launch.resume_step, &launch.env),
        "every rank resumes from the same point"
    );
    (launch, c.incidents[0].clone())
}

#[test]
fn a_memory_tier_newer_than_the_durable_checkpoint_is_resumed_from_with_no_step_lost() {
    let mut c = running_job();
    // Each host keeps its own rank's state and a copy of its peer's.
    holds(&mut c, "a", 42, &[(42, &[0, 1]), (41, &[0, 1])], 40);
    holds(&mut c, "b", 42, &[(42, &[1, 0]), (41, &[1, 0])], 41);
    let (launch, i) = lose_b(&mut c, 30);
    assert_eq!(
        (launch.resume_from.as_str(), launch.resume_step),
        ("memory://job-1/step-42", 42)
    );
    assert_eq!(launch.env["HOLDFAST_STATE_TIER"], "memory");
    assert_eq!(launch.env["HOLDFAST_DURABLE_FROM"], "s3://ckpt/run/step-30");
    assert_eq!(launch.env["HOLDFAST_DURABLE_STEP"], "30");
    assert_eq!(i.state_tier, Some(StateTier::Memory));
    assert!(i.state_note.contains("step 42"), "{}", i.state_note);
    assert_eq!(
        i.fault_step, 42,
        "the fault came at the memory tier's step: none lost"
    );
    worker(&mut c, "a", 2, Started, 1_100);
    worker(&mut c, "s", 2, Started, 1_120);
    assert_eq!(c.incidents[0].resumed_from_step, Some(42));
}

#[test]
fn workers_that_could_not_load_the_memory_copy_make_the_incident_say_durable_and_why() {
    let mut c = running_job();
    holds(&mut c, "a", 42, &[(42, &[0, 1])], 40);
    holds(&mut c, "b", 42, &[(42, &[1, 0])], 41);
    let (launch, _) = lose_b(&mut c, 30);
    assert_eq!(launch.resume_step, 42);
    worker(&mut c, "a", 2, Started, 1_100);
    worker(&mut c, "s", 2, Started, 1_120);
    let why = "step 42: no host holds a valid copy of rank 1's state";
    // Stale or misdirected reports change nothing: the failed generation's, another job's,
    // a node that runs no rank of the job.
    fell_back(&mut c, "a", JOB, 1, 31, why);
    fell_back(&mut c, "a", "job-2", 2, 31, why);
    fell_back(&mut c, "b", JOB, 2, 31, why);
    let i = &c.incidents[0];
    assert_eq!(i.state_tier, Some(StateTier::Memory));
    assert_eq!((i.resumed_from_step, i.resumed_at), (Some(42), None));
    // The relaunched generation's workers loaded step 30 from S3 and took step 31: the
    // incident says so, and the recovery is over at that step, not at the memory tier's.
    fell_back(&mut c, "s", JOB, 2, 31, why);
    let i = c.incidents[0].clone();
    assert_eq!(i.state_tier, Some(StateTier::Durable));
    assert!(
        i.state_note.contains("memory tier not used")
            && i.state_note.contains(why)
            && i.state_note.contains("durable checkpoint at step 30"),
        "{}",
        i.state_note
    );
    assert_eq!((i.resumed_from_step, i.resumed_at), (Some(30), Some(2_000)));
    assert_eq!(i.fault_step, 42, "the steps past 30 were lost after all");
    // The other host's report of the same fallback, later, changes nothing.
    fell_back(&mut c, "a", JOB, 2, 32, "another reason");
    assert_eq!(c.incidents[0], i);
}

#[test]
fn a_fallback_reason_is_bounded_and_a_durable_relaunch_ignores_one() {
    let mut c = running_job();
    holds(&mut c, "a", 42, &[(42, &[0, 1])], 40);
    holds(&mut c, "b", 42, &[(42, &[1, 0])], 41);
    lose_b(&mut c, 30);
    worker(&mut c, "a", 2, Started, 1_100);
    worker(&mut c, "s", 2, Started, 1_120);
    fell_back(&mut c, "s", JOB, 2, 5, &"x".repeat(100_000));
    let i = &c.incidents[0];
    assert_eq!(i.state_tier, Some(StateTier::Durable));
    assert!(
        i.state_note.len() < crate::limits::MAX_REASON + 64 && i.state_note.contains("bytes cut"),
        "{} bytes",
        i.state_note.len()
    );

    // Resumed from S3 in the first place: a fallback report is nonsense and changes nothing.
    let mut c = running_job();
    holds(&mut c, "a", 42, &[(42, &[0])], 40);
    let (launch, _) = lose_b(&mut c, 30);
    assert_eq!(launch.resume_step, 30);
    worker(&mut c, "a", 2, Started, 1_100);
    worker(&mut c, "s", 2, Started, 1_120);
    let before = c.incidents[0].clone();
    fell_back(&mut c, "s", JOB, 2, 30, "made up");
    assert_eq!(c.incidents[0], before);
}

#[test]
fn state_held_only_by_the_fenced_host_sends_the_relaunch_to_the_durable_tier() {
    let mut c = running_job();
    // No peer copies: rank 1's state lived only on b.
    holds(&mut c, "a", 42, &[(42, &[0])], 40);
    holds(&mut c, "b", 42, &[(42, &[1])], 41);
    let (launch, i) = lose_b(&mut c, 30);
    assert_eq!(
        (launch.resume_from.as_str(), launch.resume_step),
        ("s3://ckpt/run/step-30", 30)
    );
    assert!(!launch.env.contains_key("HOLDFAST_STATE_TIER"));
    assert_eq!(i.state_tier, Some(StateTier::Durable));
    assert!(
        i.state_note
            .contains("step 42: rank 1's state is held by no live node"),
        "{}",
        i.state_note
    );
}

#[test]
fn a_partly_held_newest_step_falls_back_to_the_newest_complete_one_or_to_durable() {
    let mut c = running_job();
    // b fell before it copied step 44 to a: step 43 is the newest held in full.
    holds(&mut c, "a", 44, &[(44, &[0]), (43, &[0, 1])], 40);
    holds(&mut c, "b", 44, &[(44, &[1]), (43, &[1, 0])], 41);
    let (launch, i) = lose_b(&mut c, 30);
    assert_eq!(launch.resume_step, 43);
    assert_eq!(i.state_tier, Some(StateTier::Memory));

    // Only a partial step, and a durable checkpoint as new as anything held: durable.
    let mut c = running_job();
    holds(&mut c, "a", 44, &[(44, &[0]), (40, &[0, 1])], 40);
    let (launch, i) = lose_b(&mut c, 40);
    assert_eq!(launch.resume_from, "s3://ckpt/run/step-40");
    assert_eq!(i.state_tier, Some(StateTier::Durable));
    assert!(i.state_note.contains("as new as"), "{}", i.state_note);
}

#[test]
fn a_job_without_a_memory_tier_resolves_as_before_and_a_hostile_report_is_refused() {
    let mut c = running_job();
    let (launch, i) = lose_b(&mut c, 30);
    assert_eq!(launch.resume_from, "s3://ckpt/run/step-30");
    assert_eq!((i.state_tier, i.state_note.as_str()), (None, ""));

    let flood = Progress {
        job_id: JOB.into(),
        generation: Generation(1),
        step: 1,
        memory: vec![MemoryHolding::default(); crate::checkpoint::MAX_MEMORY_HOLDINGS + 1],
        state_fallback: String::new(),
    };
    let err = crate::limits::check_progress(&flood)
        .unwrap_err()
        .to_string();
    assert!(err.contains("progress.memory"), "{err}");
    let huge = Progress {
        memory: vec![MemoryHolding {
            step: 1,
            world: u32::MAX,
            ranks: vec![0],
        }],
        ..flood
    };
    let err = crate::limits::check_progress(&huge)
        .unwrap_err()
        .to_string();
    assert!(err.contains("progress.memory.ranks"), "{err}");
}
