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
use crate::error::CoreError;
pub use crate::fault::FaultCause;
use crate::incident::{IncidentEvent, RecoveryAction};
use crate::protocol::JobRequest;
use crate::{Generation, JobId, NodeId, UnixMillis};
pub use launch::{Launcher, RestartMode, MAX_NPROC_PER_NODE};

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
    /// Progress vouches for liveness: in a synchronous job every rank waits for every other
    /// at each step, so steps on all the other ranks prove a silent node's ranks alive. When
    /// set (the default), a node whose agent goes silent while the job keeps stepping keeps
    /// its ranks (the agent is marked lost and an alert raised) and is fenced at the job's
    /// next real fault. Turn it off for jobs whose ranks do not wait on each other (independent
    /// workers, asynchronous or elastic training), where others' progress proves nothing.
    #[serde(default = "vouching_default")]
    pub progress_vouches: bool,
    /// How the agent starts the command on each node: as given (the command is a launcher
    /// such as torchrun) or holdfast's native launcher, one process per local rank.
    #[serde(default)]
    pub launcher: Launcher,
    /// The only nodes the job's ranks and their replacements may be placed on (a Slurm
    /// allocation's nodes, matched as [`JobSpec::allows`] says); empty: any node.
    #[serde(default)]
    pub allowed_nodes: BTreeSet<NodeId>,
    /// What a recovery does with the ranks that survived a fault: relaunch every rank (the
    /// default), or keep the survivors' processes and have them re-form the process group
    /// in place, launching only the replaced ranks (native launcher only; the job must use
    /// `holdfast.run` from `python/holdfast`).
    #[serde(default)]
    pub restart: RestartMode,
}

fn vouching_default() -> bool {
    true
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
            progress_vouches: request.progress_vouches.unwrap_or(true),
            launcher: Launcher::validate(request)?,
            allowed_nodes: crate::limits::allowed_nodes(request)?,
            restart: launch::validate_restart(request)?,
        })
    }
}

/// The sub-phase of a recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryPhase {
    /// Fencing: Stop was sent to the failed generation's live ranks; → Replacing (or Relaunching
    /// when no rank needs a node) once every one reported its worker gone, or at `deadline`.
    Fencing {
        /// Ranks whose stop is not confirmed yet (worker exit, or node unreachable); fencing
        /// ends when it is empty.
        pending: BTreeSet<usize>,
        /// `stop_deadline_ms` after the fault: fencing moves on without the silent ranks then.
        deadline: UnixMillis,
    },
    /// Replacing: some ranks wait for a node; → Relaunching when every rank has one,
    /// → Failed when `replacement_timeout` passes (if set).
    Replacing {
        /// When the wait for nodes began; the replacement timeout (and a shrink) count from it.
        since: UnixMillis,
    },
    /// Relaunching: the latest complete checkpoint is being resolved; → Launching.
    /// A failed read is retried at `retry_at`, up to a bound, then → Failed.
    Relaunching {
        /// Failed reads of the checkpoint store in this relaunch so far.
        attempts: u32,
        /// When the next read is due (after a failed read, or a restart's backoff); `None`
        /// while a read is in flight.
        retry_at: Option<UnixMillis>,
    },
}

impl RecoveryPhase {
    /// The lower-case name shown to operators as the job's phase.
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
    Failed {
        /// What failed, and what was tried; also the job's last message.
        reason: String,
    },
    /// Stopped by an operator. Final.
    Stopped,
}

impl JobState {
    /// The lower-case name shown to operators.
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

    /// Succeeded, Failed or Stopped: the job takes no more events and its nodes are released.
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
    /// The node that runs this rank now; a replacement takes the failed node's place here.
    pub node: NodeId,
    /// The current generation's worker reported it started (or was found running on
    /// reconnect); once every rank's has, the job is Running.
    pub started: bool,
    /// `Some(true)` after a clean exit, `Some(false)` after a failure or a stop.
    pub exited: Option<bool>,
    /// Set while the rank waits for a replacement node.
    pub needs_node: bool,
    /// The step this rank last reported; a rank past the job's `total_steps` is finishing, not
    /// stalled.
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
    /// What the rank's agent last saw of its worker's processes (this generation only): on a
    /// stall it singles out the rank that stopped the gang. Not stored: it is only ever
    /// current.
    #[serde(skip)]
    pub evidence: Option<crate::evidence::WorkerEvidence>,
    /// When `evidence` came: evidence older than the stall timeout (an agent that went quiet)
    /// says nothing about the stall.
    #[serde(skip)]
    pub evidence_at: UnixMillis,
    /// The rank's worker of the failed generation is kept for an in-process restart: the next
    /// generation's launch tells it to re-form in place instead of replacing it.
    #[serde(default)]
    pub kept: bool,
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
    /// The window `quarantine_after` counts faults in; older faults are forgotten.
    pub quarantine_window_ms: u64,
    /// How soon after a worker's exit a node fault on another rank is taken for its cause
    /// (the exit's incident is handed to that node): a lost host is found within a heartbeat
    /// timeout, and its peers' collectives fail the moment it dies (the cluster allows twice
    /// the timeout, plus a tick).
    pub peer_loss_window_ms: u64,
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
    /// The job's id: `job-N` unless the operator named it.
    pub id: JobId,
    /// What was submitted, validated; never changed (a shrunk job keeps its original `nodes`).
    pub spec: JobSpec,
    /// Where the job is in its lifecycle; only the job's step function moves it.
    pub state: JobState,
    /// Starts at 0; the first launch is generation 1; every relaunch adds one.
    pub generation: Generation,
    /// One per node the job runs on, in node-rank order; fewer than `spec.nodes` after a shrink.
    pub ranks: Vec<Rank>,
    /// Restarts in place used so far, against `spec.restart_budget`; they also set the next
    /// backoff. Replacing a node does not count.
    pub restarts: u32,
    /// The checkpoint the current generation resumed from.
    pub resumed_from: Option<Checkpoint>,
    /// Generations that were fenced, and when: their later checkpoints are never resumed from.
    pub fenced_generations: Vec<FencedGeneration>,
    /// Highest step reported by any rank.
    pub step: u64,
    /// When the coordinator accepted the job.
    pub submitted_at: UnixMillis,
    /// When the job reached a final state; `None` while it lives.
    pub finished_at: Option<UnixMillis>,
    /// Last thing worth telling the operator (why it waits, why it failed).
    pub message: String,
    /// Times of recent worker faults per node, for quarantine.
    #[serde(default)]
    pub worker_faults: BTreeMap<NodeId, Vec<UnixMillis>>,
    /// A restart in place waits until then (backoff).
    #[serde(default)]
    pub relaunch_not_before: Option<UnixMillis>,
    /// The current generation re-forms in place (an in-process restart) and not every rank
    /// has stepped in it yet: a fault or a timeout now falls back to a full relaunch.
    #[serde(default)]
    pub reforming: bool,
    /// The step the kept survivors of an in-process restart had reached at the fault (their
    /// last progress): the new generation resumes from it, not from a checkpoint.
    #[serde(default)]
    pub reform_step: u64,
    /// The job's own step time, learned from its progress (a moving average; 0 until two
    /// steps were seen): how fast a dead rank stops the others.
    #[serde(default)]
    pub step_time_ms: u64,
    /// When the job's step last went up.
    #[serde(default)]
    pub step_advanced_at: UnixMillis,
    /// The last tick at which a node of the job could not be heard (its agent away, lost, or
    /// silent for two heartbeats). A stall is not judged then: the ranks that can be heard
    /// may only be waiting on the one that cannot, whose own detection (heartbeat timeout,
    /// reconnect grace, progress vouching) names it soon. Not stored.
    #[serde(skip)]
    pub unheard_at: Option<UnixMillis>,
    /// The memory-tier state each of the job's nodes last reported holding (see
    /// [`crate::checkpoint::MemoryHolding`]). Not stored: after a coordinator restart the
    /// agents report it again, and until then the durable tier is used.
    #[serde(skip)]
    pub memory_held: BTreeMap<NodeId, Vec<crate::checkpoint::MemoryHolding>>,
    /// When the current generation resumed from the memory tier: the durable checkpoint the
    /// trainer falls back to if its memory copy cannot be read (`None`: a fresh start).
    #[serde(default)]
    pub durable_fallback: Option<Checkpoint>,
    /// The worker exit the current recovery was opened for, while a peer's loss found soon
    /// after may still explain it (see [`blame::ExitBlame`]).
    #[serde(default)]
    pub exit_blame: Option<blame::ExitBlame>,
    /// The ranks by node, for [`Job::rank_of`]. Not stored: rebuilt from the ranks.
    #[serde(skip)]
    rank_index: index::RankIndex,
}

/// What can happen to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// The answer to `ResolveCheckpoint`: the checkpoint to resume from, `None` to start fresh,
    /// or why the store could not be read.
    CheckpointResolved(Result<Option<Checkpoint>, String>),
    /// A rank's worker started; the job is Running once every rank's has.
    WorkerStarted {
        /// The node it runs on; the rank is found by it.
        node: NodeId,
        /// The generation it belongs to; another generation's report is ignored.
        generation: Generation,
    },
    /// A rank's worker exited: clean (all ranks → Succeeded), stopped, or a worker fault.
    WorkerExited {
        /// The node it ran on.
        node: NodeId,
        /// The generation it belonged to; another generation's exit is ignored.
        generation: Generation,
        /// Its exit code; `None` when a signal killed it or the status is unknown (adopted).
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// The agent stopped it on the coordinator's `Stop`: expected, never a fault.
        stopped_by_agent: bool,
        /// When the worker exited (coordinator clock), for the incident's fault time.
        at: Option<UnixMillis>,
    },
    /// A rank's worker reported a training step; a new step resets its stall clock.
    Progress {
        /// The node it runs on.
        node: NodeId,
        /// The generation it belongs to; another generation's progress is ignored.
        generation: Generation,
        /// The step reached; the job's `step` is the highest across ranks.
        step: u64,
    },
    /// The failure detector found a node fault (agent lost, heartbeat timeout, fatal health)
    /// on one of the job's nodes.
    Fault {
        /// The node at fault.
        node: NodeId,
        /// Why; [`FaultCause::needs_replacement`] decides restart in place or replacement.
        cause: FaultCause,
        /// When the node was last heard from, if it has been silent since (a lost agent, a
        /// heartbeat timeout): a worker exit after that may have followed from its loss.
        silent_since: Option<UnixMillis>,
    },
    /// A node the job sent Stop to cannot be reached: its workers count as gone.
    NodeUnreachable {
        /// The node, with no live stream to send `Stop` on.
        node: NodeId,
    },
    /// A node (checked first, when replacements are checked) was allocated to a rank that
    /// waited for one; → Relaunching once every rank has a node.
    ReplacementFound {
        /// The rank that waited, an index into `ranks`.
        rank: usize,
        /// The node, already allocated to the job.
        node: NodeId,
    },
    /// An operator stopped the job: live workers are told to stop, and the job ends Stopped.
    StopRequested,
    /// These nodes cannot be heard now (silent past two heartbeats, or away within a grace):
    /// their ranks' progress cannot be observed, so it cannot be judged; their stall clocks
    /// start again when they are heard.
    Unheard {
        /// The nodes that cannot be heard now.
        nodes: Vec<NodeId>,
    },
    /// Something operators should read on the job (a replacement candidate failed its check,
    /// the provider could not provision): it becomes the job's message until the next one.
    Note {
        /// The text, as operators read it.
        message: String,
    },
    /// A node's agent sampled its worker's processes (every heartbeat): kept on the rank for
    /// the stall detector to single out the rank that stopped the gang.
    Evidence {
        /// The node.
        node: NodeId,
        /// What the agent saw.
        evidence: crate::evidence::WorkerEvidence,
    },
    /// The clock: stalls, the unconfirmed-exit grace, recovery deadlines, retries, backoffs.
    Tick,
}

/// What the job wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEffect {
    /// Resolve the latest complete checkpoint (the answer comes back as `CheckpointResolved`).
    ResolveCheckpoint,
    /// Send `Launch` for `generation` to every rank's node.
    Launch {
        /// The generation to start; reports carrying an older one are ignored from now on.
        generation: Generation,
        /// The checkpoint every rank resumes from; `None` starts fresh.
        resume: Option<Checkpoint>,
    },
    /// Send `Stop` for `generation` to these nodes.
    StopWorkers {
        /// Nodes whose worker may still run; an unreachable one comes back as
        /// `NodeUnreachable`.
        nodes: Vec<NodeId>,
        /// The generation being stopped.
        generation: Generation,
        /// Why, for the agent's log (fencing generation N, job stopped, job failed).
        reason: String,
    },
    /// Fence the node (it is never handed out again).
    FenceNode {
        /// The faulty node.
        node: NodeId,
        /// Why; kept on the fenced node for operators.
        cause: FaultCause,
    },
    /// Find nodes for the ranks that need one (answers come back as `ReplacementFound`).
    FindReplacements,
    /// Give the nodes back (job over).
    ReleaseNodes {
        /// The job's nodes; each goes back to Ready unless it is fenced, cordoned or gone.
        nodes: Vec<NodeId>,
    },
    /// A node fault on `node` explains the worker exit on `from` that the open recovery was
    /// started for (the lost node's peers fail with it): that incident is handed to `node`,
    /// `cause` and `action`, and keeps the exit as a consequence in its detail.
    ReattributeIncident {
        /// The node whose worker exit opened the incident.
        from: NodeId,
        /// The node the fault is now blamed on.
        node: NodeId,
        /// Its fault.
        cause: FaultCause,
        /// What the job now does about it.
        action: RecoveryAction,
    },
    /// Open an incident for a fault the job just reacted to.
    OpenIncident {
        /// The node the fault was seen on.
        node: NodeId,
        /// What happened; its code and detail become the incident's.
        cause: FaultCause,
        /// What the job does about it.
        action: RecoveryAction,
        /// When the fault happened, when the event that reported it says (a worker's exit
        /// time, a stall's last progress); the cluster estimates it otherwise.
        fault_at: Option<UnixMillis>,
    },
    /// Advance every open incident of this job.
    Incident(IncidentEvent),
    /// The job's state or phase changed; tell watchers.
    StateChanged,
}

impl Job {
    /// Moves every running clock of the job (stall clocks, recovery deadlines, backoffs) by
    /// `by` ms: time the coordinator could not observe does not count against the job's ranks.
    pub fn shift_clocks(&mut self, by: i64) {
        for rank in &mut self.ranks {
            rank.last_progress_at = rank.last_progress_at.saturating_add(by);
            if let Some(t) = &mut rank.exit_unconfirmed_at {
                *t = t.saturating_add(by);
            }
        }
        if let Some(t) = &mut self.relaunch_not_before {
            *t = t.saturating_add(by);
        }
        if let JobState::Recovering(phase) = &mut self.state {
            match phase {
                RecoveryPhase::Fencing { deadline, .. } => *deadline = deadline.saturating_add(by),
                RecoveryPhase::Replacing { since } => *since = since.saturating_add(by),
                RecoveryPhase::Relaunching { retry_at, .. } => {
                    if let Some(t) = retry_at {
                        *t = t.saturating_add(by);
                    }
                }
            }
        }
    }

    /// A new job in `Pending` on `nodes` (already allocated by the cluster).
    pub fn new(id: JobId, spec: JobSpec, nodes: Vec<NodeId>, now: UnixMillis) -> Job {
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
                evidence: None,
                evidence_at: 0,
                kept: false,
            })
            .collect::<Vec<Rank>>();
        Job {
            rank_index: index::RankIndex::of(&ranks),
            id,
            spec,
            state: JobState::Pending,
            generation: Generation::default(),
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
            reforming: false,
            reform_step: 0,
            memory_held: BTreeMap::new(),
            durable_fallback: None,
            exit_blame: None,
            step_time_ms: 0,
            step_advanced_at: 0,
            unheard_at: None,
        }
    }

    /// Whether the job's own progress proves the ranks on `node` alive since `since`: a
    /// running job of two or more ranks that opted in (see [`JobSpec::progress_vouches`]), with
    /// a known step time, whose every other rank made progress after `since`.
    pub fn progress_vouches_for(&self, node: &str, since: UnixMillis) -> bool {
        self.spec.progress_vouches
            && self.state == JobState::Running
            && self.ranks.len() >= 2
            && self.step_time_ms > 0
            && self
                .ranks
                .iter()
                .filter(|r| r.node != node)
                .all(|r| r.progressed && r.last_progress_at > since)
    }

    /// The nodes of the current ranks, in rank order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.ranks.iter().map(|r| r.node.clone()).collect()
    }

    /// The rank `node` runs, if any (the first, should two share it): how reports that name a
    /// node find their rank. Looked up in the job's index of its ranks; a pass over the ranks
    /// while the index does not cover them (a job just restored).
    pub fn rank_of(&self, node: &str) -> Option<usize> {
        let found = if self.rank_index.covers(&self.ranks) {
            self.rank_index.find(&self.ranks, node)
        } else {
            self.ranks.iter().position(|r| r.node == node)
        };
        debug_assert_eq!(
            found,
            self.ranks.iter().position(|r| r.node == node),
            "job {}'s rank index is stale for {node}",
            self.id
        );
        found
    }

    /// Ranks waiting for a replacement node.
    pub fn ranks_needing_nodes(&self) -> Vec<usize> {
        (0..self.ranks.len())
            .filter(|&i| self.ranks[i].needs_node)
            .collect()
    }

    /// Name of the recovery phase, or "" outside recovery.
    pub fn phase(&self) -> &'static str {
        match &self.state {
            JobState::Recovering(p) => p.name(),
            _ => "",
        }
    }
}

pub mod blame;
mod index;
mod launch;
mod mark;
mod step;
mod tiers;
pub use mark::DurableMark;
pub use step::{step, UNCONFIRMED_EXIT_GRACE_MS};

#[cfg(test)]
mod blame_tests;
#[cfg(test)]
mod stall_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod adopted_tests;

#[cfg(test)]
mod policy_tests;
