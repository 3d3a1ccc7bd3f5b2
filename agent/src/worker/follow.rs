//! Following a running worker: its log file is read as it grows, each line copied to the
//! agent's output and the steps it prints (per the job's progress regex) reported; the
//! progress file the job may write (`HOLDFAST_PROGRESS_FILE`) is polled for the same.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use holdfast_core::now_ms;
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as ToCoordinator;
use regex::Regex;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::actor::Running;
use super::{Supervisor, WorkerRecord, WorkerSnapshot};
use crate::Outbox;

/// How often a worker's log file is read for new output.
const LOG_FOLLOW_POLL: Duration = Duration::from_millis(20);

impl Supervisor {
    /// Watches a running worker, just launched or adopted after an agent restart: follows its
    /// log from `offset` and its progress file, and makes it the running worker.
    pub(super) fn follow(
        &mut self,
        record: WorkerRecord,
        exited: oneshot::Receiver<Option<std::process::ExitStatus>>,
        offset: u64,
    ) {
        let regex = Regex::new(&record.progress_regex)
            .or_else(|_| Regex::new(holdfast_core::DEFAULT_PROGRESS_REGEX))
            .ok();
        let progress = ProgressReporter {
            outbox: self.outbox.clone(),
            job_id: record.job_id.clone(),
            generation: Arc::new(record.generation.into()),
            last: Arc::new(std::sync::Mutex::new(0)),
            memory_dir: super::memtier::job_dir(&self.memory_dir, &record.job_id),
            memory: Arc::default(),
            fallback: Arc::default(),
            snapshot: self.snapshot.clone(),
        };
        let done = Arc::new(WorkerGone::default());
        let prefix = format!(
            "[{} g{} r{}]",
            record.job_id, record.generation, record.node_rank
        );
        let follower = tokio::spawn(follow_log(
            record.log_file.clone(),
            offset,
            prefix,
            regex,
            progress.clone(),
            done.clone(),
        ));
        tokio::spawn(poll_progress_file(
            record.progress_file.clone(),
            self.progress_poll,
            progress.clone(),
        ));
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.record = Some(record.clone());
            snap.last_step = 0;
            snap.last_output_at = None;
        }
        self.running = Some(Running {
            progress_file: record.progress_file.clone(),
            grace: Duration::from_millis(record.grace_ms.max(100)),
            record,
            progress,
            stop_requested: Arc::new(AtomicBool::new(false)),
            exited,
            done,
            follower,
        });
    }
}

/// Sends a progress message whenever the step changes.
#[derive(Clone)]
pub(super) struct ProgressReporter {
    outbox: Outbox,
    job_id: String,
    /// Changes when the worker is kept for the next generation (an in-process restart).
    generation: Arc<std::sync::atomic::AtomicU64>,
    last: Arc<std::sync::Mutex<u64>>,
    /// The job's memory-tier directory on this host (`None`: the tier is off).
    memory_dir: Option<PathBuf>,
    /// What the job's memory tier on this host last held; sent with each progress.
    memory: Arc<std::sync::Mutex<Vec<pb::MemoryHolding>>>,
    /// Why the worker's generation did not use the memory tier it was launched to resume from
    /// (empty: it did, or it was not); sent with each progress of that generation.
    fallback: Arc<std::sync::Mutex<String>>,
    snapshot: Arc<std::sync::Mutex<WorkerSnapshot>>,
}

impl ProgressReporter {
    /// The worker now belongs to `generation` (kept for an in-process restart).
    pub(super) fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::SeqCst);
        if let Ok(mut fallback) = self.fallback.lock() {
            fallback.clear();
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(super) fn report(&self, step: u64) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if *last == step {
            return;
        }
        if *last == 0 {
            // The generation's first step: a fallback from the memory tier happened before it
            // (the state is loaded before training), and the coordinator judges the recovery
            // over by this step, so it must hear of it now, not at the next look at the tier.
            // One small file, once per worker.
            self.note_fallback(
                self.memory_dir
                    .as_deref()
                    .and_then(|dir| super::memtier::fallback(dir, self.generation())),
            );
        }
        *last = step;
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.last_step = step;
        }
        self.send(step);
    }

    /// Looks at the job's memory tier here (blocking: a few small reads) — what it holds, and
    /// whether the worker's generation fell back from it — and tells the coordinator at once
    /// when either changed (with the last step; before any step, with the first).
    pub(super) fn look_at_memory_tier(&self) {
        let Some(dir) = &self.memory_dir else {
            return;
        };
        let held = super::memtier::scan(dir);
        let fell_back = self.note_fallback(super::memtier::fallback(dir, self.generation()));
        let Ok(mut memory) = self.memory.lock() else {
            return;
        };
        if *memory == held && !fell_back {
            return;
        }
        *memory = held;
        drop(memory);
        let step = self.last.lock().map_or(0, |last| *last);
        if step > 0 {
            self.send(step);
        }
    }

    /// Keeps `reason` (when some) as why the generation fell back from the memory tier; true
    /// when it is news.
    fn note_fallback(&self, reason: Option<String>) -> bool {
        let (Some(reason), Ok(mut fallback)) = (reason, self.fallback.lock()) else {
            return false;
        };
        let news = *fallback != reason;
        *fallback = reason;
        news
    }

    fn send(&self, step: u64) {
        let memory = self.memory.lock().map(|m| m.clone()).unwrap_or_default();
        let state_fallback = (self.fallback.lock())
            .map(|f| f.clone())
            .unwrap_or_default();
        let _ = self.outbox.send(pb::AgentMessage {
            body: Some(ToCoordinator::Progress(pb::Progress {
                job_id: self.job_id.clone(),
                generation: self.generation(),
                step,
                at_unix_ms: now_ms(),
                memory,
                state_fallback,
            })),
        });
    }

    fn closed(&self) -> bool {
        self.outbox.is_closed()
    }

    /// The worker printed a line now (its evidence counts its output's quiet from it).
    fn saw_output(&self) {
        if let Ok(mut snap) = self.snapshot.lock() {
            let ours = (snap.record.as_ref()).is_some_and(|r| r.generation == self.generation());
            if ours {
                snap.last_output_at = Some(std::time::Instant::now());
            }
        }
    }
}

/// Set when a worker is gone: its log follower then reads to the end and stops.
#[derive(Default)]
pub(super) struct WorkerGone {
    gone: AtomicBool,
    wake: tokio::sync::Notify,
}

impl WorkerGone {
    pub(super) fn set(&self) {
        self.gone.store(true, Ordering::SeqCst);
        // A permit is kept if the follower is not waiting yet: the wake-up is never lost.
        self.wake.notify_one();
    }

    fn is_set(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

/// Follows a worker's log file from `offset`: copies its lines to the agent's output and
/// reports the steps they print. Stops once the worker is `done` and the file is read to its
/// end.
async fn follow_log(
    path: PathBuf,
    offset: u64,
    prefix: String,
    regex: Option<Regex>,
    progress: ProgressReporter,
    done: Arc<WorkerGone>,
) {
    use tokio::io::AsyncSeekExt;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("cannot follow worker log {}: {e}", path.display());
            return;
        }
    };
    if offset > 0 && file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return;
    }
    // Adopted mid-file: the first partial line is not a line.
    let mut skip_partial = offset > 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let finished = done.is_set();
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("worker log unreadable: {e}");
                return;
            }
        };
        if n == 0 {
            if finished || progress.closed() {
                return;
            }
            // New output is looked for every poll, and at once when the worker is gone.
            tokio::select! {
                _ = tokio::time::sleep(LOG_FOLLOW_POLL) => {}
                _ = done.wake.notified() => {}
            }
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if std::mem::take(&mut skip_partial) {
                continue;
            }
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            println!("{prefix} {line}");
            progress.saw_output();
            if let Some(step) = regex.as_ref().and_then(|re| parse_step(re, &line)) {
                progress.report(step);
            }
        }
        // A line longer than this is cut rather than held for ever.
        if pending.len() > 1 << 20 {
            pending.clear();
        }
    }
}

/// Reads `HOLDFAST_PROGRESS_FILE` (a step number, written by the job) and the job's memory
/// tier here (when on) until the worker is gone.
async fn poll_progress_file(path: PathBuf, every: Duration, progress: ProgressReporter) {
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        if progress.closed() {
            return;
        }
        if progress.memory_dir.is_some() {
            let looking = progress.clone();
            let _ = tokio::task::spawn_blocking(move || looking.look_at_memory_tier()).await;
        }
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                if let Some(step) = progress_file_step(&text) {
                    progress.report(step);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("progress file {} unreadable: {e}", path.display()),
        }
        if progress
            .snapshot
            .lock()
            .map(|s| {
                s.record
                    .as_ref()
                    .is_none_or(|r| r.generation != progress.generation())
            })
            .unwrap_or(true)
        {
            let _ = tokio::fs::remove_file(&path).await;
            return;
        }
    }
}

/// The step a job wrote to its progress file (the last number in it), if any.
pub(super) fn read_progress_file(path: &Path) -> Option<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => progress_file_step(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::debug!("progress file {} unreadable: {e}", path.display());
            None
        }
    }
}

/// The step in a progress file's text: its last number (a job may append rather than rewrite).
fn progress_file_step(text: &str) -> Option<u64> {
    text.split_whitespace().last()?.parse().ok()
}

/// The step in a line of output, per the job's progress regex (first capture group).
pub fn parse_step(regex: &Regex, line: &str) -> Option<u64> {
    regex.captures(line)?.get(1)?.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_regex_finds_steps() {
        let re = Regex::new(holdfast_core::DEFAULT_PROGRESS_REGEX).unwrap();
        assert_eq!(parse_step(&re, "step 12 loss 0.5"), Some(12));
        assert_eq!(parse_step(&re, "[rank0] Step: 7"), Some(7));
        assert_eq!(parse_step(&re, "global_step=99"), None);
        assert_eq!(parse_step(&re, "step=99"), Some(99));
        assert_eq!(parse_step(&re, "stepping up"), None);
    }

    #[test]
    fn a_progress_file_says_its_last_number() {
        assert_eq!(progress_file_step("12\n"), Some(12));
        assert_eq!(progress_file_step("12\n13\n"), Some(13));
        assert_eq!(progress_file_step(""), None);
        assert_eq!(progress_file_step("12 half"), None);
    }
}
