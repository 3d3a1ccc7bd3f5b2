//! Choosing the state a relaunch resumes from across tiers: the durable checkpoint the
//! coordinator resolved, or the memory tier — each rank's state kept in host memory on its own
//! host and a peer's (`python/holdfast/memtier.py`), as the job's live nodes report holding it.
//! The newest wins; the choice and why go into the incident. When the workers then cannot load
//! the memory copy and fall back to the durable checkpoint, their agents say so with their
//! progress, and the incident is corrected ([`Job::state_fell_back`]).

use super::{Job, JobEffect};
use crate::checkpoint::{newest_memory_step, Checkpoint, StateTier, MEMORY_URI_SCHEME};
use crate::incident::IncidentEvent;
use crate::Generation;

/// The resume point of the next generation: the memory tier's newest step every rank's state
/// is held at by a node of the generation (a fenced or replaced node is no longer one), when it
/// is newer than `durable`; `durable` otherwise. Records the fallback the trainer reads if its
/// memory copy cannot be read, and tells the incident which tier and why.
pub(super) fn choose(
    job: &mut Job,
    durable: Option<Checkpoint>,
    fx: &mut Vec<JobEffect>,
) -> Option<Checkpoint> {
    job.durable_fallback = None;
    let durable_step = durable.as_ref().map_or(0, |c| c.step);
    // A node that left the job (fenced, replaced, shrunk away) holds nothing for it any more.
    let ranks = &job.ranks;
    job.memory_held
        .retain(|node, _| ranks.iter().any(|r| &r.node == node));
    let memory = if job.memory_held.values().all(Vec::is_empty) {
        // The job does not use the memory tier: nothing to tell.
        return durable;
    } else if job.ranks.len() < job.spec.nodes as usize {
        Err("the generation shrank: the kept states are of more ranks".to_string())
    } else {
        newest_memory_step(job.memory_held.values().map(Vec::as_slice))
    };
    let (tier, note, resume) = match memory {
        Ok(step) if step > durable_step => {
            let memory = Checkpoint {
                step,
                uri: format!("{MEMORY_URI_SCHEME}{}/step-{step}", job.id),
                generation: Some(job.generation),
            };
            job.durable_fallback = durable;
            let note = format!(
                "memory tier: every rank's state at step {step} is held by a live node \
                 (durable checkpoint: step {durable_step})"
            );
            (StateTier::Memory, note, Some(memory))
        }
        Ok(step) => {
            let note = format!(
                "durable checkpoint at step {durable_step} is as new as the memory tier \
                 (step {step})"
            );
            (StateTier::Durable, note, durable)
        }
        Err(why) => {
            let note = format!("memory tier not usable ({why}); durable step {durable_step}");
            (StateTier::Durable, note, durable)
        }
    };
    fx.push(JobEffect::Incident(IncidentEvent::StateChosen {
        tier,
        note,
    }));
    resume
}

impl Job {
    /// `node`'s workers of `generation` report that they did not use the memory tier and
    /// loaded the durable checkpoint instead, because of `reason`: the incident event that
    /// says so, when `node` runs a rank of the job's current generation and that generation
    /// was launched from the memory tier; `None` for any other report (stale, misdirected,
    /// or a job that resumed from durable state anyway). The reason is bounded.
    pub(crate) fn state_fell_back(
        &self,
        node: &str,
        generation: Generation,
        reason: &str,
    ) -> Option<IncidentEvent> {
        let from_memory =
            (self.resumed_from.as_ref()).is_some_and(|c| c.uri.starts_with(MEMORY_URI_SCHEME));
        if reason.is_empty()
            || generation != self.generation
            || !from_memory
            || self.rank_of(node).is_none()
        {
            return None;
        }
        Some(IncidentEvent::StateFellBack {
            generation,
            durable_step: self.durable_fallback.as_ref().map_or(0, |c| c.step),
            reason: crate::limits::truncated(reason, crate::limits::MAX_REASON),
        })
    }
}
