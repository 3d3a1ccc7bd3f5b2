//! # The simulation test double
//!
//! A deterministic, single-threaded model of a holdfast cluster around the real decision core
//! ([`Cluster::step`]): a fake clock, in-memory agents with workers that train, write
//! checkpoints and fail on demand, and a fake coordinator shell that carries out the core's
//! [`Command`]s. Only in test builds and behind the `sim` feature (off by default); it never
//! ships.
//!
//! ## What it models
//! - **Time**: one clock, `now`, starting at [`START_MS`]. [`Sim::run_for`] and
//!   [`Sim::run_until`] advance it in steps of the core's `tick_ms`: every message and timer
//!   due is handled in `(time, sequence)` order, with `now` set to its time, and an
//!   [`Input::Tick`] at each multiple of `tick_ms`. Nothing depends on the host's clock or on
//!   hash order, so a run is a function of its inputs (and of the seed of [`Sim::rng`]).
//! - **The network**: every agent stream has a connection id; messages both ways take
//!   [`Sim::latency_ms`] (1 ms by default) and keep their order. A stream closed by the agent's
//!   side reaches the core as [`Input::Disconnected`]; a stream the core closes
//!   ([`Command::Disconnect`]) is closed at once on the shell's side and the agent learns it one
//!   latency later. Commands for a node with no open stream are dropped, as the shell drops
//!   them.
//! - **Agents** ([`Sim::add_node`]): say hello on a new connection, send a heartbeat every
//!   `heartbeat_interval_ms` (the welcome's) stamped with their own clock (which may be offset,
//!   [`NodeOptions::clock_offset_ms`]), refuse commands of an older term and launches of a
//!   generation they already saw, and answer commands as the real agent does: `Launch` stops
//!   the current worker and starts the new one (`Started` after
//!   [`NodeOptions::start_delay_ms`]); `Stop` and `Fence` stop the worker (it exits with
//!   `stopped_by_agent`); `RunScript` answers after [`NodeOptions::script_ms`], failing on a
//!   node marked bad ([`Sim::set_check_fails`]); `RestartAgent` says goodbye (restarting),
//!   closes the stream and says hello again with its worker still running. Worker events sent
//!   while the agent has no stream wait in its outbox (progress: only the latest) and follow
//!   the next welcome; heartbeats are not queued.
//! - **Training**: the ranks of one generation form a gang, as in synchronous training: the
//!   gang makes a step every [`JobParams::step_ms`] (times the largest [`Sim::slow`] factor of
//!   its nodes) only while every rank's worker is started, alive, not hung and not paused; each
//!   step every rank reports [`Input::Progress`]. Every [`JobParams::checkpoint_every`] steps the
//!   gang writes a complete checkpoint (`sim://<job>/step-N`, with its generation and the time)
//!   into the sim's store. At the job's `total_steps` every worker exits 0. A generation starts
//!   at the launch's `resume_step`.
//! - **The shell**: `ResolveCheckpoint` is answered (one latency later) with the newest
//!   checkpoint of the job that was not written by a fenced generation after its fence (an
//!   empty checkpoint URI resolves to none, as in the coordinator); `Provision` and `FenceHost`
//!   succeed; `Publish` events and operator `Reply`s are recorded.
//! - **Faults**: [`Sim::kill`] (host down: the stream closes, the worker dies; [`Sim::heal`]
//!   reboots it with no worker), [`Sim::cut`] (the management network is cut both ways: nothing
//!   arrives and no close is seen; the worker keeps training with its peers; [`Sim::heal`]
//!   reconnects, with a new hello when the core closed the stream meanwhile), [`Sim::pause`]
//!   (SIGSTOP of agent and worker: silent, then it resumes where it was and handles what came
//!   meanwhile), [`Sim::pause_coordinator`] (the core is not stepped: no ticks, messages are
//!   held; at the end the missed tick fires first, then everything held arrives, with the clock
//!   jumped), [`Sim::slow`], [`Sim::kill_worker`], [`Sim::hang_worker`] (a hang
//!   nothing singles out), [`Sim::stop_worker`] and [`Sim::spin_worker`] (their agents report the
//!   process stopped, or spinning while its peers wait),
//!   [`Sim::inject_fatal_health`], and [`Sim::restart_coordinator`] (the state goes through
//!   [`Cluster::to_records`] and [`Cluster::restore`]; every stream closes and the agents
//!   reconnect after their reconnect delay).
//! - **Invariants** ([`Sim::check_invariants`], checked automatically as [`InvariantChecks`]
//!   says: by default after every core step, with the records round-trip every tick): no node
//!   holds a rank in two live jobs; no live job has a rank with an empty node; a node allocated
//!   to a job holds one of its ranks, and a rank of a live job is on a node allocated to it (or
//!   cordoned); every incident is closed, or open while its recovery is under way (its job
//!   pending or recovering, launching after the incident's replacement, running after its
//!   relaunch into the job's current generation), with its phases stamped in order;
//!   generations only grow; the records round-trip through `restore` unchanged apart from what
//!   `restore` changes on purpose (the term, the ranks' progress clocks).
//!
//! ## What it does not model
//! The wire (protobuf mapping, TLS, tokens), the store's write path and leader election; real
//! processes and their grace periods (a stop is instant); lost or reordered messages on a
//! healthy stream (TCP); the agent's keepalive (a cut agent finds out its stream was closed
//! when the cut heals); messages sent during a cut (lost, not retransmitted); a coordinator
//! that is down for a while (a restart is instant); hosts from a provider (`Provision`
//! succeeds with none: nodes join only when a test adds them); an adopted worker's unknown
//! exit status (the sim always knows how a worker ended).
//!
//! ## Writing a test
//! ```
//! # use holdfast_core::{cluster::Role, sim::Sim, CoordinatorConfig};
//! let mut sim = Sim::new(CoordinatorConfig::default());
//! sim.add_nodes("w", 3, Role::Worker);
//! sim.add_nodes("s", 1, Role::Spare);
//! assert!(sim.run_until(|s| s.nodes_in("ready").len() == 4, 1_000));
//! sim.submit_job("job", 3);
//! assert!(sim.run_until(|s| s.job("job").step >= 25, 10_000));
//! sim.kill("w1");
//! assert!(sim.run_until(|s| s.job("job").generation == 2 && s.open_incidents().is_empty(), 20_000));
//! ```
//! - [`Sim::run_until`] returns whether the condition came true: assert it, or the test goes on
//!   from a state it did not mean.
//! - Faults take effect at once; what the core makes of them shows after a `run_*`. Operator
//!   requests ([`Sim::request`], [`Sim::submit`]) are stepped at once and return the core's
//!   answer; a check answers later ([`Sim::send_request`], [`Sim::take_reply`]).
//! - Randomized tests draw from [`Sim::rng`] of a [`Sim::with_seed`] sim, so a failure replays.
//! - For clusters of thousands of nodes use [`InvariantChecks::per_tick`] and
//!   [`Sim::keep_events`]`(false)`.
//!
//! Integration tests in `core/tests/` get the module through the crate's dev-dependency on
//! itself with the `sim` feature. A violated invariant panics with the time and what is wrong.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::checkpoint::{Checkpoint, FencedGeneration};
use crate::cluster::{Cluster, Command, Input, NodeRecord, Reply, Role};
use crate::config::CoordinatorConfig;
use crate::error::CoreError;
use crate::incident::Incident;
use crate::job::Job;
use crate::node::NodeState;
use crate::protocol::{AgentCommand, CommandResult, Event, EventKind, JobRequest};
use crate::{Generation, JobId, NodeId, Term, UnixMillis};

mod agent;
mod faults;
mod invariants;
mod queries;
mod rng;
mod shell;
mod training;

pub use agent::{NodeOptions, Worker, WorkerStatus};
pub use faults::Exit;
pub use invariants::InvariantChecks;
pub use rng::SimRng;

use agent::Agent;

/// Where the sim's clock starts.
pub const START_MS: UnixMillis = 1_000_000;

/// How a job's gang trains in the sim.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobParams {
    /// One step takes this long (when no node of the gang is slowed).
    pub step_ms: u64,
    /// A complete checkpoint every this many steps (0: none).
    pub checkpoint_every: u64,
}

impl Default for JobParams {
    fn default() -> Self {
        JobParams {
            step_ms: 100,
            checkpoint_every: 10,
        }
    }
}

/// A checkpoint in the sim's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCheckpoint {
    /// The step it holds.
    pub step: u64,
    /// The generation that wrote it.
    pub generation: Generation,
    /// When it was completed (the sim's clock, which is the coordinator's).
    pub written_at: UnixMillis,
    /// Where it is (`sim://job/step-N`).
    pub uri: String,
    /// Set when its files no longer match its manifest (truncated, corrupted): why the
    /// resolver passes it over.
    pub damaged: Option<String>,
}

/// Counters of what happened in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Inputs stepped through the core.
    pub inputs: u64,
    /// Ticks stepped.
    pub ticks: u64,
    /// Ticks skipped while the coordinator was paused.
    pub ticks_missed: u64,
    /// Agent messages lost (cut network, closed stream).
    pub lost_to_coordinator: u64,
    /// Commands the shell dropped (no open stream) or the network lost.
    pub lost_to_agents: u64,
    /// Progress events published by the core (not kept in the event log).
    pub progress_events: u64,
    /// Full invariant checks with the records round-trip.
    pub records_checks: u64,
    /// Wall time spent inside `Cluster::step` (the decision core alone, without the harness's
    /// agents and queue), in nanoseconds.
    pub core_ns: u64,
}

/// What an agent receives.
#[derive(Debug, Clone)]
enum ToAgent {
    Welcome {
        term: Term,
        heartbeat_interval_ms: u64,
    },
    Refused,
    Closed,
    Command(Box<AgentCommand>),
}

/// Where an input for the core comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// An agent stream.
    Stream(u64),
    /// The shell itself (an answer, a stream it closed), for the coordinator incarnation `epoch`.
    Shell(u64),
}

#[derive(Debug, Clone)]
enum AgentTimer {
    Heartbeat { conn: u64 },
    Reconnect,
    ScriptDone(CommandResult),
}

#[derive(Debug, Clone)]
enum SimEvent {
    ToCoordinator {
        origin: Origin,
        input: Input,
    },
    ToAgent {
        node: String,
        conn: u64,
        message: ToAgent,
    },
    Agent {
        node: String,
        incarnation: u64,
        timer: AgentTimer,
    },
    WorkerStarted {
        node: String,
        pid: u32,
    },
    Gang {
        job_id: JobId,
        generation: Generation,
    },
    CoordinatorWakes,
}

#[derive(Debug)]
struct Queued {
    at: UnixMillis,
    seq: u64,
    /// Boxed: the heap moves entries on every push and pop.
    event: Box<SimEvent>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One agent stream as the shell sees it.
#[derive(Debug, Clone)]
struct Stream {
    node: String,
    /// The coordinator incarnation it was opened to.
    epoch: u64,
    /// The shell still reads it.
    open: bool,
}

/// The ranks of one generation of a job, training in lock step.
#[derive(Debug, Clone)]
struct Gang {
    nnodes: u32,
    step: u64,
    /// rank → (node, worker pid)
    members: BTreeMap<u32, (String, u32)>,
}

/// A job as the sim trains it.
#[derive(Debug, Clone, Copy)]
struct SimJob {
    params: JobParams,
    total_steps: u64,
}

/// The simulated cluster. See the module docs.
pub struct Sim {
    config: CoordinatorConfig,
    cluster: Cluster,
    now: UnixMillis,
    /// One-way delay of every message, agent ↔ coordinator and shell answers.
    pub latency_ms: i64,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    next_tick_at: UnixMillis,
    last_tick_at: Option<UnixMillis>,
    agents: BTreeMap<String, Agent>,
    streams: BTreeMap<u64, Stream>,
    /// node → the stream the shell sends its commands on.
    server: BTreeMap<NodeId, u64>,
    /// hello request → its stream.
    pending_hellos: BTreeMap<u64, u64>,
    next_conn: u64,
    next_request: u64,
    next_pid: u32,
    /// Coordinator incarnation: bumped by a restart.
    epoch: u64,
    paused_until: Option<UnixMillis>,
    held: Vec<(Origin, Input)>,
    gangs: BTreeMap<(JobId, Generation), Gang>,
    jobs: BTreeMap<String, SimJob>,
    checkpoints: BTreeMap<String, BTreeMap<u64, SimCheckpoint>>,
    store_down: bool,
    events: Vec<Event>,
    keep_events: bool,
    /// What the shell archived (retention): job ids and incident ids, in order.
    archived: (Vec<String>, Vec<u64>),
    replies: BTreeMap<u64, Result<Reply, CoreError>>,
    checks: InvariantChecks,
    ticks_to_records_check: u64,
    /// Highest generation seen per job (the generations-only-grow invariant).
    generations: BTreeMap<JobId, Generation>,
    stats: SimStats,
    rng: SimRng,
}

impl Sim {
    /// A cluster with no nodes, the clock at [`START_MS`], the RNG seeded with 1.
    pub fn new(config: CoordinatorConfig) -> Sim {
        Sim::with_seed(config, 1)
    }

    /// Like [`Sim::new`] with the RNG seeded with `seed`.
    pub fn with_seed(config: CoordinatorConfig, seed: u64) -> Sim {
        config
            .validate()
            .expect("the sim needs a valid coordinator config");
        let tick = config.tick_ms as i64;
        Sim {
            cluster: Cluster::new(config.clone()),
            config,
            now: START_MS,
            latency_ms: 1,
            seq: 0,
            queue: BinaryHeap::new(),
            next_tick_at: START_MS + tick,
            last_tick_at: None,
            agents: BTreeMap::new(),
            streams: BTreeMap::new(),
            server: BTreeMap::new(),
            pending_hellos: BTreeMap::new(),
            next_conn: 1,
            next_request: 1,
            next_pid: 1000,
            epoch: 1,
            paused_until: None,
            held: Vec::new(),
            gangs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            store_down: false,
            events: Vec::new(),
            keep_events: true,
            archived: (Vec::new(), Vec::new()),
            replies: BTreeMap::new(),
            checks: InvariantChecks::default(),
            ticks_to_records_check: 0,
            generations: BTreeMap::new(),
            stats: SimStats::default(),
            rng: SimRng::new(seed),
        }
    }

    // ----- setup -----------------------------------------------------------------------------

    /// Adds a node whose agent connects now.
    pub fn add_node(&mut self, id: &str, role: Role) {
        self.add_node_with(id, role, NodeOptions::default());
    }

    /// Adds a node with options (clock offset, start delay, …) whose agent connects now.
    pub fn add_node_with(&mut self, id: &str, role: Role, options: NodeOptions) {
        assert!(
            !self.agents.contains_key(id),
            "sim: node {id} was added twice"
        );
        let agent = Agent::new(id, role, options, self.now);
        self.agents.insert(id.to_string(), agent);
        self.connect(id);
    }

    /// Adds `count` nodes `<prefix>0`, `<prefix>1`, … and returns their ids.
    pub fn add_nodes(&mut self, prefix: &str, count: usize, role: Role) -> Vec<String> {
        let width = count.saturating_sub(1).to_string().len();
        (0..count)
            .map(|i| {
                let id = format!("{prefix}{i:0width$}");
                self.add_node(&id, role);
                id
            })
            .collect()
    }

    /// How invariants are checked from now on.
    pub fn set_invariant_checks(&mut self, checks: InvariantChecks) {
        self.checks = checks;
        self.ticks_to_records_check = checks.records_every_ticks;
    }

    /// Keep the core's published events (all but progress) in [`Sim::events`]; on by default.
    pub fn keep_events(&mut self, keep: bool) {
        self.keep_events = keep;
    }

    /// The sim's seeded RNG, for tests that draw faults.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    // ----- operators ---------------------------------------------------------------------------

    /// Steps an operator request now and returns the core's answer to it, which the core gives
    /// in the same step for everything but a check ([`Sim::send_request`]). `make` gets the
    /// request id.
    pub fn request(&mut self, make: impl FnOnce(u64) -> Input) -> Result<Reply, CoreError> {
        let request = self.send_request(make);
        self.take_reply(request)
            .expect("sim: the core did not answer an operator request in its step")
    }

    /// Steps an operator request now and returns its id; the answer waits in
    /// [`Sim::take_reply`] (a node check answers when its scripts end).
    pub fn send_request(&mut self, make: impl FnOnce(u64) -> Input) -> u64 {
        assert!(
            self.paused_until.is_none(),
            "sim: an operator request while the coordinator is paused"
        );
        let request = self.next_request;
        self.next_request += 1;
        self.step(make(request));
        request
    }

    /// The core's answer to operator request `request`, once (`None` until it came).
    pub fn take_reply(&mut self, request: u64) -> Option<Result<Reply, CoreError>> {
        self.replies.remove(&request)
    }

    /// Submits a job; its gang trains as `params` say.
    pub fn submit(&mut self, request: JobRequest, params: JobParams) -> Result<Job, CoreError> {
        let total_steps = request.total_steps;
        let explicit = (!request.job_id.is_empty()).then(|| request.job_id.clone());
        if let Some(id) = &explicit {
            // Known before the launch: the gang's params must be there when it starts.
            self.jobs.insert(
                id.clone(),
                SimJob {
                    params,
                    total_steps,
                },
            );
        }
        let reply = self.request(|request_id| Input::Submit {
            request: request_id,
            job: request,
        });
        match reply {
            Ok(Reply::Job(job)) => {
                self.jobs.insert(
                    job.id.to_string(),
                    SimJob {
                        params,
                        total_steps,
                    },
                );
                Ok(*job)
            }
            Ok(other) => panic!("sim: a submit was answered with {other:?}"),
            Err(e) => {
                if let Some(id) = explicit {
                    if !self.cluster.jobs.contains_key(id.as_str()) {
                        self.jobs.remove(&id);
                    }
                }
                Err(e)
            }
        }
    }

    /// Submits job `id` on `nodes` nodes with the default [`JobParams`], the checkpoint URI
    /// `sim://<id>` and a restart budget of 3; panics when the core refuses it.
    pub fn submit_job(&mut self, id: &str, nodes: u32) -> Job {
        self.submit(Sim::job_request(id, nodes), JobParams::default())
            .unwrap_or_else(|e| panic!("sim: job {id} was refused: {e}"))
    }

    /// The request [`Sim::submit_job`] sends, to adjust before [`Sim::submit`].
    pub fn job_request(id: &str, nodes: u32) -> JobRequest {
        JobRequest {
            job_id: id.to_string(),
            command: vec!["train".into()],
            nodes,
            checkpoint_uri: format!("sim://{id}"),
            restart_budget: 3,
            ..Default::default()
        }
    }

    /// An operator stops a job.
    pub fn stop_job(&mut self, job_id: &str) -> Result<Reply, CoreError> {
        let job_id = JobId::from(job_id);
        self.request(|request| Input::StopJob { request, job_id })
    }

    /// An operator asks a node's agent to restart in place.
    pub fn restart_agent(&mut self, node: &str) -> Result<Reply, CoreError> {
        let node = NodeId::from(node);
        self.request(|request| Input::RestartAgent {
            request,
            node,
            reason: "sim".into(),
        })
    }

    // ----- time --------------------------------------------------------------------------------

    /// Advances the clock by `ms`, handling everything due on the way.
    pub fn run_for(&mut self, ms: i64) {
        let target = self.now + ms;
        self.advance_to(target);
    }

    /// Advances the clock one tick at a time until `done` holds (checked first, then after every
    /// tick) or `max_ms` passed. Returns whether `done` held.
    pub fn run_until(&mut self, mut done: impl FnMut(&Sim) -> bool, max_ms: i64) -> bool {
        let end = self.now + max_ms;
        let tick = self.config.tick_ms as i64;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            let next = (self.now + tick).min(end);
            self.advance_to(next);
        }
    }

    fn advance_to(&mut self, target: UnixMillis) {
        loop {
            let next_event = self.queue.peek().map(|q| q.0.at);
            let tick_at = self.next_tick_at;
            let event_first = next_event.is_some_and(|at| at <= tick_at);
            let at = if event_first {
                next_event.unwrap_or(tick_at)
            } else {
                tick_at
            };
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            if event_first {
                let Some(Reverse(queued)) = self.queue.pop() else {
                    break;
                };
                self.handle(*queued.event);
            } else {
                self.next_tick_at += self.config.tick_ms as i64;
                self.tick();
            }
        }
        self.now = self.now.max(target);
    }

    fn tick(&mut self) {
        // Paused, or the wake-up tick already fired this millisecond (missed ticks are skipped,
        // not bunched).
        if self.paused_until.is_some() || self.last_tick_at == Some(self.now) {
            self.stats.ticks_missed += 1;
            return;
        }
        self.last_tick_at = Some(self.now);
        self.stats.ticks += 1;
        self.step(Input::Tick);
        self.after_tick();
    }

    fn after_tick(&mut self) {
        let checks = self.checks;
        if checks.every_tick && !checks.every_input {
            self.check_state();
        }
        if checks.records_every_ticks > 0 {
            self.ticks_to_records_check = self.ticks_to_records_check.saturating_sub(1);
            if self.ticks_to_records_check == 0 {
                self.ticks_to_records_check = checks.records_every_ticks;
                self.check_records();
            }
        }
    }

    fn push(&mut self, at: UnixMillis, event: SimEvent) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            event: Box::new(event),
        }));
    }

    fn handle(&mut self, event: SimEvent) {
        match event {
            SimEvent::ToCoordinator { origin, input } => self.coordinator_input(origin, input),
            SimEvent::ToAgent {
                node,
                conn,
                message,
            } => self.agent_receive(&node, conn, message),
            SimEvent::Agent {
                node,
                incarnation,
                timer,
            } => self.agent_timer(&node, incarnation, timer),
            SimEvent::WorkerStarted { node, pid } => self.worker_started(&node, pid),
            SimEvent::Gang { job_id, generation } => self.gang_step(&job_id, generation),
            SimEvent::CoordinatorWakes => self.coordinator_wakes(),
        }
    }
}

#[cfg(test)]
mod inprocess_tests;
#[cfg(test)]
mod tests;
