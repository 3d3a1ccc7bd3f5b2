//! The job driver: runs job events through the job lifecycle ([`crate::job::step`]) and carries
//! out what it asks for — stops, fences, replacements, incidents, launches.

use super::*;

impl Cluster {
    pub(crate) fn checkpoint_resolved(
        &mut self,
        job_id: &str,
        result: Result<Option<Checkpoint>, String>,
        skipped: Vec<String>,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        if !skipped.is_empty() && self.jobs.contains_key(job_id) {
            let passed_over = skipped.len();
            let mut skipped: Vec<String> = skipped
                .iter()
                .take(crate::limits::MAX_SKIPPED_CHECKPOINTS)
                .map(|why| crate::limits::truncated(why, crate::limits::MAX_REASON))
                .collect();
            if passed_over > skipped.len() {
                skipped.push(format!("… {} more", passed_over - skipped.len()));
            }
            fx.push(Command::Publish(Event {
                at: now,
                kind: EventKind::Alert,
                job_id: job_id.to_string(),
                node_id: String::new(),
                message: format!(
                    "job {job_id}: newer checkpoints failed verification and are not resumed \
                     from: {}",
                    skipped.join("; ")
                ),
                subject: None,
            }));
            let event = crate::incident::IncidentEvent::CheckpointsSkipped { reasons: skipped };
            self.apply_job_effect(
                job_id,
                JobEffect::Incident(event),
                now,
                &mut fx,
                &mut VecDeque::new(),
            );
        }
        self.drive(job_id, JobEvent::CheckpointResolved(result), now, &mut fx);
        fx
    }

    /// Runs one job event through the job lifecycle and carries out its effects, feeding
    /// follow-up events (replacements found, unreachable nodes) back in until it settles.
    pub(super) fn drive(
        &mut self,
        job_id: &str,
        event: JobEvent,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let limits = self.limits();
        // The first event is stepped without a queue (most drives are one report): only
        // follow-ups are queued.
        let mut first = Some(event);
        let mut queue = VecDeque::new();
        while let Some(event) = first.take().or_else(|| queue.pop_front()) {
            let Some(job) = self.jobs.get_mut(job_id) else {
                return;
            };
            // Most events (evidence, progress) change nothing saved: no mark is taken for
            // them, except in debug builds, which check that.
            let volatile = event.is_volatile_for(job);
            let before = (!volatile || cfg!(debug_assertions)).then(|| job.durable_mark());
            let effects = job::step(job, event, now, &limits);
            if let Some(before) = before {
                let changed = job.durable_mark() != before;
                debug_assert!(
                    !(volatile && changed),
                    "an event judged volatile (evidence, unheard, progress) changed job {job_id}'s saved record"
                );
                if changed {
                    self.touch_job(job_id);
                }
            }
            for effect in effects {
                self.apply_job_effect(job_id, effect, now, fx, &mut queue);
            }
            // Before anything else of this recovery is decided (a relaunch on the same nodes):
            // a node that cannot take part in it is a fault of this recovery.
            if let Some((node, cause, silent_since)) = self.node_out_of_recovery(job_id) {
                queue.push_front(JobEvent::Fault {
                    node,
                    cause,
                    silent_since,
                });
            }
        }
    }

    /// A node of a job that left `Running` which cannot take part in the recovery, and why,
    /// its mark cleared: one kept on the job's progress alone (its agent cannot be reached to
    /// stop or launch anything), or one drained by a health finding (`drain_replace =
    /// next_recovery`: replaced at the job's next recovery). With it, when it was last heard
    /// from if its stream closed unjudged (a node its job's progress vouched for was alive
    /// after that).
    fn node_out_of_recovery(
        &mut self,
        job_id: &str,
    ) -> Option<(NodeId, FaultCause, Option<UnixMillis>)> {
        let job = self.jobs.get(job_id)?;
        let recovering = matches!(job.state, JobState::Recovering(_));
        if !recovering && !matches!(job.state, JobState::Launching | JobState::Pending) {
            return None;
        }
        // Almost always no node at all is kept on progress or drained. This runs after every
        // event of a launching job (1,024 ranks and thousands of reports): a job with far
        // fewer ranks than there are nodes looks its ranks' nodes up (hash lookups), where a
        // pass over 100,000 nodes per event took minutes to launch them all; otherwise one
        // pass over the nodes says so first.
        let few = job.ranks.len().saturating_mul(8) < self.nodes.len();
        if !few
            && !self
                .nodes
                .values()
                .any(|n| n.link.rests_on_progress() || (recovering && n.drained.is_some()))
        {
            return None;
        }
        let (node, cause, silent_since) =
            job.ranks.iter().filter(|r| !r.needs_node).find_map(|r| {
                let n = self.nodes.get(&r.node)?;
                if n.link.rests_on_progress() {
                    let unjudged = matches!(n.link, Link::Lost { .. });
                    let silent_since = unjudged.then_some(n.last_heartbeat_at);
                    Some((r.node.clone(), FaultCause::AgentLost, silent_since))
                } else {
                    let why = n.drained.clone().filter(|_| recovering)?;
                    Some((r.node.clone(), FaultCause::HealthFatal(why), None))
                }
            })?;
        if let Some(n) = self.nodes.get_mut(&node) {
            n.link = Link::Down;
        }
        Some((node, cause, silent_since))
    }

    pub(super) fn apply_job_effect(
        &mut self,
        job_id: &str,
        effect: JobEffect,
        now: UnixMillis,
        fx: &mut Vec<Command>,
        queue: &mut VecDeque<JobEvent>,
    ) {
        match effect {
            JobEffect::ResolveCheckpoint => fx.push(self.resolve_effect(job_id)),
            JobEffect::Launch { generation, resume } => {
                self.launch(job_id, generation, resume.as_ref(), fx)
            }
            JobEffect::StopWorkers {
                nodes,
                generation,
                reason,
            } => {
                for node in nodes {
                    let reachable = self.nodes.get(&node).is_some_and(|n| n.link.is_connected());
                    if reachable {
                        fx.push(Command::Send {
                            node: node.clone(),
                            command: AgentCommand::Stop(Stop {
                                job_id: job_id.into(),
                                generation,
                                grace_ms: self.config.stop_grace_ms,
                                reason: reason.clone(),
                                term: self.term,
                            }),
                        });
                    } else {
                        queue.push_back(JobEvent::NodeUnreachable { node });
                    }
                }
            }
            JobEffect::FenceNode { node, cause } => {
                if !self.fence_allowed(&node, now, fx) {
                    self.release_unfenced(&node, now, fx);
                    return;
                }
                let reason = cause.to_string();
                self.node_event(&node, NodeEvent::Fence(cause), now, fx);
                self.fence_host(&node, &reason, fx);
                if self.nodes.get(&node).is_some_and(|n| n.link.is_connected()) {
                    fx.push(Command::Send {
                        node: node.clone(),
                        command: AgentCommand::Fence {
                            reason,
                            term: self.term,
                        },
                    });
                }
            }
            JobEffect::FindReplacements => {
                let check = self.checks_replacements();
                let pairs = self.replacements_for(job_id);
                let under_check = self.ranks_under_check(job_id).len();
                let needing = self
                    .jobs
                    .get(job_id)
                    .map_or(0, |j| j.ranks_needing_nodes().len());
                self.provision_for(
                    job_id,
                    needing.saturating_sub(under_check + pairs.len()),
                    now,
                    fx,
                );
                for (rank, node) in pairs {
                    if check {
                        // The answer comes back as the check's result (lifecycle.rs).
                        self.start_replacement_check(job_id, rank, &node, now, fx);
                    } else {
                        self.node_event(
                            &node,
                            NodeEvent::Allocate {
                                job_id: job_id.into(),
                            },
                            now,
                            fx,
                        );
                        queue.push_back(JobEvent::ReplacementFound { rank, node });
                    }
                }
            }
            JobEffect::ReleaseNodes { nodes } => {
                for node in nodes {
                    self.node_event(&node, NodeEvent::Release, now, fx);
                }
            }
            JobEffect::OpenIncident {
                node,
                cause,
                action,
                fault_at,
            } => {
                let Some(job) = self.jobs.get(job_id) else {
                    return;
                };
                // The job knows when a worker exited or a rank last stepped; for node faults
                // the detector left its evidence on the node.
                let evidence = match fault_at {
                    Some(at) => Some((at, job_evidence_source(&cause))),
                    None => self.nodes.get(&node).and_then(|n| n.fault_evidence),
                };
                let fault_at = evidence.map(|(at, _)| at);
                let id = self.next_incident;
                self.next_incident = id.saturating_add(1);
                let mut incident = Incident::open(
                    id,
                    job_id,
                    &node,
                    cause.code(),
                    &cause.detail(),
                    action,
                    job.generation,
                    fault_at,
                    now,
                );
                incident.fault_step = job.step;
                // A stall (or the stall that tipped a node into quarantine) shows every rank.
                let stall = match &cause {
                    FaultCause::ProgressStalled { .. } => true,
                    FaultCause::RepeatedFaults { last, .. } => last.starts_with("no progress"),
                    _ => false,
                };
                if stall {
                    incident.ranks = (job.ranks.iter().enumerate())
                        .map(|(i, r)| crate::incident::RankEvidence {
                            rank: i as u32,
                            node_id: r.node.clone(),
                            evidence: r
                                .evidence
                                .as_ref()
                                .map_or("no evidence".into(), crate::evidence::describe),
                            stacks: String::new(),
                        })
                        .collect();
                    // Before the stops that follow in this step: each agent dumps, then stops.
                    for r in job
                        .ranks
                        .iter()
                        .filter(|r| r.exited.is_none() && !r.node.is_empty())
                    {
                        fx.push(Command::Send {
                            node: r.node.clone(),
                            command: AgentCommand::DumpStacks {
                                job_id: job_id.into(),
                                generation: job.generation,
                                incident_id: incident.id,
                                term: self.term,
                            },
                        });
                    }
                }
                if let Some((at, source)) = evidence {
                    if at <= now {
                        incident.fault_time_source = source;
                    }
                }
                fx.push(self.incident_event(&incident, now));
                let id = incident.id;
                self.incidents.push(incident);
                self.touch_incident(id);
                // The id counter is in the header.
                self.touch_meta();
            }
            JobEffect::ReattributeIncident {
                from,
                node,
                cause,
                action,
            } => {
                let evidence = self.nodes.get(&node).and_then(|n| n.fault_evidence);
                let Some(incident) = (self.incidents.iter_mut().rev())
                    .find(|i| i.job_id == job_id && i.is_open() && i.node_id == from)
                else {
                    // The exit's incident closed meanwhile: the fault gets one of its own.
                    let open = JobEffect::OpenIncident {
                        node,
                        cause,
                        action,
                        fault_at: None,
                    };
                    return self.apply_job_effect(job_id, open, now, fx, queue);
                };
                incident.hand_to(&node, cause.code(), &cause.detail(), action, evidence);
                let incident = incident.clone();
                self.touch_incident(incident.id);
                fx.push(self.incident_event(&incident, now));
            }
            JobEffect::Incident(event) => {
                let mut changed = Vec::new();
                for incident in self
                    .incidents
                    .iter_mut()
                    .filter(|i| i.job_id == job_id && i.is_open())
                {
                    let next = incident::step(incident, &event, now);
                    if next != *incident {
                        *incident = next;
                        changed.push(incident.clone());
                    }
                }
                for incident in &changed {
                    self.touch_incident(incident.id);
                }
                for incident in changed {
                    fx.push(self.incident_event(&incident, now));
                }
            }
            JobEffect::StateChanged => {
                if let Some(job) = self.jobs.get(job_id) {
                    let phase = job.phase();
                    let message = format!(
                        "job {job_id} {}{}{}",
                        job.state.name(),
                        if phase.is_empty() {
                            String::new()
                        } else {
                            format!(" ({phase})")
                        },
                        if job.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", job.message)
                        }
                    );
                    fx.push(Command::Publish(Event {
                        at: now,
                        kind: EventKind::JobState,
                        job_id: job_id.to_string(),
                        node_id: String::new(),
                        message,
                        subject: Some(Subject::Job(Box::new(job.clone()))),
                    }));
                }
            }
        }
    }

    pub(super) fn resolve_effect(&self, job_id: &str) -> Command {
        let job = &self.jobs[job_id];
        Command::ResolveCheckpoint {
            job_id: job_id.into(),
            uri: job.spec.checkpoint_uri.clone(),
            fenced: job.fenced_generations.clone(),
            verify_checksums: self.config.checkpoint_verify_checksums,
        }
    }
}

/// Where a fault time the job lifecycle supplied comes from: a worker's exit is an agent event,
/// a stall is judged from the rank's last progress (also when it tipped a node into
/// quarantine).
fn job_evidence_source(cause: &FaultCause) -> incident::FaultTimeSource {
    use incident::FaultTimeSource as Source;
    match cause {
        FaultCause::ProgressStalled { .. } => Source::LastProgress,
        FaultCause::RepeatedFaults { last, .. } if last.starts_with("no progress") => {
            Source::LastProgress
        }
        _ => Source::AgentEvent,
    }
}
