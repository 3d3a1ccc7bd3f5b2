//! Which node a fault is blamed on. Ranks of a synchronous job fail together: a hung rank
//! stalls every other one, and a lost host makes its peers' collectives fail the moment it dies.
//! The first symptom seen is often a survivor's; these rules find the rank at the root of it.

use super::*;
use crate::evidence::{single_out, Verdict};

/// The worker exit a recovery was opened for, kept while a node fault on another rank may still
/// turn out to have caused it: a host that dies takes its peers' collectives with it, and their
/// exits can reach the coordinator before the host's own loss does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitBlame {
    /// The node whose worker exited.
    pub node: NodeId,
    /// When the exit was judged a fault.
    pub at: UnixMillis,
    /// The exit took a restart in place (and its backoff) that goes back if it is handed on.
    pub restarted: bool,
    /// The exit came with the restart budget spent: the job fails for this reason once the
    /// other ranks stopped, unless the exit is handed on first.
    #[serde(default)]
    pub fails: Option<String>,
}

/// After a fault of rank `rank` opened a recovery (`action`): a plain worker exit (not one that
/// tipped its node into quarantine) is kept for [`hand_over`] while another rank still runs,
/// and a job that would fail for it (`fails`) waits for the other ranks to stop first. True
/// when it is kept; any other fault forgets the last one.
pub(super) fn note_fault(
    job: &mut Job,
    rank: usize,
    cause: &FaultCause,
    action: RecoveryAction,
    fails: Option<String>,
    limits: &JobLimits,
    now: UnixMillis,
) -> bool {
    let others_run = (job.ranks.iter().enumerate()).any(|(i, r)| i != rank && r.exited.is_none());
    let kept = matches!(cause, FaultCause::WorkerExited { .. })
        && others_run
        && limits.peer_loss_window_ms > 0;
    job.exit_blame = kept.then(|| ExitBlame {
        node: job.ranks[rank].node.clone(),
        at: now,
        restarted: action == RecoveryAction::RestartInPlace,
        fails,
    });
    kept
}

/// The reason the job fails for, now that its other ranks stopped, when the exit that opened
/// the recovery spent the restart budget and nothing took it over.
pub(super) fn fails_now(job: &mut Job) -> Option<String> {
    let reason = job.exit_blame.as_mut()?.fails.take()?;
    job.exit_blame = None;
    Some(reason)
}

/// What the report of a fault says of its time.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Seen {
    /// When it happened, when the report says (a worker's exit, a stall's last progress).
    pub at: Option<UnixMillis>,
    /// When its node was last heard from, for a node silent since (see [`JobEvent::Fault`]).
    pub silent_since: Option<UnixMillis>,
}

impl Seen {
    pub(super) fn at(at: Option<UnixMillis>) -> Seen {
        Seen {
            at,
            silent_since: None,
        }
    }
}

/// A node fault on `node` (to be replaced) after a worker exit on another node opened the
/// job's last recovery — less than `peer_loss_window_ms` after it, or on a node silent since
/// before it (`silent_since`: a loss whose declaration was held, by a grace or a shared
/// silence) — with nothing heard from `node`'s rank since (no stop confirmed, no start in the
/// generation after): the exit followed from this fault.
/// The exit's restart, backoff and quarantine count are given back, and its incident is handed
/// to `node` (the caller fences `node` and finds its rank a replacement instead of opening a
/// second incident). False when the fault is a new one of its own.
pub(super) fn hand_over(
    job: &mut Job,
    node: &str,
    cause: &FaultCause,
    silent_since: Option<UnixMillis>,
    now: UnixMillis,
    limits: &JobLimits,
    fx: &mut Vec<JobEffect>,
) -> bool {
    let recent = |b: &ExitBlame| {
        now - b.at < limits.peer_loss_window_ms as i64
            || (limits.peer_loss_window_ms > 0 && silent_since.is_some_and(|t| t <= b.at))
    };
    let heard = job.rank_of(node).is_some_and(|rank| {
        let r = &job.ranks[rank];
        match job.state {
            JobState::Launching | JobState::Running => r.started || r.progressed,
            _ => r.exited.is_some(),
        }
    });
    let followed = (job.exit_blame.as_ref()).is_some_and(|b| b.node != node && recent(b));
    // Otherwise the exit stays (a spent budget still fails the job once the others stopped).
    let Some(exit) = job.exit_blame.take_if(|_| followed && !heard) else {
        return false;
    };
    if exit.restarted {
        job.restarts = job.restarts.saturating_sub(1);
        job.relaunch_not_before = None;
    }
    if let Some(times) = job.worker_faults.get_mut(&exit.node) {
        if let Some(i) = times.iter().rposition(|t| *t == exit.at) {
            times.remove(i);
        }
        if times.is_empty() {
            job.worker_faults.remove(&exit.node);
        }
    }
    job.message = format!(
        "{} on {node}: {}; the worker exit on {} followed from it",
        cause.code(),
        cause.detail(),
        exit.node
    );
    fx.push(JobEffect::ReattributeIncident {
        from: exit.node,
        node: node.into(),
        cause: cause.clone(),
        action: RecoveryAction::ReplaceNode,
    });
    true
}

/// Which rank a stall is charged to. Ranks of a synchronous job wait on each other, so they all
/// stall together and the first one found (`first`) proves nothing: the ranks' evidence picks
/// the odd one out ([`single_out`]). When it cannot, the incident still names `first`'s node,
/// but the cause says so and counts against no node.
pub(super) fn blame_stall(
    job: &Job,
    first: NodeId,
    stalled_ms: u64,
    now: UnixMillis,
) -> (NodeId, FaultCause) {
    // Progress singles the rank out when every other rank still stepped within half the
    // timeout: the gang did not stall with it.
    let recent = (job.spec.stall_timeout_ms / 2) as i64;
    let peers_step = (job.ranks.iter())
        .filter(|r| r.node != first && r.exited.is_none())
        .all(|r| r.progressed && now - r.last_progress_at < recent);
    if peers_step {
        return (first, FaultCause::stall(stalled_ms, String::new()));
    }
    let live: Vec<(usize, &Rank)> = (job.ranks.iter().enumerate())
        .filter(|(_, r)| r.exited.is_none())
        .collect();
    let fresh = |r: &Rank| now - r.evidence_at <= job.spec.stall_timeout_ms as i64;
    let evidence: Vec<_> = (live.iter())
        .map(|(_, r)| r.evidence.as_ref().filter(|_| fresh(r)))
        .collect();
    match single_out(&evidence) {
        Verdict::Blamed { rank, reason } => {
            let (rank, r) = live[rank];
            let node = r.node.clone();
            let why = format!("rank {rank} ({node}) singled out: {reason}");
            (node, FaultCause::stall(stalled_ms, why))
        }
        Verdict::Undecided { reason } => {
            let why = if reason.starts_with("could not single out") {
                reason
            } else {
                format!("could not single out a rank: {reason}")
            };
            (first, FaultCause::stall_unattributed(stalled_ms, why))
        }
    }
}
