//! Operator requests on jobs and nodes: stop a job, cordon and uncordon a node, restart an
//! agent in place.

use super::*;

impl Cluster {
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
        let node = self.connected_node(node_id)?;
        let reason = if reason.is_empty() {
            "restart requested by operator"
        } else {
            reason
        };
        let fx = vec![
            Command::Send {
                node: node_id.into(),
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
        // The operator repaired it: a drain by a health finding is over too.
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.drained = None;
            node.findings.clear();
        }
        // A node cordoned while it ran a job still runs it: uncordoned, it is that job's again,
        // not free for the next one.
        let running = self
            .jobs
            .values()
            .find(|j| !j.state.is_terminal() && j.rank_of(node_id).is_some())
            .map(|j| j.id.clone());
        // A repaired node that is connected goes straight on through hello's path.
        let connected = self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.link.is_connected());
        if let Some(job_id) = running.filter(|_| connected) {
            if let Some(node) = self.nodes.get_mut(node_id) {
                node.state = NodeState::Allocated { job_id };
                self.touch_node(node_id);
            }
        } else if connected {
            self.node_hello(node_id, now, &mut fx);
        } else {
            self.node_event(node_id, NodeEvent::Disconnected, now, &mut fx);
        }
        self.defer(Work::FindReplacements);
        let view = self.nodes.get(node_id).map_or(view, |n| n.clone());
        Ok((view, fx))
    }

    pub(super) fn operator_node_event(
        &mut self,
        node_id: &str,
        event: NodeEvent,
        now: UnixMillis,
    ) -> Result<(NodeRecord, Vec<Command>), CoreError> {
        let node = self.known_node(node_id)?;
        node::step(&node.state, &event).map_err(CoreError::Transition)?;
        let mut fx = Vec::new();
        self.node_event(node_id, event, now, &mut fx);
        Ok((self.nodes[node_id].clone(), fx))
    }

    /// The node, or why an operator cannot name it.
    pub(super) fn known_node(&self, node_id: &str) -> Result<&NodeRecord, CoreError> {
        self.nodes
            .get(node_id)
            .ok_or_else(|| CoreError::NoSuchNode(node_id.to_string()))
    }

    /// The node, when its agent is connected to take a command.
    pub(super) fn connected_node(&self, node_id: &str) -> Result<&NodeRecord, CoreError> {
        let node = self.known_node(node_id)?;
        if !node.link.is_connected() {
            return Err(CoreError::NodeBusy(format!(
                "node {node_id} is not connected"
            )));
        }
        Ok(node)
    }
}
