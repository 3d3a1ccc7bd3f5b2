//! The memory tier as the agent sees it: what `python/holdfast/memtier.py` keeps for the
//! running job under `<memory_tier_dir>/<job>` (the worker's `HOLDFAST_MEMORY_DIR`), scanned
//! and reported with the job's progress so the coordinator can resume a relaunch from it.
//!
//! Layout (the trainer writes it): `rank-<R>/step-<N>/` holds rank R's state at step N, its
//! own or a peer's copy, in `state.bin`, and counts once `MANIFEST.json` (`{"step": N, "world":
//! W, "rank": R, "size": S, …}`) is there (the directory is renamed into place complete) and
//! `state.bin` has its size. Anything else is ignored.
//!
//! A generation launched to resume from the memory tier whose workers could not load it (a
//! copy missing or corrupt) falls back to the durable checkpoint and says so in
//! `FALLBACK.json` (`{"generation": G, "reason": "…"}`), which the agent sends with the
//! generation's progress (`Progress.state_fallback`) so its incident names the tier actually
//! used. A marker of another generation is stale and not sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use holdfast_core::checkpoint::MAX_MEMORY_HOLDINGS;
use holdfast_core::limits::{truncated, MAX_REASON};
use holdfast_proto::v1 as pb;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Name of the file that completes a memory-tier copy.
pub const MANIFEST: &str = "MANIFEST.json";
/// Name of the file in the job's directory that says a generation did not use the memory tier.
pub const FALLBACK: &str = "FALLBACK.json";
/// Manifests and fallback markers larger than this are not read (they hold a few numbers and a
/// digest, or a line of reason).
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

/// A generation's workers did not use the memory tier (`python/holdfast/memtier.py`'s
/// `_fall_back`).
#[derive(Deserialize)]
struct Fallback {
    /// The generation that fell back (its `HOLDFAST_GENERATION`).
    generation: u64,
    /// Why (`tier.fallback_reason`).
    reason: String,
}

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
            let Some(m) = read_json::<Manifest>(&step_dir.join(MANIFEST)) else {
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

/// Why the workers of `generation` did not use the memory tier in the job's directory `dir`
/// and loaded the durable checkpoint instead, bounded; `None` when they did not: no marker, one
/// of another generation (stale), or not a small regular file of that form.
pub(super) fn fallback(dir: &Path, generation: u64) -> Option<String> {
    let marker: Fallback = read_json(&dir.join(FALLBACK))?;
    if marker.generation != generation {
        return None;
    }
    let reason = match marker.reason.trim() {
        "" => "no reason given",
        reason => reason,
    };
    Some(truncated(reason, MAX_REASON))
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

/// The small JSON file at `path` (not a link), or `None`.
fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
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

    #[test]
    fn a_fallback_marker_counts_for_its_own_generation_only_and_is_bounded() {
        let dir = crate::testdir::Scratch::new("memtier-fallback");
        let marker = |text: &str| std::fs::write(dir.join(FALLBACK), text).unwrap();
        assert_eq!(fallback(&dir, 2), None, "no marker");
        marker(r#"{"generation": 2, "reason": "step 42: no host holds rank 1's state"}"#);
        assert_eq!(
            fallback(&dir, 2).as_deref(),
            Some("step 42: no host holds rank 1's state")
        );
        assert_eq!(fallback(&dir, 3), None, "an earlier generation's: stale");
        // Not a copy: what the tier holds is unchanged by it.
        copy(
            &dir,
            0,
            4,
            r#"{"step": 4, "world": 1, "rank": 0, "size": 5}"#,
        );
        assert_eq!(scan(&dir).len(), 1);

        marker(&format!(
            r#"{{"generation": 2, "reason": "{}"}}"#,
            "x".repeat(10_000)
        ));
        let long = fallback(&dir, 2).unwrap();
        assert!(long.len() < MAX_REASON + 64 && long.contains("bytes cut"));
        marker(r#"{"generation": 2, "reason": "  "}"#);
        assert_eq!(fallback(&dir, 2).as_deref(), Some("no reason given"));
        for hostile in [
            "not json",
            r#"{"generation": -1, "reason": "r"}"#,
            r#"{"generation": 2}"#,
            &format!(r#"{{"generation": 2, "reason": "{}"}}"#, "x".repeat(70_000)),
        ] {
            marker(hostile);
            assert_eq!(
                fallback(&dir, 2),
                None,
                "{}",
                &hostile[..hostile.len().min(40)]
            );
        }
        // A link is not followed.
        let elsewhere = dir.join("elsewhere.json");
        std::fs::write(&elsewhere, r#"{"generation": 2, "reason": "r"}"#).unwrap();
        std::fs::remove_file(dir.join(FALLBACK)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(FALLBACK)).unwrap();
        assert_eq!(fallback(&dir, 2), None);
    }

    /// The trainer's side (`python/holdfast/memtier.py`, standard library only for this): a
    /// fallback leaves the marker this module reads, for the trainer's generation, and the
    /// job's end removes it with the job's directory.
    #[test]
    fn the_trainers_fallback_marker_is_read_here_and_gone_when_the_job_ends() {
        let dir = crate::testdir::Scratch::new("memtier-fallback-python");
        let job = dir.join("job-1");
        let python = |code: &str| {
            let out = std::process::Command::new("python3")
                .args(["-c", code])
                .arg(&job)
                .env(
                    "PYTHONPATH",
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../python"),
                )
                .env("HOLDFAST_GENERATION", "7")
                .env("RANK", "0")
                .env("WORLD_SIZE", "1")
                .output()
                .expect("python3 runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            stderr.into_owned()
        };
        let said = python(
            "import sys; from holdfast import memtier\n\
             tier = memtier.MemoryTier(directory=sys.argv[1])\n\
             assert tier._fall_back(\"step 42: no host holds a valid copy\") is None\n\
             assert tier.fallback_reason.startswith('step 42')",
        );
        assert!(said.contains("memory tier not used"), "{said}");
        assert_eq!(
            fallback(&job, 7).as_deref(),
            Some("step 42: no host holds a valid copy")
        );
        assert_eq!(fallback(&job, 8), None);
        python("import sys; from holdfast import memtier\nmemtier.MemoryTier(directory=sys.argv[1]).close()");
        assert_eq!(fallback(&job, 7), None);
        assert!(!job.exists(), "the job's directory is removed at its end");
    }
}
