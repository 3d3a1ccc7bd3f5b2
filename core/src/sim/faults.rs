//! The faults a test injects into nodes.

use super::agent::WorkerStatus;
use super::*;
use crate::protocol::{HealthState, HealthSummary};

/// How a worker ends when a test kills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exits with this code.
    Code(i32),
    /// This signal kills it.
    Signal(i32),
}

impl Sim {
    // ----- faults ------------------------------------------------------------------------------

    /// The host dies: agent and worker with it. The stream closes (the core sees it unless the
    /// node is cut). [`Sim::heal`] reboots it.
    pub fn kill(&mut self, node: &str) {
        if !self.agent(node).up {
            return;
        }
        self.close_from_agent(node);
        let agent = self.agent_mut(node);
        agent.up = false;
        agent.incarnation += 1;
        agent.paused_until = None;
        agent.outbox.clear();
        if let Some(worker) = agent.worker.take() {
            agent.last_worker = None;
            self.leave_gang(&worker);
        }
    }

    /// The network between the node and the coordinator is cut, both ways. The worker keeps
    /// training with its peers.
    pub fn cut(&mut self, node: &str) {
        self.agent_mut(node).cut = true;
    }

    /// Undoes [`Sim::kill`] (the host reboots with no worker and says hello), [`Sim::cut`] (the
    /// agent says hello on a new stream if the core closed its stream meanwhile) and
    /// [`Sim::slow`]. A pause runs its course.
    pub fn heal(&mut self, node: &str) {
        let now = self.now;
        let clock = self.agent_clock(node);
        let agent = self.agent_mut(node);
        agent.slow = 1.0;
        if !agent.up {
            agent.up = true;
            agent.cut = false;
            agent.incarnation += 1;
            agent.boots += 1;
            agent.started_at = clock;
            agent.conn = None;
            agent.welcomed = false;
            agent.last_worker = None;
            agent.health = HealthSummary {
                state: HealthState::Healthy,
                checks: Vec::new(),
            };
            agent.health_changed = true;
            self.schedule(node, now, AgentTimer::Reconnect);
            return;
        }
        if !agent.cut {
            return;
        }
        agent.cut = false;
        match agent.conn {
            Some(conn) => {
                let open = self
                    .streams
                    .get(&conn)
                    .is_some_and(|s| s.open && s.epoch == self.epoch);
                if !open {
                    let agent = self.agent_mut(node);
                    agent.conn = None;
                    agent.welcomed = false;
                    self.schedule(node, now, AgentTimer::Reconnect);
                }
            }
            None => self.schedule(node, now, AgentTimer::Reconnect),
        }
    }

    /// SIGSTOP of the agent and its worker for `ms`: nothing is sent, nothing handled, no step
    /// taken; then everything resumes where it was.
    pub fn pause(&mut self, node: &str, ms: i64) {
        let until = self.now + ms;
        let agent = self.agent_mut(node);
        agent.paused_until = Some(agent.paused_until.map_or(until, |t| t.max(until)));
    }

    /// The node's worker steps `factor` times slower (its whole gang with it); 1.0 undoes it.
    pub fn slow(&mut self, node: &str, factor: f64) {
        assert!(factor >= 1.0, "sim: a slow factor is at least 1");
        self.agent_mut(node).slow = factor;
    }

    /// The node's worker dies on its own (not stopped by the agent).
    pub fn kill_worker(&mut self, node: &str, exit: Exit) {
        let (code, signal) = match exit {
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(s) => (None, Some(s)),
        };
        self.end_worker(node, code, signal, false);
    }

    /// The node's worker stays alive and makes no more progress (its gang stops with it).
    pub fn hang_worker(&mut self, node: &str) {
        if let Some(worker) = self.agent_mut(node).worker.as_mut() {
            worker.status = WorkerStatus::Hung;
        }
    }

    /// SIGSTOP of the node's worker alone (its agent runs on): no more progress, and the
    /// agent reports the process stopped.
    pub fn stop_worker(&mut self, node: &str) {
        if let Some(worker) = self.agent_mut(node).worker.as_mut() {
            worker.status = WorkerStatus::Stopped;
        }
    }

    /// The node's worker busy-loops in its own code and never reaches the next exchange: no
    /// more progress, and the agent reports it spinning.
    pub fn spin_worker(&mut self, node: &str) {
        if let Some(worker) = self.agent_mut(node).worker.as_mut() {
            worker.status = WorkerStatus::Spinning;
        }
    }

    /// The agent reports `health` at once (a health report) and in its next heartbeat.
    pub fn set_health(&mut self, node: &str, health: HealthSummary) {
        let agent = self.agent_mut(node);
        agent.health = health.clone();
        agent.health_changed = true;
        self.agent_send(
            node,
            Input::HealthReport {
                node: node.into(),
                health,
            },
        );
    }

    /// A GPU check turns unhealthy and asks for the node to be replaced.
    pub fn inject_fatal_health(&mut self, node: &str) {
        let observed_at = self.agent_clock(node);
        self.set_health(
            node,
            HealthSummary::fatal("xid", "Xid 79: GPU has fallen off the bus", observed_at),
        );
    }

    /// The node's lifecycle scripts fail (`true`) or pass from now on.
    pub fn set_check_fails(&mut self, node: &str, fails: bool) {
        self.agent_mut(node).options.check_fails = fails;
    }
}
