//! The coordinator's decision core: the node registry, the jobs, the incidents and the failure
//! detector, driven by agent messages, operator requests and clock ticks.
//!
//! Everything here is synchronous and pure apart from mutating `self`: each method takes `now`
//! and returns [`Command`]s for the async shell (`holdfast_coordinator::server`) to carry out.
//! It never touches a socket, a file or the clock, so every decision can be tested with a fake
//! clock.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::CoordinatorConfig;
use crate::error::CoreError;
use crate::incident::{self, Incident};
use crate::job::{self, FaultCause, Job, JobEffect, JobEvent, JobLimits, JobSpec, JobState};
use crate::node::{self, Link, NodeEvent, NodeState};
use crate::protocol::{
    AgentCommand, ClockEcho, Event, EventKind, HealthAction, HealthSummary, JobRequest, Launch,
    Progress, Stop, Subject, Welcome, WorkerEvent, WorkerEventKind,
};
use crate::{Generation, JobId, NodeId, Term, UnixMillis};

mod breaker;
mod detector;
mod health;
mod io;
mod liveness;
mod operators;
mod placement;
mod provisioning;
mod reconcile;
mod records;
mod recovery;
mod retention;
mod scripts;
mod survey;
mod table;
pub use io::{Command, Input, Reply};
pub use records::Changes;
pub use scripts::{CheckPurpose, CheckReport, ScriptOutcome, ScriptRun};
pub use table::NodeTable;

/// A node's role, from its agent's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Runs jobs: taken first for a new job, last as a replacement.
    Worker,
    /// Held back for recovery: taken first as a replacement, last for a new job.
    Spare,
}

/// Everything the coordinator knows about one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The agent's `node_id`, the registry key; another agent claiming it while this one is
    /// connected is refused.
    pub id: NodeId,
    /// The host's name as its agent reports it: for operators and the provider's fence call.
    pub hostname: String,
    /// Worker or spare: decides the order nodes are taken in.
    pub role: Role,
    /// Its lifecycle state; changed only through [`crate::node::step`].
    pub state: NodeState,
    /// How its agent is reached now (connected, away, lost, vouched for, down). Not stored: a
    /// restarted coordinator gives every node that may return its reconnect grace.
    #[serde(skip)]
    pub link: Link,
    /// Address other hosts reach this one at (master address for rank 0).
    pub address: String,
    /// The host's kernel boot id; with `agent_started_at` it recognises the same agent
    /// process coming back over a new stream (the old one half-open).
    pub boot_id: String,
    /// The agent's version, for operators following a rolling upgrade.
    pub agent_version: String,
    /// The GPUs the agent found, for operators.
    pub gpus: Vec<GpuInfo>,
    /// Coordinator time of the last heartbeat (or hello). Not stored: it changes with every
    /// heartbeat, and a restarted coordinator gives every node a reconnect grace instead.
    #[serde(skip)]
    pub last_heartbeat_at: UnixMillis,
    /// Agent clock minus coordinator clock. Measured from round trips when the agent echoes
    /// the coordinator's clock stamps (NTP-style, the sample of the shortest recent round trip);
    /// from an agent that does not echo, estimated one way from heartbeats (the largest recent
    /// sample, whose delay is smallest). Relearned after a restart.
    #[serde(skip)]
    pub clock_offset_ms: i64,
    /// The round trip of the sample `clock_offset_ms` comes from; `None` while it is a one-way
    /// estimate. Half of it bounds the offset's error.
    #[serde(skip)]
    pub clock_round_trip_ms: Option<i64>,
    #[serde(skip)]
    offset_samples: VecDeque<i64>,
    #[serde(skip)]
    round_trips: VecDeque<detector::RoundTrip>,
    /// When the coordinator last stamped its clock for the agent to echo (welcome or ping).
    #[serde(skip)]
    pinged_at: UnixMillis,
    /// The best evidence of when the fault being handled happened, set while a node fault
    /// drives its jobs: the incident it opens takes its fault time from it.
    #[serde(skip)]
    fault_evidence: Option<(UnixMillis, incident::FaultTimeSource)>,
    /// The agent's latest health checks, for operators; a fatal one faults the node as it
    /// arrives. Not stored: every heartbeat carries it.
    #[serde(skip)]
    pub health: HealthSummary,
    /// The worker the agent last reported: (job, generation, pid).
    pub worker: Option<(JobId, Generation, u32)>,
    /// The step its worker last reported, for operators. Not stored: the next progress report
    /// brings it.
    #[serde(skip)]
    pub last_step: u64,
    /// When the connected agent process started (agent clock, unix ms).
    #[serde(default)]
    pub agent_started_at: UnixMillis,
    /// Lifecycle scripts the node is running now (bootstrap, deep check); boxed, as nearly
    /// every node runs none (one record per node: 150 bytes each otherwise).
    #[serde(skip)]
    pub script_run: Option<Box<ScriptRun>>,
    /// The last bootstrap/deep check the node ran, kept for operators.
    #[serde(default)]
    pub last_check: Option<CheckReport>,
    /// Set when a health finding (reset GPU, reboot) drained the node: no new work; it leaves
    /// its job at the job's next recovery or at once (`drain_replace`). Cleared when the host
    /// comes back rebooted (a new boot id: it rejoins through its checks) or an operator
    /// uncordons it.
    #[serde(default)]
    pub drained: Option<String>,
    /// Recent health findings on the node and the action each was given, for escalation
    /// (health.rs). Not stored: a restarted coordinator starts counting afresh.
    #[serde(skip)]
    findings: VecDeque<(UnixMillis, HealthAction)>,
}

impl NodeRecord {
    /// May be given to a job now: ready, connected, not in the middle of a script run, and no
    /// health check Unhealthy. The one place that decides it (new jobs and replacements alike).
    ///
    /// Degraded checks do not bar a node: Degraded means it works with a warning (an
    /// application XID that asks only for a worker restart, a thermal or clock warning), and
    /// draining on it would empty a cluster of healthy hardware over application bugs. Unknown
    /// (a probe that did not answer) does not bar it either: a wedged probe is not a broken GPU,
    /// and the probe's own timeout turns a truly lost GPU into an Unhealthy finding.
    pub fn allocatable(&self) -> bool {
        self.state.is_ready()
            && self.link.is_connected()
            && self.script_run.is_none()
            && !self.health.has_unhealthy()
            && self.drained.is_none()
    }
}

/// One GPU of a node, as its agent found it at hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The device's NVML index on the host.
    pub index: u32,
    /// The device's UUID: names it across reboots, when indices may change.
    pub uuid: String,
    /// The model name.
    pub name: String,
    /// Total device memory.
    pub memory_bytes: u64,
}

/// Work an input left for later in the same step: handled from a queue, so that no handler
/// calls back into another.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Work {
    /// A node became ready: give it to a job that waits for one.
    FindReplacements,
}

/// What an agent's hello carries, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The id the agent claims; refused while another agent's live stream holds it.
    pub node_id: NodeId,
    /// The host's name.
    pub hostname: String,
    /// Worker or spare, from the agent's config.
    pub role: Role,
    /// Address other hosts reach it at (rank 0's is the master address).
    pub address: String,
    /// The host's kernel boot id; with `agent_started_at` it shows whether this is the node's
    /// own agent process coming back (its new stream takes over) or another agent.
    pub boot_id: String,
    /// The agent's version.
    pub agent_version: String,
    /// The GPUs the agent found.
    pub gpus: Vec<GpuInfo>,
    /// When the agent sent it (agent clock): the first clock-offset sample.
    pub sent_at: UnixMillis,
    /// What the agent runs now: (job, generation, pid, running).
    pub worker: Option<(JobId, Generation, u32, bool)>,
    /// When the agent process started (agent clock, unix ms): a new value means it restarted.
    pub agent_started_at: UnixMillis,
}

/// The registry, the jobs and the incidents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(skip)]
    config: CoordinatorConfig,
    /// The coordinator's term: commands carry it, agents refuse older terms.
    pub term: Term,
    /// Every node that ever said hello, by id; fenced and retired ones stay, so a returning
    /// agent finds its state.
    pub nodes: NodeTable,
    /// The jobs, by id; finished ones stay for operators until retention archives them
    /// (retention.rs).
    pub jobs: BTreeMap<JobId, Job>,
    /// The incidents, in the order opened (ascending ids); closed ones stay until retention
    /// archives them.
    pub incidents: Vec<Incident>,
    next_job: u64,
    /// The id the next incident gets: stored, so an id is never reused after the incidents
    /// before it were archived.
    #[serde(default)]
    next_incident: u64,
    /// The highest generation of any job retention archived: a new job starts above it, so an
    /// agent that ran an archived job of the same id never takes its launches for stale ones.
    #[serde(default)]
    archived_generation: Generation,
    /// What the shell is archiving now (retention.rs): forgotten when it says it is written.
    #[serde(skip)]
    archiving: Option<retention::Archiving>,
    /// When retention looks for records to archive next.
    #[serde(skip)]
    next_sweep_at: UnixMillis,
    /// Last time a progress event was published per job (progress events are rate-limited).
    #[serde(skip)]
    progress_published: BTreeMap<JobId, UnixMillis>,
    /// Last command id handed out (lifecycle scripts).
    #[serde(default)]
    next_command: u64,
    /// The circuit breaker on fencing (breaker.rs).
    #[serde(skip)]
    breaker: breaker::FenceBreaker,
    /// Hosts asked of the provider and not yet arrived, per job.
    #[serde(skip)]
    provisioning: BTreeMap<String, u32>,
    /// Since when a silence storm holds fences (detector.rs); `None` when there is none.
    #[serde(skip)]
    silence_storm: Option<UnixMillis>,
    /// When the last tick came: a much longer gap is time the core could not observe
    /// (detector.rs).
    #[serde(skip)]
    last_tick_at: Option<UnixMillis>,
    /// When the core last found time it could not observe (at least a heartbeat interval):
    /// streams that close just after were likely closed by their agents for want of answers.
    #[serde(skip)]
    observed_again_at: Option<UnixMillis>,
    /// Work left by the input being stepped (see [`Work`]).
    #[serde(skip)]
    work: VecDeque<Work>,
    /// Bumped by every change that must survive a restart (a state transition, a generation, an
    /// incident, a connect); the shell saves the state when it moved. Heartbeats and progress
    /// alone do not bump it, so they cost no write.
    #[serde(skip)]
    durable_version: u64,
    /// The records changed since the shell last took them (records.rs).
    #[serde(skip)]
    dirty: records::Dirty,
}

const PROGRESS_PUBLISH_EVERY_MS: i64 = 250;
const OFFSET_SAMPLES: usize = 16;

impl Cluster {
    /// An empty cluster at term 1 that decides with `config` (already validated); a restarted
    /// coordinator uses [`Cluster::restore`] instead.
    pub fn new(config: CoordinatorConfig) -> Cluster {
        Cluster {
            config,
            term: Term::from(1),
            nodes: NodeTable::new(),
            jobs: BTreeMap::new(),
            incidents: Vec::new(),
            next_job: 1,
            next_incident: 1,
            archived_generation: Generation::default(),
            archiving: None,
            next_sweep_at: 0,
            progress_published: BTreeMap::new(),
            next_command: 0,
            breaker: breaker::FenceBreaker::default(),
            provisioning: BTreeMap::new(),
            durable_version: 0,
            dirty: records::Dirty::default(),
            work: VecDeque::new(),
            last_tick_at: None,
            observed_again_at: None,
            silence_storm: None,
        }
    }

    /// The one entry point: takes what happened and the time, changes the state, and returns
    /// what the shell must do, in order. Work an input leaves (a node that became ready may be
    /// a job's replacement) is handled from a queue before it returns.
    pub fn step(&mut self, input: Input, now: UnixMillis) -> Vec<Command> {
        let reply = |request: u64, result: Result<(Reply, Vec<Command>), CoreError>| match result {
            Ok((reply, mut fx)) => {
                fx.insert(
                    0,
                    Command::Reply {
                        request,
                        reply: Ok(reply),
                    },
                );
                fx
            }
            Err(e) => vec![Command::Reply {
                request,
                reply: Err(e),
            }],
        };
        let node_reply = |r: Result<(NodeRecord, Vec<Command>), CoreError>| {
            r.map(|(n, fx)| (Reply::Node(Box::new(n)), fx))
        };
        let job_reply = |r: Result<(Job, Vec<Command>), CoreError>| {
            r.map(|(j, fx)| (Reply::Job(Box::new(j)), fx))
        };
        let mut fx = match input {
            Input::Hello {
                request,
                conn,
                hello,
            } => reply(
                request,
                self.hello(conn, hello, now)
                    .map(|(w, fx)| (Reply::Welcome(w), fx)),
            ),
            Input::Heartbeat {
                node,
                sent_at,
                health,
                echo,
            } => self.heartbeat(&node, sent_at, health, echo, now),
            Input::HealthReport { node, health } => self.health_report(&node, health, now),
            Input::Worker { node, event } => self.worker_event(&node, event, now),
            Input::Progress { node, progress } => self.progress(&node, progress, now),
            Input::Evidence { node, evidence } => self.worker_evidence(node, evidence, now),
            Input::Stacks {
                node,
                incident_id,
                text,
            } => self.stacks(&node, incident_id, text),
            Input::ScriptResult { node, result } => self.command_result(&node, result, now),
            Input::Goodbye { node, restarting } => self.goodbye(&node, restarting, now),
            Input::Disconnected { node, conn } => self.disconnected(&node, conn, now),
            Input::AdmissionWait { nodes, until } => {
                self.admission_wait(&nodes, until);
                Vec::new()
            }
            Input::Submit { request, job } => reply(request, job_reply(self.submit(job, now))),
            Input::StopJob { request, job_id } => {
                reply(request, job_reply(self.stop_job(&job_id, now)))
            }
            Input::Cordon {
                request,
                node,
                reason,
            } => reply(request, node_reply(self.cordon(&node, &reason, now))),
            Input::Uncordon { request, node } => {
                reply(request, node_reply(self.uncordon(&node, now)))
            }
            Input::CheckNode { request, node } => match self.check_node(&node, request, now) {
                Ok(fx) => fx,
                Err(e) => vec![Command::Reply {
                    request,
                    reply: Err(e),
                }],
            },
            Input::RestartAgent {
                request,
                node,
                reason,
            } => reply(request, node_reply(self.restart_agent(&node, &reason, now))),
            Input::CheckpointResolved {
                job_id,
                result,
                skipped,
            } => self.checkpoint_resolved(&job_id, result, skipped, now),
            Input::ProvisionResult {
                job_id,
                count,
                result,
            } => self.provision_result(&job_id, count, result, now),
            Input::FenceHostResult { node, result } => self.fence_host_result(&node, result, now),
            Input::Tick => {
                let mut fx = self.tick(now);
                self.sweep_retention(now, &mut fx);
                fx
            }
            Input::Archived { result } => self.archived(result, now),
        };
        while let Some(work) = self.work.pop_front() {
            match work {
                Work::FindReplacements => self.find_replacements(now, &mut fx),
            }
        }
        fx
    }

    /// Leaves work for the end of the step (once: the same work queued twice is done once).
    fn defer(&mut self, work: Work) {
        if !self.work.contains(&work) {
            self.work.push_back(work);
        }
    }

    /// The settings the core decides with; the shell takes its own (tick, TLS, tokens) from
    /// them too.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The jobs with a rank on `node_id` whose state passes `keep`.
    fn jobs_on(&self, node_id: &str, keep: impl Fn(&JobState) -> bool) -> Vec<JobId> {
        self.jobs
            .values()
            .filter(|j| keep(&j.state) && j.rank_of(node_id).is_some())
            .map(|j| j.id.clone())
            .collect()
    }

    fn limits(&self) -> JobLimits {
        JobLimits {
            stop_deadline_ms: self.config.stop_deadline_ms,
            replacement_timeout_ms: self.config.replacement_timeout_ms,
            resolve_retry_ms: self.config.checkpoint_resolve_retry_ms,
            resolve_attempts: self.config.checkpoint_resolve_attempts,
            startup_grace_ms: self.config.startup_grace_ms,
            restart_backoff_ms: self.config.restart_backoff_ms,
            restart_backoff_max_ms: self.config.restart_backoff_max_ms,
            quarantine_after: self.config.quarantine_after,
            quarantine_window_ms: self.config.quarantine_window_ms,
            // A silent host is declared a heartbeat timeout after it was last heard (at most
            // that after a peer's exit it caused); as much again for ticks a loaded
            // coordinator runs late.
            peer_loss_window_ms: 2 * self.config.heartbeat_timeout_ms + self.config.tick_ms,
        }
    }

    fn node_event(
        &mut self,
        node_id: &str,
        event: NodeEvent,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        match node::step(&node.state, &event) {
            Ok(next) if next != node.state => {
                let from = node.state.name();
                let fenced = matches!(next, NodeState::Fenced { .. });
                node.state = next;
                if fenced {
                    self.breaker.count_fence(now);
                }
                let detail = match &node.state {
                    NodeState::Fenced { cause } => format!(": {cause}"),
                    NodeState::Cordoned { reason } => format!(": {reason}"),
                    _ => String::new(),
                };
                let message = format!("node {node_id} {from} → {}{detail}", node.state.name());
                self.touch_node(node_id);
                let view = Box::new(self.nodes[node_id].clone());
                fx.push(Command::Publish(Event {
                    at: now,
                    kind: EventKind::NodeState,
                    job_id: String::new(),
                    node_id: node_id.to_string(),
                    message,
                    subject: Some(Subject::Node(view)),
                }));
                if self.nodes[node_id].state.is_ready() {
                    self.defer(Work::FindReplacements);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(node = node_id, "ignored node event: {e}"),
        }
    }

    // ----- events ----------------------------------------------------------------------------

    fn incident_event(&self, incident: &Incident, now: UnixMillis) -> Command {
        Command::Publish(Event {
            at: now,
            kind: EventKind::Incident,
            job_id: incident.job_id.to_string(),
            node_id: incident.node_id.to_string(),
            message: format!(
                "incident {} on {}: {} ({}) → {}",
                incident.id,
                incident.node_id,
                incident.cause,
                incident.detail,
                incident.phase()
            ),
            subject: Some(Subject::Incident(Box::new(incident.clone()))),
        })
    }

    fn log_event(&self, node_id: &str, job_id: &str, message: String, now: UnixMillis) -> Command {
        Command::Publish(Event {
            at: now,
            kind: EventKind::Log,
            job_id: job_id.to_string(),
            node_id: node_id.to_string(),
            message,
            subject: None,
        })
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod agent_crash_tests;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod clock_tests;

#[cfg(test)]
mod health_tests;

#[cfg(test)]
mod retention_tests;

#[cfg(test)]
mod allowed_tests;
#[cfg(test)]
mod memtier_tests;
