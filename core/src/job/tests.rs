//! Every transition of the job lifecycle, driven with events and a fake clock.

use super::*;

/// Every policy off: no backoff, no quarantine, no startup grace (these tests time stalls from
/// the launch). The other job test files start from these.
pub(super) const LIMITS: JobLimits = JobLimits {
    stop_deadline_ms: 5_000,
    replacement_timeout_ms: 60_000,
    resolve_retry_ms: 1_000,
    resolve_attempts: 3,
    startup_grace_ms: 0,
    restart_backoff_ms: 0,
    restart_backoff_max_ms: 0,
    quarantine_after: 0,
    quarantine_window_ms: 0,
    peer_loss_window_ms: 0,
};

/// `train` on `nodes` nodes: no checkpoints, no stall timeout, three restarts, no shrinking.
pub(super) fn plain_spec(nodes: u32) -> JobSpec {
    JobSpec {
        command: vec!["train".into()],
        nodes,
        checkpoint_uri: String::new(),
        stall_timeout_ms: 0,
        restart_budget: 3,
        progress_regex: crate::DEFAULT_PROGRESS_REGEX.into(),
        env: BTreeMap::new(),
        total_steps: 0,
        min_nodes: 0,
        progress_vouches: true,
        launcher: Default::default(),
        allowed_nodes: Default::default(),
        restart: Default::default(),
    }
}

/// Job `j` of `spec` on `nodes`, resolved to a fresh start at `resolved_at` and every rank
/// started at `started_at`: Running in generation 1.
pub(super) fn launched(
    spec: JobSpec,
    nodes: &[&str],
    limits: &JobLimits,
    (resolved_at, started_at): (UnixMillis, UnixMillis),
) -> Job {
    let nodes = nodes.iter().copied().map(NodeId::from).collect();
    let mut job = Job::new("j".into(), spec, nodes, 0);
    step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        resolved_at,
        limits,
    );
    start_all(&mut job, limits, started_at);
    job
}

/// Every rank of the current generation started: the job runs.
pub(super) fn start_all(job: &mut Job, limits: &JobLimits, now: UnixMillis) {
    for node in job.nodes() {
        let generation = job.generation;
        step(
            job,
            JobEvent::WorkerStarted { node, generation },
            now,
            limits,
        );
    }
    assert_eq!(job.state, JobState::Running);
}

pub(super) fn exited(
    node: &str,
    generation: u64,
    code: Option<i32>,
    signal: Option<i32>,
    by_agent: bool,
) -> JobEvent {
    JobEvent::WorkerExited {
        at: None,
        node: node.into(),
        generation: Generation(generation),
        code,
        signal,
        stopped_by_agent: by_agent,
    }
}

/// `node`'s worker was stopped by its agent (SIGTERM), as asked.
pub(super) fn stopped(node: &str, generation: u64) -> JobEvent {
    exited(node, generation, None, Some(15), true)
}

pub(super) fn progress(node: &str, generation: u64, step: u64) -> JobEvent {
    let node = node.into();
    JobEvent::Progress {
        node,
        generation: Generation(generation),
        step,
    }
}

pub(super) fn fault(node: &str, cause: FaultCause) -> JobEvent {
    let node = node.into();
    JobEvent::Fault {
        node,
        cause,
        silent_since: None,
    }
}

fn spec(stall_ms: u64, budget: u32) -> JobSpec {
    JobSpec {
        checkpoint_uri: "file:///ckpt".into(),
        stall_timeout_ms: stall_ms,
        restart_budget: budget,
        total_steps: 100,
        ..plain_spec(2)
    }
}

fn ckpt(step: u64) -> Checkpoint {
    Checkpoint {
        step,
        uri: format!("file:///ckpt/step-{step}"),
        generation: Some(Generation(1)),
    }
}

fn new_job(stall_ms: u64, budget: u32) -> Job {
    Job::new(
        "j".into(),
        spec(stall_ms, budget),
        vec!["a".into(), "b".into()],
        0,
    )
}

fn ev(job: &mut Job, event: JobEvent, now: i64) -> Vec<JobEffect> {
    step(job, event, now, &LIMITS)
}

/// A job in Running at generation 1 on nodes a and b.
fn running(stall_ms: u64, budget: u32) -> Job {
    launched(spec(stall_ms, budget), &["a", "b"], &LIMITS, (10, 20))
}

fn has<F: Fn(&JobEffect) -> bool>(fx: &[JobEffect], f: F) -> bool {
    fx.iter().any(f)
}

#[test]
fn pending_resolves_then_launches_generation_one() {
    let mut job = new_job(0, 3);
    assert_eq!(job.state, JobState::Pending);
    let fx = ev(
        &mut job,
        JobEvent::CheckpointResolved(Ok(Some(ckpt(30)))),
        10,
    );
    assert_eq!(job.state, JobState::Launching);
    assert_eq!(job.generation, 1);
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::Launch { generation: Generation(1), resume: Some(c) } if c.step == 30)
    ));
    assert!(has(&fx, |e| matches!(e, JobEffect::StateChanged)));
}

#[test]
fn pending_fails_when_the_store_stays_unreadable() {
    let mut job = new_job(0, 3);
    // Pending has one attempt left of the budget before failing.
    let fx = ev(
        &mut job,
        JobEvent::CheckpointResolved(Err("denied".into())),
        10,
    );
    assert!(matches!(&job.state, JobState::Failed { reason } if reason.contains("denied")));
    assert!(has(&fx, |e| matches!(e, JobEffect::ReleaseNodes { .. })));
}

#[test]
fn launching_becomes_running_when_every_rank_started() {
    let mut job = new_job(0, 3);
    ev(&mut job, JobEvent::CheckpointResolved(Ok(None)), 10);
    ev(
        &mut job,
        JobEvent::WorkerStarted {
            node: "a".into(),
            generation: Generation(1),
        },
        11,
    );
    assert_eq!(job.state, JobState::Launching);
    // A start of another generation does not count.
    ev(
        &mut job,
        JobEvent::WorkerStarted {
            node: "b".into(),
            generation: Generation(7),
        },
        11,
    );
    assert_eq!(job.state, JobState::Launching);
    let fx = ev(
        &mut job,
        JobEvent::WorkerStarted {
            node: "b".into(),
            generation: Generation(1),
        },
        12,
    );
    assert_eq!(job.state, JobState::Running);
    assert!(has(&fx, |e| matches!(
        e,
        JobEffect::Incident(IncidentEvent::Relaunched {
            generation: Generation(1),
            resume_step: 0
        })
    )));
}

#[test]
fn running_succeeds_when_every_rank_exits_zero() {
    let mut job = running(0, 3);
    ev(&mut job, exited("a", 1, Some(0), None, false), 100);
    assert_eq!(job.state, JobState::Running);
    let fx = ev(&mut job, exited("b", 1, Some(0), None, false), 101);
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.finished_at, Some(101));
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::ReleaseNodes { nodes } if nodes.len() == 2)
    ));
}

#[test]
fn progress_is_tracked_per_rank_and_ignores_old_generations() {
    let mut job = running(0, 3);
    ev(&mut job, progress("a", 1, 5), 50);
    ev(&mut job, progress("b", 0, 99), 50);
    assert_eq!(job.step, 5);
    assert_eq!(job.ranks[0].last_progress_at, 50);
}

#[test]
fn worker_crash_restarts_in_place_on_the_same_nodes() {
    let mut job = running(0, 3);
    let fx = ev(&mut job, exited("b", 1, None, Some(9), false), 100);
    assert!(has(&fx, |e| matches!(
        e,
        JobEffect::OpenIncident {
            action: RecoveryAction::RestartInPlace,
            ..
        }
    )));
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::StopWorkers { nodes, generation: Generation(1), .. } if nodes == &vec!["a".to_string()])
    ));
    assert!(!has(&fx, |e| matches!(e, JobEffect::FenceNode { .. })));
    assert_eq!(job.phase(), "fencing");
    assert_eq!(job.restarts, 1);
    // The survivor confirms its stop: fenced, "replaced" by itself, relaunching.
    let fx = ev(&mut job, stopped("a", 1), 150);
    assert!(has(&fx, |e| matches!(
        e,
        JobEffect::Incident(IncidentEvent::Fenced)
    )));
    assert!(has(&fx, |e| matches!(
        e,
        JobEffect::Incident(IncidentEvent::Replaced { node: None })
    )));
    assert!(has(&fx, |e| matches!(e, JobEffect::ResolveCheckpoint)));
    assert_eq!(job.phase(), "relaunching");
    let fx = ev(
        &mut job,
        JobEvent::CheckpointResolved(Ok(Some(ckpt(30)))),
        160,
    );
    assert_eq!(job.generation, 2);
    assert_eq!(job.nodes(), vec!["a".to_string(), "b".to_string()]);
    assert!(has(&fx, |e| matches!(
        e,
        JobEffect::Launch {
            generation: Generation(2),
            ..
        }
    )));
    assert_eq!(
        job.fenced_generations,
        vec![FencedGeneration {
            generation: Generation(1),
            fenced_at: 100
        }]
    );
}

#[test]
fn exhausted_restart_budget_fails_the_job_with_the_reason() {
    let mut job = running(0, 0);
    let fx = ev(&mut job, exited("a", 1, Some(3), None, false), 100);
    match &job.state {
        JobState::Failed { reason } => {
            assert!(reason.contains("restart budget of 0 exhausted"), "{reason}");
            assert!(reason.contains("code 3"), "{reason}");
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::StopWorkers { nodes, .. } if nodes == &vec!["b".to_string()])
    ));
    assert!(has(&fx, |e| matches!(
        e,
        JobEffect::Incident(IncidentEvent::Abandoned { .. })
    )));
}

#[test]
fn node_loss_fences_the_node_and_replaces_its_rank() {
    let mut job = running(0, 3);
    let fx = ev(&mut job, fault("b", FaultCause::AgentLost), 100);
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::FenceNode { node, cause: FaultCause::AgentLost } if node == "b")
    ));
    assert!(has(&fx, |e| matches!(
        e,
        JobEffect::OpenIncident {
            action: RecoveryAction::ReplaceNode,
            ..
        }
    )));
    assert_eq!(job.restarts, 0, "node faults do not use the restart budget");
    assert!(job.ranks[1].needs_node);
    // Survivor stops → Replacing.
    let fx = ev(&mut job, exited("a", 1, Some(0), None, true), 120);
    assert!(matches!(
        job.state,
        JobState::Recovering(RecoveryPhase::Replacing { since: 120 })
    ));
    assert!(has(&fx, |e| matches!(e, JobEffect::FindReplacements)));
    let fx = ev(
        &mut job,
        JobEvent::ReplacementFound {
            rank: 1,
            node: "s".into(),
        },
        121,
    );
    assert_eq!(job.nodes(), vec!["a".to_string(), "s".to_string()]);
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::Incident(IncidentEvent::Replaced { node: Some(n) }) if n == "s")
    ));
    assert_eq!(job.phase(), "relaunching");
}

#[test]
fn an_unreachable_survivor_counts_as_stopped() {
    let mut job = running(0, 3);
    ev(&mut job, fault("b", FaultCause::HeartbeatTimeout), 100);
    ev(
        &mut job,
        JobEvent::NodeUnreachable { node: "a".into() },
        100,
    );
    assert_eq!(job.phase(), "replacing");
}

#[test]
fn fencing_moves_on_at_its_deadline() {
    let mut job = running(0, 3);
    ev(&mut job, fault("b", FaultCause::AgentLost), 100);
    ev(&mut job, JobEvent::Tick, 100 + 4_999);
    assert_eq!(job.phase(), "fencing");
    ev(&mut job, JobEvent::Tick, 100 + 5_000);
    assert_eq!(job.phase(), "replacing");
}

#[test]
fn a_second_node_fault_during_recovery_is_fenced_too() {
    let mut job = running(0, 3);
    ev(&mut job, fault("b", FaultCause::AgentLost), 100);
    let fx = ev(&mut job, fault("a", FaultCause::HeartbeatTimeout), 110);
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::FenceNode { node, .. } if node == "a")
    ));
    assert_eq!(job.phase(), "replacing");
    assert_eq!(job.ranks_needing_nodes(), vec![0, 1]);
    // A worker fault of the generation being replaced changes nothing.
    let before = job.clone();
    let fx = ev(
        &mut job,
        fault("a", FaultCause::stall(1, String::new())),
        120,
    );
    assert!(fx.is_empty());
    assert_eq!(job, before);
}

#[test]
fn node_fault_while_relaunching_goes_back_to_replacing() {
    let mut job = running(0, 3);
    ev(&mut job, exited("a", 1, Some(1), None, false), 100);
    ev(&mut job, stopped("b", 1), 101);
    assert_eq!(job.phase(), "relaunching");
    let fx = ev(&mut job, fault("b", FaultCause::AgentLost), 102);
    assert_eq!(job.phase(), "replacing");
    assert!(has(&fx, |e| matches!(e, JobEffect::FindReplacements)));
    // The resolution that was under way is no longer wanted.
    let generation = job.generation;
    ev(&mut job, JobEvent::CheckpointResolved(Ok(None)), 103);
    assert_eq!(job.generation, generation);
}

#[test]
fn replacing_times_out_with_a_clear_reason() {
    let mut job = running(0, 3);
    ev(&mut job, fault("b", FaultCause::AgentLost), 100);
    ev(&mut job, stopped("a", 1), 100);
    let fx = ev(&mut job, JobEvent::Tick, 200);
    assert!(
        job.message.starts_with("waiting for a replacement"),
        "{}",
        job.message
    );
    assert!(has(&fx, |e| matches!(e, JobEffect::StateChanged)));
    ev(&mut job, JobEvent::Tick, 100 + 60_000);
    assert!(
        matches!(&job.state, JobState::Failed { reason } if reason.contains("no replacement node within 60 s"))
    );
}

#[test]
fn relaunch_retries_an_unreadable_store_then_fails() {
    let mut job = running(0, 3);
    ev(&mut job, exited("a", 1, Some(1), None, false), 100);
    ev(&mut job, stopped("b", 1), 100);
    ev(
        &mut job,
        JobEvent::CheckpointResolved(Err("timeout".into())),
        110,
    );
    assert!(matches!(
        job.state,
        JobState::Recovering(RecoveryPhase::Relaunching {
            attempts: 1,
            retry_at: Some(1110)
        })
    ));
    assert!(ev(&mut job, JobEvent::Tick, 1000).is_empty());
    let fx = ev(&mut job, JobEvent::Tick, 1110);
    assert!(has(&fx, |e| matches!(e, JobEffect::ResolveCheckpoint)));
    ev(
        &mut job,
        JobEvent::CheckpointResolved(Err("timeout".into())),
        1200,
    );
    ev(&mut job, JobEvent::Tick, 2200);
    ev(
        &mut job,
        JobEvent::CheckpointResolved(Err("timeout".into())),
        2300,
    );
    assert!(
        matches!(&job.state, JobState::Failed { reason } if reason.contains("cannot read checkpoints"))
    );
}

#[test]
fn stall_detection_names_the_stuck_rank() {
    let mut job = running(3_000, 3);
    ev(&mut job, progress("a", 1, 1), 2_000);
    ev(&mut job, progress("b", 1, 1), 2_000);
    ev(&mut job, progress("a", 1, 2), 4_000);
    assert!(ev(&mut job, JobEvent::Tick, 4_999).is_empty());
    let fx = ev(&mut job, JobEvent::Tick, 5_000);
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::OpenIncident { node, cause: FaultCause::ProgressStalled { stalled_ms: 3_000, blamed: true, .. }, action: RecoveryAction::RestartInPlace, .. } if node == "b")
    ));
}

#[test]
fn stall_detection_is_off_at_zero_and_ignores_finished_ranks() {
    let mut job = running(0, 3);
    assert!(ev(&mut job, JobEvent::Tick, 1_000_000).is_empty());
    let mut job = running(1_000, 3);
    ev(&mut job, exited("a", 1, Some(0), None, false), 30);
    ev(&mut job, progress("b", 1, 9), 1_500);
    assert!(ev(&mut job, JobEvent::Tick, 2_000).is_empty());
}

#[test]
fn stop_requested_stops_live_workers_and_is_final() {
    let mut job = running(0, 3);
    let fx = ev(&mut job, JobEvent::StopRequested, 100);
    assert_eq!(job.state, JobState::Stopped);
    assert!(has(
        &fx,
        |e| matches!(e, JobEffect::StopWorkers { nodes, .. } if nodes.len() == 2)
    ));
    assert!(has(&fx, |e| matches!(e, JobEffect::ReleaseNodes { .. })));
    // Final states ignore everything.
    assert!(ev(&mut job, fault("a", FaultCause::AgentLost), 200).is_empty());
    assert!(ev(&mut job, JobEvent::Tick, 300).is_empty());
}

#[test]
fn events_of_old_generations_and_unknown_nodes_are_ignored() {
    let mut job = running(0, 3);
    let before = job.clone();
    assert!(ev(&mut job, exited("a", 0, Some(1), None, false), 100).is_empty());
    assert!(ev(&mut job, exited("zz", 1, Some(1), None, false), 100).is_empty());
    assert!(ev(&mut job, fault("zz", FaultCause::AgentLost), 100).is_empty());
    assert!(ev(
        &mut job,
        JobEvent::ReplacementFound {
            rank: 0,
            node: "s".into()
        },
        100
    )
    .is_empty());
    assert_eq!(job, before);
}

#[test]
fn fault_causes_have_one_code_and_an_operator_wording() {
    assert!(FaultCause::HealthFatal("x".into()).needs_replacement());
    assert!(!FaultCause::WorkerExited {
        code: Some(1),
        signal: None
    }
    .needs_replacement());
    assert_eq!(
        FaultCause::stall(1500, String::new()).detail(),
        "no progress for 1.5 s"
    );
    assert_eq!(
        FaultCause::WorkerExited {
            code: None,
            signal: Some(9)
        }
        .detail(),
        "worker killed by signal 9"
    );
    // One cause for the incident and the fenced node: the same code either way.
    assert_eq!(
        FaultCause::HealthFatal("xid 79".into()).code(),
        "health_fatal"
    );
    assert_eq!(
        FaultCause::HealthFatal("xid 79".into()).to_string(),
        "fatal health fault: xid 79"
    );
}

#[test]
fn a_kept_survivors_last_steps_under_its_old_generation_set_where_the_re_form_resumes() {
    let spec = JobSpec {
        launcher: Launcher::Native {
            nproc_per_node: 1,
            warm_imports: Vec::new(),
        },
        restart: RestartMode::InProcess,
        ..plain_spec(2)
    };
    let mut job = launched(spec, &["a", "b"], &LIMITS, (0, 0));
    let progress = |node: &str, generation, step| JobEvent::Progress {
        node: node.into(),
        generation: Generation(generation),
        step,
    };
    step(&mut job, progress("a", 1, 7), 10, &LIMITS);
    let fx = step(&mut job, exited("b", 1, None, Some(9), false), 20, &LIMITS);
    // The survivor is kept: no stop for it.
    assert!(
        !fx.iter()
            .any(|e| matches!(e, JobEffect::StopWorkers { .. })),
        "{fx:?}"
    );
    assert!(job.ranks[0].kept && !job.ranks[1].kept);
    step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        30,
        &LIMITS,
    );
    assert!(job.reforming);
    assert_eq!(job.reform_step, 7);
    // Step 8, printed before the survivor noticed the fault, reported under generation 1.
    step(&mut job, progress("a", 1, 8), 40, &LIMITS);
    step(&mut job, progress("b", 1, 9), 40, &LIMITS);
    assert_eq!(job.reform_step, 8);
    assert!(
        !job.ranks[0].progressed,
        "an old generation's step is no re-form"
    );
}
