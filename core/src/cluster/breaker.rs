//! The cluster-wide circuit breaker on fencing. Many nodes failing at once points at something
//! they share (a switch, the storage, a bad rollout, the coordinator's own view of the
//! network) rather than at each node: fencing them all would throw away the cluster. When one
//! more fence would make more than `circuit_breaker_share` of the nodes fenced within
//! `circuit_breaker_window_ms`, fences of job nodes stop: the suspect node is released (it
//! rejoins through its checks) and an `alert` event tells operators. Fences of idle nodes and
//! failed checks are not held back (they cost no job its nodes), but they count, and the
//! provider's fence of a host that failed its checks (terminate, drain) obeys the share. Whatever the
//! share, no fault fences the last live node of a job of two or more nodes: that many of one
//! job's nodes lost at once is a shared cause until shown otherwise.

use std::collections::VecDeque;

use super::{Cluster, Command};
use crate::node::{NodeEvent, NodeState};
use crate::protocol::{Event, EventKind};
use crate::UnixMillis;

/// The breaker's memory: when recent fences happened, and whether it is open.
#[derive(Debug, Clone, Default)]
pub struct FenceBreaker {
    fenced_at: VecDeque<UnixMillis>,
    open: bool,
}

impl FenceBreaker {
    /// Every transition into Fenced is counted here.
    pub fn count_fence(&mut self, now: UnixMillis) {
        self.fenced_at.push_back(now);
    }
}

impl Cluster {
    /// True when fencing `node_id` keeps the fenced share within bounds and leaves its job a
    /// live node. Opening and closing the breaker are announced once each.
    pub(super) fn fence_allowed(
        &mut self,
        node_id: &str,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) -> bool {
        if !self.share_allows(node_id, now, fx) {
            return false;
        }
        if let Some(job_id) = self.last_live_node_of(node_id) {
            fx.push(alert(
                now,
                node_id,
                format!(
                    "not fencing {node_id}: every other node of job {job_id} is fenced or \
                     silent too, and no fault can take all of a job's nodes at once; releasing \
                     it to rejoin through its checks (a shared cause is likelier)"
                ),
            ));
            return false;
        }
        true
    }

    /// The cluster-wide share rule alone.
    pub(super) fn share_allows(
        &mut self,
        node_id: &str,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) -> bool {
        let window = self.config.circuit_breaker_window_ms as i64;
        while self
            .breaker
            .fenced_at
            .front()
            .is_some_and(|t| now - t >= window)
        {
            self.breaker.fenced_at.pop_front();
        }
        let nodes = self
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Retired)
            .count();
        // Rounded up: a cluster of any size may always fence one node.
        let limit = (self.config.circuit_breaker_share * nodes as f64).ceil() as usize;
        let recent = self.breaker.fenced_at.len();
        if recent < limit {
            if self.breaker.open {
                self.breaker.open = false;
                fx.push(alert(now, node_id, format!(
                    "circuit breaker closed: {recent} of {nodes} nodes fenced in the last {} s; fencing resumes",
                    window / 1000
                )));
            }
            return true;
        }
        let message = format!(
            "circuit breaker open: {recent} of {nodes} nodes were fenced in the last {} s (limit {:.0} %); \
             not fencing {node_id}, releasing it to rejoin through its checks. Look for a shared cause \
             (network, storage, a rollout) before uncordoning anything",
            window / 1000,
            self.config.circuit_breaker_share * 100.0
        );
        if !self.breaker.open {
            self.breaker.open = true;
            fx.push(alert(now, node_id, message));
        } else {
            fx.push(self.log_event(node_id, "", message, now));
        }
        false
    }

    /// The job whose last live node `node_id` is, if fencing it would leave a job of two or
    /// more nodes with none: every other node of the job is fenced or not connected.
    fn last_live_node_of(&self, node_id: &str) -> Option<crate::JobId> {
        let job = self.jobs.values().find(|j| {
            !j.state.is_terminal() && j.ranks.len() >= 2 && j.rank_of(node_id).is_some()
        })?;
        let others_lost = job.ranks.iter().filter(|r| r.node != node_id).all(|r| {
            self.nodes.get(&r.node).is_none_or(|n| {
                !n.link.is_connected() || matches!(n.state, NodeState::Fenced { .. })
            })
        });
        others_lost.then(|| job.id.clone())
    }

    /// A fence the breaker held back: the node leaves the job but is not fenced.
    pub(super) fn release_unfenced(
        &mut self,
        node_id: &str,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        self.node_event(node_id, NodeEvent::Release, now, fx);
        if self
            .nodes
            .get(node_id)
            .is_some_and(|n| !n.link.is_connected())
        {
            self.node_event(node_id, NodeEvent::Disconnected, now, fx);
        }
    }

    /// True while the breaker holds fences back.
    pub fn fence_breaker_open(&self) -> bool {
        self.breaker.open
    }
}

fn alert(now: UnixMillis, node_id: &str, message: String) -> Command {
    Command::Publish(Event {
        at: now,
        kind: EventKind::Alert,
        job_id: String::new(),
        node_id: node_id.to_string(),
        message,
        subject: None,
    })
}
