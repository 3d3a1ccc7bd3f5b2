//! The core's boundary: every [`Input`] the cluster can be stepped with, every [`Command`] it
//! asks the shell to carry out, and the [`Reply`] a request gets.

use super::{CheckReport, Hello, NodeRecord};
use crate::checkpoint::{Checkpoint, FencedGeneration};
use crate::error::CoreError;
use crate::incident::Incident;
use crate::job::Job;
use crate::protocol::{
    AgentCommand, ClockEcho, CommandResult, Event, HealthSummary, JobRequest, Progress, Welcome,
    WorkerEvent,
};
use crate::{JobId, NodeId, UnixMillis};

/// What the coordinator's shell must do. Commands of one step are carried out in order, after
/// the state they follow from has been saved.
// Commands live for one step and are moved, never stored: boxing the large variants would only
// add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send a command to a node's agent (dropped if it is not connected).
    Send {
        /// The node.
        node: NodeId,
        /// The command.
        command: AgentCommand,
    },
    /// Close a node's stream.
    Disconnect {
        /// The node.
        node: NodeId,
        /// Why, told to the agent.
        reason: String,
    },
    /// Resolve the latest complete checkpoint for a job; the answer comes back as
    /// [`Input::CheckpointResolved`].
    ResolveCheckpoint {
        /// The job.
        job_id: JobId,
        /// Where its checkpoints are.
        uri: String,
        /// Generations whose later checkpoints must be skipped.
        fenced: Vec<FencedGeneration>,
        /// Check each file's SHA-256 against the marker's manifest, not only its size.
        verify_checksums: bool,
    },
    /// Tell operators (event stream, logs).
    Publish(Event),
    /// Ask the replacement provider for `count` new hosts for `job_id`; the answer comes back
    /// as [`Input::ProvisionResult`].
    Provision {
        /// Ties the answer to the request.
        request_id: u64,
        /// The job.
        job_id: JobId,
        /// How many hosts.
        count: u32,
    },
    /// Have the provider terminate, drain or power off a fenced host; the answer comes back as
    /// [`Input::FenceHostResult`].
    FenceHost {
        /// The node.
        node: NodeId,
        /// Its hostname, as its agent reported it.
        hostname: String,
        /// Its address, as its agent reported it.
        address: String,
        /// Why it was fenced.
        reason: String,
    },
    /// Export finished jobs and closed incidents durably (retention): the core forgets them
    /// only when [`Input::Archived`] says they are written, and keeps them when it failed.
    Archive {
        /// The finished jobs, oldest first.
        jobs: Vec<Job>,
        /// The closed incidents, oldest first.
        incidents: Vec<Incident>,
    },
    /// The answer to request `request` (an agent's hello, an operator call).
    Reply {
        /// The request it answers.
        request: u64,
        /// The answer.
        reply: Result<Reply, CoreError>,
    },
}

/// An answer to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A hello was accepted.
    Welcome(Welcome),
    /// The job as it is after the request.
    Job(Box<Job>),
    /// The node as it is after the request.
    Node(Box<NodeRecord>),
    /// An operator's check finished.
    Check {
        /// The node checked.
        node_id: NodeId,
        /// What its scripts did.
        report: CheckReport,
    },
}

/// Everything that can happen to the cluster, as one value: what agents report, what operators
/// ask, what the shell found out for the core, and the clock. [`Cluster::step`](super::Cluster::step)
/// takes one.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An agent said hello on connection `conn`; answered by a [`Reply::Welcome`] (or a refusal)
    /// to `request`, which the shell sends before any other command to that node.
    Hello {
        /// Ties the reply to the stream.
        request: u64,
        /// The stream's connection id.
        conn: u64,
        /// What the hello said.
        hello: Hello,
    },
    /// A heartbeat, with the agent's health when it changed.
    Heartbeat {
        /// The node.
        node: NodeId,
        /// When the agent sent it (agent clock).
        sent_at: UnixMillis,
        /// The agent's health.
        health: Option<HealthSummary>,
        /// The agent's echo of the coordinator's last clock stamp, for a round-trip offset
        /// measurement; `None` from agents that do not echo.
        echo: Option<ClockEcho>,
    },
    /// A health check changed at once (a check turned fatal, or cleared).
    HealthReport {
        /// The node.
        node: NodeId,
        /// The agent's health.
        health: HealthSummary,
    },
    /// A worker started or exited.
    Worker {
        /// The node.
        node: NodeId,
        /// What happened.
        event: WorkerEvent,
    },
    /// A worker made progress.
    Progress {
        /// The node.
        node: NodeId,
        /// How far.
        progress: Progress,
    },
    /// An agent's sample of its worker's processes (sent every heartbeat while one runs).
    Evidence {
        /// The node.
        node: NodeId,
        /// What the agent saw.
        evidence: crate::evidence::WorkerEvidence,
    },
    /// An agent's answer to [`AgentCommand::DumpStacks`]: its worker's stacks as text.
    Stacks {
        /// The node.
        node: NodeId,
        /// The incident they belong to.
        incident_id: u64,
        /// `py-spy dump` output per Python process, or why there is none.
        text: String,
    },
    /// A lifecycle script's result.
    ScriptResult {
        /// The node.
        node: NodeId,
        /// The result.
        result: CommandResult,
    },
    /// The agent announced an orderly shutdown.
    Goodbye {
        /// The node.
        node: NodeId,
        /// It will come back (a restart or an upgrade).
        restarting: bool,
    },
    /// Agents that reached the coordinator but were told to come back later (admission
    /// control during a connect storm): they are alive, so a node among them that is away
    /// (a restarted coordinator's reconnect grace, the agent-lost grace) has its grace
    /// extended to at least `until` instead of counting as lost while it waits its turn.
    AdmissionWait {
        /// The refused agents' node ids (unknown ones are ignored).
        nodes: Vec<NodeId>,
        /// Until when each of them may be away.
        until: UnixMillis,
    },
    /// The stream of connection `conn` closed.
    Disconnected {
        /// The node.
        node: NodeId,
        /// The connection that closed; an older one's close is ignored.
        conn: u64,
    },
    /// An operator submits a job; answered by [`Reply::Job`].
    Submit {
        /// Ties the reply to the call.
        request: u64,
        /// The job.
        job: JobRequest,
    },
    /// An operator stops a job; answered by [`Reply::Job`].
    StopJob {
        /// Ties the reply to the call.
        request: u64,
        /// The job.
        job_id: JobId,
    },
    /// An operator cordons a node; answered by [`Reply::Node`].
    Cordon {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// An operator uncordons (repairs) a node; answered by [`Reply::Node`].
    Uncordon {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: NodeId,
    },
    /// An operator asks for a node's deep check; answered by [`Reply::Check`] when it ends.
    CheckNode {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: NodeId,
    },
    /// An operator asks a node's agent to restart in place; answered by [`Reply::Node`].
    RestartAgent {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The answer to a [`Command::ResolveCheckpoint`].
    CheckpointResolved {
        /// The job.
        job_id: JobId,
        /// The newest complete checkpoint, none, or why it could not be found.
        result: Result<Option<Checkpoint>, String>,
        /// Newer checkpoints passed over because they failed verification ("step-N: reason").
        skipped: Vec<String>,
    },
    /// The answer to a [`Command::Provision`].
    ProvisionResult {
        /// The job.
        job_id: JobId,
        /// How many hosts were asked for.
        count: u32,
        /// The hosts started, or why not.
        result: Result<Vec<String>, String>,
    },
    /// The answer to a [`Command::FenceHost`].
    FenceHostResult {
        /// The node.
        node: NodeId,
        /// The provider's output, or why it failed.
        result: Result<String, String>,
    },
    /// The answer to a [`Command::Archive`]: written (the records are forgotten), or why not
    /// (they are kept and archived again later).
    Archived {
        /// Ok once every record is written durably.
        result: Result<(), String>,
    },
    /// The failure detector's clock: timeouts, stalls, recovery deadlines; retention.
    Tick,
}
