//! Every health action acts. A finding (a check that turned Unhealthy or Degraded with a
//! suggested action) is escalated by the node's recent findings, then carried out:
//!
//! - `restart_worker`: the node's job restarts its workers in place, the fault counted against
//!   the node like a crash (its quarantine counts it);
//! - `reset_gpu`, `reboot`: the node is drained — no new work — and leaves its job at the job's
//!   next recovery, or at once (`drain_replace`); it returns to service when its host comes
//!   back rebooted (through its bootstrap and deep checks) or an operator uncordons it;
//! - `replace_node`: fenced and replaced at once (the detector's fatal path).
//!
//! Escalation follows GPUd's handling of repeated XIDs: a finding on a node that already had
//! one within `health_escalation_window_ms` asks for the action after the last one given
//! (restart worker → reset GPU → reboot → replace node). A finding is counted when its check
//! turns bad, not on every report that repeats it.

use super::*;
use crate::incident::FaultTimeSource;
use crate::protocol::{HealthCheck, HealthState};

/// How drastic an action is: escalation never goes back down.
fn severity(action: HealthAction) -> u8 {
    match action {
        HealthAction::None => 0,
        HealthAction::RestartWorker => 1,
        HealthAction::ResetGpu => 2,
        HealthAction::Reboot => 3,
        HealthAction::ReplaceNode => 4,
    }
}

/// The action after `action` when its finding repeats.
pub(crate) fn escalated(action: HealthAction) -> HealthAction {
    match action {
        HealthAction::None => HealthAction::None,
        HealthAction::RestartWorker => HealthAction::ResetGpu,
        HealthAction::ResetGpu => HealthAction::Reboot,
        HealthAction::Reboot | HealthAction::ReplaceNode => HealthAction::ReplaceNode,
    }
}

/// The operator-facing name of an action.
fn action_name(action: HealthAction) -> &'static str {
    match action {
        HealthAction::None => "none",
        HealthAction::RestartWorker => "restart_worker",
        HealthAction::ResetGpu => "reset_gpu",
        HealthAction::Reboot => "reboot",
        HealthAction::ReplaceNode => "replace_node",
    }
}

/// A check that asks for something.
fn is_finding(c: &HealthCheck) -> bool {
    matches!(c.state, HealthState::Unhealthy | HealthState::Degraded)
        && c.action != HealthAction::None
}

impl Cluster {
    /// A node's health changed from `before` to what its record holds now: the worst new
    /// finding acts (after escalation); a node whose last Unhealthy check cleared may be
    /// some job's replacement.
    pub(super) fn health_changed(
        &mut self,
        node_id: &str,
        before: &HealthSummary,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let cleared = self
            .nodes
            .get(node_id)
            .is_some_and(|n| before.has_unhealthy() && !n.health.has_unhealthy());
        if cleared {
            self.defer(Work::FindReplacements);
        }
        let Some(node) = self.nodes.get(node_id) else {
            return;
        };
        let worst = node
            .health
            .checks
            .iter()
            .filter(|c| is_finding(c))
            .filter(|c| {
                !before
                    .checks
                    .iter()
                    .any(|b| b.check == c.check && is_finding(b) && b.action == c.action)
            })
            .max_by_key(|c| severity(c.action))
            .cloned();
        let Some(finding) = worst else {
            return;
        };
        let action = self.count_finding(node_id, finding.action, now);
        let mut reason = format!("{}: {}", finding.check, finding.reason);
        if action != finding.action {
            reason.push_str(&format!(
                " (asks for {}; escalated to {}: it repeats on this node)",
                action_name(finding.action),
                action_name(action)
            ));
        }
        fx.push(self.log_event(
            node_id,
            "",
            format!(
                "node {node_id}: health finding {reason} → {}",
                action_name(action)
            ),
            now,
        ));
        // The finding's own observation dates the fault.
        let evidence = (finding.observed_at > 0).then(|| {
            (
                finding.observed_at.saturating_sub(self.offset(node_id)),
                FaultTimeSource::AgentEvent,
            )
        });
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.fault_evidence = evidence;
        }
        match action {
            HealthAction::None => {}
            HealthAction::RestartWorker => self.restart_for_health(node_id, reason, now, fx),
            HealthAction::ResetGpu | HealthAction::Reboot => {
                let why = format!("drained for {}: {reason}", action_name(action));
                self.drain(node_id, why, now, fx)
            }
            HealthAction::ReplaceNode => {
                self.node_fault(node_id, FaultCause::HealthFatal(reason), now, fx);
            }
        }
        // Only a fault this finding caused now is dated by it.
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.fault_evidence = None;
        }
    }

    /// Records a finding that asks for `action` on the node; returns the action it gets: one
    /// past the last one given within the escalation window, when that is more drastic.
    fn count_finding(
        &mut self,
        node_id: &str,
        action: HealthAction,
        now: UnixMillis,
    ) -> HealthAction {
        let window = self.config.health_escalation_window_ms as i64;
        let Some(node) = self.nodes.get_mut(node_id) else {
            return action;
        };
        if window == 0 {
            return action;
        }
        node.findings.retain(|(at, _)| now - at < window);
        let given = match node
            .findings
            .iter()
            .map(|(_, a)| *a)
            .max_by_key(|a| severity(*a))
        {
            Some(last) if severity(escalated(last)) > severity(action) => escalated(last),
            _ => action,
        };
        node.findings.push_back((now, given));
        given
    }

    /// `restart_worker`: every running job on the node restarts in place, the fault counted
    /// against the node.
    fn restart_for_health(
        &mut self,
        node_id: &str,
        reason: String,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let jobs = self.jobs_on(node_id, |state| {
            matches!(state, JobState::Launching | JobState::Running)
        });
        for job_id in jobs {
            let event = JobEvent::Fault {
                node: node_id.into(),
                cause: FaultCause::HealthRestart(reason.clone()),
                silent_since: None,
            };
            self.drive(&job_id, event, now, fx);
        }
    }

    /// `reset_gpu`, `reboot`: no new work for the node; it leaves its job now or at the job's
    /// next recovery (`drain_replace`).
    fn drain(&mut self, node_id: &str, why: String, now: UnixMillis, fx: &mut Vec<Command>) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        if node.drained.is_none() {
            node.drained = Some(why.clone());
            self.touch_node(node_id);
        }
        let busy = self
            .jobs
            .values()
            .any(|j| !j.state.is_terminal() && j.rank_of(node_id).is_some());
        let at_once = self.config.drain_replace == "now";
        fx.push(Command::Publish(Event {
            at: now,
            kind: EventKind::Alert,
            job_id: String::new(),
            node_id: node_id.to_string(),
            message: format!(
                "node {node_id} {why}; no new work{}",
                match (busy, at_once) {
                    (false, _) => "",
                    (true, true) => "; replaced in its job now",
                    (true, false) => "; replaced in its job at the job's next recovery",
                }
            ),
            subject: None,
        }));
        if busy && at_once {
            self.node_fault(node_id, FaultCause::HealthFatal(why), now, fx);
        }
    }
}
