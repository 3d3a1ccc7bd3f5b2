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
//!   jumped), [`Sim::slow`], [`Sim::kill_worker`], [`Sim::hang_worker`],
//!   [`Sim::inject_fatal_health`], and [`Sim::restart_coordinator`] (the state goes through
//!   [`Cluster::to_records`] and [`Cluster::restore`]; every stream closes and the agents
//!   reconnect after their reconnect delay).
//! - **Invariants** ([`Sim::check_invariants`], checked automatically as
//!   [`InvariantChecks`] says: by default after every core step, with the records round-trip
//!   every tick): no node holds a rank in two live jobs; no live job has a rank with an empty
//!   node; a node allocated to a job holds one of its ranks; every incident is closed, or open
//!   while its recovery is under way (its job pending or recovering, launching after the
//!   incident's replacement, running after its relaunch into the job's current generation),
//!   with its phases stamped in order;
//!   generations only grow; the records round-trip through `restore` unchanged apart from what
//!   `restore` changes on purpose (the term, the ranks' progress clocks).
//!
//! ## What it does not model
//! The wire (protobuf mapping, TLS, tokens), the store's write path and leader election; real
//! processes and their grace periods (a stop is instant); lost or reordered messages on a
//! healthy stream (TCP); the agent's keepalive (a cut agent finds out its stream was closed
//! when the cut heals); messages sent during a cut (lost, not retransmitted); a coordinator
//! that is down for a while (a restart is instant) or shrinks a job's gang mid-generation.
//!
//! ## Writing a test
//! ```ignore
//! let mut sim = Sim::new(CoordinatorConfig::default());
//! sim.add_nodes("w", 3, Role::Worker);
//! sim.add_nodes("s", 1, Role::Spare);
//! assert!(sim.run_until(|s| s.nodes_in("ready").len() == 4, 1_000));
//! sim.submit_job("job", 3);
//! assert!(sim.run_until(|s| s.job("job").step >= 25, 10_000));
//! sim.kill("w1");
//! assert!(sim.run_until(|s| s.job("job").generation == 2 && s.open_incidents().is_empty(), 20_000));
//! ```
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
use crate::UnixMillis;

mod agent;
mod invariants;
mod rng;

pub use agent::{Exit, NodeOptions, Worker, WorkerStatus};
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
    pub step: u64,
    pub generation: u64,
    /// When it was completed (the sim's clock, which is the coordinator's).
    pub written_at: UnixMillis,
    pub uri: String,
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
}

/// What an agent receives.
#[derive(Debug, Clone)]
enum ToAgent {
    Welcome {
        term: u64,
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
        job_id: String,
        generation: u64,
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
    agents: BTreeMap<String, Agent>,
    streams: BTreeMap<u64, Stream>,
    /// node → the stream the shell sends its commands on.
    server: BTreeMap<String, u64>,
    /// hello request → its stream.
    pending_hellos: BTreeMap<u64, u64>,
    next_conn: u64,
    next_request: u64,
    next_pid: u32,
    /// Coordinator incarnation: bumped by a restart.
    epoch: u64,
    paused_until: Option<UnixMillis>,
    held: Vec<(Origin, Input)>,
    gangs: BTreeMap<(String, u64), Gang>,
    jobs: BTreeMap<String, SimJob>,
    checkpoints: BTreeMap<String, BTreeMap<u64, SimCheckpoint>>,
    store_down: bool,
    events: Vec<Event>,
    keep_events: bool,
    replies: BTreeMap<u64, Result<Reply, CoreError>>,
    checks: InvariantChecks,
    ticks_to_records_check: u64,
    /// Highest generation seen per job (the generations-only-grow invariant).
    generations: BTreeMap<String, u64>,
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

    /// Steps an operator request now and returns the core's answer to it. `make` gets the
    /// request id.
    pub fn request(&mut self, make: impl FnOnce(u64) -> Input) -> Result<Reply, CoreError> {
        assert!(
            self.paused_until.is_none(),
            "sim: an operator request while the coordinator is paused"
        );
        let request = self.next_request;
        self.next_request += 1;
        self.step(make(request));
        self.replies
            .remove(&request)
            .expect("sim: the core did not answer an operator request in its step")
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
                    job.id.clone(),
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
                    if !self.cluster.jobs.contains_key(&id) {
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
        let job_id = job_id.to_string();
        self.request(|request| Input::StopJob { request, job_id })
    }

    /// An operator asks a node's agent to restart in place.
    pub fn restart_agent(&mut self, node: &str) -> Result<Reply, CoreError> {
        let node = node.to_string();
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
        if self.paused_until.is_some() {
            self.stats.ticks_missed += 1;
            return;
        }
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

    // ----- the coordinator ---------------------------------------------------------------------

    /// Steps the core with `input` now and carries out its commands.
    fn step(&mut self, input: Input) {
        self.stats.inputs += 1;
        let fx = self.cluster.step(input, self.now);
        self.carry_out(fx);
        if self.checks.every_input {
            self.check_state();
        }
    }

    /// An input reaches the coordinator process: lost if its stream belongs to an older
    /// incarnation or the node is cut off, held while the coordinator is paused.
    fn coordinator_input(&mut self, origin: Origin, input: Input) {
        let arrives = match origin {
            Origin::Shell(epoch) => epoch == self.epoch,
            Origin::Stream(conn) => self.streams.get(&conn).is_some_and(|s| {
                s.epoch == self.epoch && !self.agents.get(&s.node).is_some_and(|a| a.cut)
            }),
        };
        if !arrives {
            self.stats.lost_to_coordinator += 1;
            return;
        }
        if self.paused_until.is_some() {
            self.held.push((origin, input));
            return;
        }
        self.deliver(origin, input);
    }

    /// The shell reads an input that arrived and steps the core with it.
    fn deliver(&mut self, origin: Origin, input: Input) {
        let conn = match origin {
            Origin::Shell(epoch) => {
                if epoch == self.epoch {
                    self.step(input);
                }
                return;
            }
            Origin::Stream(conn) => conn,
        };
        let Some(stream) = self.streams.get_mut(&conn) else {
            return;
        };
        if !stream.open || stream.epoch != self.epoch {
            self.stats.lost_to_coordinator += 1;
            return;
        }
        match input {
            Input::Disconnected { node, conn } => {
                // The shell's reader sees the stream end.
                stream.open = false;
                if self.server.get(&node) == Some(&conn) {
                    self.server.remove(&node);
                }
                self.step(Input::Disconnected { node, conn });
            }
            Input::Hello {
                request,
                conn,
                hello,
            } => {
                self.pending_hellos.insert(request, conn);
                self.step(Input::Hello {
                    request,
                    conn,
                    hello,
                });
            }
            other => self.step(other),
        }
    }

    fn coordinator_wakes(&mut self) {
        if self.paused_until.is_none_or(|t| t > self.now) {
            return;
        }
        self.paused_until = None;
        // The ticker's missed tick fires first; then the streams are read.
        self.stats.ticks += 1;
        self.step(Input::Tick);
        for (origin, input) in std::mem::take(&mut self.held) {
            self.deliver(origin, input);
        }
        self.after_tick();
    }

    /// Carries out the core's commands in order, as the coordinator's shell does.
    fn carry_out(&mut self, fx: Vec<Command>) {
        let later = self.now + self.latency_ms;
        let shell = Origin::Shell(self.epoch);
        for command in fx {
            match command {
                Command::Send { node, command } => match self.server.get(&node) {
                    Some(&conn) => self.push(
                        later,
                        SimEvent::ToAgent {
                            node,
                            conn,
                            message: ToAgent::Command(Box::new(command)),
                        },
                    ),
                    None => self.stats.lost_to_agents += 1,
                },
                Command::Disconnect { node, .. } => {
                    if let Some(conn) = self.server.remove(&node) {
                        if let Some(stream) = self.streams.get_mut(&conn) {
                            stream.open = false;
                        }
                        let at = self.now;
                        self.push(
                            at,
                            SimEvent::ToCoordinator {
                                origin: shell,
                                input: Input::Disconnected {
                                    node: node.clone(),
                                    conn,
                                },
                            },
                        );
                        self.push(
                            later,
                            SimEvent::ToAgent {
                                node,
                                conn,
                                message: ToAgent::Closed,
                            },
                        );
                    }
                }
                Command::ResolveCheckpoint {
                    job_id,
                    uri,
                    fenced,
                } => {
                    let result = self.resolve(&job_id, &uri, &fenced);
                    self.push(
                        later,
                        SimEvent::ToCoordinator {
                            origin: shell,
                            input: Input::CheckpointResolved { job_id, result },
                        },
                    );
                }
                Command::Publish(event) => {
                    if event.kind == EventKind::Progress {
                        self.stats.progress_events += 1;
                    } else if self.keep_events {
                        self.events.push(event);
                    }
                }
                Command::Provision { job_id, count, .. } => self.push(
                    later,
                    SimEvent::ToCoordinator {
                        origin: shell,
                        input: Input::ProvisionResult {
                            job_id,
                            count,
                            result: Ok(Vec::new()),
                        },
                    },
                ),
                Command::FenceHost { node, .. } => self.push(
                    later,
                    SimEvent::ToCoordinator {
                        origin: shell,
                        input: Input::FenceHostResult {
                            node,
                            result: Ok("sim provider fenced it".into()),
                        },
                    },
                ),
                Command::Reply { request, reply } => match self.pending_hellos.remove(&request) {
                    Some(conn) => self.answer_hello(conn, reply),
                    None => {
                        self.replies.insert(request, reply);
                    }
                },
            }
        }
    }

    /// The shell answers a hello: registers the stream and sends the welcome, or closes it.
    fn answer_hello(&mut self, conn: u64, reply: Result<Reply, CoreError>) {
        let Some(stream) = self.streams.get_mut(&conn) else {
            return;
        };
        let node = stream.node.clone();
        let message = match reply {
            Ok(Reply::Welcome(welcome)) => {
                self.server.insert(node.clone(), conn);
                ToAgent::Welcome {
                    term: welcome.term,
                    heartbeat_interval_ms: welcome.heartbeat_interval_ms,
                }
            }
            _ => {
                stream.open = false;
                ToAgent::Refused
            }
        };
        let at = self.now + self.latency_ms;
        self.push(
            at,
            SimEvent::ToAgent {
                node,
                conn,
                message,
            },
        );
    }

    /// The newest checkpoint not written by a fenced generation after its fence.
    fn resolve(
        &self,
        job_id: &str,
        uri: &str,
        fenced: &[FencedGeneration],
    ) -> Result<Option<Checkpoint>, String> {
        if uri.is_empty() {
            return Ok(None);
        }
        if self.store_down {
            return Err("sim: the checkpoint store is unreachable".into());
        }
        let Some(all) = self.checkpoints.get(job_id) else {
            return Ok(None);
        };
        Ok(all
            .values()
            .rev()
            .find(|c| {
                !fenced
                    .iter()
                    .any(|f| f.generation == c.generation && c.written_at > f.fenced_at)
            })
            .map(|c| Checkpoint {
                step: c.step,
                uri: c.uri.clone(),
                generation: Some(c.generation),
            }))
    }

    // ----- coordinator faults -----------------------------------------------------------------

    /// The coordinator stops for `ms`: no ticks, no messages handled. When it wakes the missed
    /// tick fires first, then everything that arrived meanwhile, in order.
    pub fn pause_coordinator(&mut self, ms: i64) {
        let until = self.now + ms;
        self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
        self.push(until, SimEvent::CoordinatorWakes);
    }

    /// The coordinator restarts: its state goes through [`Cluster::to_records`] and
    /// [`Cluster::restore`], every stream closes, held and in-flight inputs are lost, and the
    /// agents reconnect after their reconnect delay.
    pub fn restart_coordinator(&mut self) {
        let records = self
            .cluster
            .to_records()
            .expect("sim: the state cannot be stored");
        let (cluster, fx) = Cluster::restore(self.config.clone(), &records, self.now)
            .expect("sim: the stored state cannot be restored")
            .expect("sim: the stored state is empty");
        self.cluster = cluster;
        self.epoch += 1;
        self.paused_until = None;
        self.held.clear();
        self.server.clear();
        self.pending_hellos.clear();
        let later = self.now + self.latency_ms;
        let open: Vec<(u64, String)> = self
            .streams
            .iter_mut()
            .filter(|(_, s)| s.open)
            .map(|(c, s)| {
                s.open = false;
                (*c, s.node.clone())
            })
            .collect();
        for (conn, node) in open {
            self.push(
                later,
                SimEvent::ToAgent {
                    node,
                    conn,
                    message: ToAgent::Closed,
                },
            );
        }
        self.carry_out(fx);
        if self.checks.every_input {
            self.check_state();
        }
    }

    /// Makes checkpoint resolution fail (`true`) or work again.
    pub fn set_checkpoint_store_down(&mut self, down: bool) {
        self.store_down = down;
    }

    // ----- queries -----------------------------------------------------------------------------

    /// The sim's clock.
    pub fn now(&self) -> UnixMillis {
        self.now
    }

    /// The core.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The config the core runs with.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// A job; panics when the core has no such job.
    pub fn job(&self, id: &str) -> &Job {
        self.cluster
            .jobs
            .get(id)
            .unwrap_or_else(|| panic!("sim: no job {id}"))
    }

    /// A node as the core knows it; panics when the core has no such node.
    pub fn node(&self, id: &str) -> &NodeRecord {
        self.cluster
            .nodes
            .get(id)
            .unwrap_or_else(|| panic!("sim: the core has no node {id}"))
    }

    /// A node's state in the core.
    pub fn node_state(&self, id: &str) -> &NodeState {
        &self.node(id).state
    }

    /// Nodes whose state is named `state` (`ready`, `allocated`, `fenced`, …), in id order.
    pub fn nodes_in(&self, state: &str) -> Vec<String> {
        self.cluster
            .nodes
            .values()
            .filter(|n| n.state.name() == state)
            .map(|n| n.id.clone())
            .collect()
    }

    /// Every incident, in id order.
    pub fn incidents(&self) -> &[Incident] {
        &self.cluster.incidents
    }

    /// The incidents of one job.
    pub fn incidents_of(&self, job_id: &str) -> Vec<&Incident> {
        self.cluster
            .incidents
            .iter()
            .filter(|i| i.job_id == job_id)
            .collect()
    }

    /// Incidents still open.
    pub fn open_incidents(&self) -> Vec<&Incident> {
        self.cluster
            .incidents
            .iter()
            .filter(|i| i.is_open())
            .collect()
    }

    /// Events the core published (progress events are only counted, in [`SimStats`]).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The states a node went through, from the core's node events, with their times.
    pub fn node_history(&self, id: &str) -> Vec<(UnixMillis, NodeState)> {
        self.events
            .iter()
            .filter(|e| e.kind == EventKind::NodeState && e.node_id == id)
            .filter_map(|e| match &e.subject {
                Some(crate::protocol::Subject::Node(n)) => Some((e.at, n.state.clone())),
                _ => None,
            })
            .collect()
    }

    /// When a node first entered the state named `state`, by the core's events.
    pub fn entered(&self, id: &str, state: &str) -> Option<UnixMillis> {
        self.node_history(id)
            .into_iter()
            .find(|(_, s)| s.name() == state)
            .map(|(at, _)| at)
    }

    /// The checkpoints in the sim's store for a job, oldest step first.
    pub fn checkpoints(&self, job_id: &str) -> Vec<SimCheckpoint> {
        self.checkpoints
            .get(job_id)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The newest checkpoint in the store for a job.
    pub fn newest_checkpoint(&self, job_id: &str) -> Option<SimCheckpoint> {
        self.checkpoints
            .get(job_id)
            .and_then(|c| c.values().next_back().cloned())
    }

    /// Counters of the run so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Node ids the sim has agents for, in order.
    pub fn node_ids(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }
}
