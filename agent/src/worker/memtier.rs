//! The memory tier as the agent sees it: what `python/holdfast/memtier.py` keeps for the
//! running job under `<memory_tier_dir>/<job>` (the worker's `HOLDFAST_MEMORY_DIR`), scanned
//! and reported with the job's progress so the coordinator can resume a relaunch from it.
//!
//! Layout (the trainer writes it): `rank-<R>/step-<N>/` holds rank R's state at step N, its
//! own or a peer's copy, in `state.bin`, and counts once `MANIFEST.json` (`{"step": N, "world":
//! W, "rank": R, "size": S, …}`) is there (the directory is renamed into place complete) and
//! `state.bin` has its size. Anything else is ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use holdfast_core::checkpoint::MAX_MEMORY_HOLDINGS;
use holdfast_proto::v1 as pb;
use serde::Deserialize;

/// Name of the file that completes a memory-tier copy.
pub const MANIFEST: &str = "MANIFEST.json";
/// Manifests larger than this are not read (they hold a few numbers and a digest).
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

#[derive(Deserialize)]
struct Manifest {
    step: u64,
    world: u32,
    rank: u32,
    /// The size of `state.bin`: a truncated copy is not reported.
    size: u64,
}

/// The state file a manifest completes.
const STATE: &str = "state.bin";

/// The job's directory of the memory tier under `root` (the agent's `memory_tier_dir`);
/// `None` when the tier is off (empty root).
pub(super) fn job_dir(root: &Path, job_id: &str) -> Option<PathBuf> {
    if root.as_os_str().is_empty() {
        return None;
    }
    Some(root.join(super::spawn::sanitize(job_id)))
}

/// What `dir` holds, newest step first, at most [`MAX_MEMORY_HOLDINGS`] steps: per step the
/// ranks with a complete copy. A missing directory holds nothing; unreadable entries are
/// skipped.
pub(super) fn scan(dir: &Path) -> Vec<pb::MemoryHolding> {
    let mut by_step: BTreeMap<u64, pb::MemoryHolding> = BTreeMap::new();
    for (rank, rank_dir) in numbered(dir, "rank-") {
        for (step, step_dir) in numbered(&rank_dir, "step-") {
            let Some(m) = manifest(&step_dir.join(MANIFEST)) else {
                continue;
            };
            let size = std::fs::metadata(step_dir.join(STATE))
                .map(|s| s.len())
                .ok();
            if m.step != step || u64::from(m.rank) != rank || m.rank >= m.world {
                tracing::debug!(
                    "memory tier: {} does not match its place",
                    step_dir.display()
                );
                continue;
            }
            if size != Some(m.size) {
                tracing::debug!(
                    "memory tier: {} is not its manifest's size",
                    step_dir.display()
                );
                continue;
            }
            let held = by_step.entry(step).or_insert_with(|| pb::MemoryHolding {
                step,
                world: m.world,
                ranks: Vec::new(),
            });
            held.ranks.push(m.rank);
        }
    }
    let mut held: Vec<pb::MemoryHolding> = by_step.into_values().rev().collect();
    held.truncate(MAX_MEMORY_HOLDINGS);
    for h in &mut held {
        h.ranks.sort_unstable();
    }
    held
}

/// Removes every job's memory tier under `root` (the node was fenced: its copies no longer
/// count). `root` itself, and anything that is not a directory, is left.
pub(super) fn clear(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!("memory tier: cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The entries of `dir` named `<prefix><number>` that are directories, with their number.
fn numbered(dir: &Path, prefix: &str) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

fn manifest(path: &Path) -> Option<Manifest> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST_BYTES {
        return None;
    }
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(dir: &Path, rank: u32, step: u64, manifest: &str) {
        let at = dir.join(format!("rank-{rank}/step-{step}"));
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join(STATE), b"state").unwrap();
        if !manifest.is_empty() {
            std::fs::write(at.join(MANIFEST), manifest).unwrap();
        }
    }

    #[test]
    fn complete_copies_are_reported_newest_first_the_rest_ignored_and_a_fence_clears_them() {
        let dir = crate::testdir::Scratch::new("memtier");
        let m =
            |step, rank| format!(r#"{{"step": {step}, "world": 2, "rank": {rank}, "size": 5}}"#);
        copy(&dir, 0, 4, &m(4, 0));
        copy(&dir, 1, 4, &m(4, 1));
        copy(&dir, 0, 6, &m(6, 0));
        copy(&dir, 1, 6, ""); // being written: no manifest yet
        copy(&dir, 1, 8, &m(9, 1)); // a manifest for another place
        copy(
            &dir,
            3,
            8,
            r#"{"step": 8, "world": 2, "rank": 3, "size": 5}"#,
        ); // beyond world
        copy(
            &dir,
            1,
            7,
            r#"{"step": 7, "world": 2, "rank": 1, "size": 9}"#,
        ); // truncated
        copy(&dir, 0, 10, "not json");
        std::fs::create_dir_all(dir.join("rank-x/step-1")).unwrap();
        let held = scan(&dir);
        let summary: Vec<(u64, u32, Vec<u32>)> = held
            .into_iter()
            .map(|h| (h.step, h.world, h.ranks))
            .collect();
        assert_eq!(summary, [(6, 2, vec![0]), (4, 2, vec![0, 1])]);
        assert!(scan(&dir.join("absent")).is_empty());
        clear(&dir);
        assert!(scan(&dir).is_empty() && dir.exists());
        assert_eq!(job_dir(Path::new(""), "j"), None);
        assert_eq!(
            job_dir(Path::new("/dev/shm/holdfast"), "../x"),
            Some(PathBuf::from("/dev/shm/holdfast/___x"))
        );
    }
}
