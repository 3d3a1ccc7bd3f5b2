//! The checkpoint resolver's contract, checked the same way on every object store the tests
//! run (S3, GCS, Azure).

use std::path::Path;
use std::time::{Duration, Instant};

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

/// The `COMPLETE` marker of checkpoint `step`, written by `generation`.
pub fn marker(step: u64, generation: u64) -> String {
    format!(r#"{{"step":{step},"generation":{generation}}}"#)
}

/// The keys of `count` checkpoint directories of `per_dir` objects each under `prefix`, with
/// their contents: `step-N/shard-*` and, except for the last directory (a checkpoint cut off
/// mid-write), the `COMPLETE` marker of generation 1 as the last object.
pub fn many_checkpoints(
    prefix: &str,
    count: u64,
    per_dir: u64,
) -> impl Iterator<Item = (String, String)> + '_ {
    (1..=count).flat_map(move |step| {
        let complete = step < count;
        let shards = if complete { per_dir - 1 } else { per_dir };
        let dir = format!("{prefix}/step-{step}");
        let marker = complete.then(|| (format!("{dir}/COMPLETE"), marker(step, 1)));
        (0..shards)
            .map(move |shard| (format!("{dir}/shard-{shard}"), "x".to_string()))
            .chain(marker)
    })
}

/// Writes [`many_checkpoints`] straight into a bucket's directory on disk (a server's data
/// directory: through the API this would take minutes); returns how many objects it wrote.
pub fn lay_out(bucket_dir: &Path, prefix: &str, count: u64, per_dir: u64) -> u64 {
    let mut objects = 0;
    for (key, body) in many_checkpoints(prefix, count, per_dir) {
        let path = bucket_dir.join(&key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a checkpoint directory");
        }
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("writing {key}: {e}"));
        objects += 1;
    }
    objects
}

/// A prefix of `objects` objects in `count` checkpoint directories laid out by
/// [`many_checkpoints`] (URI `uri`) resolves to the newest complete one, within 30 s.
pub async fn assert_large_prefix_resolves(uri: &str, objects: u64, count: u64) {
    let store = CheckpointStore::open(uri).expect("opening the store");
    let started = Instant::now();
    let found = latest(&store, &[]).await;
    let took = started.elapsed();
    assert_eq!(found.step, count - 1, "{uri}");
    println!(
        "{uri}: resolved a prefix of {objects} objects ({count} checkpoints) in {:.3} s",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(30),
        "resolving {uri} took {took:?}"
    );
}
