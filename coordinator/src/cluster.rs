//! The coordinator's decision core: the node registry, the jobs, the incidents and the failure
//! detector, driven by agent messages, operator requests and clock ticks.
//!
//! Everything here is synchronous and pure apart from mutating `self`: each method takes `now`
//! and returns [`Effect`]s for the async shell ([`crate::server`]) to carry out. It never
//! touches a socket, a file or the clock, so every decision can be tested with a fake clock.

use std::collections::{BTreeMap, VecDeque};

use holdfast_proto::v1 as pb;
use pb::coordinator_message::Body as ToAgent;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, FencedGeneration};
use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::incident::{self, Incident};
use crate::job::{self, FaultCause, Job, JobEffect, JobEvent, JobLimits, JobSpec, JobState};
use crate::node::{self, NodeEvent, NodeState};
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub health: pb::HealthSummary,
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

/// What the async shell must do.
// Effects live for one call and are moved, never stored: boxing the large variants would only
// add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a command to a node's agent (dropped if it is not connected).
    Send { node: String, message: ToAgent },
    /// Close a node's stream.
    Disconnect { node: String, reason: String },
    /// Resolve the latest complete checkpoint for a job and call
    /// [`Cluster::checkpoint_resolved`] with the answer.
    ResolveCheckpoint {
        job_id: String,
        uri: String,
        fenced: Vec<FencedGeneration>,
    },
    /// Tell operators (event stream, logs).
    Publish(pb::Event),
    /// Ask the replacement provider for `count` new hosts for `job_id`; the answer comes back
    /// through [`Cluster::provision_result`].
    Provision {
        request_id: u64,
        job_id: String,
        count: u32,
    },
    /// Have the provider terminate, drain or power off a fenced host; the answer comes back
    /// through [`Cluster::fence_host_result`].
    FenceHost {
        node: String,
        hostname: String,
        address: String,
        reason: String,
    },
    /// An operator's check (request `request`) finished: answer the waiting call.
    CheckFinished {
        request: u64,
        report: Box<pb::CheckReport>,
    },
}

/// What an agent's hello carries, decoded.
#[derive(Debug, Clone)]
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
    /// Agent-reported time (corrected) of the worker exit being handled, for the incident's
    /// fault time.
    #[serde(skip)]
    pending_fault_time: Option<UnixMillis>,
    /// Last command id handed out (lifecycle scripts).
    #[serde(default)]
    next_command: u64,
    /// The circuit breaker on fencing (breaker.rs).
    #[serde(skip)]
    breaker: breaker::FenceBreaker,
    /// Hosts asked of the provider and not yet arrived, per job.
    #[serde(skip)]
    provisioning: BTreeMap<String, u32>,
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
            pending_fault_time: None,
            next_command: 0,
            breaker: breaker::FenceBreaker::default(),
            provisioning: BTreeMap::new(),
            durable_version: 0,
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
    pub fn to_records(&self) -> Result<crate::store::Records, crate::store::StoreError> {
        let encode = |key: &str, value: Result<Vec<u8>, serde_json::Error>| {
            value.map_err(|e| crate::store::StoreError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
        };
        let mut records = crate::store::Records::new();
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
        records: &crate::store::Records,
        now: UnixMillis,
    ) -> Result<Option<(Cluster, Vec<Effect>)>, crate::store::StoreError> {
        fn decode<T: serde::de::DeserializeOwned>(
            key: &str,
            bytes: &[u8],
        ) -> Result<T, crate::store::StoreError> {
            serde_json::from_slice(bytes).map_err(|e| crate::store::StoreError::Corrupt {
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
    pub fn hello(
        &mut self,
        conn: u64,
        hello: Hello,
        now: UnixMillis,
    ) -> Result<(pb::Welcome, Vec<Effect>), CoordinatorError> {
        if hello.node_id.trim().is_empty() {
            return Err(CoordinatorError::BadMessage(
                "hello.node_id is empty".into(),
            ));
        }
        if let Some(existing) = self.nodes.get(&hello.node_id) {
            if existing.conn.is_some() {
                return Err(CoordinatorError::DuplicateNode {
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
                health: pb::HealthSummary::default(),
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
            fx.push(Effect::Send {
                node: node_id.clone(),
                message: ToAgent::Fence(pb::Fence {
                    reason: self.nodes[&node_id].state.name().into(),
                    term: self.term,
                }),
            });
        }
        fx.push(self.log_event(&node_id, "", format!("node {node_id} connected"), now));
        self.find_replacements(now, &mut fx);
        let welcome = pb::Welcome {
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
        fx: &mut Vec<Effect>,
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
                fx.push(Effect::Send {
                    node: node_id.to_string(),
                    message: ToAgent::Stop(pb::Stop {
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
    fn node_hello(&mut self, node_id: &str, now: UnixMillis, fx: &mut Vec<Effect>) {
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
    pub fn heartbeat(
        &mut self,
        node_id: &str,
        sent_at: UnixMillis,
        health: Option<pb::HealthSummary>,
        now: UnixMillis,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(node) = self.nodes.get_mut(node_id) else {
            return fx;
        };
        node.last_heartbeat_at = now;
        push_offset(node, sent_at - now);
        if let Some(health) = health {
            let fatal = fatal_reason(&health);
            node.health = health;
            if let Some(reason) = fatal {
                self.node_fault(node_id, FaultCause::HealthFatal(reason), now, &mut fx);
            }
        }
        fx
    }

    /// An immediate health report (a check turned fatal, or cleared).
    pub fn health_report(
        &mut self,
        node_id: &str,
        health: pb::HealthSummary,
        now: UnixMillis,
    ) -> Vec<Effect> {
        self.heartbeat(node_id, now + self.offset(node_id), Some(health), now)
    }

    fn offset(&self, node_id: &str) -> i64 {
        self.nodes.get(node_id).map_or(0, |n| n.clock_offset_ms)
    }

    /// A worker started or exited on a node.
    pub fn worker_event(
        &mut self,
        node_id: &str,
        event: pb::WorkerEvent,
        now: UnixMillis,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(kind) = event.kind else {
            return fx;
        };
        self.touch();
        let job_event = match kind {
            pb::worker_event::Kind::Started(s) => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.worker = Some((event.job_id.clone(), event.generation, s.pid));
                }
                JobEvent::WorkerStarted {
                    node: node_id.to_string(),
                    generation: event.generation,
                }
            }
            pb::worker_event::Kind::Exited(e) => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.worker = None;
                }
                let at = event.at_unix_ms - self.offset(node_id);
                let what = match (e.code, e.signal) {
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
                        if e.stopped_by_agent {
                            ", stopped by agent"
                        } else {
                            ""
                        }
                    ),
                    now,
                ));
                self.pending_fault_time = Some(at);
                JobEvent::WorkerExited {
                    node: node_id.to_string(),
                    generation: event.generation,
                    code: e.code,
                    signal: e.signal,
                    stopped_by_agent: e.stopped_by_agent,
                }
            }
        };
        self.drive(&event.job_id, job_event, now, &mut fx);
        self.pending_fault_time = None;
        fx
    }

    /// Training progress from a node's worker.
    pub fn progress(&mut self, node_id: &str, p: pb::Progress, now: UnixMillis) -> Vec<Effect> {
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
                fx.push(Effect::Publish(pb::Event {
                    at_unix_ms: now,
                    kind: "progress".into(),
                    job_id: p.job_id.clone(),
                    node_id: node_id.to_string(),
                    message: format!("step {}", job.step),
                    job: Some(self.job_view(job)),
                    ..Default::default()
                }));
            }
        }
        fx
    }

    /// The agent announced an orderly shutdown.
    pub fn goodbye(&mut self, node_id: &str, restarting: bool, now: UnixMillis) -> Vec<Effect> {
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
    pub fn disconnected(&mut self, node_id: &str, conn: u64, now: UnixMillis) -> Vec<Effect> {
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
        fx: &mut Vec<Effect>,
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
            self.find_replacements(now, fx);
        }
    }

    // ----- operators -----------------------------------------------------------------------

    /// Validates and accepts a job: reserves its nodes and starts resolving its checkpoint.
    pub fn submit(
        &mut self,
        spec: pb::JobSpec,
        now: UnixMillis,
    ) -> Result<(pb::Job, Vec<Effect>), CoordinatorError> {
        let invalid =
            |field: &'static str, reason: String| CoordinatorError::InvalidJob { field, reason };
        if spec.command.is_empty() || spec.command[0].trim().is_empty() {
            return Err(invalid(
                "command",
                "is empty: give the training command after --".into(),
            ));
        }
        if spec.nodes == 0 {
            return Err(invalid("nodes", "must be at least 1".into()));
        }
        if spec.min_nodes > spec.nodes {
            return Err(invalid(
                "min_nodes",
                format!(
                    "must be at most nodes ({}), got {}",
                    spec.nodes, spec.min_nodes
                ),
            ));
        }
        if !(spec.stall_timeout_s.is_finite() && spec.stall_timeout_s >= 0.0) {
            return Err(invalid(
                "stall_timeout_s",
                format!(
                    "must be a number of seconds ≥ 0, got {}",
                    spec.stall_timeout_s
                ),
            ));
        }
        let progress_regex = if spec.progress_regex.is_empty() {
            crate::DEFAULT_PROGRESS_REGEX.to_string()
        } else {
            spec.progress_regex.clone()
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
        if !spec.checkpoint_uri.is_empty() {
            crate::checkpoint::CheckpointStore::open(&spec.checkpoint_uri)
                .map_err(|e| invalid("checkpoint_uri", e.to_string()))?;
        }
        let job_id = if spec.job_id.is_empty() {
            loop {
                let id = format!("job-{}", self.next_job);
                self.next_job += 1;
                if !self.jobs.contains_key(&id) {
                    break id;
                }
            }
        } else {
            spec.job_id.clone()
        };
        if self.jobs.contains_key(&job_id) {
            return Err(CoordinatorError::JobExists(job_id));
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
        let spec = JobSpec {
            command: spec.command,
            nodes: spec.nodes,
            checkpoint_uri: spec.checkpoint_uri,
            stall_timeout_ms: (spec.stall_timeout_s * 1000.0).round() as u64,
            restart_budget: if spec.restart_budget == 0 {
                self.config.default_restart_budget
            } else {
                spec.restart_budget
            },
            progress_regex,
            env: spec.env.into_iter().collect(),
            total_steps: spec.total_steps,
            min_nodes: spec.min_nodes,
        };
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
        Ok((self.job_view(&self.jobs[&job_id]), fx))
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

    pub fn stop_job(
        &mut self,
        job_id: &str,
        now: UnixMillis,
    ) -> Result<(pb::Job, Vec<Effect>), CoordinatorError> {
        if !self.jobs.contains_key(job_id) {
            return Err(CoordinatorError::NoSuchJob(job_id.to_string()));
        }
        let mut fx = Vec::new();
        self.drive(job_id, JobEvent::StopRequested, now, &mut fx);
        Ok((self.job_view(&self.jobs[job_id]), fx))
    }

    /// Asks a node's agent to restart in place (rolling upgrade); its workers keep running.
    pub fn restart_agent(
        &mut self,
        node_id: &str,
        reason: &str,
        now: UnixMillis,
    ) -> Result<(pb::Node, Vec<Effect>), CoordinatorError> {
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| CoordinatorError::NoSuchNode(node_id.to_string()))?;
        if node.conn.is_none() {
            return Err(CoordinatorError::NodeBusy(format!(
                "node {node_id} is not connected"
            )));
        }
        let reason = if reason.is_empty() {
            "restart requested by operator"
        } else {
            reason
        };
        let fx = vec![
            Effect::Send {
                node: node_id.to_string(),
                message: ToAgent::RestartAgent(pb::RestartAgent {
                    reason: reason.to_string(),
                    term: self.term,
                }),
            },
            self.log_event(
                node_id,
                "",
                format!("asking the agent of {node_id} to restart: {reason}"),
                now,
            ),
        ];
        Ok((self.node_view(node), fx))
    }

    pub fn cordon(
        &mut self,
        node_id: &str,
        reason: &str,
        now: UnixMillis,
    ) -> Result<(pb::Node, Vec<Effect>), CoordinatorError> {
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

    pub fn uncordon(
        &mut self,
        node_id: &str,
        now: UnixMillis,
    ) -> Result<(pb::Node, Vec<Effect>), CoordinatorError> {
        let (view, mut fx) = self.operator_node_event(node_id, NodeEvent::Uncordon, now)?;
        // A repaired node that is connected goes straight on through hello's path.
        let connected = self.nodes.get(node_id).is_some_and(|n| n.conn.is_some());
        if connected {
            self.node_hello(node_id, now, &mut fx);
        } else {
            self.node_event(node_id, NodeEvent::Disconnected, now, &mut fx);
        }
        self.find_replacements(now, &mut fx);
        let view = self.nodes.get(node_id).map_or(view, |n| self.node_view(n));
        Ok((view, fx))
    }

    fn operator_node_event(
        &mut self,
        node_id: &str,
        event: NodeEvent,
        now: UnixMillis,
    ) -> Result<(pb::Node, Vec<Effect>), CoordinatorError> {
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| CoordinatorError::NoSuchNode(node_id.to_string()))?;
        node::step(&node.state, &event).map_err(CoordinatorError::Transition)?;
        let mut fx = Vec::new();
        self.node_event(node_id, event, now, &mut fx);
        Ok((self.node_view(&self.nodes[node_id]), fx))
    }

    // ----- answers from the shell ------------------------------------------------------------

    pub fn checkpoint_resolved(
        &mut self,
        job_id: &str,
        result: Result<Option<Checkpoint>, String>,
        now: UnixMillis,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.drive(job_id, JobEvent::CheckpointResolved(result), now, &mut fx);
        fx
    }

    /// The failure detector's clock: heartbeat timeouts, stalls, recovery deadlines.
    pub fn tick(&mut self, now: UnixMillis) -> Vec<Effect> {
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
            fx.push(Effect::Disconnect {
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
    fn drive(&mut self, job_id: &str, event: JobEvent, now: UnixMillis, fx: &mut Vec<Effect>) {
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
        fx: &mut Vec<Effect>,
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
                        fx.push(Effect::Send {
                            node: node.clone(),
                            message: ToAgent::Stop(pb::Stop {
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
                    fx.push(Effect::Send {
                        node: node.clone(),
                        message: ToAgent::Fence(pb::Fence {
                            reason,
                            term: self.term,
                        }),
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
            } => {
                let Some(job) = self.jobs.get(job_id) else {
                    return;
                };
                let fault_at = match &cause {
                    FaultCause::WorkerExited { .. } => self.pending_fault_time,
                    FaultCause::HeartbeatTimeout => self
                        .nodes
                        .get(&node)
                        .map(|n| n.last_heartbeat_at + self.config.heartbeat_interval_ms as i64),
                    FaultCause::ProgressStalled { stalled_ms } => Some(now - *stalled_ms as i64),
                    _ => None,
                };
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
                    fx.push(Effect::Publish(pb::Event {
                        at_unix_ms: now,
                        kind: "job_state".into(),
                        job_id: job_id.to_string(),
                        message,
                        job: Some(self.job_view(job)),
                        ..Default::default()
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
    fn find_replacements(&mut self, now: UnixMillis, fx: &mut Vec<Effect>) {
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

    fn resolve_effect(&self, job_id: &str) -> Effect {
        let job = &self.jobs[job_id];
        Effect::ResolveCheckpoint {
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
        fx: &mut Vec<Effect>,
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
            fx.push(Effect::Send {
                node: r.node.clone(),
                message: ToAgent::Launch(pb::Launch {
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
        fx: &mut Vec<Effect>,
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
                let view = self.node_view(&self.nodes[node_id]);
                fx.push(Effect::Publish(pb::Event {
                    at_unix_ms: now,
                    kind: "node_state".into(),
                    node_id: node_id.to_string(),
                    message,
                    node: Some(view),
                    ..Default::default()
                }));
                if self.nodes[node_id].state.is_ready() {
                    self.find_replacements(now, fx);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(node = node_id, "ignored node event: {e}"),
        }
    }

    // ----- views -----------------------------------------------------------------------------

    pub fn job_view(&self, job: &Job) -> pb::Job {
        crate::view::job(job)
    }

    pub fn node_view(&self, node: &NodeRecord) -> pb::Node {
        crate::view::node(node, &self.jobs)
    }

    pub fn incident_view(&self, incident: &Incident) -> pb::Incident {
        crate::view::incident(incident)
    }

    fn incident_event(&self, incident: &Incident, now: UnixMillis) -> Effect {
        Effect::Publish(pb::Event {
            at_unix_ms: now,
            kind: "incident".into(),
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
            incident: Some(self.incident_view(incident)),
            ..Default::default()
        })
    }

    fn log_event(&self, node_id: &str, job_id: &str, message: String, now: UnixMillis) -> Effect {
        Effect::Publish(pb::Event {
            at_unix_ms: now,
            kind: "log".into(),
            job_id: job_id.to_string(),
            node_id: node_id.to_string(),
            message,
            ..Default::default()
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

/// The reason of the first check that asks for the node to be replaced, if any.
fn fatal_reason(health: &pb::HealthSummary) -> Option<String> {
    health
        .checks
        .iter()
        .find(|c| {
            c.state == pb::HealthState::Unhealthy as i32
                && c.action == pb::HealthAction::ReplaceNode as i32
        })
        .map(|c| format!("{}: {}", c.check, c.reason))
}

#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod agent_crash_tests;

#[cfg(test)]
mod policy_tests;
