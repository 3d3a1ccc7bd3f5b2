//! Taking over a worker after an agent restart: the worker recorded in `worker.json` is
//! adopted if its pid still runs the same process (same start time); its log is followed
//! again from a little before its end, and its pid watched until it is gone.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{record, Supervisor};

/// How often an adopted worker (not this agent's child) is checked for being gone.
const ADOPTED_EXIT_POLL: Duration = Duration::from_millis(200);
/// How much of an adopted worker's log is read again for its latest step.
const ADOPT_LOG_TAIL_BYTES: u64 = 64 * 1024;

impl Supervisor {
    /// After an agent restart: takes over the worker recorded in `worker.json` if it still
    /// runs (same pid, same start time), or reports that it ended while the agent was away.
    /// Called before the first session, so the first hello already reports the worker.
    pub fn adopt(&mut self) {
        let Some(record) = record::read(&self.state_dir) else {
            return;
        };
        self.fencing
            .decide(|f| f.observe_generation(&record.job_id, record.generation));
        if record.pid == 0 || record.log_file.as_os_str().is_empty() || !record.is_running() {
            tracing::warn!(
                job = record.job_id,
                generation = record.generation,
                pid = record.pid,
                "the recorded worker ended while the agent was away"
            );
            record::write(&self.state_dir, None);
            self.report_exit(&record.job_id, record.generation, None, None, false);
            return;
        }
        // Output printed while the agent was away is in the log: its tail is read again (the
        // latest step is reported), then the log is followed.
        let len = std::fs::metadata(&record.log_file).map_or(0, |m| m.len());
        let offset = len.saturating_sub(ADOPT_LOG_TAIL_BYTES);
        tracing::info!(
            job = record.job_id,
            generation = record.generation,
            pid = record.pid,
            "adopted the running worker"
        );
        let (exit_tx, exit_rx) = oneshot::channel();
        let watched = record.clone();
        tokio::spawn(async move {
            // Not this agent's child: it cannot be waited for, only seen gone (every rank).
            let mut interval = tokio::time::interval(ADOPTED_EXIT_POLL);
            loop {
                interval.tick().await;
                if !watched.is_running() {
                    let _ = exit_tx.send(None);
                    return;
                }
            }
        });
        self.follow(record, exit_rx, offset);
    }
}
