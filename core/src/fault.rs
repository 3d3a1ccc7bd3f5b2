//! The one cause of every fault: why a job left `Running`, why a node was fenced, what an
//! incident names.

use serde::{Deserialize, Serialize};

/// Why a job left `Running` and why a node was fenced: one typed cause per kind of fault. Its
/// code names it in incidents and metrics; its `Display` is what operators read on a fenced
/// node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultCause {
    /// The agent's stream closed without goodbye.
    AgentLost,
    /// Heartbeats stopped.
    HeartbeatTimeout,
    /// A health check asked for the node to be replaced.
    HealthFatal(String),
    /// The worker exited non-zero or was killed by a signal the agent did not send.
    WorkerExited {
        /// Its exit code; `None` when a signal killed it or the status is unknown (a worker
        /// adopted by a restarted agent).
        code: Option<i32>,
        /// The signal that killed it, if one did; it wins over `code` in the detail.
        signal: Option<i32>,
    },
    /// The rank made no progress within the stall timeout.
    ProgressStalled {
        /// How long the rank had gone without progress when the detector judged it hung.
        stalled_ms: u64,
        /// Why this rank was singled out from its stalled peers, or why none could be (see
        /// [`crate::evidence::single_out`]); empty when no one asked.
        #[serde(default)]
        why: String,
        /// The stall was pinned on this node's rank. When not, the node merely names the
        /// incident: the fault is counted against no node's quarantine.
        #[serde(default = "blamed_default")]
        blamed: bool,
    },
    /// A health check asked for the worker to be restarted in place (an application XID): a
    /// worker fault, counted against the node like a crash.
    HealthRestart(String),
    /// The node failed its bootstrap or deep check while taking over a rank.
    CheckFailed(String),
    /// An operator fenced the node.
    Operator(String),
    /// Worker faults kept happening on this node (`faults` within `window_ms`; the last one
    /// is `last`): restarting in place is escalated to replacing the node, which is quarantined.
    RepeatedFaults {
        /// Worker faults counted on the node within the window (reached `quarantine_after`).
        faults: u32,
        /// The window they fell in (`quarantine_window_ms`).
        window_ms: u64,
        /// The detail of the fault that tipped it over, so the root cause is not lost.
        last: String,
    },
}

fn blamed_default() -> bool {
    true
}

impl FaultCause {
    /// A stall of a whole synchronous gang, blamed on no rank.
    pub fn stall_unattributed(stalled_ms: u64, why: String) -> FaultCause {
        FaultCause::ProgressStalled {
            stalled_ms,
            why,
            blamed: false,
        }
    }

    /// A stall blamed on one rank (`why` says what singled it out; may be empty).
    pub fn stall(stalled_ms: u64, why: String) -> FaultCause {
        FaultCause::ProgressStalled {
            stalled_ms,
            why,
            blamed: true,
        }
    }

    /// Node faults move the rank to another node; worker faults restart it in place.
    pub fn needs_replacement(&self) -> bool {
        matches!(
            self,
            FaultCause::AgentLost
                | FaultCause::HeartbeatTimeout
                | FaultCause::HealthFatal(_)
                | FaultCause::CheckFailed(_)
                | FaultCause::RepeatedFaults { .. }
                | FaultCause::Operator(_)
        )
    }

    /// The cause's stable snake_case name (`agent_lost`, `worker_exited`, …): an incident's
    /// `cause`, the `cause` label of the incident metric, the wire's `IncidentCause`.
    pub fn code(&self) -> &'static str {
        match self {
            FaultCause::AgentLost => "agent_lost",
            FaultCause::HeartbeatTimeout => "heartbeat_timeout",
            FaultCause::HealthFatal(_) => "health_fatal",
            FaultCause::WorkerExited { .. } => "worker_exited",
            FaultCause::ProgressStalled { .. } => "progress_stalled",
            FaultCause::CheckFailed(_) => "check_failed",
            FaultCause::RepeatedFaults { .. } => "repeated_faults",
            FaultCause::Operator(_) => "operator",
            FaultCause::HealthRestart(_) => "health_restart",
        }
    }

    /// What happened, without the kind ([`FaultCause::code`] names that): an incident's
    /// `detail` and the job's message; health, check and operator reasons are given as they
    /// are.
    pub fn detail(&self) -> String {
        match self {
            FaultCause::AgentLost => "agent stream closed without goodbye".into(),
            FaultCause::HeartbeatTimeout => "no heartbeat within the timeout".into(),
            FaultCause::HealthFatal(r)
            | FaultCause::HealthRestart(r)
            | FaultCause::CheckFailed(r)
            | FaultCause::Operator(r) => r.clone(),
            FaultCause::WorkerExited { code, signal } => match (code, signal) {
                (_, Some(s)) => format!("worker killed by signal {s}"),
                (Some(c), None) => format!("worker exited with code {c}"),
                (None, None) => "worker exited".into(),
            },
            FaultCause::RepeatedFaults {
                faults,
                window_ms,
                last,
            } => format!(
                "{faults} worker faults within {:.0} s (last: {last}); node quarantined",
                *window_ms as f64 / 1000.0
            ),
            FaultCause::ProgressStalled {
                stalled_ms, why, ..
            } => {
                let mut detail = format!("no progress for {:.1} s", *stalled_ms as f64 / 1000.0);
                if !why.is_empty() {
                    detail.push_str(&format!("; {why}"));
                }
                detail
            }
        }
    }
}

impl std::fmt::Display for FaultCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultCause::AgentLost => write!(f, "agent stream closed without goodbye"),
            FaultCause::HeartbeatTimeout => write!(f, "heartbeats missing past the timeout"),
            FaultCause::HealthFatal(r) => write!(f, "fatal health fault: {r}"),
            FaultCause::CheckFailed(r) => write!(f, "failed bootstrap/health check: {r}"),
            FaultCause::Operator(r) => write!(f, "fenced by operator: {r}"),
            FaultCause::HealthRestart(r) => {
                write!(f, "health check asked for a worker restart: {r}")
            }
            FaultCause::RepeatedFaults { .. } => {
                write!(f, "worker kept failing on this node: {}", self.detail())
            }
            FaultCause::WorkerExited { .. } | FaultCause::ProgressStalled { .. } => {
                f.write_str(&self.detail())
            }
        }
    }
}
