//! The job lifecycle: one enum of states and one pure `step`.
//!
//! `Pending → Launching → Running → Recovering(Fencing → Replacing → Relaunching) → Launching → …
//! → Succeeded | Failed | Stopped`.
//!
//! The job owns its ranks (which node runs each), its generation, its restart budget and the
//! generations it fenced. It decides *what* to do and returns [`JobEffect`]s; the cluster
//! ([`crate::cluster`]) decides *which* node replaces which and turns effects into messages.
//! No I/O, no clock reads: `now` comes with every event.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, FencedGeneration};
use crate::incident::{IncidentEvent, RecoveryAction};
use crate::node::FenceCause;
use crate::error::CoreError;
use crate::protocol::JobRequest;
use crate::UnixMillis;

/// What the user asked for, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// argv of the training command run on every node.
    pub command: Vec<String>,
    /// Number of nodes (one agent each) the job runs on.
    pub nodes: u32,
    /// Object-store URI prefix holding `step-<N>/` checkpoints; empty = never resume.
    pub checkpoint_uri: String,
    /// A rank with no progress for this long counts as hung; 0 disables stall detection.
    pub stall_timeout_ms: u64,
    /// Restarts in place allowed for worker faults on healthy nodes before the job fails.
    pub restart_budget: u32,
    /// Regex with one capture group that finds the step in a worker's output line.
    pub progress_regex: String,
    /// Extra environment for every worker.
    pub env: BTreeMap<String, String>,
    /// Last step of the job, when known: shown to operators, and a rank past it is left to exit
    /// without stall checks.
    pub total_steps: u64,
    /// Fewest nodes the job can run on (torchrun `--nnodes MIN:MAX`); when no replacement
    /// comes within the bound the job shrinks to its surviving nodes if at least this many
    /// remain. 0 = never shrink.
    #[serde(default)]
    pub min_nodes: u32,
}

impl JobSpec {
    /// Checks what an operator asked for and turns it into a spec, naming the field that is
    /// wrong. The checkpoint URI's syntax is checked by the coordinator, which knows the stores.
    pub fn validate(
        request: &JobRequest,
        default_restart_budget: u32,
    ) -> Result<JobSpec, CoreError> {
        let invalid = |field: &'static str, reason: String| CoreError::InvalidJob { field, reason };
        if request.command.first().is_none_or(|c| c.trim().is_empty()) {
            return Err(invalid(
                "command",
                "is empty: give the training command after --".into(),
            ));
        }
        if request.nodes == 0 {
            return Err(invalid("nodes", "must be at least 1".into()));
        }
        if request.min_nodes > request.nodes {
            return Err(invalid(
                "min_nodes",
                format!(
                    "must be at most nodes ({}), got {}",
                    request.nodes, request.min_nodes
                ),
            ));
        }
        if !(request.stall_timeout_s.is_finite() && request.stall_timeout_s >= 0.0) {
            return Err(invalid(
                "stall_timeout_s",
                format!(
                    "must be a number of seconds ≥ 0, got {}",
                    request.stall_timeout_s
                ),
            ));
        }
        let progress_regex = if request.progress_regex.is_empty() {
            crate::DEFAULT_PROGRESS_REGEX.to_string()
        } else {
            request.progress_regex.clone()
        };
        match regex::Regex::new(&progress_regex) {
            Ok(re) if re.captures_len() >= 2 => {}
            Ok(_) => {
                return Err(invalid(
                    "progress_regex",
                    "needs one capture group around the step number".into(),
                ))
            }
            Err(e) => return Err(invalid("progress_regex", e.to_string())),
        }
        Ok(JobSpec {
            command: request.command.clone(),
            nodes: request.nodes,
            checkpoint_uri: request.checkpoint_uri.clone(),
            stall_timeout_ms: (request.stall_timeout_s * 1000.0).round() as u64,
            restart_budget: if request.restart_budget == 0 {
                default_restart_budget
            } else {
                request.restart_budget
            },
            progress_regex,
            env: request.env.clone(),
            total_steps: request.total_steps,
            min_nodes: request.min_nodes,
        })
    }
}

/// Why a job left `Running`: a typed cause per kind of fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultCause {
    /// The agent's stream closed without goodbye.
    AgentLost,
    /// Heartbeats stopped.
    HeartbeatTimeout,
    /// A health check asked for the node to be replaced.
    HealthFatal(String),
    /// The worker exited non-zero or was killed by a signal the agent did not send.
    WorkerExited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The rank made no progress within the stall timeout.
    ProgressStalled { stalled_ms: u64 },
    /// The node failed its bootstrap or deep check while taking over a rank.
    CheckFailed(String),
    /// Worker faults kept happening on this node (`faults` within `window_ms`; the last one
    /// is `last`): restarting in place is escalated to replacing the node, which is quarantined.
    RepeatedFaults {
        faults: u32,
        window_ms: u64,
        last: String,
    },
}

impl FaultCause {
    /// Node faults move the rank to another node; worker faults restart it in place.
    pub fn needs_replacement(&self) -> bool {
        matches!(
            self,
            FaultCause::AgentLost
                | FaultCause::HeartbeatTimeout
                | FaultCause::HealthFatal(_)
                | FaultCause::CheckFailed(_)
                | FaultCause::RepeatedFaults { .. }
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            FaultCause::AgentLost => "agent_lost",
            FaultCause::HeartbeatTimeout => "heartbeat_timeout",
            FaultCause::HealthFatal(_) => "gpu_fatal",
            FaultCause::WorkerExited { .. } => "worker_exited",
            FaultCause::ProgressStalled { .. } => "progress_stalled",
            FaultCause::CheckFailed(_) => "check_failed",
            FaultCause::RepeatedFaults { .. } => "repeated_faults",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            FaultCause::AgentLost => "agent stream closed without goodbye".into(),
            FaultCause::HeartbeatTimeout => "no heartbeat within the timeout".into(),
            FaultCause::HealthFatal(r) | FaultCause::CheckFailed(r) => r.clone(),
            FaultCause::WorkerExited { code, signal } => match (code, signal) {
                (_, Some(s)) => format!("worker killed by signal {s}"),
                (Some(c), None) => format!("worker exited with code {c}"),
                (None, None) => "worker exited".into(),
            },
            FaultCause::RepeatedFaults {
                faults,
                window_ms,
                last,
            } => format!(
                "{faults} worker faults within {:.0} s (last: {last}); node quarantined",
                *window_ms as f64 / 1000.0
            ),
            FaultCause::ProgressStalled { stalled_ms } => {
                format!("no progress for {:.1} s", *stalled_ms as f64 / 1000.0)
            }
        }
    }

    /// The node fence cause for a fault that replaces the node.
    pub fn fence_cause(&self) -> FenceCause {
        match self {
            FaultCause::AgentLost => FenceCause::AgentLost,
            FaultCause::HeartbeatTimeout => FenceCause::HeartbeatTimeout,
            FaultCause::HealthFatal(r) => FenceCause::HealthFatal(r.clone()),
            FaultCause::CheckFailed(r) => FenceCause::CheckFailed(r.clone()),
            FaultCause::WorkerExited { .. }
            | FaultCause::ProgressStalled { .. }
            | FaultCause::RepeatedFaults { .. } => FenceCause::RepeatedWorkerFaults,
        }
    }
}

/// The sub-phase of a recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryPhase {
    /// Fencing: Stop was sent to the failed generation's live ranks; → Replacing (or Relaunching
    /// when no rank needs a node) once every one reported its worker gone, or at `deadline`.
    Fencing {
        pending: BTreeSet<usize>,
        deadline: UnixMillis,
    },
    /// Replacing: some ranks wait for a node; → Relaunching when every rank has one,
    /// → Failed when `replacement_timeout` passes (if set).
    Replacing { since: UnixMillis },
    /// Relaunching: the latest complete checkpoint is being resolved; → Launching.
    /// A failed read is retried at `retry_at`, up to a bound, then → Failed.
    Relaunching {
        attempts: u32,
        retry_at: Option<UnixMillis>,
    },
}

impl RecoveryPhase {
    pub fn name(&self) -> &'static str {
        match self {
            RecoveryPhase::Fencing { .. } => "fencing",
            RecoveryPhase::Replacing { .. } => "replacing",
            RecoveryPhase::Relaunching { .. } => "relaunching",
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Pending: nodes reserved, the checkpoint to start from is being resolved;
    /// → Launching when resolved, → Failed when the checkpoint store cannot be read.
    Pending,
    /// Launching: `Launch` went out for the current generation; → Running when every rank's
    /// worker started, → Recovering on a fault.
    Launching,
    /// Running: → Succeeded when every rank exited 0, → Recovering on a fault.
    Running,
    /// Recovering from a fault, in `phase`; → Launching with the next generation, → Failed.
    Recovering(RecoveryPhase),
    /// Succeeded: every rank exited 0. Final.
    Succeeded,
    /// Failed with a reason the operator can act on. Final.
    Failed { reason: String },
    /// Stopped by an operator. Final.
    Stopped,
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Launching => "launching",
            JobState::Running => "running",
            JobState::Recovering(_) => "recovering",
            JobState::Succeeded => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Stopped => "stopped",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed { .. } | JobState::Stopped
        )
    }
}

/// One rank of the current generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rank {
    pub node: String,
    pub started: bool,
    /// `Some(true)` after a clean exit, `Some(false)` after a failure or a stop.
    pub exited: Option<bool>,
    /// Set while the rank waits for a replacement node.
    pub needs_node: bool,
    pub last_step: u64,
    /// Launch time until the first progress, then the time of the last progress.
    pub last_progress_at: UnixMillis,
    /// The rank reported progress in the current generation: until then it is starting up
    /// (imports, rendezvous, checkpoint load) and gets `JobLimits::startup_grace_ms`.
    #[serde(default)]
    pub progressed: bool,
    /// When the rank's worker ended with no known status (adopted by a restarted agent); it
    /// counts as clean only if the other ranks exit 0 soon after.
    #[serde(default)]
    pub exit_unconfirmed_at: Option<UnixMillis>,
}

/// Bounds the job lifecycle needs from the coordinator's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// How long survivors get to stop before fencing moves on without them.
    pub stop_deadline_ms: u64,
    /// How long to wait for a replacement node; 0 waits for ever.
    pub replacement_timeout_ms: u64,
    /// Delay between attempts to read the checkpoint store.
    pub resolve_retry_ms: u64,
    /// Attempts to read the checkpoint store before the job fails.
    pub resolve_attempts: u32,
    /// A rank that has not reported progress in its generation yet counts as stalled only
    /// after the larger of this and the job's stall timeout.
    pub startup_grace_ms: u64,
    /// Delay before the second restart in place; each further restart doubles it.
    pub restart_backoff_ms: u64,
    /// Cap of that delay.
    pub restart_backoff_max_ms: u64,
    /// Worker faults on one node within `quarantine_window_ms` that escalate from restarting in
    /// place to replacing (and quarantining) the node; 0 = never.
    pub quarantine_after: u32,
    pub quarantine_window_ms: u64,
}

impl JobLimits {
    /// The delay before restart in place number `restarts` (1-based): the first is at once
    /// (most worker faults are one-off), then `restart_backoff_ms`, doubling, capped.
    pub fn restart_backoff(&self, restarts: u32) -> u64 {
        if restarts < 2 {
            return 0;
        }
        let doublings = (restarts - 2).min(32);
        self.restart_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.restart_backoff_max_ms)
    }
}

/// A job and everything the coordinator knows about its run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    /// Starts at 0; the first launch is generation 1; every relaunch adds one.
    pub generation: u64,
    pub ranks: Vec<Rank>,
    pub restarts: u32,
    /// The checkpoint the current generation resumed from.
    pub resumed_from: Option<Checkpoint>,
    /// Generations that were fenced, and when: their later checkpoints are never resumed from.
    pub fenced_generations: Vec<FencedGeneration>,
    /// Highest step reported by any rank.
    pub step: u64,
    pub submitted_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    /// Last thing worth telling the operator (why it waits, why it failed).
    pub message: String,
    /// Times of recent worker faults per node, for quarantine.
    #[serde(default)]
    pub worker_faults: BTreeMap<String, Vec<UnixMillis>>,
    /// A restart in place waits until then (backoff).
    #[serde(default)]
    pub relaunch_not_before: Option<UnixMillis>,
}

/// What can happen to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    CheckpointResolved(Result<Option<Checkpoint>, String>),
    WorkerStarted {
        node: String,
        generation: u64,
    },
    WorkerExited {
        node: String,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
        stopped_by_agent: bool,
        /// When the worker exited (coordinator clock), for the incident's fault time.
        at: Option<UnixMillis>,
    },
    Progress {
        node: String,
        generation: u64,
        step: u64,
    },
    Fault {
        node: String,
        cause: FaultCause,
    },
    /// A node the job sent Stop to cannot be reached: its workers count as gone.
    NodeUnreachable {
        node: String,
    },
    ReplacementFound {
        rank: usize,
        node: String,
    },
    StopRequested,
    /// Something operators should read on the job (a replacement candidate failed its check,
    /// the provider could not provision): it becomes the job's message until the next one.
    Note {
        message: String,
    },
    Tick,
}

/// What the job wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEffect {
    /// Resolve the latest complete checkpoint (the answer comes back as `CheckpointResolved`).
    ResolveCheckpoint,
    /// Send `Launch` for `generation` to every rank's node.
    Launch {
        generation: u64,
        resume: Option<Checkpoint>,
    },
    /// Send `Stop` for `generation` to these nodes.
    StopWorkers {
        nodes: Vec<String>,
        generation: u64,
        reason: String,
    },
    /// Fence the node (it is never handed out again).
    FenceNode { node: String, cause: FenceCause },
    /// Find nodes for the ranks that need one (answers come back as `ReplacementFound`).
    FindReplacements,
    /// Give the nodes back (job over).
    ReleaseNodes { nodes: Vec<String> },
    /// Open an incident; `fault_at` is when the fault happened, when the event that reported
    /// it says (the cluster estimates it otherwise).
    OpenIncident {
        node: String,
        cause: FaultCause,
        action: RecoveryAction,
        fault_at: Option<UnixMillis>,
    },
    /// Advance every open incident of this job.
    Incident(IncidentEvent),
    /// The job's state or phase changed; tell watchers.
    StateChanged,
}

impl Job {
    /// A new job in `Pending` on `nodes` (already allocated by the cluster).
    pub fn new(id: String, spec: JobSpec, nodes: Vec<String>, now: UnixMillis) -> Job {
        let ranks = nodes
            .into_iter()
            .map(|node| Rank {
                exit_unconfirmed_at: None,
                node,
                started: false,
                exited: None,
                needs_node: false,
                last_step: 0,
                last_progress_at: now,
                progressed: false,
            })
            .collect();
        Job {
            id,
            spec,
            state: JobState::Pending,
            generation: 0,
            ranks,
            restarts: 0,
            resumed_from: None,
            fenced_generations: Vec::new(),
            step: 0,
            submitted_at: now,
            finished_at: None,
            message: String::new(),
            worker_faults: BTreeMap::new(),
            relaunch_not_before: None,
        }
    }

    /// The nodes of the current ranks, in rank order.
    pub fn nodes(&self) -> Vec<String> {
        self.ranks.iter().map(|r| r.node.clone()).collect()
    }

    pub fn rank_of(&self, node: &str) -> Option<usize> {
        self.ranks.iter().position(|r| r.node == node)
    }

    /// Ranks waiting for a replacement node.
    pub fn ranks_needing_nodes(&self) -> Vec<usize> {
        (0..self.ranks.len())
            .filter(|&i| self.ranks[i].needs_node)
            .collect()
    }

    /// The job without what changes on every progress report (steps, progress times): what
    /// must be saved when it changes.
    pub fn durable_part(&self) -> Job {
        let mut job = self.clone();
        job.step = 0;
        for r in &mut job.ranks {
            r.last_step = 0;
            r.last_progress_at = 0;
            r.progressed = false;
        }
        job
    }

    /// Name of the recovery phase, or "" outside recovery.
    pub fn phase(&self) -> &'static str {
        match &self.state {
            JobState::Recovering(p) => p.name(),
            _ => "",
        }
    }
}

/// The job lifecycle's step. Mutates `job` into its next state and returns what to do.
pub fn step(job: &mut Job, event: JobEvent, now: UnixMillis, limits: &JobLimits) -> Vec<JobEffect> {
    let before = (job.state.name(), job.phase());
    let mut fx = Vec::new();
    if !job.state.is_terminal() {
        apply(job, event, now, limits, &mut fx);
    }
    if before != (job.state.name(), job.phase()) {
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
                let resume_step = job.resumed_from.as_ref().map_or(0, |c| c.step);
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
                return;
            }
            if let Some(rank) = job.rank_of(&node) {
                let r = &mut job.ranks[rank];
                if s != r.last_step || !r.started || !r.progressed {
                    r.last_progress_at = now;
                }
                r.progressed = true;
                r.last_step = s;
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
                                on_fault(job, &node, cause, at, now, limits, fx);
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
                            at,
                            now,
                            limits,
                            fx,
                        );
                    }
                }
                _ => {}
            }
        }
        JobEvent::Fault { node, cause } => on_fault(job, &node, cause, None, now, limits, fx),
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
            if job.ranks_needing_nodes().is_empty() {
                job.message = String::new();
                fx.push(JobEffect::Incident(IncidentEvent::Replaced {
                    node: Some(node),
                }));
                begin_relaunch(job, now, fx);
            }
        }
        JobEvent::Note { message } => {
            if !job.state.is_terminal() {
                job.message = message;
            }
        }
        JobEvent::StopRequested => {
            let live = live_nodes(job);
            if !live.is_empty() {
                fx.push(JobEffect::StopWorkers {
                    nodes: live,
                    generation: job.generation,
                    reason: "job stopped by operator".into(),
                });
            }
            finish(
                job,
                JobState::Stopped,
                "stopped by operator".into(),
                now,
                fx,
            );
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
        Ok(resume) => {
            job.generation += 1;
            for r in &mut job.ranks {
                r.started = false;
                r.exited = None;
                r.exit_unconfirmed_at = None;
                r.last_progress_at = now;
                r.progressed = false;
            }
            job.resumed_from = resume.clone();
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
            finish(
                job,
                JobState::Failed {
                    reason: reason.clone(),
                },
                reason,
                now,
                fx,
            );
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
    fault_at: Option<UnixMillis>,
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
            fx.push(JobEffect::OpenIncident {
                node: node.to_string(),
                cause: cause.clone(),
                action: RecoveryAction::ReplaceNode,
                fault_at,
            });
            fx.push(JobEffect::FenceNode {
                node: node.to_string(),
                cause: cause.fence_cause(),
            });
            match &mut job.state {
                JobState::Recovering(RecoveryPhase::Fencing { pending, .. }) => {
                    pending.remove(&rank);
                    if pending.is_empty() {
                        after_fencing(job, now, fx);
                    }
                }
                JobState::Recovering(RecoveryPhase::Replacing { .. }) => {
                    fx.push(JobEffect::FindReplacements);
                }
                _ => {
                    // Pending or Relaunching: nothing of the new generation started yet.
                    job.state = JobState::Recovering(RecoveryPhase::Replacing { since: now });
                    fx.push(JobEffect::FindReplacements);
                }
            }
            return;
        }
        _ => return,
    }
    if !replace && job.restarts >= job.spec.restart_budget {
        fx.push(JobEffect::OpenIncident {
            node: node.to_string(),
            cause: cause.clone(),
            action: RecoveryAction::None,
            fault_at,
        });
        let live = live_nodes(job);
        if !live.is_empty() {
            fx.push(JobEffect::StopWorkers {
                nodes: live,
                generation: job.generation,
                reason: "job failed".into(),
            });
        }
        let reason = format!(
            "restart budget of {} exhausted; last fault on {node}: {}",
            job.spec.restart_budget,
            cause.detail()
        );
        finish(
            job,
            JobState::Failed {
                reason: reason.clone(),
            },
            reason,
            now,
            fx,
        );
        return;
    }
    let action = if replace {
        RecoveryAction::ReplaceNode
    } else {
        job.restarts += 1;
        let backoff = limits.restart_backoff(job.restarts);
        job.relaunch_not_before = (backoff > 0).then_some(now + backoff as i64);
        RecoveryAction::RestartInPlace
    };
    fx.push(JobEffect::OpenIncident {
        node: node.to_string(),
        cause: cause.clone(),
        action,
        fault_at,
    });
    if replace {
        job.ranks[rank].needs_node = true;
        fx.push(JobEffect::FenceNode {
            node: node.to_string(),
            cause: cause.fence_cause(),
        });
    }
    job.fenced_generations.push(FencedGeneration {
        generation: job.generation,
        fenced_at: now,
    });
    job.message = format!("{} on {node}: {}", cause.code(), cause.detail());
    let pending: BTreeSet<usize> = (0..job.ranks.len())
        .filter(|&i| !job.ranks[i].needs_node && job.ranks[i].exited.is_none())
        .collect();
    let nodes: Vec<String> = pending.iter().map(|&i| job.ranks[i].node.clone()).collect();
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
    let worker_fault = matches!(
        cause,
        FaultCause::WorkerExited { .. } | FaultCause::ProgressStalled { .. }
    );
    if !worker_fault
        || limits.quarantine_after == 0
        || !matches!(job.state, JobState::Launching | JobState::Running)
    {
        return cause;
    }
    let window = limits.quarantine_window_ms as i64;
    let times = job.worker_faults.entry(node.to_string()).or_default();
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
            on_fault(job, &node, cause, None, now, limits, fx);
            return;
        }
    }
    match &job.state {
        JobState::Launching | JobState::Running if job.spec.stall_timeout_ms > 0 => {
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
            if let Some((node, stalled_ms)) = stalled {
                on_fault(
                    job,
                    &node,
                    FaultCause::ProgressStalled { stalled_ms },
                    Some(now - stalled_ms as i64),
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
                finish(
                    job,
                    JobState::Failed {
                        reason: reason.clone(),
                    },
                    reason,
                    now,
                    fx,
                );
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
fn live_nodes(job: &Job) -> Vec<String> {
    job.ranks
        .iter()
        .filter(|r| r.exited.is_none() && !r.needs_node)
        .map(|r| r.node.clone())
        .collect()
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

#[cfg(test)]
mod stall_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod adopted_tests;

#[cfg(test)]
mod policy_tests;
