//! The tick's one pass over the nodes. At 100,000 nodes and ten ticks a second, each pass over
//! the registry costs a visit to every node record; the tick used to make eight (clock pings,
//! silent nodes, connected nodes, lost, vouched, away, scripts, unheard). One pass now gathers
//! what all of them read, and when it finds nothing to judge (no silent, lost, vouched or away
//! node and no script running: a quiet tick, nearly all of them) the others are skipped, since
//! nothing in between can change what they would find.

use std::ops::Bound;

use super::*;

/// What one pass over the nodes found, in node-id order.
pub(super) struct Survey {
    /// Connected nodes past the heartbeat timeout.
    pub(super) silent: Vec<NodeId>,
    /// Connected nodes.
    pub(super) connected: usize,
    /// Nodes that cannot be heard now (not connected, or silent for two heartbeats).
    pub(super) unheard: Vec<NodeId>,
    /// Some node is lost, vouched for or away, or runs a script: the tick has more to judge.
    pub(super) busy: bool,
}

impl Survey {
    /// Nothing for the detector to judge beyond the stall clocks: no silent node and none
    /// lost, vouched for, away or running a script.
    pub(super) fn quiet(&self) -> bool {
        self.silent.is_empty() && !self.busy
    }
}

impl Cluster {
    /// Stamps the coordinator's clock for every connected agent whose last stamp is older than
    /// the ping interval (its next heartbeat echoes it, a round trip for the clock offset), and
    /// gathers what the rest of the tick reads, in the same pass.
    pub(super) fn survey(&mut self, now: UnixMillis, fx: &mut Vec<Command>) -> Survey {
        let every = self.config.heartbeat_interval_ms as i64 * PING_EVERY_HEARTBEATS;
        let timeout = self.config.heartbeat_timeout_ms as i64;
        let unheard_after = 2 * self.config.heartbeat_interval_ms as i64;
        let mut survey = Survey {
            silent: Vec::new(),
            connected: 0,
            unheard: Vec::new(),
            busy: false,
        };
        self.nodes.for_each_mut(|node| {
            let connected = node.link.is_connected();
            if connected && now - node.pinged_at >= every {
                node.pinged_at = now;
                fx.push(Command::Send {
                    node: node.id.clone(),
                    command: AgentCommand::Ping {
                        coordinator_unix_ms: now,
                    },
                });
            }
            let quiet_for = now - node.last_heartbeat_at;
            if connected {
                survey.connected += 1;
                if quiet_for > timeout {
                    survey.silent.push(node.id.clone());
                }
            }
            if !connected || quiet_for > unheard_after {
                survey.unheard.push(node.id.clone());
            }
            survey.busy |= matches!(
                node.link,
                Link::Lost { .. } | Link::Vouched { .. } | Link::Away { .. }
            ) || node.script_run.is_some();
        });
        survey
    }

    /// Steps every live job with the nodes that cannot be heard now (when there are any) and
    /// the clock.
    pub(super) fn tick_jobs(
        &mut self,
        unheard: Vec<NodeId>,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        // One job at a time, the next live one after the last (no list of every job's id
        // per tick): the same jobs in the same order, since a tick makes no job live.
        let mut last: Option<JobId> = None;
        loop {
            let after = match &last {
                Some(id) => Bound::Excluded(id.as_str()),
                None => Bound::Unbounded,
            };
            let next = (self.jobs.range::<str, _>((after, Bound::Unbounded)))
                .map(|(_, j)| j)
                .find(|j| !j.state.is_terminal());
            let Some(job_id) = next.map(|j| j.id.clone()) else {
                break;
            };
            if !unheard.is_empty() {
                let nodes = unheard.clone();
                self.drive(&job_id, JobEvent::Unheard { nodes }, now, fx);
            }
            self.drive(&job_id, JobEvent::Tick, now, fx);
            last = Some(job_id);
        }
    }
}

/// Every how many heartbeat intervals the coordinator stamps its clock for an agent to echo:
/// one small message per node every few seconds keeps the offset measured.
const PING_EVERY_HEARTBEATS: i64 = 10;
