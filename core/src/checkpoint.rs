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
