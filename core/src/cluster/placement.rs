//! Which nodes run what: a new job's nodes, replacements for the ranks of a recovering job
//! (spares first), and the launch of a generation on its nodes.

use super::*;

impl JobSpec {
    /// Whether the job may place a rank on node `id`: always when `allowed_nodes` is empty,
    /// else when the set names the node id or its first DNS label (`gpu-7` for an agent known
    /// as `gpu-7.cluster.example`, as Slurm names nodes by their short host name).
    pub fn allows(&self, id: &str) -> bool {
        self.allowed_nodes.is_empty()
            || self.allowed_nodes.contains(id)
            || id
                .split_once('.')
                .is_some_and(|(short, _)| self.allowed_nodes.contains(short))
    }
}

impl Cluster {
    /// Validates and accepts a job: reserves its nodes and starts resolving its checkpoint.
    pub(crate) fn submit(
        &mut self,
        request: JobRequest,
        now: UnixMillis,
    ) -> Result<(Job, Vec<Command>), CoreError> {
        let invalid = |field: &'static str, reason: String| CoreError::InvalidJob { field, reason };
        crate::limits::check_job_request(&request)?;
        let spec = JobSpec::validate(&request, self.config.default_restart_budget)?;
        let job_id = if request.job_id.is_empty() {
            loop {
                let id = JobId::from(format!("job-{}", self.next_job));
                self.next_job += 1;
                if !self.jobs.contains_key(&id) {
                    break id;
                }
            }
        } else {
            JobId::from(&request.job_id)
        };
        if self.jobs.contains_key(&job_id) {
            return Err(CoreError::JobExists(job_id.into()));
        }
        let nodes = self.pick_nodes(&spec).ok_or_else(|| {
            let ready: Vec<&str> = self
                .nodes
                .values()
                .filter(|n| n.state.is_ready() && n.link.is_connected() && spec.allows(&n.id))
                .map(|n| n.id.as_str())
                .collect();
            let within = if spec.allowed_nodes.is_empty() {
                String::new()
            } else {
                format!(" of the {} it may use", spec.allowed_nodes.len())
            };
            invalid(
                "nodes",
                format!(
                    "the job needs {} nodes but only {} are ready{within} ({}); {} known in all",
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
        let mut job = Job::new(job_id.clone(), spec, nodes.clone(), now);
        // An archived job may have had this id: agents refuse generations they saw under it.
        job.generation = self.archived_generation;
        self.jobs.insert(job_id.clone(), job);
        self.touch_job(&job_id);
        self.touch_meta();
        fx.push(self.log_event(
            "",
            &job_id,
            format!("job {job_id} accepted on {}", nodes.join(", ")),
            now,
        ));
        fx.push(self.resolve_effect(&job_id));
        Ok((self.jobs[&job_id].clone(), fx))
    }

    /// The nodes of a new job: ones it may use, workers first, then spares, in node-id order.
    pub(super) fn pick_nodes(&self, spec: &JobSpec) -> Option<Vec<NodeId>> {
        let count = spec.nodes as usize;
        let mut free: Vec<&NodeRecord> = (self.nodes.values())
            .filter(|n| n.allocatable() && spec.allows(&n.id))
            .collect();
        // Walked in id order already: a stable sort by role keeps it within each role (no
        // copy of every id to compare by, at 100,000 nodes).
        free.sort_by_key(|n| n.role == Role::Spare);
        (free.len() >= count).then(|| free[..count].iter().map(|n| n.id.clone()).collect())
    }

    /// Ready, connected nodes for a job's ranks that wait for one, among those the job may
    /// use: spares first.
    pub(super) fn replacements_for(&self, job_id: &str) -> Vec<(usize, NodeId)> {
        let Some(job) = self.jobs.get(job_id) else {
            return Vec::new();
        };
        if !matches!(
            job.state,
            JobState::Recovering(job::RecoveryPhase::Replacing { .. })
        ) {
            return Vec::new();
        }
        let mut free: Vec<&NodeRecord> = (self.nodes.values())
            .filter(|n| n.allocatable() && job.spec.allows(&n.id))
            .collect();
        free.sort_by_key(|n| n.role != Role::Spare);
        let under_check = self.ranks_under_check(job_id);
        job.ranks_needing_nodes()
            .into_iter()
            .filter(|rank| !under_check.contains(rank))
            .zip(free)
            .map(|(rank, n)| (rank, n.id.clone()))
            .collect()
    }

    /// Gives newly ready nodes to jobs that wait for replacements.
    pub(super) fn find_replacements(&mut self, now: UnixMillis, fx: &mut Vec<Command>) {
        let waiting: Vec<JobId> = self
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

    /// One `Launch` per rank, all at once, with a fresh rendezvous id and port.
    pub(super) fn launch(
        &self,
        job_id: &str,
        generation: Generation,
        resume: Option<&Checkpoint>,
        fx: &mut Vec<Command>,
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
        let master_port =
            u64::from(self.config.rdzv_port_base) + (job_salt + generation.get()) % span;
        let mut env = job.spec.env.clone();
        if resume.is_some_and(|c| c.uri.starts_with(crate::checkpoint::MEMORY_URI_SCHEME)) {
            // The trainer falls back to this if its memory-tier copy cannot be read.
            let fallback = job.durable_fallback.as_ref();
            env.extend([
                ("HOLDFAST_STATE_TIER".into(), "memory".into()),
                (
                    "HOLDFAST_DURABLE_FROM".into(),
                    fallback.map(|c| c.uri.clone()).unwrap_or_default(),
                ),
                (
                    "HOLDFAST_DURABLE_STEP".into(),
                    fallback.map_or(0, |c| c.step).to_string(),
                ),
            ]);
        }
        for (rank, r) in job.ranks.iter().enumerate() {
            fx.push(Command::Send {
                node: r.node.clone(),
                command: AgentCommand::Launch(Launch {
                    job_id: job_id.into(),
                    generation,
                    command: job.spec.command.clone(),
                    env: env.clone(),
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
                    launcher: job.spec.launcher.clone(),
                    reform: r.kept,
                }),
            });
        }
    }
}
