//! The job lifecycle's one step function and the moves it is made of: a fault opens a recovery
//! (fence, replace, relaunch), a resolved checkpoint launches a generation, the clock judges
//! stalls and deadlines.

use std::collections::BTreeSet;

use super::blame::{self, blame_stall, Seen};
use super::*;

/// The job lifecycle's step. Mutates `job` into its next state and returns what to do.
pub fn step(job: &mut Job, event: JobEvent, now: UnixMillis, limits: &JobLimits) -> Vec<JobEffect> {
    let before = super::mark::shape(job);
    job.ensure_rank_index();
    let mut fx = Vec::new();
    if !job.state.is_terminal() {
        apply(job, event, now, limits, &mut fx);
    }
    if before != super::mark::shape(job) {
        fx.push(JobEffect::StateChanged);
    }
    fx
}

fn apply(
    job: &mut Job,
    event: JobEvent,
    now: UnixMillis,
    limits: &JobLimits,
    fx: &mut Vec<JobEffect>,
) {
    match event {
        JobEvent::CheckpointResolved(result) => on_resolved(job, result, now, limits, fx),
        JobEvent::WorkerStarted { node, generation } => {
            if generation != job.generation {
                return;
            }
            if let Some(rank) = job.rank_of(&node) {
                job.ranks[rank].started = true;
                job.ranks[rank].last_progress_at = now;
            }
            if job.state == JobState::Launching && job.ranks.iter().all(|r| r.started) {
                job.state = JobState::Running;
                let mut resume_step = job.resumed_from.as_ref().map_or(0, |c| c.step);
                if job.reforming {
                    // The survivors kept their state: the group resumes where they were.
                    resume_step = resume_step.max(job.reform_step);
                }
                fx.push(JobEffect::Incident(IncidentEvent::Relaunched {
                    generation,
                    resume_step,
                }));
            }
        }
        JobEvent::Progress {
            node,
            generation,
            step: s,
        } => {
            if generation != job.generation {
                // A kept survivor's last steps, reported under its old generation as it is
                // told to re-form: the new generation resumes from them.
                let kept = job.rank_of(&node).is_some_and(|r| job.ranks[r].kept);
                if kept && job.reforming && generation.next() == job.generation {
                    job.reform_step = job.reform_step.max(s);
                }
                return;
            }
            if let Some(rank) = job.rank_of(&node) {
                let r = &mut job.ranks[rank];
                if s != r.last_step || !r.started || !r.progressed {
                    r.last_progress_at = now;
                }
                r.progressed = true;
                r.last_step = s;
                if r.kept && matches!(job.state, JobState::Recovering(_)) {
                    // A kept survivor's last steps before it noticed the fault count too.
                    job.reform_step = job.reform_step.max(s);
                }
                if job.reforming && job.ranks.iter().all(|r| r.progressed) {
                    // The group re-formed in place and every rank stepped in it.
                    job.reforming = false;
                    job.ranks.iter_mut().for_each(|r| r.kept = false);
                }
                if s > job.step {
                    learn_step_time(job, s, now);
                }
                job.step = job.step.max(s);
                fx.push(JobEffect::Incident(IncidentEvent::Progress {
                    generation,
                    step: s,
                }));
            }
        }
        JobEvent::WorkerExited {
            node,
            generation,
            code,
            signal,
            stopped_by_agent,
            at,
        } => {
            if generation != job.generation {
                return;
            }
            let Some(rank) = job.rank_of(&node) else {
                return;
            };
            // An adopted worker (its agent restarted) has no exit status: the agent only saw
            // it gone. Ranks of a synchronous job finish together, so it counts as clean if
            // every other rank exits 0 within UNCONFIRMED_EXIT_GRACE_MS (see on_tick).
            let unknown = code.is_none() && signal.is_none() && !stopped_by_agent;
            let clean = (code == Some(0) && signal.is_none()) || unknown;
            job.ranks[rank].exited = Some(clean);
            job.ranks[rank].exit_unconfirmed_at = unknown.then_some(now);
            match &mut job.state {
                JobState::Recovering(RecoveryPhase::Fencing { pending, .. }) => {
                    pending.remove(&rank);
                    if pending.is_empty() {
                        after_fencing(job, now, fx);
                    }
                }
                // A kept survivor gone before the re-form: its rank is launched afresh.
                JobState::Recovering(_) => job.ranks[rank].kept = false,
                JobState::Launching | JobState::Running => {
                    if clean {
                        if job.ranks.iter().all(|r| r.exited == Some(true)) {
                            let unconfirmed = job
                                .ranks
                                .iter()
                                .filter(|r| r.exit_unconfirmed_at.is_some())
                                .count();
                            if unconfirmed == job.ranks.len() {
                                // Nothing confirms a success: treat it as the fault it may be.
                                job.ranks[rank].exited = Some(false);
                                job.ranks[rank].exit_unconfirmed_at = None;
                                let cause = FaultCause::WorkerExited { code, signal };
                                on_fault(job, &node, cause, Seen::at(at), now, limits, fx);
                                return;
                            }
                            let mut message = format!("all {} ranks exited 0", job.ranks.len());
                            if unconfirmed > 0 {
                                message.push_str(&format!(
                                    " ({unconfirmed} adopted after an agent restart, status inferred)"
                                ));
                            }
                            finish(job, JobState::Succeeded, message, now, fx);
                        }
                    } else if !stopped_by_agent {
                        on_fault(
                            job,
                            &node,
                            FaultCause::WorkerExited { code, signal },
                            Seen::at(at),
                            now,
                            limits,
                            fx,
                        );
                    }
                }
                _ => {}
            }
        }
        JobEvent::Fault {
            node,
            cause,
            silent_since,
        } => {
            let seen = Seen {
                at: None,
                silent_since,
            };
            on_fault(job, &node, cause, seen, now, limits, fx);
        }
        JobEvent::NodeUnreachable { node } => {
            let rank = job.rank_of(&node);
            if let JobState::Recovering(RecoveryPhase::Fencing { pending, .. }) = &mut job.state {
                if let Some(rank) = rank {
                    pending.remove(&rank);
                    if pending.is_empty() {
                        after_fencing(job, now, fx);
                    }
                }
            }
        }
        JobEvent::ReplacementFound { rank, node } => {
            if !matches!(
                job.state,
                JobState::Recovering(RecoveryPhase::Replacing { .. })
            ) {
                return;
            }
            let Some(r) = job.ranks.get_mut(rank) else {
                return;
            };
            if !r.needs_node {
                return;
            }
            r.node = node.clone();
            r.needs_node = false;
            job.index_ranks();
            if job.ranks_needing_nodes().is_empty() {
                job.message = String::new();
                fx.push(JobEffect::Incident(IncidentEvent::Replaced {
                    node: Some(node),
                }));
                begin_relaunch(job, now, fx);
            }
        }
        JobEvent::Unheard { nodes } => {
            for rank in job.ranks_on(&nodes) {
                let rank = &mut job.ranks[rank];
                rank.last_progress_at = rank.last_progress_at.max(now);
                job.unheard_at = Some(now);
            }
        }
        JobEvent::Note { message } => {
            if !job.state.is_terminal() {
                job.message = message;
            }
        }
        JobEvent::StopRequested => {
            stop_live_workers(job, "job stopped by operator", fx);
            finish(
                job,
                JobState::Stopped,
                "stopped by operator".into(),
                now,
                fx,
            );
        }
        JobEvent::Evidence { node, evidence } => {
            if evidence.generation != job.generation {
                return;
            }
            if let Some(rank) = job.rank_of(&node) {
                job.ranks[rank].evidence = Some(evidence);
                job.ranks[rank].evidence_at = now;
            }
        }
        JobEvent::Tick => on_tick(job, now, limits, fx),
    }
}

fn on_resolved(
    job: &mut Job,
    result: Result<Option<Checkpoint>, String>,
    now: UnixMillis,
    limits: &JobLimits,
    fx: &mut Vec<JobEffect>,
) {
    let attempts = match &job.state {
        JobState::Pending => limits.resolve_attempts.saturating_sub(1),
        JobState::Recovering(RecoveryPhase::Relaunching { attempts, .. }) => *attempts,
        _ => return,
    };
    match result {
        Ok(durable) => {
            let resume = super::tiers::choose(job, durable, fx);
            job.generation = job.generation.next();
            for r in &mut job.ranks {
                r.started = false;
                r.evidence = None;
                r.exited = None;
                r.exit_unconfirmed_at = None;
                r.last_progress_at = now;
                r.progressed = false;
            }
            job.resumed_from = resume.clone();
            job.reforming = job.ranks.iter().any(|r| r.kept);
            job.state = JobState::Launching;
            job.message = match &resume {
                Some(c) => format!("generation {} resumes from step {}", job.generation, c.step),
                None => format!("generation {} starts fresh", job.generation),
            };
            if job.ranks.len() < job.spec.nodes as usize {
                job.message.push_str(&format!(
                    " on {} of {} nodes (shrunk: no replacement in time)",
                    job.ranks.len(),
                    job.spec.nodes
                ));
            }
            fx.push(JobEffect::Launch {
                generation: job.generation,
                resume,
            });
        }
        Err(e) if attempts + 1 >= limits.resolve_attempts => {
            let reason = format!(
                "cannot read checkpoints at {}: {e}",
                job.spec.checkpoint_uri
            );
            fail(job, reason, now, fx);
        }
        Err(e) => {
            job.message = format!(
                "checkpoint store unreadable (attempt {}): {e}",
                attempts + 1
            );
            job.state = JobState::Recovering(RecoveryPhase::Relaunching {
                attempts: attempts + 1,
                retry_at: Some(now + limits.resolve_retry_ms as i64),
            });
        }
    }
}

fn on_fault(
    job: &mut Job,
    node: &str,
    cause: FaultCause,
    seen: Seen,
    now: UnixMillis,
    limits: &JobLimits,
    fx: &mut Vec<JobEffect>,
) {
    let Some(rank) = job.rank_of(node) else {
        return;
    };
    let cause = escalate(job, node, cause, now, limits);
    let replace = cause.needs_replacement();
    match &mut job.state {
        JobState::Launching | JobState::Running => {}
        JobState::Pending | JobState::Recovering(_) => {
            // A second node fault while recovering: fence it too and make its rank wait for a
            // node. Worker faults of a generation already being replaced change nothing.
            if !replace || job.ranks[rank].needs_node {
                return;
            }
            job.ranks[rank].needs_node = true;
            job.ranks[rank].kept = false;
            // It may be what a worker exit that opened this recovery followed from.
            if !blame::hand_over(job, node, &cause, seen.silent_since, now, limits, fx) {
                fx.push(JobEffect::OpenIncident {
                    node: node.into(),
                    cause: cause.clone(),
                    action: RecoveryAction::ReplaceNode,
                    fault_at: seen.at,
                });
            }
            fx.push(JobEffect::FenceNode {
                node: node.into(),
                cause: cause.clone(),
            });
            match &mut job.state {
                JobState::Recovering(RecoveryPhase::Fencing { pending, .. }) => {
                    pending.remove(&rank);
                    if pending.is_empty() {
                        after_fencing(job, now, fx);
                    }
                }
                JobState::Recovering(RecoveryPhase::Replacing { .. }) => {
                    // The failed generation is stopped already: this fault's incident is
                    // fenced with its node (it would otherwise wait for a fencing that is over).
                    fx.push(JobEffect::Incident(IncidentEvent::Fenced));
                    fx.push(JobEffect::FindReplacements);
                }
                _ => {
                    // Pending or Relaunching: nothing of the new generation started yet.
                    job.state = JobState::Recovering(RecoveryPhase::Replacing { since: now });
                    fx.push(JobEffect::Incident(IncidentEvent::Fenced));
                    fx.push(JobEffect::FindReplacements);
                }
            }
            return;
        }
        _ => return,
    }
    let exhausted = !replace && job.restarts >= job.spec.restart_budget;
    let fails = exhausted.then(|| {
        format!(
            "restart budget of {} exhausted; last fault on {node}: {}",
            job.spec.restart_budget,
            cause.detail()
        )
    });
    let action = if replace {
        RecoveryAction::ReplaceNode
    } else if exhausted {
        RecoveryAction::None
    } else {
        job.restarts += 1;
        let backoff = limits.restart_backoff(job.restarts);
        job.relaunch_not_before = (backoff > 0).then_some(now + backoff as i64);
        RecoveryAction::RestartInPlace
    };
    // The relaunch (or re-form) after a worker exit may have gone on before the loss it
    // followed from was seen.
    let handed = replace && blame::hand_over(job, node, &cause, seen.silent_since, now, limits, fx);
    if !handed {
        fx.push(JobEffect::OpenIncident {
            node: node.into(),
            cause: cause.clone(),
            action,
            fault_at: seen.at,
        });
    }
    // A worker exit past the budget fails the job once the other ranks stopped, unless a
    // peer's loss found meanwhile explains it (see `blame::note_fault`).
    let held = blame::note_fault(job, rank, &cause, action, fails.clone(), limits, now);
    if let Some(reason) = fails.filter(|_| !held) {
        stop_live_workers(job, "job failed", fx);
        fail(job, reason, now, fx);
        return;
    }
    if replace {
        job.ranks[rank].needs_node = true;
        fx.push(JobEffect::FenceNode {
            node: node.into(),
            cause: cause.clone(),
        });
    }
    job.fenced_generations.push(FencedGeneration {
        generation: job.generation,
        fenced_at: now,
    });
    if !handed {
        job.message = format!("{} on {node}: {}", cause.code(), cause.detail());
    }
    if exhausted {
        (job.message).push_str(
            "; the restart budget is spent: the job fails once its other ranks stopped, \
             unless a lost peer explains the exit",
        );
    }
    let mut pending: BTreeSet<usize> = (0..job.ranks.len())
        .filter(|&i| !job.ranks[i].needs_node && job.ranks[i].exited.is_none())
        .collect();
    // An in-process restart keeps the survivors (they re-form when the next generation
    // launches): only the ranks it does not keep are stopped.
    if !exhausted {
        super::launch::keep_survivors(job, &mut pending, rank, &cause);
    }
    let nodes: Vec<NodeId> = pending.iter().map(|&i| job.ranks[i].node.clone()).collect();
    if !nodes.is_empty() {
        fx.push(JobEffect::StopWorkers {
            nodes,
            generation: job.generation,
            reason: format!("fencing generation {}: {}", job.generation, cause.code()),
        });
    }
    job.state = JobState::Recovering(RecoveryPhase::Fencing {
        pending: pending.clone(),
        deadline: now + limits.stop_deadline_ms as i64,
    });
    if pending.is_empty() {
        after_fencing(job, now, fx);
    }
}

/// Every worker of the failed generation is gone: get nodes for ranks that need them.
/// Counts a worker fault against its node; past `quarantine_after` faults within the window
/// the fault is escalated to a node fault (replace and quarantine the node).
fn escalate(
    job: &mut Job,
    node: &str,
    cause: FaultCause,
    now: UnixMillis,
    limits: &JobLimits,
) -> FaultCause {
    // A stall pinned on no rank counts against no node.
    let worker_fault = matches!(
        cause,
        FaultCause::WorkerExited { .. }
            | FaultCause::ProgressStalled { blamed: true, .. }
            | FaultCause::HealthRestart(_)
    );
    if !worker_fault
        || limits.quarantine_after == 0
        || !matches!(job.state, JobState::Launching | JobState::Running)
    {
        return cause;
    }
    let window = limits.quarantine_window_ms as i64;
    let times = job.worker_faults.entry(node.into()).or_default();
    times.retain(|t| now - t < window);
    times.push(now);
    if times.len() < limits.quarantine_after as usize {
        return cause;
    }
    let faults = times.len() as u32;
    times.clear();
    FaultCause::RepeatedFaults {
        faults,
        window_ms: limits.quarantine_window_ms,
        last: cause.detail(),
    }
}

fn after_fencing(job: &mut Job, now: UnixMillis, fx: &mut Vec<JobEffect>) {
    if let Some(reason) = blame::fails_now(job) {
        stop_live_workers(job, "job failed", fx);
        fail(job, reason, now, fx);
        return;
    }
    fx.push(JobEffect::Incident(IncidentEvent::Fenced));
    if job.ranks.iter().any(|r| r.needs_node) {
        job.state = JobState::Recovering(RecoveryPhase::Replacing { since: now });
        fx.push(JobEffect::FindReplacements);
    } else {
        fx.push(JobEffect::Incident(IncidentEvent::Replaced { node: None }));
        begin_relaunch(job, now, fx);
    }
}

/// Resolves the checkpoint to relaunch from, at once or when a restart's backoff has passed
/// (the tick sends the job on then).
fn begin_relaunch(job: &mut Job, now: UnixMillis, fx: &mut Vec<JobEffect>) {
    match job.relaunch_not_before.take().filter(|t| *t > now) {
        Some(at) => {
            job.message = format!(
                "restart {} of {} in {:.1} s (backoff)",
                job.restarts,
                job.spec.restart_budget,
                (at - now) as f64 / 1000.0
            );
            job.state = JobState::Recovering(RecoveryPhase::Relaunching {
                attempts: 0,
                retry_at: Some(at),
            });
        }
        None => {
            job.state = JobState::Recovering(RecoveryPhase::Relaunching {
                attempts: 0,
                retry_at: None,
            });
            fx.push(JobEffect::ResolveCheckpoint);
        }
    }
}

/// How long the other ranks have to exit 0 after a rank ended with an unknown status.
pub const UNCONFIRMED_EXIT_GRACE_MS: i64 = 30_000;

fn on_tick(job: &mut Job, now: UnixMillis, limits: &JobLimits, fx: &mut Vec<JobEffect>) {
    if let Some((node, idle, cause)) = super::launch::reform_overdue(job, now, limits) {
        let seen = Seen::at(Some(now - idle as i64));
        on_fault(job, &node, cause, seen, now, limits, fx);
        return;
    }
    if matches!(job.state, JobState::Launching | JobState::Running) {
        let overdue = job.ranks.iter().position(|r| {
            r.exit_unconfirmed_at
                .is_some_and(|t| now - t >= UNCONFIRMED_EXIT_GRACE_MS)
        });
        if let Some(rank) = overdue {
            job.ranks[rank].exited = Some(false);
            job.ranks[rank].exit_unconfirmed_at = None;
            let node = job.ranks[rank].node.clone();
            let cause = FaultCause::WorkerExited {
                code: None,
                signal: None,
            };
            on_fault(job, &node, cause, Seen::default(), now, limits, fx);
            return;
        }
    }
    match &job.state {
        // Not while a rank cannot be heard (see `Job::unheard_at`): its silence is judged first.
        JobState::Launching | JobState::Running
            if job.spec.stall_timeout_ms > 0 && job.unheard_at != Some(now) =>
        {
            let stalled = job.ranks.iter().find_map(|r| {
                let idle = (now - r.last_progress_at).max(0) as u64;
                let limit = if r.progressed {
                    job.spec.stall_timeout_ms
                } else {
                    job.spec.stall_timeout_ms.max(limits.startup_grace_ms)
                };
                // A rank past the job's last step is shutting down (process-group teardown,
                // the launcher's exit barrier): its exit is what comes next, not progress.
                let finishing = job.spec.total_steps > 0 && r.last_step >= job.spec.total_steps;
                (r.exited.is_none() && !finishing && idle >= limit).then(|| (r.node.clone(), idle))
            });
            if let Some((first, stalled_ms)) = stalled {
                let (node, cause) = blame_stall(job, first, stalled_ms, now);
                on_fault(
                    job,
                    &node,
                    cause,
                    Seen::at(Some(now - stalled_ms as i64)),
                    now,
                    limits,
                    fx,
                );
            }
        }
        JobState::Recovering(RecoveryPhase::Fencing { deadline, .. }) if now >= *deadline => {
            job.message = "survivors did not confirm their stop in time; moving on".into();
            after_fencing(job, now, fx);
        }
        JobState::Recovering(RecoveryPhase::Replacing { since }) => {
            let waited = (now - since).max(0) as u64;
            let survivors = job.ranks.iter().filter(|r| !r.needs_node).count();
            let can_shrink = job.spec.min_nodes > 0 && survivors >= job.spec.min_nodes as usize;
            if limits.replacement_timeout_ms > 0
                && waited >= limits.replacement_timeout_ms
                && can_shrink
            {
                let before = job.ranks.len();
                job.ranks.retain(|r| !r.needs_node);
                job.index_ranks();
                fx.push(JobEffect::Incident(IncidentEvent::Replaced { node: None }));
                begin_relaunch(job, now, fx);
                job.message = format!(
                    "no replacement within {:.0} s: shrunk from {before} to {survivors} nodes (minimum {})",
                    limits.replacement_timeout_ms as f64 / 1000.0,
                    job.spec.min_nodes
                );
            } else if limits.replacement_timeout_ms > 0 && waited >= limits.replacement_timeout_ms {
                let reason = format!(
                    "no replacement node within {:.0} s for rank(s) {:?}",
                    limits.replacement_timeout_ms as f64 / 1000.0,
                    job.ranks_needing_nodes()
                );
                fail(job, reason, now, fx);
            } else {
                let waiting = format!(
                    "waiting for a replacement node for rank(s) {:?}",
                    job.ranks_needing_nodes()
                );
                if job.message != waiting {
                    job.message = waiting;
                    fx.push(JobEffect::StateChanged);
                }
            }
        }
        JobState::Recovering(RecoveryPhase::Relaunching {
            attempts,
            retry_at: Some(at),
        }) if now >= *at => {
            job.state = JobState::Recovering(RecoveryPhase::Relaunching {
                attempts: *attempts,
                retry_at: None,
            });
            fx.push(JobEffect::ResolveCheckpoint);
        }
        _ => {}
    }
}

/// Nodes whose worker of the current generation may still run.
/// Stops the workers that may still run (the job ends): nothing when none does.
fn stop_live_workers(job: &Job, reason: &str, fx: &mut Vec<JobEffect>) {
    let live: Vec<NodeId> = job
        .ranks
        .iter()
        .filter(|r| r.exited.is_none() && !r.needs_node)
        .map(|r| r.node.clone())
        .collect();
    if !live.is_empty() {
        fx.push(JobEffect::StopWorkers {
            nodes: live,
            generation: job.generation,
            reason: reason.into(),
        });
    }
}

/// The job failed for `reason`: told on the job and on its open incidents.
fn fail(job: &mut Job, reason: String, now: UnixMillis, fx: &mut Vec<JobEffect>) {
    let state = JobState::Failed {
        reason: reason.clone(),
    };
    finish(job, state, reason, now, fx);
}

fn finish(
    job: &mut Job,
    state: JobState,
    message: String,
    now: UnixMillis,
    fx: &mut Vec<JobEffect>,
) {
    let reason = message.clone();
    job.state = state;
    job.message = message;
    job.finished_at = Some(now);
    fx.push(JobEffect::Incident(IncidentEvent::Abandoned { reason }));
    fx.push(JobEffect::ReleaseNodes { nodes: job.nodes() });
}

/// The job's step time as a moving average of the time per step between advances; the first
/// advance of a generation only sets the mark.
fn learn_step_time(job: &mut Job, step: u64, now: UnixMillis) {
    let steps = step - job.step;
    if job.step_advanced_at > 0 && job.step > 0 && now > job.step_advanced_at {
        let per_step = ((now - job.step_advanced_at) as u64 / steps).max(1);
        job.step_time_ms = if job.step_time_ms == 0 {
            per_step
        } else {
            (job.step_time_ms * 3 + per_step) / 4
        };
    }
    job.step_advanced_at = now;
}
