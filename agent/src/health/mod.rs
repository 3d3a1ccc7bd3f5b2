//! The node's health as heartbeats carry it: a closed set of states per check, each with a
//! reason and a suggested action, aggregated per node.
//!
//! Monitors write their latest result with [`HealthBoard::set`]; a check that turns fatal is
//! also sent to the coordinator at once through the outbox, not on the next heartbeat.
//!
//! ## Layout
//! - [`xid`] — the XID catalog (data, with sources) and the config's overrides.
//! - [`kmsg`] — XIDs from the kernel log.
//! - [`nvml`] — GPU state and XID events through NVML, behind the [`GpuBackend`] trait.
//! - [`inject`] — the fault-injection backend, a test double enabled only by the config.
//! - [`host`] — memory, free space, mounts, the agent itself.
//! - [`monitor`] — runs every probe off the heartbeat path with a timeout, debounces, and turns
//!   events into checks.
//!
//! Nothing here talks to the coordinator except through the board and the outbox.

pub mod host;
pub mod inject;
pub mod kmsg;
pub mod monitor;
pub mod nvml;
pub mod xid;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use holdfast_core::now_ms;
use holdfast_proto::v1 as pb;

use crate::Outbox;

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

    /// Forgets a check (a placeholder that its probe's real checks replace).
    pub fn remove(&self, name: &str) {
        if let Ok(mut checks) = self.checks.lock() {
            checks.remove(name);
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

/// A GPU event as every source reports it (NVML events, the kernel log, injected faults); all
/// take the same path from here: [`monitor`] classifies them and sets checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvent {
    /// The GPU's index, when the source knows it.
    pub gpu: Option<u32>,
    /// The GPU's PCI address, when the source knows it (the kernel log names GPUs this way).
    pub pci: Option<String>,
    pub kind: EventKind,
    /// Which source saw it: "nvml", "kmsg", "injected".
    pub source: &'static str,
    /// Whatever else the source said.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Xid(u32),
    /// A double-bit (uncorrectable) ECC error.
    EccDbe,
    /// The GPU stopped answering (NVML_ERROR_GPU_IS_LOST).
    GpuLost,
}

/// Something that blocks until GPU events happen. Each source runs on a thread of its own, so a
/// source stuck in the driver holds up nothing else.
pub trait EventSource: Send {
    fn name(&self) -> &'static str;
    /// Returns the events seen, waiting a while (the source's own choice, at most about a
    /// second) when there are none. An error ends the source; the monitor reports it.
    fn wait(&mut self) -> Result<Vec<GpuEvent>, String>;
}

/// The host's GPUs as the agent sees them: an inventory, periodically polled state, and event
/// sources. NVML ([`nvml::NvmlBackend`]) in production, [`nvml::NoGpus`] where there is no
/// driver, and [`inject::FaultInjection`] wrapping either in tests.
pub trait GpuBackend: Send {
    /// The GPUs present (empty on a host without GPUs).
    fn inventory(&mut self) -> Vec<pb::Gpu>;
    /// One poll of every state check, each GPU's findings folded into one result per check.
    fn poll(&mut self) -> Vec<pb::HealthCheck>;
    /// The event sources of this backend; called once, at start.
    fn event_sources(&mut self) -> Vec<Box<dyn EventSource>>;
    /// Sets the GPU count the host must show (learned at first start when not configured).
    fn expect(&mut self, gpus: u32);
    /// True when the row-remap check watches every GPU (XID 64 is then left to it).
    fn watches_row_remap(&self) -> bool {
        false
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
        use pb::{HealthAction as A, HealthState as S};
        let board = HealthBoard::default();
        assert_eq!(board.summary().state, S::Healthy as i32);
        let fatal = check("xid", S::Unhealthy, "Xid 79", A::ReplaceNode);
        // Each result in turn: whether it is to be reported at once, and the node's state after.
        for (i, (result, reported, state)) in [
            (
                check("memory", S::Degraded, "low", A::None),
                false,
                S::Degraded,
            ),
            (fatal.clone(), true, S::Unhealthy),
            // Already fatal: no second report.
            (fatal, false, S::Unhealthy),
            (check("xid", S::Healthy, "", A::None), false, S::Degraded),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(board.set(result), reported, "result {i}");
            assert_eq!(board.summary().state, state as i32, "result {i}");
        }
    }
}
