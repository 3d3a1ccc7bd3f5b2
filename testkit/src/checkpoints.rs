//! The checkpoint resolver's contract, checked the same way on every object store the tests
//! run (S3, GCS, Azure).

use std::time::Duration;

use holdfast_coordinator::checkpoint::{Checkpoint, CheckpointStore, FencedGeneration, Generation};

/// The latest complete checkpoint `store` resolves to past `fences`; there must be one.
pub async fn latest(store: &CheckpointStore, fences: &[FencedGeneration]) -> Checkpoint {
    store
        .resolve_latest(fences)
        .await
        .expect("the store answers")
        .expect("a checkpoint")
}

/// A fence of generation 2 now, and how long to wait so that what is written next lands in a
/// later second (stores may stamp objects to the second).
pub fn fence_generation_2_now() -> (FencedGeneration, Duration) {
    let fence = FencedGeneration {
        generation: Generation(2),
        fenced_at: holdfast_coordinator::now_ms(),
    };
    let into_next_second = 1_000 - fence.fenced_at.rem_euclid(1_000) + 10;
    (fence, Duration::from_millis(into_next_second as u64))
}

/// `store` holds step 10 of generation 1 and step 20 that generation 2 wrote after `fence`:
/// the zombie's step 20 is refused, and counts again under a fence that came after it.
pub async fn assert_zombie_refused(store: &CheckpointStore, fence: FencedGeneration) {
    let found = latest(store, &[fence]).await;
    assert_eq!(
        (found.step, found.generation),
        (10, Some(Generation(1))),
        "the zombie's step-20 was chosen"
    );
    let later_fence = FencedGeneration {
        generation: Generation(2),
        fenced_at: holdfast_coordinator::now_ms() + 2_000,
    };
    assert_eq!(latest(store, &[later_fence]).await.step, 20);
}
