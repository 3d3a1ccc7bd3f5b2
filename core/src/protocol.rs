//! What crosses the core's boundary, in the core's own terms: what agents report, what the core
//! asks of them, what operators submit and what they are told. The coordinator's wire layer
//! turns these into protobuf messages and back; nothing here knows about the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::incident::Incident;
use crate::job::Job;
use crate::{Generation, JobId, NodeId, Term, UnixMillis};

/// A command for one agent. Every command carries the coordinator's term: agents refuse terms
/// older than the newest they have seen.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    /// Start this node's ranks of a job's generation.
    Launch(Launch),
    /// Stop the workers of a job's generation (SIGTERM, grace, SIGKILL of the process tree).
    Stop(Stop),
    /// The node is fenced: stop everything and accept nothing but a new term.
    Fence {
        /// Why, for the agent's log.
        reason: String,
        /// The coordinator's term.
        term: Term,
    },
    /// Run one lifecycle script by name and report its result.
    RunScript(RunScript),
    /// Re-execute the agent in place; its workers keep running.
    RestartAgent {
        /// Why, for the agent's log.
        reason: String,
        /// The coordinator's term.
        term: Term,
    },
    /// Dump the Python stacks of a stalled generation's worker (before stopping it: the agent
    /// carries out commands in order) and answer with [`crate::cluster::Input::Stacks`].
    DumpStacks {
        /// The job.
        job_id: JobId,
        /// The stalled generation.
        generation: Generation,
        /// The incident the stacks belong to.
        incident_id: u64,
        /// The coordinator's term.
        term: Term,
    },
    /// The coordinator's clock, for the agent to echo in its next heartbeat ([`ClockEcho`]): a
    /// round trip that measures the node's clock offset. Sent every few heartbeat intervals.
    Ping {
        /// The coordinator's clock when it was sent.
        coordinator_unix_ms: UnixMillis,
    },
}

/// The agent's echo of the coordinator's last clock stamp (a welcome or a [`AgentCommand::Ping`]):
/// with the heartbeat's own send time and the time it arrived, the four timestamps of an
/// NTP-style offset measurement. Agents too old to echo send none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockEcho {
    /// t1: the coordinator's clock in the stamp it sent (coordinator clock).
    pub coordinator_sent_at: UnixMillis,
    /// t2: when the agent received it (agent clock).
    pub agent_received_at: UnixMillis,
}

/// One node's part of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The job.
    pub job_id: JobId,
    /// The generation this launch starts; agents refuse one they already ran.
    pub generation: Generation,
    /// The training command (placeholders substituted by the agent).
    pub command: Vec<String>,
    /// Extra environment of the job.
    pub env: BTreeMap<String, String>,
    /// This node's rank among the job's nodes.
    pub node_rank: u32,
    /// How many nodes the generation has.
    pub nnodes: u32,
    /// Address of node rank 0.
    pub master_addr: String,
    /// A port fresh for this generation, so a zombie of an older one cannot join.
    pub master_port: u32,
    /// Rendezvous id, fresh for this generation.
    pub rdzv_id: String,
    /// Checkpoint to resume from (empty: fresh start).
    pub resume_from: String,
    /// Step of that checkpoint.
    pub resume_step: u64,
    /// Where the job writes checkpoints.
    pub checkpoint_uri: String,
    /// How progress is read from the worker's output.
    pub progress_regex: String,
    /// SIGTERM → SIGKILL grace when the worker is stopped.
    pub stop_grace_ms: u64,
    /// The coordinator's term.
    pub term: Term,
    /// How the agent starts the command: as given, or one process per local rank.
    pub launcher: crate::job::Launcher,
    /// Re-form in place: the node's running worker of this job is kept and told this
    /// generation (an in-process restart) instead of being replaced by a new one. An agent
    /// with no such worker starts one as for any launch.
    pub reform: bool,
}

/// Stop a job's workers on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    /// The job.
    pub job_id: JobId,
    /// The generation to stop (older and equal ones).
    pub generation: Generation,
    /// SIGTERM → SIGKILL grace.
    pub grace_ms: u64,
    /// Why, for the agent's log.
    pub reason: String,
    /// The coordinator's term.
    pub term: Term,
}

/// Run one lifecycle script.
#[derive(Debug, Clone, PartialEq)]
pub struct RunScript {
    /// Echoed in the result.
    pub command_id: String,
    /// A name inside the agent's script directory.
    pub script: String,
    /// Arguments.
    pub args: Vec<String>,
    /// The agent kills the script's process group after this.
    pub timeout_ms: u64,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// The coordinator's term.
    pub term: Term,
}

/// What the coordinator answers an agent's hello with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The node id the agent is known by.
    pub node_id: NodeId,
    /// How often the agent must send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// The coordinator's clock when it answered.
    pub coordinator_unix_ms: UnixMillis,
    /// The coordinator's term.
    pub term: Term,
}

/// The state of one health check: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HealthState {
    /// Not reported.
    #[default]
    Unspecified,
    /// Fine.
    Healthy,
    /// Works, with a warning.
    Degraded,
    /// Broken; the action says what would repair it.
    Unhealthy,
    /// The probe could not tell (it hung or failed).
    Unknown,
    /// Not on this host (no GPU, no driver).
    NotApplicable,
}

/// What a check suggests doing about its finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HealthAction {
    /// Nothing.
    #[default]
    None,
    /// Restart the worker in place.
    RestartWorker,
    /// Reset the GPU.
    ResetGpu,
    /// Reboot the host.
    Reboot,
    /// Take the node out and replace it.
    ReplaceNode,
}

/// One check's finding.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The check's name (`xid`, `gpu_count`, `disk`…).
    pub check: String,
    /// Its state.
    pub state: HealthState,
    /// Why, in words.
    pub reason: String,
    /// What it suggests.
    pub action: HealthAction,
    /// When the agent observed it (agent clock).
    pub observed_at: UnixMillis,
}

/// A node's health as its agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthSummary {
    /// The worst state of all checks.
    pub state: HealthState,
    /// Every check.
    pub checks: Vec<HealthCheck>,
}

impl HealthSummary {
    /// One unhealthy check that asks for the node to be replaced (a fatal XID, a lost GPU).
    pub fn fatal(check: &str, reason: &str, observed_at: UnixMillis) -> HealthSummary {
        HealthSummary {
            state: HealthState::Unhealthy,
            checks: vec![HealthCheck {
                check: check.to_string(),
                state: HealthState::Unhealthy,
                reason: reason.to_string(),
                action: HealthAction::ReplaceNode,
                observed_at,
            }],
        }
    }

    /// The first check that asks for the node to be replaced, as `check: reason`.
    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal_check()
            .map(|c| format!("{}: {}", c.check, c.reason))
    }

    /// True when any check is Unhealthy: the node gets no new work (see
    /// [`crate::cluster::NodeRecord::allocatable`]).
    pub fn has_unhealthy(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.state == HealthState::Unhealthy)
    }

    /// The first check that asks for the node to be replaced.
    pub fn fatal_check(&self) -> Option<&HealthCheck> {
        self.checks
            .iter()
            .find(|c| c.state == HealthState::Unhealthy && c.action == HealthAction::ReplaceNode)
    }
}

/// A worker started or exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEvent {
    /// The job.
    pub job_id: JobId,
    /// The generation the worker belongs to.
    pub generation: Generation,
    /// When it happened (agent clock).
    pub at: UnixMillis,
    /// What happened.
    pub kind: WorkerEventKind,
}

/// What happened to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEventKind {
    /// It started with this pid.
    Started {
        /// The worker's process id.
        pid: u32,
    },
    /// It exited.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal, when a signal ended it.
        signal: Option<i32>,
        /// The agent stopped it (a Stop or a Fence), so it is no fault.
        stopped_by_agent: bool,
    },
}

/// Training progress read from a worker's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The job.
    pub job_id: JobId,
    /// The worker's generation.
    pub generation: Generation,
    /// The step it reached.
    pub step: u64,
    /// The memory-tier state the node holds for the job (newest first, at most
    /// [`crate::checkpoint::MAX_MEMORY_HOLDINGS`]); empty when the job keeps none.
    pub memory: Vec<crate::checkpoint::MemoryHolding>,
    /// Why the generation's workers did not use the memory tier they were launched to resume
    /// from, and loaded the durable checkpoint instead (`python/holdfast/memtier.py`'s
    /// fallback, as the agent found it); empty when they did not fall back.
    pub state_fallback: String,
}

/// A lifecycle script's result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandResult {
    /// The `RunScript`'s command id.
    pub command_id: String,
    /// Exit code 0 within the timeout.
    pub ok: bool,
    /// What happened, in a line.
    pub message: String,
    /// Tail of the combined output.
    pub output: String,
    /// The exit code, when it exited.
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration_ms: u64,
}

/// A job as an operator submits it, before validation ([`crate::job::JobSpec::validate`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRequest {
    /// The job's id; empty: the coordinator picks one.
    pub job_id: String,
    /// The training command.
    pub command: Vec<String>,
    /// How many nodes.
    pub nodes: u32,
    /// Where checkpoints are (`file://`, `s3://`); empty: none.
    pub checkpoint_uri: String,
    /// No progress for this long is a hang (0: off).
    pub stall_timeout_s: f64,
    /// Restarts in place allowed (0: the coordinator's default).
    pub restart_budget: u32,
    /// How progress is read (empty: the default).
    pub progress_regex: String,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Steps in all, for progress display (0: unknown).
    pub total_steps: u64,
    /// The job may shrink to this many nodes when no replacement comes (0: never shrinks).
    pub min_nodes: u32,
    /// Whether progress vouches for a silent node's liveness (unset: yes; see
    /// [`crate::job::JobSpec::progress_vouches`]).
    pub progress_vouches: Option<bool>,
    /// Ranks per node under holdfast's native launcher (unset: the command is its own
    /// launcher, e.g. torchrun).
    pub nproc_per_node: Option<u32>,
    /// Modules standby interpreters import ahead of a relaunch (native launcher only).
    pub warm_imports: Vec<String>,
    /// The only nodes the job may run on or be repaired with, by node id (a Slurm
    /// allocation's nodes); empty: any node.
    pub allowed_nodes: Vec<String>,
    /// What a recovery does with surviving ranks: `relaunch` (empty: the default) or
    /// `in_process` (see [`crate::job::RestartMode`]).
    pub restart: String,
}

/// What kind of thing an [`Event`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A node changed state.
    NodeState,
    /// A job changed state.
    JobState,
    /// An incident opened or moved on.
    Incident,
    /// A job made progress (rate-limited).
    Progress,
    /// Something worth a log line.
    Log,
    /// Something needs an operator (the circuit breaker opened).
    Alert,
}

impl EventKind {
    /// The name on the wire's string field and in logs.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::NodeState => "node_state",
            EventKind::JobState => "job_state",
            EventKind::Incident => "incident",
            EventKind::Progress => "progress",
            EventKind::Log => "log",
            EventKind::Alert => "alert",
        }
    }
}

/// What an event is about, as it was when the event was made.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// A job.
    Job(Box<Job>),
    /// A node.
    Node(Box<crate::cluster::NodeRecord>),
    /// An incident.
    Incident(Box<Incident>),
}

/// Something operators are told (event stream, logs).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When.
    pub at: UnixMillis,
    /// What kind.
    pub kind: EventKind,
    /// The job it concerns (empty: none).
    pub job_id: String,
    /// The node it concerns (empty: none).
    pub node_id: String,
    /// One line for people.
    pub message: String,
    /// The thing it is about, as it was then.
    pub subject: Option<Subject>,
}
