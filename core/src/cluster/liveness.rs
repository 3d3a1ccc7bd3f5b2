//! Who is really gone. Before the detector turns silence into node faults it asks three
//! questions: could the coordinator observe at all (its own stalls and clock jumps count
//! against no node), is the silence shared (many nodes at once: one shared cause, not N faults),
//! and does the job's own progress vouch for a node whose agent went silent (a synchronous job
//! that keeps stepping proves its ranks alive).

use super::*;
use crate::protocol::{Event, EventKind};

/// The longest step time the vouching window counts with: a job of slower steps is judged as
/// if its steps took this long (the decision then waits at most ~31 s after the node was last
/// heard).
const VOUCH_STEP_CAP_MS: i64 = 10_000;

/// What a job's progress says about a silent node.
pub(super) enum Vouch {
    /// Not yet decidable: the job's step time has not passed since the node went silent.
    Wait,
    /// Every other rank of this job stepped since: the node's ranks are alive.
    Alive(JobId),
    /// Nothing vouches (no job, a job that opted out, no progress): a node fault.
    No,
}

impl Cluster {
    /// Progress vouches for liveness. A dead host stops the other ranks of a synchronous job at
    /// their next exchange, within the step they are in; when every other rank stepped after
    /// the node was last heard (`last_heard`: its last heartbeat, or when its stream closed)
    /// plus one step time and `slack` (how much later than `last_heard` it may really have
    /// died), they got through an exchange with it: its ranks are alive and only its agent (or
    /// its link to the coordinator) is gone. The decision waits at most one more step time for
    /// that progress to show.
    pub(super) fn progress_vouches(
        &self,
        node_id: &str,
        last_heard: UnixMillis,
        slack: i64,
        now: UnixMillis,
    ) -> Vouch {
        let Some(job) = self
            .jobs
            .values()
            .find(|j| !j.state.is_terminal() && j.rank_of(node_id).is_some())
        else {
            return Vouch::No;
        };
        if !job.spec.progress_vouches
            || job.state != JobState::Running
            || job.ranks.len() < 2
            || job.step_time_ms == 0
        {
            return Vouch::No;
        }
        // Slow steps must not make a dead host wait for minutes: the window is capped.
        let step = (job.step_time_ms as i64).min(VOUCH_STEP_CAP_MS);
        let since = last_heard + step + slack;
        if job.progress_vouches_for(node_id, since) {
            Vouch::Alive(job.id.clone())
        } else if now < since + step {
            Vouch::Wait
        } else {
            Vouch::No
        }
    }

    /// Keeps a silent node's ranks on its job's word: the agent counts as lost (its stream is
    /// closed), the node stays allocated, and an alert says what happens next.
    pub(super) fn keep_vouched(
        &mut self,
        node_id: &str,
        job_id: &str,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let was_connected = node.link.is_connected();
        node.link = Link::Vouched { since: now };
        let silent_ms = now - node.last_heartbeat_at;
        if was_connected {
            fx.push(Command::Disconnect {
                node: node_id.into(),
                reason: format!("no heartbeat for {silent_ms} ms"),
            });
        }
        fx.push(Command::Publish(Event {
            at: now,
            kind: EventKind::Alert,
            job_id: job_id.to_string(),
            node_id: node_id.to_string(),
            message: format!(
                "the agent of {node_id} is silent ({silent_ms} ms) but job {job_id} keeps \
                 stepping on every other rank: its ranks are alive, keeping them. {node_id} is \
                 fenced at the job's next fault, if its ranks stall, or if its agent returns \
                 without its worker"
            ),
            subject: None,
        }));
    }

    /// A vouched node is blamed when the rest of its job stalls: the ranks that could be heard
    /// waited on the ones that could not.
    pub(super) fn fault_vouched_when_all_stall(&mut self, now: UnixMillis, fx: &mut Vec<Command>) {
        let mut stalled = Vec::new();
        for node in self
            .nodes
            .values()
            .filter(|n| matches!(n.link, Link::Vouched { .. }))
        {
            let Some(job) = self
                .jobs
                .values()
                .find(|j| !j.state.is_terminal() && j.rank_of(&node.id).is_some())
            else {
                continue;
            };
            let timeout = job.spec.stall_timeout_ms as i64;
            let idle = job
                .ranks
                .iter()
                .filter(|r| r.node != node.id)
                .map(|r| now - r.last_progress_at)
                .min()
                .unwrap_or(0);
            if job.state == JobState::Running && timeout > 0 && idle >= timeout {
                stalled.push((node.id.clone(), idle as u64));
            }
        }
        for (node_id, stalled_ms) in stalled {
            if let Some(n) = self.nodes.get_mut(&node_id) {
                n.link = Link::Down;
            }
            // Its agent is gone: the node is replaced, not restarted in place.
            tracing::debug!(
                node = node_id.as_str(),
                stalled_ms,
                "the job stalled around a lost agent"
            );
            self.node_fault(&node_id, FaultCause::AgentLost, now, fx);
        }
    }

    /// Correlated silence is one shared cause, not N node faults. When `silent` (connected
    /// nodes past the heartbeat timeout) holds at least `silence_storm_share` of the
    /// `connected` nodes, and at least two, a switch, the control network or the coordinator's
    /// own network is likelier than that many dead hosts: their faults are held (true) and one
    /// alert says so. The storm ends when enough nodes are heard again — then the nodes still
    /// silent are faults, judged on their whole silence — or when it held
    /// `silence_storm_hold_ms` while some nodes were still heard. While every connected node is
    /// silent nothing can be told apart and fencing is held until nodes are heard again.
    pub(super) fn silence_is_shared(
        &mut self,
        silent: &[NodeId],
        connected: usize,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) -> bool {
        let threshold =
            ((self.config.silence_storm_share * connected as f64).ceil() as usize).max(2);
        let storm = silent.len() >= threshold;
        let everyone = storm && silent.len() == connected;
        match (self.silence_storm, storm) {
            (None, true) => {
                self.silence_storm = Some(now);
                fx.push(Command::Publish(Event {
                    at: now,
                    kind: EventKind::Alert,
                    job_id: String::new(),
                    node_id: String::new(),
                    message: format!(
                        "{} of {connected} nodes went silent at once ({}): suspecting a shared \
                         cause (a switch, the control network, this coordinator's network) \
                         before node faults; holding fences until the rest are heard again{}",
                        silent.len(),
                        silent.join(", "),
                        if everyone {
                            String::new()
                        } else {
                            format!(" or for {} s", self.config.silence_storm_hold_ms / 1000)
                        }
                    ),
                    subject: None,
                }));
                true
            }
            (Some(since), true) => {
                let held = now - since;
                if everyone || held < self.config.silence_storm_hold_ms as i64 {
                    return true;
                }
                self.silence_storm = None;
                fx.push(self.log_event(
                    "",
                    "",
                    format!(
                        "silence storm held fences for {} s and {} nodes are still silent while \
                         others are heard: treating them as node faults",
                        held / 1000,
                        silent.len()
                    ),
                    now,
                ));
                false
            }
            (Some(since), false) => {
                self.silence_storm = None;
                fx.push(self.log_event(
                    "",
                    "",
                    format!(
                        "silence storm over after {} ms: nodes are heard again{}",
                        now - since,
                        if silent.is_empty() {
                            String::new()
                        } else {
                            format!("; still silent, now node faults: {}", silent.join(", "))
                        }
                    ),
                    now,
                ));
                false
            }
            (None, false) => false,
        }
    }

    /// Agents waiting for admission are alive: an away node among them keeps its grace until
    /// at least `until` (a connected, lost or down node is not changed).
    pub(super) fn admission_wait(&mut self, nodes: &[NodeId], until: UnixMillis) {
        for id in nodes {
            if let Some(node) = self.nodes.get_mut(id) {
                if let Link::Away { until: away } = &mut node.link {
                    *away = (*away).max(until);
                }
            }
        }
    }

    /// The coordinator's own stalls are never a node's fault. Ticks come every `tick_ms`; when
    /// the gap since the last one is much longer (the process was stopped or not scheduled, a
    /// VM paused, the host swapped) or negative (the clock jumped back), the core could not
    /// observe for that long. Every clock that judges a node or a job — last heartbeat, stall
    /// clocks, announced-restart and script deadlines, recovery deadlines — moves by the
    /// unobserved time, so a node is suspected only for silence the coordinator could see.
    /// Heartbeats that queued up meanwhile arrive next and refresh the nodes for real; a node
    /// that really died is judged on the silence before and after the gap.
    pub(super) fn discount_unobserved_time(&mut self, now: UnixMillis, fx: &mut Vec<Command>) {
        let last = self.last_tick_at.replace(now);
        let Some(last) = last else {
            return;
        };
        let expected = self.config.tick_ms as i64;
        let gap = now - last;
        if gap >= 0 && gap <= 2 * expected {
            return;
        }
        let unobserved = gap - expected;
        for node in self.nodes.values_mut() {
            node.last_heartbeat_at = node.last_heartbeat_at.saturating_add(unobserved);
            node.link.shift(unobserved);
            if let Some(run) = &mut node.script_run {
                run.deadline = run.deadline.saturating_add(unobserved);
            }
        }
        for job in self.jobs.values_mut() {
            if !job.state.is_terminal() {
                job.shift_clocks(unobserved);
            }
        }
        if unobserved.abs() >= self.config.heartbeat_interval_ms as i64 {
            self.observed_again_at = Some(now);
            let what = if gap < 0 {
                format!("the clock jumped back by {} ms", -gap)
            } else {
                format!("the coordinator could not observe for {gap} ms (stopped, not scheduled or its clock jumped)")
            };
            fx.push(self.log_event(
                "",
                "",
                format!("{what}: every node's and job's deadlines move by {unobserved} ms; no node is suspected for that time"),
                now,
            ));
        }
    }
}
