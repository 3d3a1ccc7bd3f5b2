//! Whether a step changed what is saved of a job: a small mark of the saved fields taken
//! before and compared after, and the events that cannot change them at all.

use std::collections::BTreeMap;
use std::mem::Discriminant;

use super::{Job, JobEvent, JobState, Rank, RecoveryPhase};
use crate::checkpoint::{Checkpoint, FencedGeneration};
use crate::{Generation, NodeId, UnixMillis};

/// What of a job is saved, as of one moment (`Job::durable_mark`): two marks differ when the
/// job's record must be written again.
#[derive(Debug, PartialEq)]
pub struct DurableMark {
    state: JobState,
    generation: Generation,
    ranks: RanksMark,
    restarts: u32,
    resumed_from: Option<Checkpoint>,
    fenced_generations: Vec<FencedGeneration>,
    submitted_at: UnixMillis,
    finished_at: Option<UnixMillis>,
    message: String,
    worker_faults: BTreeMap<NodeId, Vec<UnixMillis>>,
    relaunch_not_before: Option<UnixMillis>,
    reforming: bool,
    reform_step: u64,
}

/// The saved part of the ranks (each rank's node, started, exited, needs-node, unconfirmed
/// exit and kept) folded into one number: no copy of the ranks and no allocation, taken twice
/// per job at every tick. The node ids count by their hash.
#[derive(Debug, PartialEq)]
struct RanksMark {
    len: usize,
    digest: u64,
}

impl RanksMark {
    /// The mark of `ranks`, their nodes' hashes from `hashes` when given (the job's rank
    /// index: no visit to every node id).
    fn of(ranks: &[Rank], hashes: Option<&[u64]>) -> RanksMark {
        let hash = |i: usize, node: &str| match hashes.and_then(|h| h.get(i)) {
            Some(&h) => h,
            None => super::index::node_hash(node),
        };
        let digest = ranks
            .iter()
            .enumerate()
            .fold(0x243f_6a88_85a3_08d3, |h, (i, rank)| {
                let Rank {
                    node,
                    started,
                    exited,
                    needs_node,
                    last_step: _,
                    last_progress_at: _,
                    progressed: _,
                    exit_unconfirmed_at,
                    evidence: _,
                    evidence_at: _,
                    kept,
                } = rank;
                let exited = match exited {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                };
                let flags = u64::from(*started)
                    | exited << 1
                    | u64::from(*needs_node) << 3
                    | u64::from(*kept) << 4
                    | u64::from(exit_unconfirmed_at.is_some()) << 5;
                let unconfirmed = exit_unconfirmed_at.unwrap_or(0) as u64;
                [hash(i, node), flags, unconfirmed].into_iter().fold(h, mix)
            });
        RanksMark {
            len: ranks.len(),
            digest,
        }
    }
}

/// One word into a running digest (multiply and shift: each bit of `word` reaches the whole
/// result).
fn mix(digest: u64, word: u64) -> u64 {
    let h = (digest ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

impl JobEvent {
    /// Stepping this event in `job`'s present state changes nothing its `durable_mark`
    /// covers: the caller need not take a mark to know the job's record is unchanged. True
    /// for the events every heartbeat and progress report brings (evidence, a rank's step
    /// outside an in-process re-form), which at scale are nearly all of them. Debug builds
    /// check it on every step (`Cluster::drive`).
    pub fn is_volatile_for(&self, job: &Job) -> bool {
        match self {
            JobEvent::Evidence { .. } | JobEvent::Unheard { .. } => true,
            // Progress changes saved fields only for kept survivors of an in-process restart.
            JobEvent::Progress { .. } => {
                !job.reforming && !matches!(job.state, JobState::Recovering(_))
            }
            _ => false,
        }
    }
}

impl Job {
    /// A mark of what must be saved when it changes, taken before and compared after each
    /// step: everything persisted except the spec and id (which no step changes) and what
    /// changes on every progress report (steps, progress times, evidence). Taking it copies no
    /// rank (the ranks count as one digest): progress from a 1,024-rank job must not copy the
    /// job 1,024 times a second, and every live job is marked twice at every tick.
    pub fn durable_mark(&self) -> DurableMark {
        // Named field by field so that a new field must be placed here, durable or not.
        let Job {
            id: _,
            spec: _,
            state,
            generation,
            ranks,
            restarts,
            resumed_from,
            fenced_generations,
            step: _,
            submitted_at,
            finished_at,
            message,
            worker_faults,
            relaunch_not_before,
            reforming,
            reform_step,
            step_time_ms: _,
            step_advanced_at: _,
            unheard_at: _,
            memory_held: _,
            // Set only as a generation starts, which the generation in the mark shows.
            durable_fallback: _,
            // Set as a recovery opens, cleared as a generation starts or a rank needs a node:
            // each changes what the mark shows.
            exit_blame: _,
            // Derived from the ranks, not stored (its node hashes stand for the ranks' nodes).
            rank_index,
        } = self;
        DurableMark {
            state: state.clone(),
            generation: *generation,
            ranks: RanksMark::of(ranks, rank_index.node_hashes(ranks)),
            restarts: *restarts,
            resumed_from: resumed_from.clone(),
            fenced_generations: fenced_generations.clone(),
            submitted_at: *submitted_at,
            finished_at: *finished_at,
            message: message.clone(),
            worker_faults: worker_faults.clone(),
            relaunch_not_before: *relaunch_not_before,
            reforming: *reforming,
            reform_step: *reform_step,
        }
    }
}

/// The job's state and recovery phase as operators name them (each variant has its own name),
/// compared without comparing the names.
pub(super) fn shape(job: &Job) -> (Discriminant<JobState>, Option<Discriminant<RecoveryPhase>>) {
    let phase = match &job.state {
        JobState::Recovering(phase) => Some(std::mem::discriminant(phase)),
        _ => None,
    };
    (std::mem::discriminant(&job.state), phase)
}
