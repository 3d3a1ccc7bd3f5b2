//! The failure detector: heartbeats, health reports, worker exits, progress, goodbyes and
//! closed streams become node faults; the clock turns silence into heartbeat timeouts.

use super::*;
use crate::incident::FaultTimeSource;
use liveness::Vouch;

impl Cluster {
    /// A heartbeat arrived.
    pub(crate) fn heartbeat(
        &mut self,
        node_id: &str,
        sent_at: UnixMillis,
        health: Option<HealthSummary>,
        echo: Option<ClockEcho>,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        let Some(node) = self.nodes.get_mut(node_id) else {
            return fx;
        };
        node.last_heartbeat_at = now;
        match echo.filter(|e| e.coordinator_sent_at > 0 && e.agent_received_at > 0) {
            Some(echo) => push_round_trip(node, RoundTrip::measure(echo, sent_at, now)),
            None => push_offset(node, sent_at.saturating_sub(now)),
        }
        if let Some(health) = health {
            let fatal = health
                .fatal_check()
                .map(|c| (format!("{}: {}", c.check, c.reason), c.observed_at));
            let before = std::mem::replace(&mut node.health, health);
            if fatal.is_none() {
                self.health_changed(node_id, &before, now, &mut fx);
            }
            let Some(node) = self.nodes.get_mut(node_id) else {
                return fx;
            };
            if let Some((reason, observed_at)) = fatal {
                // The check's own observation, in coordinator time, is when the fault happened.
                if observed_at > 0 {
                    node.fault_evidence = Some((
                        observed_at.saturating_sub(node.clock_offset_ms),
                        FaultTimeSource::AgentEvent,
                    ));
                }
                self.node_fault(node_id, FaultCause::HealthFatal(reason), now, &mut fx);
            }
        }
        fx
    }

    /// An agent's sample of its worker: kept on the worker's rank for the stall detector.
    pub(crate) fn worker_evidence(
        &mut self,
        node: NodeId,
        evidence: crate::evidence::WorkerEvidence,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        let job_id = evidence.job_id.clone();
        self.drive(&job_id, JobEvent::Evidence { node, evidence }, now, &mut fx);
        fx
    }

    /// An agent's stack dump for a stall incident: kept on the incident's rank of that node,
    /// cut to [`crate::incident::STACKS_MAX_BYTES`] (incidents are stored).
    pub(crate) fn stacks(&mut self, node_id: &str, incident_id: u64, text: String) -> Vec<Command> {
        let Some(incident) = self.incidents.iter_mut().find(|i| i.id == incident_id) else {
            return Vec::new();
        };
        let Some(rank) = incident.ranks.iter_mut().find(|r| r.node_id == node_id) else {
            return Vec::new();
        };
        rank.stacks = bounded(text, crate::incident::STACKS_MAX_BYTES);
        self.touch_incident(incident_id);
        Vec::new()
    }

    /// An immediate health report (a check turned fatal, or cleared).
    pub(crate) fn health_report(
        &mut self,
        node_id: &str,
        health: HealthSummary,
        now: UnixMillis,
    ) -> Vec<Command> {
        self.heartbeat(
            node_id,
            now.saturating_add(self.offset(node_id)),
            Some(health),
            None,
            now,
        )
    }

    pub(super) fn offset(&self, node_id: &str) -> i64 {
        self.nodes.get(node_id).map_or(0, |n| n.clock_offset_ms)
    }

    /// A worker started or exited on a node.
    pub(crate) fn worker_event(
        &mut self,
        node_id: &str,
        event: WorkerEvent,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        self.touch_node(node_id);
        let job_event = match event.kind {
            WorkerEventKind::Started { pid } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.worker = Some((event.job_id.clone(), event.generation, pid));
                }
                JobEvent::WorkerStarted {
                    node: node_id.into(),
                    generation: event.generation,
                }
            }
            WorkerEventKind::Exited {
                code,
                signal,
                stopped_by_agent,
            } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.worker = None;
                }
                let at = event.at.saturating_sub(self.offset(node_id));
                let what = match (code, signal) {
                    (_, Some(s)) => format!("signal {s}"),
                    (Some(c), None) => format!("code {c}"),
                    _ => "unknown status".into(),
                };
                fx.push(self.log_event(
                    node_id,
                    &event.job_id,
                    format!(
                        "worker of {} generation {} on {node_id} exited ({what}{})",
                        event.job_id,
                        event.generation,
                        if stopped_by_agent {
                            ", stopped by agent"
                        } else {
                            ""
                        }
                    ),
                    now,
                ));
                JobEvent::WorkerExited {
                    node: node_id.into(),
                    generation: event.generation,
                    code,
                    signal,
                    stopped_by_agent,
                    at: Some(at),
                }
            }
        };
        self.drive(&event.job_id, job_event, now, &mut fx);
        fx
    }

    /// Training progress from a node's worker.
    pub(crate) fn progress(&mut self, node_id: &str, p: Progress, now: UnixMillis) -> Vec<Command> {
        let mut fx = Vec::new();
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.last_step = p.step;
        }
        if let Some(job) = self.jobs.get_mut(&p.job_id) {
            // Only a node of the job, in its current generation, speaks for its memory tier.
            if p.generation == job.generation && job.rank_of(node_id).is_some() {
                let mut held = p.memory;
                held.truncate(crate::checkpoint::MAX_MEMORY_HOLDINGS);
                match job.memory_held.get_mut(node_id) {
                    Some(was) => *was = held,
                    None => {
                        job.memory_held.insert(node_id.into(), held);
                    }
                }
            }
        }
        let fell_back = (self.jobs.get(&p.job_id))
            .and_then(|job| job.state_fell_back(node_id, p.generation, &p.state_fallback));
        if let Some(event) = fell_back {
            // Before the progress it came with, which counts from the durable step then.
            let effect = JobEffect::Incident(event);
            let queue = &mut VecDeque::new();
            self.apply_job_effect(&p.job_id, effect, now, &mut fx, queue);
        }
        self.drive(
            &p.job_id,
            JobEvent::Progress {
                node: node_id.into(),
                generation: p.generation,
                step: p.step,
            },
            now,
            &mut fx,
        );
        let due = self
            .progress_published
            .get(&p.job_id)
            .is_none_or(|t| now - t >= PROGRESS_PUBLISH_EVERY_MS);
        if due {
            if let Some(job) = self.jobs.get(&p.job_id) {
                self.progress_published.insert(p.job_id.clone(), now);
                fx.push(Command::Publish(Event {
                    at: now,
                    kind: EventKind::Progress,
                    job_id: p.job_id.to_string(),
                    node_id: node_id.to_string(),
                    message: format!("step {}", job.step),
                    subject: Some(Subject::Job(Box::new(job.clone()))),
                }));
            }
        }
        fx
    }

    /// The agent announced an orderly shutdown.
    pub(crate) fn goodbye(
        &mut self,
        node_id: &str,
        restarting: bool,
        now: UnixMillis,
    ) -> Vec<Command> {
        if let Some(node) = self.nodes.get_mut(node_id) {
            if restarting {
                let by = now + self.config.heartbeat_timeout_ms as i64 * 5;
                match &mut node.link {
                    Link::Connected { restart_by, .. } => *restart_by = Some(by),
                    Link::Away { .. } | Link::Down => node.link = Link::Away { until: by },
                    Link::Lost { .. } | Link::Vouched { .. } => {}
                }
            }
        }
        vec![self.log_event(
            node_id,
            "",
            format!(
                "node {node_id} said goodbye{}",
                if restarting { " (restarting)" } else { "" }
            ),
            now,
        )]
    }

    /// The stream of connection `conn` closed.
    pub(crate) fn disconnected(
        &mut self,
        node_id: &str,
        conn: u64,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        let after_a_stall = self.just_unobserved(now);
        let reconnect_grace = self.config.reconnect_grace_ms as i64;
        let Some(node) = self.nodes.get_mut(node_id) else {
            return fx;
        };
        let Link::Connected {
            conn: live,
            restart_by,
        } = node.link
        else {
            return fx;
        };
        if live != conn {
            return fx;
        }
        let announced = restart_by.filter(|t| now < *t);
        node.link = announced.map_or(Link::Down, |until| Link::Away { until });
        if announced.is_none() && after_a_stall {
            // The agent most likely closed the stream itself, for want of answers while this
            // coordinator could not observe (stopped, not scheduled): it comes back, and gets
            // the grace agents get after a coordinator restart.
            node.link = Link::Away {
                until: now + reconnect_grace,
            };
            let message = format!(
                "node {node_id} disconnected just after this coordinator could not observe; \
                 waiting {reconnect_grace} ms for it to return"
            );
            fx.push(self.log_event(node_id, "", message, now));
            return fx;
        }
        // A crashed agent on a live host (no goodbye) may get the same grace as a restart,
        // when the operator chose one: its workers keep training and it re-adopts them.
        let grace = self.config.agent_lost_grace_ms;
        let busy = matches!(node.state, NodeState::Allocated { .. });
        if announced.is_none() && grace > 0 && busy {
            node.link = Link::Away {
                until: now + grace as i64,
            };
            fx.push(self.log_event(
                node_id,
                "",
                format!("node {node_id} disconnected without goodbye; waiting {grace} ms for it to return"),
                now,
            ));
            return fx;
        }
        fx.push(self.log_event(node_id, "", format!("node {node_id} disconnected"), now));
        if announced.is_some() {
            return fx;
        }
        // The host may be alive with only its agent gone: its job's progress decides, within
        // a few of the job's steps (the tick judges it, see `progress_vouches`).
        let tick = self.config.tick_ms as i64;
        if matches!(self.progress_vouches(node_id, now, tick, now), Vouch::Wait) {
            if let Some(node) = self.nodes.get_mut(node_id) {
                node.link = Link::Lost { since: now };
            }
            return fx;
        }
        self.node_fault(node_id, FaultCause::AgentLost, now, &mut fx);
        fx
    }

    /// Whether `now` is within a heartbeat timeout of time the core could not observe: just
    /// after the tick that found it, or in a gap no tick has ended yet.
    fn just_unobserved(&self, now: UnixMillis) -> bool {
        let window = self.config.heartbeat_timeout_ms as i64;
        let found = self
            .observed_again_at
            .is_some_and(|at| (0..=window).contains(&(now - at)));
        let unobservable = (self.config.tick_ms + self.config.heartbeat_interval_ms) as i64;
        let unticked = (self.last_tick_at).is_some_and(|at| now - at >= unobservable);
        found || unticked
    }

    /// A node fault: the jobs on it recover, the node is fenced (if allocated or the fault is
    /// fatal) or marked offline (if idle and just gone).
    pub(super) fn node_fault(
        &mut self,
        node_id: &str,
        cause: FaultCause,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let jobs = self.jobs_on(node_id, |state| !state.is_terminal());
        // The evidence of when it happened, for the incidents the jobs open (recovery.rs).
        let evidence = self.node_fault_evidence(node_id, &cause);
        let mut silent_since = None;
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.fault_evidence = evidence;
            let unheard = matches!(cause, FaultCause::AgentLost | FaultCause::HeartbeatTimeout);
            silent_since = unheard.then_some(node.last_heartbeat_at);
        }
        for job_id in &jobs {
            self.drive(
                job_id,
                JobEvent::Fault {
                    node: node_id.into(),
                    cause: cause.clone(),
                    silent_since,
                },
                now,
                fx,
            );
        }
        let event = match &cause {
            FaultCause::AgentLost | FaultCause::HeartbeatTimeout => NodeEvent::Disconnected,
            other => NodeEvent::Fence(other.clone()),
        };
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.fault_evidence = None;
        }
        if jobs.is_empty() || matches!(event, NodeEvent::Fence(_)) {
            self.node_event(node_id, event, now, fx);
        }
        if self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.script_run.is_some())
        {
            self.abort_scripts(
                node_id,
                &format!("node fault while the script ran: {}", cause.detail()),
                now,
                fx,
            );
            self.defer(Work::FindReplacements);
        }
    }

    /// When a node fault happened, by its evidence: an event the agent stamped (left on the
    /// node by the heartbeat that reported it), else the node's last sign of life for a lost
    /// agent (its last heartbeat) or a silent one (the heartbeat that did not come).
    fn node_fault_evidence(
        &mut self,
        node_id: &str,
        cause: &FaultCause,
    ) -> Option<(UnixMillis, FaultTimeSource)> {
        let interval = self.config.heartbeat_interval_ms as i64;
        let node = self.nodes.get_mut(node_id)?;
        let stamped = node.fault_evidence.take();
        match cause {
            FaultCause::AgentLost => Some((node.last_heartbeat_at, FaultTimeSource::LastHeartbeat)),
            FaultCause::HeartbeatTimeout => Some((
                node.last_heartbeat_at + interval,
                FaultTimeSource::LastHeartbeat,
            )),
            _ => stamped,
        }
    }

    /// The failure detector's clock: heartbeat timeouts, stalls, recovery deadlines.
    pub(crate) fn tick(&mut self, now: UnixMillis) -> Vec<Command> {
        let mut fx = Vec::new();
        self.discount_unobserved_time(now, &mut fx);
        let timeout = self.config.heartbeat_timeout_ms as i64;
        let survey = self.survey(now, &mut fx);
        let quiet = survey.quiet();
        let held = self.silence_is_shared(&survey.silent, survey.connected, now, &mut fx);
        if quiet && self.config.remediation_script.is_empty() {
            // Nothing to judge but the stall clocks (survey.rs): what the passes below would
            // find is known to be nothing, and the unheard nodes are as the survey found them.
            self.tick_jobs(survey.unheard, now, &mut fx);
            return fx;
        }
        let silent = if held { Vec::new() } else { survey.silent };
        let mut faulty = Vec::new();
        for node_id in silent {
            // The node may have died up to a heartbeat interval after its last heartbeat.
            let last_heard = self.nodes[&node_id].last_heartbeat_at;
            let slack = self.config.heartbeat_interval_ms as i64;
            match self.progress_vouches(&node_id, last_heard, slack, now) {
                Vouch::Wait => {}
                Vouch::Alive(job_id) => self.keep_vouched(&node_id, &job_id, now, &mut fx),
                Vouch::No => faulty.push(node_id),
            }
        }
        // Agents whose stream closed while their job's progress may still vouch for them.
        let lost: Vec<(NodeId, UnixMillis)> = self
            .nodes
            .values()
            .filter_map(|n| match n.link {
                Link::Lost { since } => Some((n.id.clone(), since)),
                _ => None,
            })
            .collect();
        for (node_id, lost_at) in lost {
            // A closed stream is seen within a tick of when it closed.
            let slack = self.config.tick_ms as i64;
            match self.progress_vouches(&node_id, lost_at, slack, now) {
                Vouch::Wait => {}
                Vouch::Alive(job_id) => self.keep_vouched(&node_id, &job_id, now, &mut fx),
                Vouch::No => {
                    if let Some(node) = self.nodes.get_mut(&node_id) {
                        node.link = Link::Down;
                    }
                    self.node_fault(&node_id, FaultCause::AgentLost, now, &mut fx);
                }
            }
        }
        self.fault_vouched_when_all_stall(now, &mut fx);
        for node_id in faulty {
            if let Some(node) = self.nodes.get_mut(&node_id) {
                node.link.drop_conn();
            }
            fx.push(Command::Disconnect {
                node: node_id.clone(),
                reason: format!("no heartbeat for {timeout} ms"),
            });
            self.node_fault(&node_id, FaultCause::HeartbeatTimeout, now, &mut fx);
        }
        // An agent that announced a restart and did not come back in time is lost after all.
        let overdue: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| matches!(n.link, Link::Away { until } if now >= until))
            .map(|n| n.id.clone())
            .collect();
        for node_id in overdue {
            if let Some(node) = self.nodes.get_mut(&node_id) {
                node.link = Link::Down;
            }
            self.node_fault(&node_id, FaultCause::AgentLost, now, &mut fx);
        }
        self.expire_scripts(now, &mut fx);
        self.start_remediations(now, &mut fx);
        let unheard_after = 2 * self.config.heartbeat_interval_ms as i64;
        let unheard: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.link.is_connected() || now - n.last_heartbeat_at > unheard_after)
            .map(|n| n.id.clone())
            .collect();
        self.tick_jobs(unheard, now, &mut fx);
        fx
    }
}

/// Round trips kept per node; the shortest of them gives the offset.
const ROUND_TRIP_SAMPLES: usize = 8;

/// One NTP-style measurement: the coordinator stamped t1, the agent received it at t2 (agent
/// clock), sent its heartbeat at t3 (agent clock), which arrived at t4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoundTrip {
    /// ((t2 − t1) + (t3 − t4)) / 2: agent clock minus coordinator clock, exact when the
    /// delays both ways are equal, off by at most half the round trip otherwise.
    pub(crate) offset_ms: i64,
    /// (t4 − t1) − (t3 − t2): time on the wire both ways, without the agent's own wait.
    pub(crate) round_trip_ms: i64,
}

impl RoundTrip {
    /// The measurement of one echo carried by a heartbeat sent at `sent_at` (agent clock)
    /// and received at `now`.
    pub(crate) fn measure(echo: ClockEcho, sent_at: UnixMillis, now: UnixMillis) -> RoundTrip {
        let (t1, t2, t3, t4) = (
            echo.coordinator_sent_at,
            echo.agent_received_at,
            sent_at,
            now,
        );
        RoundTrip {
            offset_ms: ((t2 - t1) + (t3 - t4)).div_euclid(2),
            round_trip_ms: (t4 - t1) - (t3 - t2),
        }
    }
}

/// A one-way sample (agent send time minus arrival): the offset less the delay. Used only
/// while no round trip was measured (an agent that does not echo).
pub(super) fn push_offset(node: &mut NodeRecord, sample: i64) {
    if !node.round_trips.is_empty() {
        return;
    }
    // Room is made before the push, so the queue never grows past its bound (one record per
    // node: at 10,000 nodes its spare room is memory too).
    if node.offset_samples.len() >= OFFSET_SAMPLES {
        node.offset_samples.pop_front();
    }
    node.offset_samples.push_back(sample);
    node.clock_offset_ms = node.offset_samples.iter().copied().max().unwrap_or(0);
}

/// A round-trip sample; the offset is the one of the shortest recent round trip (the least
/// room for asymmetric delay). A negative round trip (a clock stepped between the stamps) is
/// no measurement.
pub(super) fn push_round_trip(node: &mut NodeRecord, sample: RoundTrip) {
    if sample.round_trip_ms < 0 {
        return;
    }
    if node.round_trips.is_empty() {
        // One-way samples are no longer used once a round trip is measured.
        node.offset_samples = VecDeque::new();
    }
    if node.round_trips.len() >= ROUND_TRIP_SAMPLES {
        node.round_trips.pop_front();
    }
    node.round_trips.push_back(sample);
    if let Some(best) = node.round_trips.iter().min_by_key(|s| s.round_trip_ms) {
        node.clock_offset_ms = best.offset_ms;
        node.clock_round_trip_ms = Some(best.round_trip_ms);
    }
}

/// `text` cut to at most `max` bytes at a character boundary, saying so when cut.
fn bounded(mut text: String, max: usize) -> String {
    const CUT: &str = "\n… (cut)";
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(CUT.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(CUT);
    text
}

#[cfg(test)]
#[path = "detector_tests.rs"]
mod tests;
