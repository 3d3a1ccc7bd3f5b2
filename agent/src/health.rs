//! The node's health as heartbeats carry it: a closed set of states per check, each with a
//! reason and a suggested action, aggregated per node.
//!
//! Monitors write their latest result with [`HealthBoard::set`]; a check that turns fatal is
//! also sent to the coordinator at once through the outbox, not on the next heartbeat.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use holdfast_proto::v1 as pb;

use crate::{now_ms, Outbox};

/// The latest result of every check, shared between monitors and the session.
#[derive(Clone, Default)]
pub struct HealthBoard {
    checks: Arc<Mutex<BTreeMap<String, pb::HealthCheck>>>,
}

impl HealthBoard {
    /// Records a check's result. Returns true when it turned fatal (unhealthy and asking for
    /// the node to be replaced) with this call; the caller then reports at once.
    pub fn set(&self, check: pb::HealthCheck) -> bool {
        let Ok(mut checks) = self.checks.lock() else {
            return false;
        };
        let was_fatal = checks.get(&check.check).is_some_and(is_fatal);
        let fatal = is_fatal(&check);
        checks.insert(check.check.clone(), check);
        fatal && !was_fatal
    }

    /// Records a check and, when it turned fatal, sends the summary through `outbox` at once.
    pub fn set_and_report(&self, check: pb::HealthCheck, outbox: &Outbox) {
        if self.set(check) {
            let _ = outbox.send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::HealthReport(pb::HealthReport {
                    health: Some(self.summary()),
                    fatal: true,
                })),
            });
        }
    }

    /// Every check and the worst state among them (Healthy when there are none).
    pub fn summary(&self) -> pb::HealthSummary {
        let checks: Vec<pb::HealthCheck> = self
            .checks
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        let state = checks
            .iter()
            .map(|c| severity(c.state))
            .max()
            .map_or(pb::HealthState::Healthy, |(_, s)| s);
        pb::HealthSummary {
            state: state as i32,
            checks,
        }
    }
}

fn is_fatal(check: &pb::HealthCheck) -> bool {
    check.state == pb::HealthState::Unhealthy as i32
        && check.action == pb::HealthAction::ReplaceNode as i32
}

/// Orders states by how bad they are.
fn severity(state: i32) -> (u8, pb::HealthState) {
    match pb::HealthState::try_from(state).unwrap_or(pb::HealthState::Unknown) {
        pb::HealthState::Unhealthy => (4, pb::HealthState::Unhealthy),
        pb::HealthState::Unknown => (3, pb::HealthState::Unknown),
        pb::HealthState::Degraded => (2, pb::HealthState::Degraded),
        pb::HealthState::Healthy | pb::HealthState::Unspecified => (1, pb::HealthState::Healthy),
        pb::HealthState::NotApplicable => (0, pb::HealthState::Healthy),
    }
}

/// A check result stamped now.
pub fn check(
    name: &str,
    state: pb::HealthState,
    reason: &str,
    action: pb::HealthAction,
) -> pb::HealthCheck {
    pb::HealthCheck {
        check: name.to_string(),
        state: state as i32,
        reason: reason.to_string(),
        action: action as i32,
        observed_unix_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_the_worst_state_and_fatal_is_reported_once() {
        let board = HealthBoard::default();
        assert_eq!(board.summary().state, pb::HealthState::Healthy as i32);
        assert!(!board.set(check(
            "memory",
            pb::HealthState::Degraded,
            "low",
            pb::HealthAction::None
        )));
        assert_eq!(board.summary().state, pb::HealthState::Degraded as i32);
        let fatal = check(
            "xid",
            pb::HealthState::Unhealthy,
            "Xid 79",
            pb::HealthAction::ReplaceNode,
        );
        assert!(board.set(fatal.clone()));
        assert!(!board.set(fatal), "already fatal: no second report");
        assert_eq!(board.summary().state, pb::HealthState::Unhealthy as i32);
        assert!(!board.set(check(
            "xid",
            pb::HealthState::Healthy,
            "",
            pb::HealthAction::None
        )));
        assert_eq!(board.summary().state, pb::HealthState::Degraded as i32);
    }
}
