//! An agent says hello: the node is (re)registered, and what its agent runs is reconciled with
//! what the core knows — a worker of the current generation is kept, a stale one stopped, a lost
//! launch sent again.

use super::*;
use detector::push_offset;

impl Cluster {
    /// An agent said hello on connection `conn`. Refused when another live stream already holds
    /// the node id. Returns the welcome to send back first.
    pub(crate) fn hello(
        &mut self,
        conn: u64,
        hello: Hello,
        now: UnixMillis,
    ) -> Result<(Welcome, Vec<Command>), CoreError> {
        crate::limits::check_hello(&hello)?;
        if let Some(existing) = self.nodes.get(&hello.node_id) {
            // The same agent process (same boot, same start) coming back on a new stream means
            // its old stream is dead but not yet noticed here (a half-open connection after a
            // network blip or a stopped coordinator): the new stream takes over, and the old
            // one's close is ignored (its connection id no longer matches). Any other agent
            // claiming a connected node's id is refused.
            let same_agent = existing.boot_id == hello.boot_id
                && existing.agent_started_at == hello.agent_started_at
                && hello.agent_started_at != 0;
            if existing.link.is_connected() && !same_agent {
                return Err(CoreError::DuplicateNode {
                    node: hello.node_id.to_string(),
                    hostname: existing.hostname.clone(),
                });
            }
        }
        // A flood of fresh node ids (a rogue or broken client) cannot grow the registry, and
        // every record it stores, without bound.
        if !self.nodes.contains_key(&hello.node_id) && self.nodes.len() >= self.config.max_nodes {
            return Err(CoreError::TooManyNodes {
                node: hello.node_id.to_string(),
                max: self.config.max_nodes,
            });
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
            .get_or_insert_with(hello.node_id.clone(), || NodeRecord {
                id: hello.node_id.clone(),
                hostname: String::new(),
                role: hello.role,
                state: NodeState::Joining,
                address: String::new(),
                boot_id: String::new(),
                agent_version: String::new(),
                gpus: Vec::new(),
                last_heartbeat_at: now,
                clock_offset_ms: 0,
                clock_round_trip_ms: None,
                offset_samples: VecDeque::new(),
                round_trips: VecDeque::new(),
                pinged_at: now,
                fault_evidence: None,
                drained: None,
                findings: VecDeque::new(),
                health: HealthSummary::default(),
                worker: None,
                last_step: 0,
                script_run: None,
                last_check: None,
                link: Link::Down,
                agent_started_at: 0,
            });
        // A node kept on its job's progress comes back: with the worker it had, all is well;
        // without it, its ranks are gone after all.
        let vouched_worker = record
            .link
            .rests_on_progress()
            .then(|| record.worker.clone());
        record.link = Link::Connected {
            conn,
            restart_by: None,
        };
        if record.drained.is_some() && !record.boot_id.is_empty() && record.boot_id != hello.boot_id
        {
            // Rebooted: the remediation happened; its checks decide whether it is Ready.
            record.drained = None;
            record.findings.clear();
        }
        record.hostname = hello.hostname;
        record.role = hello.role;
        record.address = hello.address;
        record.boot_id = hello.boot_id;
        record.agent_version = hello.agent_version;
        record.agent_started_at = hello.agent_started_at;
        record.gpus = hello.gpus;
        record.last_heartbeat_at = now;
        record.offset_samples.clear();
        record.round_trips.clear();
        record.clock_round_trip_ms = None;
        // The welcome carries this time: the agent echoes it in its first heartbeat.
        record.pinged_at = now;
        record.worker = hello
            .worker
            .as_ref()
            .map(|(j, g, p, _)| (j.clone(), *g, *p));
        push_offset(record, hello.sent_at.saturating_sub(now));
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
            self.touch_node(&node_id);
        }
        if let Some(had) = vouched_worker {
            let has = hello
                .worker
                .as_ref()
                .filter(|(_, _, _, running)| *running)
                .map(|(j, g, p, _)| (j.clone(), *g, *p));
            if has.is_none() || has != had {
                fx.push(self.log_event(
                    &node_id,
                    "",
                    format!("node {node_id} came back without the worker its job's progress vouched for"),
                    now,
                ));
                self.node_fault(&node_id, FaultCause::AgentLost, now, &mut fx);
            } else {
                fx.push(self.log_event(
                    &node_id,
                    "",
                    format!("node {node_id} came back with its worker still running"),
                    now,
                ));
            }
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
    pub(super) fn reconcile(
        &mut self,
        node_id: &str,
        worker: Option<&(JobId, Generation, u32, bool)>,
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
                        node: node_id.into(),
                        generation: *generation,
                    },
                    now,
                    fx,
                );
            } else {
                fx.push(Command::Send {
                    node: node_id.into(),
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
        let relaunch: Vec<(JobId, Generation, usize)> = self
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
    pub(super) fn node_hello(&mut self, node_id: &str, now: UnixMillis, fx: &mut Vec<Command>) {
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

    pub(super) fn is_fenced(&self, node: &str) -> bool {
        matches!(
            self.nodes.get(node).map(|n| &n.state),
            Some(NodeState::Fenced { .. })
        )
    }
}
