//! The node lifecycle: one enum of states and one pure `step`.
//!
//! `Joining → Bootstrapping → Checking → Ready → Allocated → Fenced → (Repaired → Joining | Retired)`,
//! plus `Offline` for an idle node whose agent is away and `Cordoned` by an operator.
//! Beside the lifecycle, a node's [`Link`] says how its agent is reached now (connected, away
//! for a while, lost while its job vouches for it, gone); both are owned by
//! [`crate::cluster::NodeRecord`], which alone decides whether a node is allocatable.
//! Heartbeats and health live on the record too. This file owns which state a node is in and
//! which moves are legal. No I/O, no clock reads.

use serde::{Deserialize, Serialize};

pub use crate::fault::FaultCause;
use crate::{JobId, UnixMillis};

/// How the coordinator reaches a node's agent now. Not stored: a restarted coordinator gives
/// every node that may come back [`Link::Away`] with its reconnect grace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Link {
    /// Connected on stream `conn`; stream-closed reports of an older connection are ignored.
    /// → Away on a close within an announced restart or the agent-lost grace, → Lost on a
    /// close while its job may vouch for it, → Vouched on silence its job vouches for,
    /// → Down otherwise.
    Connected {
        /// The live stream's connection id.
        conn: u64,
        /// Set by a goodbye that announced a restart: a close before this time is no fault.
        restart_by: Option<UnixMillis>,
    },
    /// Away: the agent is gone but expected back (an announced restart, the agent-lost grace,
    /// a restarted coordinator's reconnect grace); → Connected on hello, → Down with a node
    /// fault at `until`.
    Away {
        /// When it counts as lost.
        until: UnixMillis,
    },
    /// Lost: the stream closed while the job's progress may still vouch for the node's ranks,
    /// judged by the next ticks; → Vouched when it does, → Down with a node fault when it does
    /// not, → Connected on hello.
    Lost {
        /// When the stream closed.
        since: UnixMillis,
    },
    /// Vouched: the agent is silent while its job keeps stepping, so its ranks keep running;
    /// → Connected when the agent returns (fenced if without its worker), → Down with a node
    /// fault at the job's next fault or when the rest of the job stalls.
    Vouched {
        /// When the job's progress first vouched for it.
        since: UnixMillis,
    },
    /// Down: no agent and none expected; → Connected on hello.
    #[default]
    Down,
}

impl Link {
    /// The live stream's connection id, if the agent is connected.
    pub fn conn(&self) -> Option<u64> {
        match self {
            Link::Connected { conn, .. } => Some(*conn),
            _ => None,
        }
    }

    /// True while the agent's stream is open.
    pub fn is_connected(&self) -> bool {
        self.conn().is_some()
    }

    /// True while the node's job is asked (Lost) or trusted (Vouched) to speak for it.
    pub fn rests_on_progress(&self) -> bool {
        matches!(self, Link::Lost { .. } | Link::Vouched { .. })
    }

    /// The stream is gone without a close being judged (a heartbeat timeout): a restart
    /// announced while connected still holds, anything else is down.
    pub fn drop_conn(&mut self) {
        if let Link::Connected { restart_by, .. } = *self {
            *self = restart_by.map_or(Link::Down, |until| Link::Away { until });
        }
    }

    /// Moves its deadlines by `by` (time the coordinator could not observe).
    pub fn shift(&mut self, by: i64) {
        match self {
            Link::Connected {
                restart_by: Some(t),
                ..
            }
            | Link::Away { until: t } => *t = t.saturating_add(by),
            _ => {}
        }
    }
}

/// Where a node is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Joining: the agent said hello; → Bootstrapping when lifecycle scripts are configured,
    /// → Ready when none are, → Offline if it disconnects first.
    Joining,
    /// Bootstrapping: the on-create script runs; → Checking on success, → Fenced on failure.
    Bootstrapping,
    /// Checking: the deep health check runs (after the bootstrap, or again on a ready node about
    /// to become a replacement); → Ready on success, → Fenced on failure.
    Checking,
    /// Ready: healthy and free; → Allocated by a job, → Checking before it replaces a failed
    /// node, → Offline on disconnect, → Fenced on a fatal fault.
    Ready,
    /// Allocated: runs ranks of `job_id`; → Ready when the job lets it go, → Fenced on any node fault.
    Allocated {
        /// The job whose ranks run here; a node serves one job at a time.
        job_id: JobId,
    },
    /// Offline: a free node whose agent is away; → Joining when it says hello again.
    Offline,
    /// Fenced: never handed out again; → Joining (repaired) only when an operator uncordons it,
    /// → Retired when an operator retires it.
    Fenced {
        /// Why, as operators read it on the node; the first cause is kept when more follow.
        cause: FaultCause,
    },
    /// Cordoned by an operator: not handed out; a job already on it keeps running;
    /// → Joining on uncordon.
    Cordoned {
        /// The operator's reason, shown on the node until it is uncordoned.
        reason: String,
    },
    /// Retired: removed from service for good.
    Retired,
}

impl NodeState {
    /// The lower-case name shown to operators.
    pub fn name(&self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Bootstrapping => "bootstrapping",
            NodeState::Checking => "checking",
            NodeState::Ready => "ready",
            NodeState::Allocated { .. } => "allocated",
            NodeState::Offline => "offline",
            NodeState::Fenced { .. } => "fenced",
            NodeState::Cordoned { .. } => "cordoned",
            NodeState::Retired => "retired",
        }
    }

    /// True when the node may be given to a job.
    pub fn is_ready(&self) -> bool {
        matches!(self, NodeState::Ready)
    }
}

/// What can happen to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The agent said hello (a first join, or back after a disconnect or a restart).
    Hello {
        /// Bootstrap/check scripts are configured: the node must pass them to become Ready.
        scripts: bool,
    },
    /// The bootstrap script succeeded.
    Bootstrapped,
    /// The deep health check passed.
    CheckPassed,
    /// A ready node is checked again before it takes over a failed node's ranks.
    Recheck,
    /// A job took the node.
    Allocate {
        /// The job that took it (a new job's rank, or a replacement for a failed node's).
        job_id: JobId,
    },
    /// The job let the node go.
    Release,
    /// The agent went away (stream closed or heartbeats missing).
    Disconnected,
    /// The node must be fenced.
    Fence(FaultCause),
    /// An operator cordoned it.
    Cordon {
        /// Why, in the operator's words; kept on the node while it is cordoned.
        reason: String,
    },
    /// An operator uncordoned (repaired) it.
    Uncordon,
    /// An operator retired it.
    Retire,
}

/// A move the lifecycle does not allow; the state is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node cannot go from {from} on {event}")]
pub struct InvalidTransition {
    /// The state the node stays in, by its operator-facing [`NodeState::name`].
    pub from: &'static str,
    /// The refused event, debug-formatted for the log line that reports it.
    pub event: String,
}

/// The node lifecycle's one step function: the next state, or why the move is illegal.
pub fn step(state: &NodeState, event: &NodeEvent) -> Result<NodeState, InvalidTransition> {
    use NodeEvent as E;
    use NodeState as S;
    let next = match (state, event) {
        // A node that comes back stays fenced, cordoned or retired: only an operator clears those.
        (S::Fenced { .. } | S::Cordoned { .. } | S::Retired, E::Hello { .. }) => state.clone(),
        (S::Allocated { .. }, E::Hello { .. }) => state.clone(),
        (_, E::Hello { scripts: true }) => S::Bootstrapping,
        (_, E::Hello { scripts: false }) => S::Ready,
        (S::Bootstrapping, E::Bootstrapped) => S::Checking,
        (S::Checking, E::CheckPassed) => S::Ready,
        (S::Ready, E::Recheck) => S::Checking,
        (S::Ready, E::Allocate { job_id }) => S::Allocated {
            job_id: job_id.clone(),
        },
        (S::Allocated { .. }, E::Release) => S::Ready,
        // A cordoned node keeps running its job; releasing leaves it cordoned.
        (S::Cordoned { .. } | S::Fenced { .. } | S::Offline | S::Retired, E::Release) => {
            state.clone()
        }
        (S::Allocated { .. }, E::Disconnected) => S::Fenced {
            cause: FaultCause::AgentLost,
        },
        (S::Joining | S::Bootstrapping | S::Checking | S::Ready, E::Disconnected) => S::Offline,
        (S::Offline | S::Fenced { .. } | S::Cordoned { .. } | S::Retired, E::Disconnected) => {
            state.clone()
        }
        (S::Retired, E::Fence(_)) => state.clone(),
        // The first cause is kept: it is the one the incident was opened for.
        (S::Fenced { .. }, E::Fence(_)) => state.clone(),
        (_, E::Fence(cause)) => S::Fenced {
            cause: cause.clone(),
        },
        (S::Retired, E::Cordon { .. }) => state.clone(),
        (S::Fenced { .. }, E::Cordon { .. }) => state.clone(),
        (_, E::Cordon { reason }) => S::Cordoned {
            reason: reason.clone(),
        },
        (S::Fenced { .. } | S::Cordoned { .. }, E::Uncordon) => S::Joining,
        (S::Fenced { .. } | S::Offline | S::Cordoned { .. } | S::Ready, E::Retire) => S::Retired,
        (from, event) => {
            return Err(InvalidTransition {
                from: from.name(),
                event: format!("{event:?}"),
            })
        }
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fenced() -> NodeState {
        NodeState::Fenced {
            cause: FaultCause::AgentLost,
        }
    }

    fn allocated() -> NodeState {
        NodeState::Allocated { job_id: "j".into() }
    }

    fn cordoned() -> NodeState {
        NodeState::Cordoned { reason: "r".into() }
    }

    #[test]
    fn hello_without_scripts_makes_a_node_ready() {
        for from in [NodeState::Joining, NodeState::Offline, NodeState::Ready] {
            assert_eq!(
                step(&from, &NodeEvent::Hello { scripts: false }),
                Ok(NodeState::Ready)
            );
        }
    }

    #[test]
    fn hello_with_scripts_bootstraps_then_checks_then_ready() {
        let s = step(&NodeState::Offline, &NodeEvent::Hello { scripts: true }).unwrap();
        assert_eq!(s, NodeState::Bootstrapping);
        let s = step(&s, &NodeEvent::Bootstrapped).unwrap();
        assert_eq!(s, NodeState::Checking);
        assert_eq!(step(&s, &NodeEvent::CheckPassed), Ok(NodeState::Ready));
    }

    #[test]
    fn fenced_cordoned_retired_and_allocated_nodes_keep_their_state_on_hello() {
        for from in [fenced(), cordoned(), NodeState::Retired, allocated()] {
            assert_eq!(step(&from, &NodeEvent::Hello { scripts: false }), Ok(from));
        }
    }

    #[test]
    fn allocate_and_release() {
        let s = step(
            &NodeState::Ready,
            &NodeEvent::Allocate { job_id: "j".into() },
        )
        .unwrap();
        assert_eq!(s, allocated());
        assert_eq!(step(&s, &NodeEvent::Release), Ok(NodeState::Ready));
    }

    #[test]
    fn only_ready_nodes_can_be_allocated() {
        for from in [
            NodeState::Joining,
            NodeState::Bootstrapping,
            NodeState::Checking,
            NodeState::Offline,
            fenced(),
            cordoned(),
            NodeState::Retired,
            allocated(),
        ] {
            assert!(step(&from, &NodeEvent::Allocate { job_id: "k".into() }).is_err());
        }
    }

    #[test]
    fn release_keeps_fenced_cordoned_offline_and_retired_nodes_out() {
        for from in [fenced(), cordoned(), NodeState::Offline, NodeState::Retired] {
            assert_eq!(step(&from, &NodeEvent::Release), Ok(from));
        }
        assert!(step(&NodeState::Ready, &NodeEvent::Release).is_err());
    }

    #[test]
    fn disconnect_fences_an_allocated_node_and_idles_a_free_one() {
        assert_eq!(step(&allocated(), &NodeEvent::Disconnected), Ok(fenced()));
        for from in [
            NodeState::Joining,
            NodeState::Bootstrapping,
            NodeState::Checking,
            NodeState::Ready,
        ] {
            assert_eq!(
                step(&from, &NodeEvent::Disconnected),
                Ok(NodeState::Offline)
            );
        }
        for from in [NodeState::Offline, fenced(), cordoned(), NodeState::Retired] {
            assert_eq!(step(&from, &NodeEvent::Disconnected), Ok(from));
        }
    }

    #[test]
    fn fence_keeps_the_first_cause() {
        let cause = FaultCause::HealthFatal("xid 79".into());
        let s = step(&allocated(), &NodeEvent::Fence(cause.clone())).unwrap();
        assert_eq!(
            s,
            NodeState::Fenced {
                cause: cause.clone()
            }
        );
        let again = step(&s, &NodeEvent::Fence(FaultCause::HeartbeatTimeout)).unwrap();
        assert_eq!(again, NodeState::Fenced { cause });
        assert_eq!(
            step(
                &NodeState::Retired,
                &NodeEvent::Fence(FaultCause::AgentLost)
            ),
            Ok(NodeState::Retired)
        );
    }

    #[test]
    fn bootstrap_and_check_failures_fence() {
        for from in [NodeState::Bootstrapping, NodeState::Checking] {
            let cause = FaultCause::CheckFailed("exit 1".into());
            assert_eq!(
                step(&from, &NodeEvent::Fence(cause.clone())),
                Ok(NodeState::Fenced { cause })
            );
        }
    }

    #[test]
    fn a_ready_node_is_checked_again_before_replacing() {
        let s = step(&NodeState::Ready, &NodeEvent::Recheck).unwrap();
        assert_eq!(s, NodeState::Checking);
        assert_eq!(step(&s, &NodeEvent::CheckPassed), Ok(NodeState::Ready));
        assert!(step(&allocated(), &NodeEvent::Recheck).is_err());
    }

    #[test]
    fn out_of_order_script_results_are_refused() {
        assert!(step(&NodeState::Ready, &NodeEvent::Bootstrapped).is_err());
        assert!(step(&NodeState::Bootstrapping, &NodeEvent::CheckPassed).is_err());
    }

    #[test]
    fn cordon_and_uncordon() {
        let s = step(
            &NodeState::Ready,
            &NodeEvent::Cordon {
                reason: "maintenance".into(),
            },
        )
        .unwrap();
        assert_eq!(
            s,
            NodeState::Cordoned {
                reason: "maintenance".into()
            }
        );
        assert_eq!(step(&s, &NodeEvent::Uncordon), Ok(NodeState::Joining));
        // A fenced node stays fenced (with its cause) when cordoned; uncordon repairs it.
        assert_eq!(
            step(&fenced(), &NodeEvent::Cordon { reason: "x".into() }),
            Ok(fenced())
        );
        assert_eq!(
            step(&fenced(), &NodeEvent::Uncordon),
            Ok(NodeState::Joining)
        );
        assert!(step(&NodeState::Ready, &NodeEvent::Uncordon).is_err());
    }

    #[test]
    fn a_dropped_stream_keeps_an_announced_restart() {
        let mut link = Link::Connected {
            conn: 1,
            restart_by: Some(500),
        };
        link.shift(100);
        link.drop_conn();
        assert_eq!(link, Link::Away { until: 600 });
        let mut link = Link::Connected {
            conn: 2,
            restart_by: None,
        };
        link.drop_conn();
        assert_eq!(link, Link::Down);
        let mut vouched = Link::Vouched { since: 5 };
        vouched.drop_conn();
        vouched.shift(100);
        assert_eq!(vouched, Link::Vouched { since: 5 });
        assert!(vouched.rests_on_progress() && !vouched.is_connected());
    }

    #[test]
    fn retire() {
        for from in [fenced(), NodeState::Offline, cordoned(), NodeState::Ready] {
            assert_eq!(step(&from, &NodeEvent::Retire), Ok(NodeState::Retired));
        }
        assert!(step(&allocated(), &NodeEvent::Retire).is_err());
    }
}
