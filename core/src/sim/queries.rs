//! What a test reads of the run: the core's state, the events it published, the sim's store.

use super::*;

impl Sim {
    /// Every job is running (none recovering, pending or over).
    pub fn all_jobs_running(&self) -> bool {
        self.cluster
            .jobs
            .values()
            .all(|j| j.state == crate::job::JobState::Running)
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
    pub fn nodes_in(&self, state: &str) -> Vec<NodeId> {
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

    /// What the shell archived (retention): the finished jobs' ids and the closed incidents'
    /// ids, in the order exported.
    pub fn archived(&self) -> (&[String], &[u64]) {
        (&self.archived.0, &self.archived.1)
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

    /// The nodes of every running job: where a fault hits training.
    pub fn running_job_nodes(&self) -> Vec<NodeId> {
        let running = self.cluster.jobs.values();
        let running = running.filter(|j| j.state == crate::job::JobState::Running);
        running.flat_map(|j| j.nodes()).collect()
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
