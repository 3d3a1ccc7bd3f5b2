//! Whether a step changed what is saved of a job: a small mark of the saved fields taken
//! before and compared after, and the events that cannot change them at all.

use std::collections::BTreeMap;

use super::{Job, JobEvent, JobState, Rank};
use crate::checkpoint::{Checkpoint, FencedGeneration};
use crate::{Generation, NodeId, UnixMillis};

/// What of a job is saved, as of one moment (`Job::durable_mark`): two marks differ when the
/// job's record must be written again.
#[derive(Debug, PartialEq)]
pub struct DurableMark {
    state: JobState,
    generation: Generation,
    ranks: Vec<RankMark>,
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

/// The saved part of a rank, its node as a hash (no copy of the id).
#[derive(Debug, PartialEq)]
struct RankMark {
    node: u64,
    started: bool,
    exited: Option<bool>,
    needs_node: bool,
    exit_unconfirmed_at: Option<UnixMillis>,
    kept: bool,
}

impl RankMark {
    fn of(rank: &Rank) -> RankMark {
        use std::hash::{Hash, Hasher};
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
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        node.hash(&mut hasher);
        RankMark {
            node: hasher.finish(),
            started: *started,
            exited: *exited,
            needs_node: *needs_node,
            exit_unconfirmed_at: *exit_unconfirmed_at,
            kept: *kept,
        }
    }
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
    /// changes on every progress report (steps, progress times, evidence). Taking it costs
    /// one small vector, not a copy of every rank: progress from a 1,024-rank job must not
    /// copy the job 1,024 times a second.
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
        } = self;
        DurableMark {
            state: state.clone(),
            generation: *generation,
            ranks: ranks.iter().map(RankMark::of).collect(),
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
