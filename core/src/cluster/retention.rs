//! Retention: finished jobs and closed incidents do not stay for ever. Past
//! `finished_retention_ms` after they ended, or beyond `max_finished_jobs` /
//! `max_closed_incidents` (oldest first), they are handed to the shell to export
//! ([`Command::Archive`]) and forgotten only once it says they are written
//! ([`Input::Archived`]); a failed export keeps them and is tried again later. Running jobs and
//! open incidents are never archived, and incident ids are never reused (`next_incident` is
//! stored). A job id may be used again once archived: new jobs start above the highest archived
//! generation (`archived_generation`, stored), which agents may have seen under that id.

use super::*;

/// How often retention looks for records to archive (at ticks).
const SWEEP_EVERY_MS: i64 = 1_000;
/// How long a failed export waits before it is tried again.
const RETRY_AFTER_MS: i64 = 30_000;
/// Most records one export carries: each becomes a delete in one state save, which must fit in
/// one etcd transaction with the rest of the step's changes.
pub(super) const ARCHIVE_BATCH: usize = 32;

/// An export in flight: what is forgotten when the shell says it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Archiving {
    jobs: Vec<JobId>,
    incidents: Vec<u64>,
}

impl Cluster {
    /// At most once a second, and with no export in flight: asks the shell to export what
    /// retention no longer keeps.
    pub(super) fn sweep_retention(&mut self, now: UnixMillis, fx: &mut Vec<Command>) {
        if self.archiving.is_some() || now < self.next_sweep_at {
            return;
        }
        self.next_sweep_at = now.saturating_add(SWEEP_EVERY_MS);
        let retention = i64::try_from(self.config.finished_retention_ms).unwrap_or(i64::MAX);
        let expired = |ended: UnixMillis| ended.saturating_add(retention) <= now;

        let mut finished: Vec<(UnixMillis, &Job)> = (self.jobs.values())
            .filter(|j| j.state.is_terminal())
            .map(|j| (j.finished_at.unwrap_or(j.submitted_at), j))
            .collect();
        finished.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        let over = finished.len().saturating_sub(self.config.max_finished_jobs);
        let jobs: Vec<Job> = (finished.iter().enumerate())
            .take_while(|(i, (ended, _))| *i < over || expired(*ended))
            .take(ARCHIVE_BATCH)
            .map(|(_, (_, j))| (*j).clone())
            .collect();

        let closed: Vec<&Incident> = self.incidents.iter().filter(|i| !i.is_open()).collect();
        let over = closed
            .len()
            .saturating_sub(self.config.max_closed_incidents);
        let incidents: Vec<Incident> = (closed.iter().enumerate())
            .filter(|(i, incident)| *i < over || expired(self.closed_at(incident)))
            .take(ARCHIVE_BATCH - jobs.len())
            .map(|(_, i)| (*i).clone())
            .collect();

        if jobs.is_empty() && incidents.is_empty() {
            return;
        }
        self.archiving = Some(Archiving {
            jobs: jobs.iter().map(|j| j.id.clone()).collect(),
            incidents: incidents.iter().map(|i| i.id).collect(),
        });
        fx.push(Command::Archive { jobs, incidents });
    }

    /// When an incident closed: its resumption, or (abandoned) when its job ended; the latest
    /// time it holds when its job is gone already.
    fn closed_at(&self, incident: &Incident) -> UnixMillis {
        let latest = [
            incident.fenced_at,
            incident.replaced_at,
            incident.relaunched_at,
        ]
        .into_iter()
        .flatten()
        .fold(incident.detected_at, i64::max);
        incident.resumed_at.unwrap_or_else(|| {
            (self.jobs.get(&incident.job_id))
                .and_then(|j| j.finished_at)
                .unwrap_or(latest)
        })
    }

    /// The shell's answer to [`Command::Archive`]: forgets the records it wrote, or keeps them
    /// and tries again after [`RETRY_AFTER_MS`].
    pub(super) fn archived(&mut self, result: Result<(), String>, now: UnixMillis) -> Vec<Command> {
        let Some(done) = self.archiving.take() else {
            return Vec::new();
        };
        let (jobs, incidents) = (done.jobs.len(), done.incidents.len());
        match result {
            Ok(()) => {
                for id in &done.jobs {
                    if let Some(job) = self.jobs.get(id) {
                        self.archived_generation = self.archived_generation.max(job.generation);
                    }
                }
                // Nothing reopens a finished job or a closed incident; checked all the same, so
                // no live record is ever lost.
                (self.jobs).retain(|id, j| !(j.state.is_terminal() && done.jobs.contains(id)));
                (self.incidents).retain(|i| i.is_open() || !done.incidents.contains(&i.id));
                for id in &done.jobs {
                    self.progress_published.remove(id);
                }
                self.touch();
                let message =
                    format!("archived {jobs} finished jobs and {incidents} closed incidents");
                vec![self.log_event("", "", message, now)]
            }
            Err(e) => {
                self.next_sweep_at = now.saturating_add(RETRY_AFTER_MS);
                vec![Command::Publish(Event {
                    at: now,
                    kind: EventKind::Alert,
                    job_id: String::new(),
                    node_id: String::new(),
                    message: format!(
                        "archiving {jobs} finished jobs and {incidents} closed incidents failed; \
                         kept, trying again in {} s: {e}",
                        RETRY_AFTER_MS / 1000
                    ),
                    subject: None,
                })]
            }
        }
    }
}
