//! In-process restarts: a launch with `reform` set finds this node's worker of the job still
//! running (a survivor of the fault) and keeps it. Instead of stopping it and starting a new
//! one, the agent writes the new generation to the worker's re-form file and relabels the
//! worker as that generation's (its start, progress and exit are reported under it).
//!
//! The re-form file is the channel to the ranks: `<state_dir>/reform-<job>.json`, named to
//! every rank of a native launch in `HOLDFAST_REFORM_FILE`, written atomically (temporary file
//! and rename) as one JSON object:
//!
//! ```json
//! {"generation": 3, "master_addr": "10.0.0.1", "master_port": 29517, "nnodes": 2,
//!  "node_rank": 0, "nproc_per_node": 1, "rdzv_id": "job-1-g3",
//!  "resume_from": "s3://…/step-20", "resume_step": 20}
//! ```
//!
//! `holdfast.run` (python/holdfast) reads it when its process group breaks: it waits for a
//! generation newer than its own, joins that generation's store and re-forms the group there
//! (see its docs). No signal is sent: a survivor learns of the fault from its broken collective
//! (gloo fails at once when a peer's connection drops), or from this file: while training it
//! watches it, and a newer generation there makes it shut down the old group's connections, so
//! that a collective waiting on a peer that went silent (a host cut off) fails at once.

use std::path::{Path, PathBuf};

use holdfast_core::now_ms;
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as ToCoordinator;

use super::{record, Supervisor};

/// The re-form file of `job_id`'s ranks under `state_dir`.
pub(super) fn reform_file(state_dir: &Path, job_id: &str) -> PathBuf {
    state_dir.join(format!("reform-{}.json", super::spawn::sanitize(job_id)))
}

/// The last step printed in the last 64 KiB of the worker's log.
fn last_step_in_log(log: &Path, progress_regex: &str) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let regex = regex::Regex::new(progress_regex)
        .or_else(|_| regex::Regex::new(holdfast_core::DEFAULT_PROGRESS_REGEX))
        .ok()?;
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .find_map(|line| super::parse_step(&regex, line))
}

/// What the ranks are told: the new generation and its rendezvous.
#[derive(serde::Serialize)]
struct Reform<'a> {
    generation: u64,
    master_addr: &'a str,
    master_port: u32,
    nnodes: u32,
    node_rank: u32,
    nproc_per_node: u32,
    rdzv_id: &'a str,
    resume_from: &'a str,
    resume_step: u64,
}

impl Supervisor {
    /// Keeps the running worker for `launch` if it is this job's, of an older generation and
    /// a native launch; `false` when there is none (the caller launches as usual). A worker
    /// whose re-form file cannot be written is not kept.
    pub(super) fn reform(&mut self, launch: &pb::Launch) -> bool {
        let Some(running) = self.running.as_mut() else {
            return false;
        };
        let ours = running.record.job_id == launch.job_id
            && running.record.generation < launch.generation
            && !running.record.ranks.is_empty();
        if !ours {
            return false;
        }
        let told = Reform {
            generation: launch.generation,
            master_addr: &launch.master_addr,
            master_port: launch.master_port,
            nnodes: launch.nnodes,
            node_rank: launch.node_rank,
            nproc_per_node: launch.nproc_per_node,
            rdzv_id: &launch.rdzv_id,
            resume_from: &launch.resume_from,
            resume_step: launch.resume_step,
        };
        let path = reform_file(&self.state_dir, &launch.job_id);
        let written = serde_json::to_vec(&told)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::durable::write(&path, &bytes));
        if let Err(e) = written {
            tracing::warn!(
                job = launch.job_id,
                "cannot write {}: {e}; relaunching instead",
                path.display()
            );
            return false;
        }
        // Steps the worker printed before this launch belong to the old generation: they are
        // reported under it now, so that the follower, behind by a poll, does not report one
        // of them as the new generation's first step (a re-form that has not happened).
        if let Some(step) =
            last_step_in_log(&running.record.log_file, &running.record.progress_regex)
        {
            running.progress.report(step);
        }
        let from = running.record.generation;
        running.record.generation = launch.generation;
        running.record.node_rank = launch.node_rank;
        running.progress.set_generation(launch.generation);
        let record = running.record.clone();
        record::write(&self.state_dir, Some(&record));
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.record = Some(record.clone());
        }
        tracing::info!(
            job = launch.job_id,
            from,
            generation = launch.generation,
            pid = record.pid,
            "worker kept: re-forming in place"
        );
        self.send(ToCoordinator::WorkerEvent(pb::WorkerEvent {
            job_id: launch.job_id.clone(),
            generation: launch.generation,
            kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted {
                pid: record.pid,
            })),
            at_unix_ms: now_ms(),
        }));
        true
    }
}
