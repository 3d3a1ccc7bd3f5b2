//! Checkpoints as the core sees them: the one a generation resumes from, and the generations
//! whose later checkpoints must never be resumed from. Finding them in object storage is the
//! coordinator's job.

use serde::{Deserialize, Serialize};

use crate::{Generation, UnixMillis};

/// A complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The training step it holds.
    pub step: u64,
    /// URI of the checkpoint directory (`file:///…/step-40`, `s3://bucket/run/step-40`).
    pub uri: String,
    /// Generation that wrote it, when its marker says.
    pub generation: Option<Generation>,
}

/// A generation the coordinator fenced, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedGeneration {
    /// The generation.
    pub generation: Generation,
    /// When it was fenced (coordinator clock).
    pub fenced_at: UnixMillis,
}

/// Scheme of a resume point in the memory tier: `memory://<job>/step-<N>`. The trainer reads
/// its state from host memory (its own copy or a peer's) instead of a checkpoint store.
pub const MEMORY_URI_SCHEME: &str = "memory://";

/// The tier a generation's state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateTier {
    /// A checkpoint in the job's checkpoint store (files, S3, GCS, Azure), or a fresh start.
    Durable,
    /// Each rank's state kept in host memory by the trainer, on its own host and a peer's.
    Memory,
}

impl StateTier {
    /// The tier's stable name, as incidents and operators see it: `durable` or `memory`.
    pub fn code(self) -> &'static str {
        match self {
            StateTier::Durable => "durable",
            StateTier::Memory => "memory",
        }
    }
}

/// Memory-tier state one node holds for a job at one step, as its agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHolding {
    /// The training step the state is of.
    pub step: u64,
    /// How many ranks the job had when the state was kept.
    pub world: u32,
    /// The global ranks whose state the node holds at that step (its own, and its peer's).
    pub ranks: Vec<u32>,
}

/// Memory-tier holdings a node may report per job; more are ignored (the trainer keeps a few).
pub const MAX_MEMORY_HOLDINGS: usize = 16;

/// The newest step at which the state of every rank is held by some node in `holders` (the
/// live nodes of the next generation), or why there is none.
pub fn newest_memory_step<'a>(
    holders: impl IntoIterator<Item = &'a [MemoryHolding]>,
) -> Result<u64, String> {
    let mut by_step: std::collections::BTreeMap<u64, (u32, std::collections::BTreeSet<u32>)> =
        std::collections::BTreeMap::new();
    let mut mixed = std::collections::BTreeSet::new();
    for holding in holders.into_iter().flatten() {
        let entry = by_step
            .entry(holding.step)
            .or_insert_with(|| (holding.world, Default::default()));
        if entry.0 != holding.world {
            mixed.insert(holding.step);
        }
        entry.1.extend(holding.ranks.iter().copied());
    }
    let mut why: Option<String> = None;
    for (step, (world, ranks)) in by_step.iter().rev() {
        let problem = if mixed.contains(step) {
            format!("step {step}: its copies disagree on the number of ranks")
        } else {
            // The first rank missing from the (sorted) ranks held.
            let mut missing = 0u32;
            for r in ranks {
                if *r != missing {
                    break;
                }
                missing = r.saturating_add(1);
            }
            if *world == 0 {
                format!("step {step}: reported with no ranks")
            } else if missing >= *world {
                return Ok(*step);
            } else {
                format!("step {step}: rank {missing}'s state is held by no live node")
            }
        };
        // The newest step's problem is the one worth telling.
        why.get_or_insert(problem);
    }
    Err(why.unwrap_or_else(|| "no live node reported memory-tier state".into()))
}
