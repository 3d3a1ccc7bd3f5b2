//! The in-memory agents: streams, heartbeats, commands, workers and the gangs they train in,
//! and the faults a test injects into them.

use std::collections::BTreeMap;

use super::{AgentTimer, Origin, Sim, SimEvent, Stream, ToAgent};
use crate::cluster::{Hello, Input, Role};
use crate::evidence::{ProcessState, WorkerEvidence};
use crate::protocol::{AgentCommand, CommandResult, HealthState, HealthSummary};
use crate::{Generation, JobId, Term, UnixMillis};

/// How a node's agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeOptions {
    /// The agent's clock minus the sim's.
    pub clock_offset_ms: i64,
    /// `Launch` → `Started` takes this long (0: at once).
    pub start_delay_ms: u64,
    /// An agent whose stream closed (or was refused) tries again after this long.
    pub reconnect_delay_ms: u64,
    /// A lifecycle script takes this long.
    pub script_ms: u64,
    /// Its lifecycle scripts fail.
    pub check_fails: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            clock_offset_ms: 0,
            start_delay_ms: 0,
            reconnect_delay_ms: 500,
            script_ms: 20,
            check_fails: false,
        }
    }
}

/// What a worker process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    /// Launched, not reported started yet.
    Starting,
    /// Training (when its gang is whole).
    Running,
    /// Alive, making no progress, and looking like its waiting peers (a deadlock inside the
    /// collective): nothing singles it out.
    Hung,
    /// SIGSTOPped: its agent reports its process stopped.
    Stopped,
    /// Busy in its own code, never reaching the next exchange: its agent reports it spinning
    /// while its peers wait.
    Spinning,
}

/// The worker an agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// The job it trains.
    pub job_id: JobId,
    /// The generation it belongs to.
    pub generation: Generation,
    /// Its process id (unique per sim).
    pub pid: u32,
    /// Its node's rank in the job.
    pub rank: u32,
    /// Running, exited, hung…
    pub status: WorkerStatus,
}

/// One node's agent (and its host).
#[derive(Debug, Clone)]
pub(super) struct Agent {
    pub(super) id: String,
    pub(super) role: Role,
    pub(super) options: NodeOptions,
    /// The host runs.
    pub(super) up: bool,
    /// Bumped when the agent process starts again: timers of an older one are void.
    pub(super) incarnation: u64,
    /// The stream the agent uses, once it said hello on it.
    pub(super) conn: Option<u64>,
    pub(super) welcomed: bool,
    pub(super) heartbeat_ms: u64,
    pub(super) cut: bool,
    pub(super) paused_until: Option<UnixMillis>,
    pub(super) term: Term,
    /// Highest generation seen per job (durable on the host).
    pub(super) generations: BTreeMap<JobId, Generation>,
    pub(super) worker: Option<Worker>,
    /// The last worker that ended: (job, generation, pid).
    pub(super) last_worker: Option<(JobId, Generation, u32)>,
    pub(super) health: HealthSummary,
    /// The next heartbeat carries the health.
    pub(super) health_changed: bool,
    pub(super) slow: f64,
    /// When the agent process started (agent clock).
    pub(super) started_at: UnixMillis,
    pub(super) boots: u64,
    /// Worker events waiting for a stream.
    pub(super) outbox: Vec<Input>,
}

impl Agent {
    pub(super) fn new(id: &str, role: Role, options: NodeOptions, now: UnixMillis) -> Agent {
        Agent {
            id: id.to_string(),
            role,
            options,
            up: true,
            incarnation: 1,
            conn: None,
            welcomed: false,
            heartbeat_ms: 500,
            cut: false,
            paused_until: None,
            term: Term::default(),
            generations: BTreeMap::new(),
            worker: None,
            last_worker: None,
            health: HealthSummary {
                state: HealthState::Healthy,
                checks: Vec::new(),
            },
            health_changed: true,
            slow: 1.0,
            started_at: now + options.clock_offset_ms,
            boots: 1,
            outbox: Vec::new(),
        }
    }

    pub(super) fn paused(&self, now: UnixMillis) -> Option<UnixMillis> {
        self.paused_until.filter(|t| *t > now)
    }
}

impl Sim {
    /// A paused host handles nothing: `event` (made only then) happens again when the pause
    /// ends. True when it was put off.
    pub(super) fn put_off_while_paused(
        &mut self,
        node: &str,
        event: impl FnOnce() -> SimEvent,
    ) -> bool {
        let now = self.now;
        let Some(until) = self.agents.get(node).and_then(|a| a.paused(now)) else {
            return false;
        };
        self.push(until, event());
        true
    }

    pub(super) fn agent(&self, node: &str) -> &Agent {
        self.agents
            .get(node)
            .unwrap_or_else(|| panic!("sim: no node {node}"))
    }

    pub(super) fn agent_mut(&mut self, node: &str) -> &mut Agent {
        self.agents
            .get_mut(node)
            .unwrap_or_else(|| panic!("sim: no node {node}"))
    }

    pub(super) fn agent_clock(&self, node: &str) -> UnixMillis {
        self.now + self.agent(node).options.clock_offset_ms
    }

    /// The agent opens a new stream and says hello on it.
    pub(super) fn connect(&mut self, node: &str) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let request = self.next_request;
        self.next_request += 1;
        let sent_at = self.agent_clock(node);
        let epoch = self.epoch;
        self.streams.insert(
            conn,
            Stream {
                node: node.to_string(),
                epoch,
                open: true,
            },
        );
        let agent = self.agent_mut(node);
        agent.conn = Some(conn);
        agent.welcomed = false;
        let hello = Hello {
            node_id: agent.id.clone().into(),
            hostname: format!("{}.sim", agent.id),
            role: agent.role,
            address: format!("{}.sim", agent.id),
            boot_id: format!("{}-boot-{}", agent.id, agent.boots),
            agent_version: "sim".into(),
            gpus: Vec::new(),
            sent_at,
            worker: match (&agent.worker, &agent.last_worker) {
                (Some(w), _) => Some((w.job_id.clone(), w.generation, w.pid, true)),
                (None, Some((job, generation, pid))) => {
                    Some((job.clone(), *generation, *pid, false))
                }
                (None, None) => None,
            },
            agent_started_at: agent.started_at,
        };
        let at = self.now + self.latency_ms;
        self.push(
            at,
            SimEvent::ToCoordinator {
                origin: Origin::Stream(conn),
                input: Input::Hello {
                    request,
                    conn,
                    hello,
                },
            },
        );
    }

    /// The agent sends a message on its stream; with no stream, worker events wait in its
    /// outbox (progress: the latest only) and the rest is dropped.
    pub(super) fn agent_send(&mut self, node: &str, input: Input) {
        let at = self.now + self.latency_ms;
        let agent = self.agent_mut(node);
        if !agent.up {
            return;
        }
        match agent.conn {
            Some(conn) if agent.welcomed => {
                if agent.cut {
                    self.stats.lost_to_coordinator += 1;
                    return;
                }
                self.push(
                    at,
                    SimEvent::ToCoordinator {
                        origin: Origin::Stream(conn),
                        input,
                    },
                );
            }
            _ => match input {
                Input::Worker { .. } | Input::ScriptResult { .. } => agent.outbox.push(input),
                Input::Progress { .. } => {
                    agent
                        .outbox
                        .retain(|m| !matches!(m, Input::Progress { .. }));
                    agent.outbox.push(input);
                }
                _ => self.stats.lost_to_coordinator += 1,
            },
        }
    }

    pub(super) fn schedule(&mut self, node: &str, at: UnixMillis, timer: AgentTimer) {
        let incarnation = self.agent(node).incarnation;
        self.push(
            at,
            SimEvent::Agent {
                node: node.to_string(),
                incarnation,
                timer,
            },
        );
    }

    /// Something from the coordinator reaches the agent on stream `conn`.
    pub(super) fn agent_receive(&mut self, node: &str, conn: u64, message: ToAgent) {
        let now = self.now;
        let Some(agent) = self.agents.get(node) else {
            return;
        };
        if !agent.up || agent.conn != Some(conn) || agent.cut {
            self.stats.lost_to_agents += 1;
            return;
        }
        if let Some(until) = agent.paused(now) {
            self.send_to_agent(until, node.to_string(), conn, message);
            return;
        }
        match message {
            ToAgent::Welcome {
                term,
                heartbeat_interval_ms,
            } => {
                let agent = self.agent_mut(node);
                agent.welcomed = true;
                agent.term = agent.term.max(term);
                agent.heartbeat_ms = heartbeat_interval_ms.max(1);
                agent.health_changed = true;
                let outbox = std::mem::take(&mut agent.outbox);
                for input in outbox {
                    self.agent_send(node, input);
                }
                self.schedule(node, now, AgentTimer::Heartbeat { conn });
            }
            ToAgent::Refused | ToAgent::Closed => {
                let agent = self.agent_mut(node);
                agent.conn = None;
                agent.welcomed = false;
                let delay = agent.options.reconnect_delay_ms as i64;
                self.schedule(node, now + delay, AgentTimer::Reconnect);
            }
            ToAgent::Command(command) => self.agent_command(node, *command),
        }
    }

    pub(super) fn agent_timer(&mut self, node: &str, incarnation: u64, timer: AgentTimer) {
        let now = self.now;
        let current = |a: &Agent| a.up && a.incarnation == incarnation;
        if !self.agents.get(node).is_some_and(current) {
            return;
        }
        let again = || SimEvent::Agent {
            node: node.to_string(),
            incarnation,
            timer: timer.clone(),
        };
        if self.put_off_while_paused(node, again) {
            return;
        }
        let agent = self.agent(node);
        match timer {
            AgentTimer::Heartbeat { conn } => {
                if agent.conn != Some(conn) || !agent.welcomed {
                    return;
                }
                let interval = agent.heartbeat_ms as i64;
                let sent_at = self.agent_clock(node);
                let agent = self.agent_mut(node);
                let health = agent.health_changed.then(|| agent.health.clone());
                // A heartbeat lost to a cut does not count as told.
                agent.health_changed = agent.cut && health.is_some();
                let evidence = agent.worker.as_ref().map(worker_evidence);
                self.agent_send(
                    node,
                    Input::Heartbeat {
                        node: node.into(),
                        sent_at,
                        health,
                        echo: None,
                    },
                );
                if let Some(evidence) = evidence {
                    let node = node.to_string();
                    self.agent_send(
                        &node,
                        Input::Evidence {
                            node: node.clone().into(),
                            evidence,
                        },
                    );
                }
                self.schedule(node, now + interval, AgentTimer::Heartbeat { conn });
            }
            AgentTimer::Reconnect => {
                if agent.conn.is_some() {
                    return;
                }
                if agent.cut {
                    let delay = agent.options.reconnect_delay_ms as i64;
                    self.schedule(node, now + delay, AgentTimer::Reconnect);
                    return;
                }
                self.connect(node);
            }
            AgentTimer::ScriptDone(result) => self.agent_send(
                node,
                Input::ScriptResult {
                    node: node.into(),
                    result,
                },
            ),
        }
    }

    fn agent_command(&mut self, node: &str, command: AgentCommand) {
        let term = match &command {
            AgentCommand::Launch(l) => l.term,
            AgentCommand::Stop(s) => s.term,
            AgentCommand::Fence { term, .. }
            | AgentCommand::RestartAgent { term, .. }
            | AgentCommand::DumpStacks { term, .. } => *term,
            AgentCommand::RunScript(r) => r.term,
            // The simulated agents share the simulation's clock: nothing to measure.
            AgentCommand::Ping { .. } => return,
        };
        let agent = self.agent_mut(node);
        if term < agent.term {
            return;
        }
        agent.term = term;
        match command {
            AgentCommand::Launch(launch) => {
                let seen = agent
                    .generations
                    .get(&launch.job_id)
                    .copied()
                    .unwrap_or_default();
                if launch.generation <= seen {
                    return;
                }
                agent
                    .generations
                    .insert(launch.job_id.clone(), launch.generation);
                if launch.reform && self.reform_worker(node, &launch) {
                    return;
                }
                self.end_worker(node, None, Some(15), true);
                self.start_worker(node, &launch);
            }
            AgentCommand::Stop(stop) => {
                let seen = agent.generations.entry(stop.job_id.clone()).or_default();
                *seen = (*seen).max(stop.generation);
                let matches = agent
                    .worker
                    .as_ref()
                    .is_some_and(|w| w.job_id == stop.job_id && w.generation <= stop.generation);
                if matches {
                    self.end_worker(node, None, Some(15), true);
                }
            }
            AgentCommand::Fence { .. } => self.end_worker(node, None, Some(15), true),
            AgentCommand::DumpStacks { incident_id, .. } => {
                // The sim's workers have no Python: the agent says so, as one without py-spy.
                let input = Input::Stacks {
                    node: node.into(),
                    incident_id,
                    text: "stacks not available: sim worker".into(),
                };
                self.agent_send(node, input);
            }
            AgentCommand::RunScript(run) => {
                let ok = !agent.options.check_fails;
                let duration_ms = agent.options.script_ms;
                let result = CommandResult {
                    command_id: run.command_id,
                    ok,
                    message: if ok {
                        format!("{} passed", run.script)
                    } else {
                        format!("{} failed with exit code 1: sim check failed", run.script)
                    },
                    output: if ok { "ok" } else { "sim check failed" }.into(),
                    exit_code: Some(if ok { 0 } else { 1 }),
                    duration_ms,
                };
                let at = self.now + duration_ms as i64;
                self.schedule(node, at, AgentTimer::ScriptDone(result));
            }
            AgentCommand::RestartAgent { .. } => self.restart_agent_process(node),
            AgentCommand::Ping { .. } => {}
        }
    }

    /// The agent process re-executes: goodbye (restarting), the stream closes, a new process
    /// says hello after the reconnect delay; the worker keeps running.
    fn restart_agent_process(&mut self, node: &str) {
        self.agent_send(
            node,
            Input::Goodbye {
                node: node.into(),
                restarting: true,
            },
        );
        self.close_from_agent(node);
        let clock = self.agent_clock(node);
        let agent = self.agent_mut(node);
        agent.incarnation += 1;
        agent.started_at = clock;
        let delay = agent.options.reconnect_delay_ms as i64;
        let at = self.now + delay;
        self.schedule(node, at, AgentTimer::Reconnect);
    }

    /// The agent's side of its stream closes; the shell sees it unless the network is cut.
    pub(super) fn close_from_agent(&mut self, node: &str) {
        let at = self.now + self.latency_ms;
        let agent = self.agent_mut(node);
        agent.welcomed = false;
        let Some(conn) = agent.conn.take() else {
            return;
        };
        if agent.cut {
            return;
        }
        self.push(
            at,
            SimEvent::ToCoordinator {
                origin: Origin::Stream(conn),
                input: Input::Disconnected {
                    node: node.into(),
                    conn,
                },
            },
        );
    }

    // ----- queries -----------------------------------------------------------------------------

    /// The worker a node's agent runs, as the sim knows it.
    pub fn worker_of(&self, node: &str) -> Option<&Worker> {
        self.agent(node).worker.as_ref()
    }

    /// The step of a generation's gang, if it still trains.
    pub fn gang_step_of(&self, job_id: &str, generation: u64) -> Option<u64> {
        self.gangs
            .get(&(JobId::from(job_id), Generation::from(generation)))
            .map(|g| g.step)
    }

    /// The node's host is up and its network not cut.
    pub fn is_reachable(&self, node: &str) -> bool {
        let agent = self.agent(node);
        agent.up && !agent.cut
    }
}

/// What a real agent would read of the worker in `/proc`: training or waiting ranks sleep in
/// the collective with little CPU (a stuck gang waits alike), a stopped one is stopped, a
/// spinning one burns a core. The sim has no output lines.
fn worker_evidence(worker: &Worker) -> WorkerEvidence {
    let (state, cpu_permille) = match worker.status {
        WorkerStatus::Stopped => (ProcessState::Stopped, 0),
        WorkerStatus::Spinning => (ProcessState::Running, 1_000),
        WorkerStatus::Starting | WorkerStatus::Running | WorkerStatus::Hung => {
            (ProcessState::Sleeping, 20)
        }
    };
    WorkerEvidence {
        job_id: worker.job_id.clone(),
        generation: worker.generation,
        state,
        cpu_permille,
        output_quiet_ms: None,
    }
}
