//! The coordinator's decision core: the node registry, the jobs, the incidents and the failure
//! detector, driven by agent messages, operator requests and clock ticks.
//!
//! Everything here is synchronous and pure apart from mutating `self`: each method takes `now`
//! and returns [`Command`]s for the async shell ([`crate::server`]) to carry out. It never
//! touches a socket, a file or the clock, so every decision can be tested with a fake clock.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, FencedGeneration};
use crate::config::CoordinatorConfig;
use crate::error::CoreError;
use crate::incident::{self, Incident};
use crate::job::{self, FaultCause, Job, JobEffect, JobEvent, JobLimits, JobSpec, JobState};
use crate::node::{self, NodeEvent, NodeState};
use crate::protocol::{
    AgentCommand, CommandResult, Event, EventKind, HealthSummary, JobRequest, Launch, Progress,
    Stop, Subject, Welcome, WorkerEvent, WorkerEventKind,
};
use crate::UnixMillis;

mod breaker;
mod lifecycle;
mod provisioning;
pub use lifecycle::{CheckPurpose, CheckReport, ScriptOutcome, ScriptRun};

/// A node's role, from its agent's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Worker,
    Spare,
}

/// Everything the coordinator knows about one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub state: NodeState,
    /// The live stream's connection id; `None` while the agent is away. Stream-closed reports of
    /// an older connection are ignored.
    #[serde(skip)]
    pub conn: Option<u64>,
    /// Address other hosts reach this one at (master address for rank 0).
    pub address: String,
    pub boot_id: String,
    pub agent_version: String,
    pub gpus: Vec<GpuInfo>,
    /// Coordinator time of the last heartbeat (or hello). Not stored: it changes with every
    /// heartbeat, and a restarted coordinator gives every node a reconnect grace instead.
    #[serde(skip)]
    pub last_heartbeat_at: UnixMillis,
    /// Agent clock minus coordinator clock, estimated from heartbeats (upper bound of the
    /// one-way delay removed by taking the largest recent sample). Relearned after a restart.
    #[serde(skip)]
    pub clock_offset_ms: i64,
    #[serde(skip)]
    offset_samples: VecDeque<i64>,
    #[serde(skip)]
    pub health: HealthSummary,
    /// The worker the agent last reported: (job, generation, pid).
    pub worker: Option<(String, u64, u32)>,
    #[serde(skip)]
    pub last_step: u64,
    /// Set by a goodbye that announced a restart: a disconnect before this time is no fault.
    /// Not stored: a restarted coordinator gives every node its reconnect grace instead.
    #[serde(skip)]
    pub restarting_until: Option<UnixMillis>,
    /// When the connected agent process started (agent clock, unix ms).
    #[serde(default)]
    pub agent_started_at: UnixMillis,
    /// Lifecycle scripts the node is running now (bootstrap, deep check).
    #[serde(skip)]
    pub script_run: Option<ScriptRun>,
    /// The last bootstrap/deep check the node ran, kept for operators.
    #[serde(default)]
    pub last_check: Option<CheckReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
}

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
        node: String,
        /// The command.
        command: AgentCommand,
    },
    /// Close a node's stream.
    Disconnect {
        /// The node.
        node: String,
        /// Why, told to the agent.
        reason: String,
    },
    /// Resolve the latest complete checkpoint for a job; the answer comes back as
    /// [`Input::CheckpointResolved`].
    ResolveCheckpoint {
        /// The job.
        job_id: String,
        /// Where its checkpoints are.
        uri: String,
        /// Generations whose later checkpoints must be skipped.
        fenced: Vec<FencedGeneration>,
    },
    /// Tell operators (event stream, logs).
    Publish(Event),
    /// Ask the replacement provider for `count` new hosts for `job_id`; the answer comes back
    /// as [`Input::ProvisionResult`].
    Provision {
        /// Ties the answer to the request.
        request_id: u64,
        /// The job.
        job_id: String,
        /// How many hosts.
        count: u32,
    },
    /// Have the provider terminate, drain or power off a fenced host; the answer comes back as
    /// [`Input::FenceHostResult`].
    FenceHost {
        /// The node.
        node: String,
        /// Its hostname, as its agent reported it.
        hostname: String,
        /// Its address, as its agent reported it.
        address: String,
        /// Why it was fenced.
        reason: String,
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
        node_id: String,
        /// What its scripts did.
        report: CheckReport,
    },
}

/// Everything that can happen to the cluster, as one value: what agents report, what operators
/// ask, what the shell found out for the core, and the clock. [`Cluster::step`] takes one.
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
        node: String,
        /// When the agent sent it (agent clock).
        sent_at: UnixMillis,
        /// The agent's health.
        health: Option<HealthSummary>,
    },
    /// A health check changed at once (a check turned fatal, or cleared).
    HealthReport {
        /// The node.
        node: String,
        /// The agent's health.
        health: HealthSummary,
    },
    /// A worker started or exited.
    Worker {
        /// The node.
        node: String,
        /// What happened.
        event: WorkerEvent,
    },
    /// A worker made progress.
    Progress {
        /// The node.
        node: String,
        /// How far.
        progress: Progress,
    },
    /// A lifecycle script's result.
    ScriptResult {
        /// The node.
        node: String,
        /// The result.
        result: CommandResult,
    },
    /// The agent announced an orderly shutdown.
    Goodbye {
        /// The node.
        node: String,
        /// It will come back (a restart or an upgrade).
        restarting: bool,
    },
    /// The stream of connection `conn` closed.
    Disconnected {
        /// The node.
        node: String,
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
        job_id: String,
    },
    /// An operator cordons a node; answered by [`Reply::Node`].
    Cordon {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// An operator uncordons (repairs) a node; answered by [`Reply::Node`].
    Uncordon {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: String,
    },
    /// An operator asks for a node's deep check; answered by [`Reply::Check`] when it ends.
    CheckNode {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: String,
    },
    /// An operator asks a node's agent to restart in place; answered by [`Reply::Node`].
    RestartAgent {
        /// Ties the reply to the call.
        request: u64,
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The answer to a [`Command::ResolveCheckpoint`].
    CheckpointResolved {
        /// The job.
        job_id: String,
        /// The newest complete checkpoint, none, or why it could not be found.
        result: Result<Option<Checkpoint>, String>,
    },
    /// The answer to a [`Command::Provision`].
    ProvisionResult {
        /// The job.
        job_id: String,
        /// How many hosts were asked for.
        count: u32,
        /// The hosts started, or why not.
        result: Result<Vec<String>, String>,
    },
    /// The answer to a [`Command::FenceHost`].
    FenceHostResult {
        /// The node.
        node: String,
        /// The provider's output, or why it failed.
        result: Result<String, String>,
    },
    /// The failure detector's clock: timeouts, stalls, recovery deadlines.
    Tick,
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
    pub node_id: String,
    pub hostname: String,
    pub role: Role,
    pub address: String,
    pub boot_id: String,
    pub agent_version: String,
    pub gpus: Vec<GpuInfo>,
    pub sent_at: UnixMillis,
    /// What the agent runs now: (job, generation, pid, running).
    pub worker: Option<(String, u64, u32, bool)>,
    /// When the agent process started (agent clock, unix ms): a new value means it restarted.
    pub agent_started_at: UnixMillis,
}

/// The registry, the jobs and the incidents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(skip)]
    config: CoordinatorConfig,
    /// The coordinator's term: commands carry it, agents refuse older terms.
    pub term: u64,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub jobs: BTreeMap<String, Job>,
    pub incidents: Vec<Incident>,
    next_job: u64,
    /// Last time a progress event was published per job (progress events are rate-limited).
    #[serde(skip)]
    progress_published: BTreeMap<String, UnixMillis>,
    /// Last command id handed out (lifecycle scripts).
    #[serde(default)]
    next_command: u64,
    /// The circuit breaker on fencing (breaker.rs).
    #[serde(skip)]
    breaker: breaker::FenceBreaker,
    /// Hosts asked of the provider and not yet arrived, per job.
    #[serde(skip)]
    provisioning: BTreeMap<String, u32>,
    /// Work left by the input being stepped (see [`Work`]).
    #[serde(skip)]
    work: VecDeque<Work>,
    /// Bumped by every change that must survive a restart (a state transition, a generation, an
    /// incident, a connect); the shell saves the state when it moved. Heartbeats and progress
    /// alone do not bump it, so they cost no write.
    #[serde(skip)]
    durable_version: u64,
}

/// The stored header of the state: the term and the job counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    term: u64,
    next_job: u64,
}

const PROGRESS_PUBLISH_EVERY_MS: i64 = 250;
const OFFSET_SAMPLES: usize = 16;

impl Cluster {
    pub fn new(config: CoordinatorConfig) -> Cluster {
        Cluster {
            config,
            term: 1,
            nodes: BTreeMap::new(),
            jobs: BTreeMap::new(),
            incidents: Vec::new(),
            next_job: 1,
            progress_published: BTreeMap::new(),
            next_command: 0,
            breaker: breaker::FenceBreaker::default(),
            provisioning: BTreeMap::new(),
            durable_version: 0,
            work: VecDeque::new(),
        }
    }

    /// The one entry point: takes what happened and the time, changes the state, and returns
    /// what the shell must do, in order. Work an input leaves (a node that became ready may be
    /// a job's replacement) is handled from a queue before it returns.
    pub fn step(&mut self, input: Input, now: UnixMillis) -> Vec<Command> {
        let reply = |request: u64, result: Result<(Reply, Vec<Command>), CoreError>| match result
        {
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
        let job_reply =
            |r: Result<(Job, Vec<Command>), CoreError>| r.map(|(j, fx)| (Reply::Job(Box::new(j)), fx));
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
            } => self.heartbeat(&node, sent_at, health, now),
            Input::HealthReport { node, health } => self.health_report(&node, health, now),
            Input::Worker { node, event } => self.worker_event(&node, event, now),
            Input::Progress { node, progress } => self.progress(&node, progress, now),
            Input::ScriptResult { node, result } => self.command_result(&node, result, now),
            Input::Goodbye { node, restarting } => self.goodbye(&node, restarting, now),
            Input::Disconnected { node, conn } => self.disconnected(&node, conn, now),
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
            } => reply(
                request,
                node_reply(self.restart_agent(&node, &reason, now)),
            ),
            Input::CheckpointResolved { job_id, result } => {
                self.checkpoint_resolved(&job_id, result, now)
            }
            Input::ProvisionResult {
                job_id,
                count,
                result,
            } => self.provision_result(&job_id, count, result, now),
            Input::FenceHostResult { node, result } => self.fence_host_result(&node, result, now),
            Input::Tick => self.tick(now),
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

    // ----- durability --------------------------------------------------------------------------

    /// Changes when something that must survive a restart changed.
    pub fn durable_version(&self) -> u64 {
        self.durable_version
    }

    fn touch(&mut self) {
        self.durable_version += 1;
    }

    /// The state as stored records (see [`crate::store`]).
    pub fn to_records(&self) -> Result<crate::records::Records, crate::records::CorruptRecord> {
        let encode = |key: &str, value: Result<Vec<u8>, serde_json::Error>| {
            value.map_err(|e| crate::records::CorruptRecord {
                key: key.to_string(),
                reason: e.to_string(),
            })
        };
        let mut records = crate::records::Records::new();
        let meta = Meta {
            term: self.term,
            next_job: self.next_job,
        };
        records.insert("meta".into(), encode("meta", serde_json::to_vec(&meta))?);
        for (id, node) in &self.nodes {
            let key = format!("node/{id}");
            let value = encode(&key, serde_json::to_vec(node))?;
            records.insert(key, value);
        }
        for (id, job) in &self.jobs {
            let key = format!("job/{id}");
            let value = encode(&key, serde_json::to_vec(job))?;
            records.insert(key, value);
        }
        for incident in &self.incidents {
            let key = format!("incident/{:010}", incident.id);
            let value = encode(&key, serde_json::to_vec(incident))?;
            records.insert(key, value);
        }
        Ok(records)
    }

    /// Rebuilds the core from stored records after a restart (or a leader change): the term
    /// goes up so agents refuse whatever the previous coordinator still sends, every node counts
    /// as away with `reconnect_grace_ms` to come back before it is treated as lost, the
    /// training's stall clocks restart, and a checkpoint resolution that was in flight is asked
    /// for again. Nothing else is redone: a generation already launched is not launched anew.
    /// Returns `None` when the records are empty (a fresh store).
    pub fn restore(
        config: CoordinatorConfig,
        records: &crate::records::Records,
        now: UnixMillis,
    ) -> Result<Option<(Cluster, Vec<Command>)>, crate::records::CorruptRecord> {
        fn decode<T: serde::de::DeserializeOwned>(
            key: &str,
            bytes: &[u8],
        ) -> Result<T, crate::records::CorruptRecord> {
            serde_json::from_slice(bytes).map_err(|e| crate::records::CorruptRecord {
                key: key.to_string(),
                reason: e.to_string(),
            })
        }
        let Some(meta_bytes) = records.get("meta") else {
            return Ok(None);
        };
        let meta: Meta = decode("meta", meta_bytes)?;
        let mut cluster = Cluster::new(config);
        cluster.term = meta.term + 1;
        cluster.next_job = meta.next_job;
        let grace = cluster.config.reconnect_grace_ms as i64;
        for (key, bytes) in records {
            if let Some(id) = key.strip_prefix("node/") {
                let mut node: NodeRecord = decode(key, bytes)?;
                node.conn = None;
                node.last_heartbeat_at = now;
                let gone_for_good = matches!(
                    node.state,
                    NodeState::Fenced { .. } | NodeState::Retired | NodeState::Offline
                );
                node.restarting_until = (!gone_for_good).then_some(now + grace);
                cluster.nodes.insert(id.to_string(), node);
            } else if let Some(id) = key.strip_prefix("job/") {
                let mut job: Job = decode(key, bytes)?;
                // The stall clock starts after the grace: a rank whose node has not come back
                // yet is judged by the grace (agent lost), not as a hang.
                for rank in &mut job.ranks {
                    rank.last_progress_at = now + grace;
                }
                cluster.jobs.insert(id.to_string(), job);
            } else if key.starts_with("incident/") {
                cluster.incidents.push(decode(key, bytes)?);
            }
        }
        cluster.incidents.sort_by_key(|i| i.id);
        let mut fx = Vec::new();
        let resolving: Vec<String> = cluster
            .jobs
            .values()
            .filter(|j| {
                matches!(
                    j.state,
                    JobState::Pending
                        | JobState::Recovering(job::RecoveryPhase::Relaunching {
                            retry_at: None,
                            ..
                        })
                )
            })
            .map(|j| j.id.clone())
            .collect();
        for job_id in resolving {
            fx.push(cluster.resolve_effect(&job_id));
        }
        let live: Vec<String> = cluster
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .map(|j| {
                let phase = j.phase();
                let sep = if phase.is_empty() { "" } else { "/" };
                format!("{} {}{sep}{phase} g{}", j.id, j.state.name(), j.generation)
            })
            .collect();
        fx.push(cluster.log_event(
            "",
            "",
            format!(
                "coordinator restored: term {}, {} nodes, {} jobs, {} incidents; live jobs: {}",
                cluster.term,
                cluster.nodes.len(),
                cluster.jobs.len(),
                cluster.incidents.len(),
                if live.is_empty() {
                    "none".to_string()
                } else {
                    live.join(", ")
                }
            ),
            now,
        ));
        cluster.touch();
        Ok(Some((cluster, fx)))
    }

    /// Sets the term (an HA leader takes the term its election gave it).
    pub fn set_term(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.touch();
        }
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
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
        }
    }

    // ----- agents --------------------------------------------------------------------------

    /// An agent said hello on connection `conn`. Refused when another live stream already holds
    /// the node id. Returns the welcome to send back first.
    pub(crate) fn hello(
        &mut self,
        conn: u64,
        hello: Hello,
        now: UnixMillis,
    ) -> Result<(Welcome, Vec<Command>), CoreError> {
        if hello.node_id.trim().is_empty() {
            return Err(CoreError::BadMessage(
                "hello.node_id is empty".into(),
            ));
        }
        if let Some(existing) = self.nodes.get(&hello.node_id) {
            if existing.conn.is_some() {
                return Err(CoreError::DuplicateNode {
                    node: hello.node_id.clone(),
                    hostname: existing.hostname.clone(),
                });
            }
        }
        let mut fx = Vec::new();
        // A node that comes back as it was changes nothing durable: 100 agents reconnecting
        // to a restarted coordinator cost no writes beyond their state transitions.
        let stored_before = self
            .nodes
            .get(&hello.node_id)
            .and_then(|n| serde_json::to_vec(n).ok());
        if !self.nodes.contains_key(&hello.node_id) {
            self.provisioned_host_arrived(&hello.node_id);
        }
        let record = self
            .nodes
            .entry(hello.node_id.clone())
            .or_insert_with(|| NodeRecord {
                id: hello.node_id.clone(),
                hostname: String::new(),
                role: hello.role,
                state: NodeState::Joining,
                conn: None,
                address: String::new(),
                boot_id: String::new(),
                agent_version: String::new(),
                gpus: Vec::new(),
                last_heartbeat_at: now,
                clock_offset_ms: 0,
                offset_samples: VecDeque::new(),
                health: HealthSummary::default(),
                worker: None,
                last_step: 0,
                restarting_until: None,
                script_run: None,
                last_check: None,
                agent_started_at: 0,
            });
        record.conn = Some(conn);
        record.hostname = hello.hostname;
        record.role = hello.role;
        record.address = hello.address;
        record.boot_id = hello.boot_id;
        record.agent_version = hello.agent_version;
        record.agent_started_at = hello.agent_started_at;
        record.gpus = hello.gpus;
        record.last_heartbeat_at = now;
        record.restarting_until = None;
        record.offset_samples.clear();
        record.worker = hello
            .worker
            .as_ref()
            .map(|(j, g, p, _)| (j.clone(), *g, *p));
        push_offset(record, hello.sent_at - now);
        let node_id = record.id.clone();
        // A run cut short by the reconnect is void: the agent lost it with its old session.
        self.abort_scripts(
            &node_id,
            "the agent reconnected while the script ran",
            now,
            &mut fx,
        );
        self.node_hello(&node_id, now, &mut fx);
        if stored_before != serde_json::to_vec(&self.nodes[&node_id]).ok() {
            self.touch();
        }
        self.reconcile(&node_id, hello.worker.as_ref(), now, &mut fx);
        if self.is_fenced(&node_id) {
            fx.push(Command::Send {
                node: node_id.clone(),
                command: AgentCommand::Fence {
                    reason: self.nodes[&node_id].state.name().into(),
                    term: self.term,
                },
            });
        }
        fx.push(self.log_event(&node_id, "", format!("node {node_id} connected"), now));
        self.defer(Work::FindReplacements);
        let welcome = Welcome {
            node_id,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            coordinator_unix_ms: now,
            term: self.term,
        };
        Ok((welcome, fx))
    }

    /// Reconciles what a (re)connecting agent runs with what the coordinator knows: a worker of
    /// the job's current generation on one of its ranks is kept (and counts as started); any
    /// other worker — an older generation, a generation being fenced, a job that is over, a
    /// fenced node — is stopped. A rank of a generation being launched whose agent runs nothing
    /// gets its `Launch` again (the previous one may have been lost with a restarted
    /// coordinator); agents refuse a generation they already ran, so a launch is never doubled.
    fn reconcile(
        &mut self,
        node_id: &str,
        worker: Option<&(String, u64, u32, bool)>,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let fenced_node = self.is_fenced(node_id);
        let running = worker.filter(|(_, _, _, running)| *running);
        if let Some((job_id, generation, _, _)) = running {
            let keep = !fenced_node
                && self.jobs.get(job_id).is_some_and(|j| {
                    matches!(j.state, JobState::Launching | JobState::Running)
                        && j.generation == *generation
                        && j.rank_of(node_id).is_some()
                        && !j
                            .fenced_generations
                            .iter()
                            .any(|f| f.generation == *generation)
                });
            if keep {
                self.drive(
                    job_id,
                    JobEvent::WorkerStarted {
                        node: node_id.to_string(),
                        generation: *generation,
                    },
                    now,
                    fx,
                );
            } else {
                fx.push(Command::Send {
                    node: node_id.to_string(),
                    command: AgentCommand::Stop(Stop {
                        job_id: job_id.clone(),
                        generation: *generation,
                        grace_ms: self.config.stop_grace_ms,
                        reason: "stale generation found on reconnect".into(),
                        term: self.term,
                    }),
                });
            }
        }
        if fenced_node {
            return;
        }
        let relaunch: Vec<(String, u64, usize)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Launching)
            .filter_map(|j| {
                let rank = j.rank_of(node_id)?;
                let r = &j.ranks[rank];
                let runs_it =
                    running.is_some_and(|(id, g, _, _)| *id == j.id && *g == j.generation);
                (!r.started && r.exited.is_none() && !runs_it)
                    .then(|| (j.id.clone(), j.generation, rank))
            })
            .collect();
        for (job_id, generation, rank) in relaunch {
            let resume = self.jobs[&job_id].resumed_from.clone();
            let mut launches = Vec::new();
            self.launch(&job_id, generation, resume.as_ref(), &mut launches);
            // `launch` makes one message per rank, in rank order.
            if let Some(one) = launches.into_iter().nth(rank) {
                fx.push(one);
            }
        }
    }

    /// Hello's node step: with lifecycle scripts configured a (re)joining node bootstraps and
    /// is checked before it becomes ready.
    fn node_hello(&mut self, node_id: &str, now: UnixMillis, fx: &mut Vec<Command>) {
        let scripts = self.config.has_lifecycle_scripts();
        self.node_event(node_id, NodeEvent::Hello { scripts }, now, fx);
        if self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.state == NodeState::Bootstrapping)
        {
            self.start_join_scripts(node_id, now, fx);
        }
    }

    fn is_fenced(&self, node: &str) -> bool {
        matches!(
            self.nodes.get(node).map(|n| &n.state),
            Some(NodeState::Fenced { .. })
        )
    }

    /// A heartbeat arrived.
    pub(crate) fn heartbeat(
        &mut self,
        node_id: &str,
        sent_at: UnixMillis,
        health: Option<HealthSummary>,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        let Some(node) = self.nodes.get_mut(node_id) else {
            return fx;
        };
        node.last_heartbeat_at = now;
        push_offset(node, sent_at - now);
        if let Some(health) = health {
            let fatal = health.fatal_reason();
            node.health = health;
            if let Some(reason) = fatal {
                self.node_fault(node_id, FaultCause::HealthFatal(reason), now, &mut fx);
            }
        }
        fx
    }

    /// An immediate health report (a check turned fatal, or cleared).
    pub(crate) fn health_report(
        &mut self,
        node_id: &str,
        health: HealthSummary,
        now: UnixMillis,
    ) -> Vec<Command> {
        self.heartbeat(node_id, now + self.offset(node_id), Some(health), now)
    }

    fn offset(&self, node_id: &str) -> i64 {
        self.nodes.get(node_id).map_or(0, |n| n.clock_offset_ms)
    }

    /// A worker started or exited on a node.
    pub(crate) fn worker_event(
        &mut self,
        node_id: &str,
        event: WorkerEvent,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        self.touch();
        let job_event = match event.kind {
            WorkerEventKind::Started { pid } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.worker = Some((event.job_id.clone(), event.generation, pid));
                }
                JobEvent::WorkerStarted {
                    node: node_id.to_string(),
                    generation: event.generation,
                }
            }
            WorkerEventKind::Exited {
                code,
                signal,
                stopped_by_agent,
            } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.worker = None;
                }
                let at = event.at.saturating_sub(self.offset(node_id));
                let what = match (code, signal) {
                    (_, Some(s)) => format!("signal {s}"),
                    (Some(c), None) => format!("code {c}"),
                    _ => "unknown status".into(),
                };
                fx.push(self.log_event(
                    node_id,
                    &event.job_id,
                    format!(
                        "worker of {} generation {} on {node_id} exited ({what}{})",
                        event.job_id,
                        event.generation,
                        if stopped_by_agent {
                            ", stopped by agent"
                        } else {
                            ""
                        }
                    ),
                    now,
                ));
                JobEvent::WorkerExited {
                    node: node_id.to_string(),
                    generation: event.generation,
                    code,
                    signal,
                    stopped_by_agent,
                    at: Some(at),
                }
            }
        };
        self.drive(&event.job_id, job_event, now, &mut fx);
        fx
    }

    /// Training progress from a node's worker.
    pub(crate) fn progress(&mut self, node_id: &str, p: Progress, now: UnixMillis) -> Vec<Command> {
        let mut fx = Vec::new();
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.last_step = p.step;
        }
        self.drive(
            &p.job_id,
            JobEvent::Progress {
                node: node_id.to_string(),
                generation: p.generation,
                step: p.step,
            },
            now,
            &mut fx,
        );
        let due = self
            .progress_published
            .get(&p.job_id)
            .is_none_or(|t| now - t >= PROGRESS_PUBLISH_EVERY_MS);
        if due {
            if let Some(job) = self.jobs.get(&p.job_id) {
                self.progress_published.insert(p.job_id.clone(), now);
                fx.push(Command::Publish(Event {
                    at: now,
                    kind: EventKind::Progress,
                    job_id: p.job_id.clone(),
                    node_id: node_id.to_string(),
                    message: format!("step {}", job.step),
                    subject: Some(Subject::Job(Box::new(job.clone()))),
                }));
            }
        }
        fx
    }

    /// The agent announced an orderly shutdown.
    pub(crate) fn goodbye(&mut self, node_id: &str, restarting: bool, now: UnixMillis) -> Vec<Command> {
        if let Some(node) = self.nodes.get_mut(node_id) {
            if restarting {
                node.restarting_until = Some(now + self.config.heartbeat_timeout_ms as i64 * 5);
            }
        }
        vec![self.log_event(
            node_id,
            "",
            format!(
                "node {node_id} said goodbye{}",
                if restarting { " (restarting)" } else { "" }
            ),
            now,
        )]
    }

    /// The stream of connection `conn` closed.
    pub(crate) fn disconnected(&mut self, node_id: &str, conn: u64, now: UnixMillis) -> Vec<Command> {
        let mut fx = Vec::new();
        let Some(node) = self.nodes.get_mut(node_id) else {
            return fx;
        };
        if node.conn != Some(conn) {
            return fx;
        }
        node.conn = None;
        let announced = node.restarting_until.is_some_and(|t| now < t);
        // A crashed agent on a live host (no goodbye) may get the same grace as a restart,
        // when the operator chose one: its workers keep training and it re-adopts them.
        let grace = self.config.agent_lost_grace_ms;
        let busy = matches!(node.state, NodeState::Allocated { .. });
        if !announced && grace > 0 && busy {
            node.restarting_until = Some(now + grace as i64);
            fx.push(self.log_event(
                node_id,
                "",
                format!("node {node_id} disconnected without goodbye; waiting {grace} ms for it to return"),
                now,
            ));
            return fx;
        }
        fx.push(self.log_event(node_id, "", format!("node {node_id} disconnected"), now));
        if announced {
            return fx;
        }
        self.node_fault(node_id, FaultCause::AgentLost, now, &mut fx);
        fx
    }

    /// A node fault: the jobs on it recover, the node is fenced (if allocated or the fault is
    /// fatal) or marked offline (if idle and just gone).
    fn node_fault(
        &mut self,
        node_id: &str,
        cause: FaultCause,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let jobs: Vec<String> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal() && j.rank_of(node_id).is_some())
            .map(|j| j.id.clone())
            .collect();
        for job_id in &jobs {
            self.drive(
                job_id,
                JobEvent::Fault {
                    node: node_id.to_string(),
                    cause: cause.clone(),
                },
                now,
                fx,
            );
        }
        let event = match &cause {
            FaultCause::AgentLost | FaultCause::HeartbeatTimeout => NodeEvent::Disconnected,
            other => NodeEvent::Fence(other.fence_cause()),
        };
        if jobs.is_empty() || matches!(event, NodeEvent::Fence(_)) {
            self.node_event(node_id, event, now, fx);
        }
        if self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.script_run.is_some())
        {
            self.abort_scripts(
                node_id,
                &format!("node fault while the script ran: {}", cause.detail()),
                now,
                fx,
            );
            self.defer(Work::FindReplacements);
        }
    }

    // ----- operators -----------------------------------------------------------------------

    /// Validates and accepts a job: reserves its nodes and starts resolving its checkpoint.
    pub(crate) fn submit(
        &mut self,
        request: JobRequest,
        now: UnixMillis,
    ) -> Result<(Job, Vec<Command>), CoreError> {
        let invalid = |field: &'static str, reason: String| CoreError::InvalidJob { field, reason };
        let spec = JobSpec::validate(&request, self.config.default_restart_budget)?;
        let job_id = if request.job_id.is_empty() {
            loop {
                let id = format!("job-{}", self.next_job);
                self.next_job += 1;
                if !self.jobs.contains_key(&id) {
                    break id;
                }
            }
        } else {
            request.job_id.clone()
        };
        if self.jobs.contains_key(&job_id) {
            return Err(CoreError::JobExists(job_id));
        }
        let nodes = self.pick_nodes(spec.nodes as usize).ok_or_else(|| {
            let ready: Vec<&str> = self
                .nodes
                .values()
                .filter(|n| n.state.is_ready() && n.conn.is_some())
                .map(|n| n.id.as_str())
                .collect();
            invalid(
                "nodes",
                format!(
                    "the job needs {} nodes but only {} are ready ({}); {} known in all",
                    spec.nodes,
                    ready.len(),
                    if ready.is_empty() {
                        "none".to_string()
                    } else {
                        ready.join(", ")
                    },
                    self.nodes.len()
                ),
            )
        })?;
        let mut fx = Vec::new();
        for n in &nodes {
            self.node_event(
                n,
                NodeEvent::Allocate {
                    job_id: job_id.clone(),
                },
                now,
                &mut fx,
            );
        }
        let job = Job::new(job_id.clone(), spec, nodes.clone(), now);
        self.jobs.insert(job_id.clone(), job);
        self.touch();
        fx.push(self.log_event(
            "",
            &job_id,
            format!("job {job_id} accepted on {}", nodes.join(", ")),
            now,
        ));
        fx.push(self.resolve_effect(&job_id));
        Ok((self.jobs[&job_id].clone(), fx))
    }

    /// Workers first, then spares, in node-id order.
    fn pick_nodes(&self, count: usize) -> Option<Vec<String>> {
        let mut free: Vec<&NodeRecord> = self
            .nodes
            .values()
            .filter(|n| n.state.is_ready() && n.conn.is_some() && n.script_run.is_none())
            .collect();
        free.sort_by_key(|n| (n.role == Role::Spare, n.id.clone()));
        (free.len() >= count).then(|| free[..count].iter().map(|n| n.id.clone()).collect())
    }

    pub(crate) fn stop_job(
        &mut self,
        job_id: &str,
        now: UnixMillis,
    ) -> Result<(Job, Vec<Command>), CoreError> {
        if !self.jobs.contains_key(job_id) {
            return Err(CoreError::NoSuchJob(job_id.to_string()));
        }
        let mut fx = Vec::new();
        self.drive(job_id, JobEvent::StopRequested, now, &mut fx);
        Ok((self.jobs[job_id].clone(), fx))
    }

    /// Asks a node's agent to restart in place (rolling upgrade); its workers keep running.
    pub(crate) fn restart_agent(
        &mut self,
        node_id: &str,
        reason: &str,
        now: UnixMillis,
    ) -> Result<(NodeRecord, Vec<Command>), CoreError> {
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| CoreError::NoSuchNode(node_id.to_string()))?;
        if node.conn.is_none() {
            return Err(CoreError::NodeBusy(format!(
                "node {node_id} is not connected"
            )));
        }
        let reason = if reason.is_empty() {
            "restart requested by operator"
        } else {
            reason
        };
        let fx = vec![
            Command::Send {
                node: node_id.to_string(),
                command: AgentCommand::RestartAgent {
                    reason: reason.to_string(),
                    term: self.term,
                },
            },
            self.log_event(
                node_id,
                "",
                format!("asking the agent of {node_id} to restart: {reason}"),
                now,
            ),
        ];
        Ok((node.clone(), fx))
    }

    pub(crate) fn cordon(
        &mut self,
        node_id: &str,
        reason: &str,
        now: UnixMillis,
    ) -> Result<(NodeRecord, Vec<Command>), CoreError> {
        self.operator_node_event(
            node_id,
            NodeEvent::Cordon {
                reason: if reason.is_empty() {
                    "cordoned by operator".into()
                } else {
                    reason.into()
                },
            },
            now,
        )
    }

    pub(crate) fn uncordon(
        &mut self,
        node_id: &str,
        now: UnixMillis,
    ) -> Result<(NodeRecord, Vec<Command>), CoreError> {
        let (view, mut fx) = self.operator_node_event(node_id, NodeEvent::Uncordon, now)?;
        // A repaired node that is connected goes straight on through hello's path.
        let connected = self.nodes.get(node_id).is_some_and(|n| n.conn.is_some());
        if connected {
            self.node_hello(node_id, now, &mut fx);
        } else {
            self.node_event(node_id, NodeEvent::Disconnected, now, &mut fx);
        }
        self.defer(Work::FindReplacements);
        let view = self.nodes.get(node_id).map_or(view, |n| n.clone());
        Ok((view, fx))
    }

    fn operator_node_event(
        &mut self,
        node_id: &str,
        event: NodeEvent,
        now: UnixMillis,
    ) -> Result<(NodeRecord, Vec<Command>), CoreError> {
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| CoreError::NoSuchNode(node_id.to_string()))?;
        node::step(&node.state, &event).map_err(CoreError::Transition)?;
        let mut fx = Vec::new();
        self.node_event(node_id, event, now, &mut fx);
        Ok((self.nodes[node_id].clone(), fx))
    }

    // ----- answers from the shell ------------------------------------------------------------

    pub(crate) fn checkpoint_resolved(
        &mut self,
        job_id: &str,
        result: Result<Option<Checkpoint>, String>,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        self.drive(job_id, JobEvent::CheckpointResolved(result), now, &mut fx);
        fx
    }

    /// The failure detector's clock: heartbeat timeouts, stalls, recovery deadlines.
    pub(crate) fn tick(&mut self, now: UnixMillis) -> Vec<Command> {
        let mut fx = Vec::new();
        let timeout = self.config.heartbeat_timeout_ms as i64;
        let silent: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.conn.is_some() && now - n.last_heartbeat_at > timeout)
            .map(|n| n.id.clone())
            .collect();
        for node_id in silent {
            if let Some(node) = self.nodes.get_mut(&node_id) {
                node.conn = None;
            }
            fx.push(Command::Disconnect {
                node: node_id.clone(),
                reason: format!("no heartbeat for {timeout} ms"),
            });
            self.node_fault(&node_id, FaultCause::HeartbeatTimeout, now, &mut fx);
        }
        // An agent that announced a restart and did not come back in time is lost after all.
        let overdue: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.conn.is_none() && n.restarting_until.is_some_and(|t| now >= t))
            .map(|n| n.id.clone())
            .collect();
        for node_id in overdue {
            if let Some(node) = self.nodes.get_mut(&node_id) {
                node.restarting_until = None;
            }
            self.node_fault(&node_id, FaultCause::AgentLost, now, &mut fx);
        }
        self.expire_scripts(now, &mut fx);
        let live: Vec<String> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id.clone())
            .collect();
        for job_id in live {
            self.drive(&job_id, JobEvent::Tick, now, &mut fx);
        }
        fx
    }

    // ----- the job driver ----------------------------------------------------------------------

    /// Runs one job event through the job lifecycle and carries out its effects, feeding
    /// follow-up events (replacements found, unreachable nodes) back in until it settles.
    fn drive(&mut self, job_id: &str, event: JobEvent, now: UnixMillis, fx: &mut Vec<Command>) {
        let limits = self.limits();
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let Some(job) = self.jobs.get_mut(job_id) else {
                return;
            };
            let before = job.durable_part();
            let effects = job::step(job, event, now, &limits);
            if job.durable_part() != before {
                self.touch();
            }
            for effect in effects {
                self.apply_job_effect(job_id, effect, now, fx, &mut queue);
            }
        }
    }

    fn apply_job_effect(
        &mut self,
        job_id: &str,
        effect: JobEffect,
        now: UnixMillis,
        fx: &mut Vec<Command>,
        queue: &mut VecDeque<JobEvent>,
    ) {
        match effect {
            JobEffect::ResolveCheckpoint => fx.push(self.resolve_effect(job_id)),
            JobEffect::Launch { generation, resume } => {
                self.launch(job_id, generation, resume.as_ref(), fx)
            }
            JobEffect::StopWorkers {
                nodes,
                generation,
                reason,
            } => {
                for node in nodes {
                    let reachable = self.nodes.get(&node).is_some_and(|n| n.conn.is_some());
                    if reachable {
                        fx.push(Command::Send {
                            node: node.clone(),
                            command: AgentCommand::Stop(Stop {
                                job_id: job_id.to_string(),
                                generation,
                                grace_ms: self.config.stop_grace_ms,
                                reason: reason.clone(),
                                term: self.term,
                            }),
                        });
                    } else {
                        queue.push_back(JobEvent::NodeUnreachable { node });
                    }
                }
            }
            JobEffect::FenceNode { node, cause } => {
                if !self.fence_allowed(&node, now, fx) {
                    self.release_unfenced(&node, now, fx);
                    return;
                }
                let reason = cause.to_string();
                self.node_event(&node, NodeEvent::Fence(cause), now, fx);
                self.fence_host(&node, &reason, fx);
                if self.nodes.get(&node).is_some_and(|n| n.conn.is_some()) {
                    fx.push(Command::Send {
                        node: node.clone(),
                        command: AgentCommand::Fence {
                            reason,
                            term: self.term,
                        },
                    });
                }
            }
            JobEffect::FindReplacements => {
                let check = self.checks_replacements();
                let pairs = self.replacements_for(job_id);
                let under_check = self.ranks_under_check(job_id).len();
                let needing = self
                    .jobs
                    .get(job_id)
                    .map_or(0, |j| j.ranks_needing_nodes().len());
                self.provision_for(
                    job_id,
                    needing.saturating_sub(under_check + pairs.len()),
                    now,
                    fx,
                );
                for (rank, node) in pairs {
                    if check {
                        // The answer comes back as the check's result (lifecycle.rs).
                        self.start_replacement_check(job_id, rank, &node, now, fx);
                    } else {
                        self.node_event(
                            &node,
                            NodeEvent::Allocate {
                                job_id: job_id.to_string(),
                            },
                            now,
                            fx,
                        );
                        queue.push_back(JobEvent::ReplacementFound { rank, node });
                    }
                }
            }
            JobEffect::ReleaseNodes { nodes } => {
                for node in nodes {
                    self.node_event(&node, NodeEvent::Release, now, fx);
                }
            }
            JobEffect::OpenIncident {
                node,
                cause,
                action,
                fault_at,
            } => {
                let Some(job) = self.jobs.get(job_id) else {
                    return;
                };
                let fault_at = fault_at.or_else(|| match &cause {
                    FaultCause::HeartbeatTimeout => self
                        .nodes
                        .get(&node)
                        .map(|n| n.last_heartbeat_at + self.config.heartbeat_interval_ms as i64),
                    _ => None,
                });
                let mut incident = Incident::open(
                    self.incidents.len() as u64 + 1,
                    job_id,
                    &node,
                    cause.code(),
                    &cause.detail(),
                    action,
                    job.generation,
                    fault_at,
                    now,
                );
                incident.fault_step = job.step;
                fx.push(self.incident_event(&incident, now));
                self.incidents.push(incident);
                self.touch();
            }
            JobEffect::Incident(event) => {
                let mut changed = Vec::new();
                for incident in self
                    .incidents
                    .iter_mut()
                    .filter(|i| i.job_id == job_id && i.is_open())
                {
                    let next = incident::step(incident, &event, now);
                    if next != *incident {
                        *incident = next;
                        changed.push(incident.clone());
                    }
                }
                if !changed.is_empty() {
                    self.touch();
                }
                for incident in changed {
                    fx.push(self.incident_event(&incident, now));
                }
            }
            JobEffect::StateChanged => {
                if let Some(job) = self.jobs.get(job_id) {
                    let phase = job.phase();
                    let message = format!(
                        "job {job_id} {}{}{}",
                        job.state.name(),
                        if phase.is_empty() {
                            String::new()
                        } else {
                            format!(" ({phase})")
                        },
                        if job.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", job.message)
                        }
                    );
                    fx.push(Command::Publish(Event {
                        at: now,
                        kind: EventKind::JobState,
                        job_id: job_id.to_string(),
                        node_id: String::new(),
                        message,
                        subject: Some(Subject::Job(Box::new(job.clone()))),
                    }));
                }
            }
        }
    }

    /// Ready, connected nodes for a job's ranks that wait for one: spares first.
    fn replacements_for(&self, job_id: &str) -> Vec<(usize, String)> {
        let Some(job) = self.jobs.get(job_id) else {
            return Vec::new();
        };
        if !matches!(
            job.state,
            JobState::Recovering(job::RecoveryPhase::Replacing { .. })
        ) {
            return Vec::new();
        }
        let mut free: Vec<&NodeRecord> = self
            .nodes
            .values()
            .filter(|n| n.state.is_ready() && n.conn.is_some() && n.script_run.is_none())
            .collect();
        free.sort_by_key(|n| (n.role != Role::Spare, n.id.clone()));
        let under_check = self.ranks_under_check(job_id);
        job.ranks_needing_nodes()
            .into_iter()
            .filter(|rank| !under_check.contains(rank))
            .zip(free)
            .map(|(rank, n)| (rank, n.id.clone()))
            .collect()
    }

    /// Gives newly ready nodes to jobs that wait for replacements.
    fn find_replacements(&mut self, now: UnixMillis, fx: &mut Vec<Command>) {
        let waiting: Vec<String> = self
            .jobs
            .values()
            .filter(|j| {
                matches!(
                    j.state,
                    JobState::Recovering(job::RecoveryPhase::Replacing { .. })
                )
            })
            .map(|j| j.id.clone())
            .collect();
        for job_id in waiting {
            self.drive(&job_id, JobEvent::Tick, now, fx);
            let mut queue = VecDeque::new();
            self.apply_job_effect(&job_id, JobEffect::FindReplacements, now, fx, &mut queue);
            while let Some(event) = queue.pop_front() {
                self.drive(&job_id, event, now, fx);
            }
        }
    }

    fn resolve_effect(&self, job_id: &str) -> Command {
        let job = &self.jobs[job_id];
        Command::ResolveCheckpoint {
            job_id: job_id.to_string(),
            uri: job.spec.checkpoint_uri.clone(),
            fenced: job.fenced_generations.clone(),
        }
    }

    /// One `Launch` per rank, all at once, with a fresh rendezvous id and port.
    fn launch(
        &self,
        job_id: &str,
        generation: u64,
        resume: Option<&Checkpoint>,
        fx: &mut Vec<Command>,
    ) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        let master_addr = self
            .nodes
            .get(&job.ranks[0].node)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        let job_salt = job_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let span = u64::from(self.config.rdzv_port_span);
        let master_port = u64::from(self.config.rdzv_port_base) + (job_salt + generation) % span;
        for (rank, r) in job.ranks.iter().enumerate() {
            fx.push(Command::Send {
                node: r.node.clone(),
                command: AgentCommand::Launch(Launch {
                    job_id: job_id.to_string(),
                    generation,
                    command: job.spec.command.clone(),
                    env: job.spec.env.clone().into_iter().collect(),
                    node_rank: rank as u32,
                    nnodes: job.ranks.len() as u32,
                    master_addr: master_addr.clone(),
                    master_port: master_port as u32,
                    rdzv_id: format!("{job_id}-g{generation}"),
                    resume_from: resume.map(|c| c.uri.clone()).unwrap_or_default(),
                    resume_step: resume.map_or(0, |c| c.step),
                    checkpoint_uri: job.spec.checkpoint_uri.clone(),
                    progress_regex: job.spec.progress_regex.clone(),
                    stop_grace_ms: self.config.stop_grace_ms,
                    term: self.term,
                }),
            });
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
                self.durable_version += 1;
                if fenced {
                    self.breaker.count_fence(now);
                }
                let detail = match &node.state {
                    NodeState::Fenced { cause } => format!(": {cause}"),
                    NodeState::Cordoned { reason } => format!(": {reason}"),
                    _ => String::new(),
                };
                let message = format!("node {node_id} {from} → {}{detail}", node.state.name());
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
            job_id: incident.job_id.clone(),
            node_id: incident.node_id.clone(),
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

fn push_offset(node: &mut NodeRecord, sample: i64) {
    node.offset_samples.push_back(sample);
    if node.offset_samples.len() > OFFSET_SAMPLES {
        node.offset_samples.pop_front();
    }
    node.clock_offset_ms = node.offset_samples.iter().copied().max().unwrap_or(0);
}

#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod agent_crash_tests;

#[cfg(test)]
mod policy_tests;
