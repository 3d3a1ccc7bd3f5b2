//! The ordered commit of steps, with group commit of their saves.
//!
//! A step is *sealed* under the core's lock: it takes a ticket, its events are turned into
//! wire form, and the records it changed (only those: [`Cluster::take_changes`]) are merged
//! into the unsaved batch. After the lock is released, steps *commit* in ticket order: a step
//! whose durable version is not saved yet writes the whole unsaved batch — its own changes and
//! those of every step sealed since, in one transaction (one fsync) — and only then are its
//! commands sent. The steps sealed while that write ran find their version saved and send at
//! once: under load, one write carries the changes of many steps (group commit), the core's
//! lock is never held for a write or for encoding the whole state, and nothing reaches an
//! agent or an operator before the state that caused it is durable.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use holdfast_core::cluster::{Changes, Cluster, Command, Reply};
use holdfast_core::error::CoreError;

use super::{Coordinator, Outbound, Shared};
use crate::store::StoreError;

/// A step sealed under the core's lock, committed after it in ticket order.
pub(super) struct Sealed {
    ticket: u64,
    /// The core's durable version when it was sealed: saved before anything goes out.
    version: u64,
    outbound: Vec<Outbound>,
}

/// Changes sealed and not saved yet, merged by key (a later step's record wins).
#[derive(Debug, Default)]
pub(super) struct Unsaved {
    /// `records` holds the whole state: stored records missing from it are deleted.
    complete: bool,
    records: BTreeMap<String, Option<Vec<u8>>>,
    /// The durable version of the latest step merged.
    version: u64,
    /// Steps merged in.
    steps: u64,
}

impl Unsaved {
    fn merge(&mut self, changes: Changes, version: u64) {
        if changes.complete {
            self.records.clear();
            self.complete = true;
        }
        self.records.extend(changes.records);
        self.version = self.version.max(version);
        self.steps += 1;
    }

    /// Puts a batch whose write failed back under what was sealed since.
    fn put_back(&mut self, failed: Unsaved) {
        let newer = std::mem::replace(self, failed);
        if newer.complete {
            *self = newer;
        } else {
            self.records.extend(newer.records);
            self.version = self.version.max(newer.version);
            self.steps += newer.steps;
        }
    }
}

impl Coordinator {
    fn unsaved(&self) -> MutexGuard<'_, Unsaved> {
        self.shared
            .unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ticket and copies out what the step must save and send. Called with the core
    /// locked, so tickets (and the merge of changes) follow the order of the steps.
    pub(super) fn seal(&self, cluster: &mut Cluster, commands: Vec<Command>) -> Sealed {
        let ticket = self.shared.next_ticket.fetch_add(1, Ordering::SeqCst);
        if cluster.has_changes() {
            match cluster.take_changes() {
                Ok(changes) => self.unsaved().merge(changes, cluster.durable_version()),
                Err(e) => tracing::error!("cannot encode coordinator state: {e}"),
            }
        }
        let outbound = commands
            .into_iter()
            .map(|command| match command {
                Command::Publish(event) => {
                    Outbound::Event(crate::wire::event(&event, &cluster.jobs))
                }
                other => Outbound::Command(other),
            })
            .collect();
        Sealed {
            ticket,
            version: cluster.durable_version(),
            outbound,
        }
    }

    /// Waits for the sealed step's turn, makes sure its state is saved, runs `first` (which
    /// may refuse: then nothing goes out), and carries out its commands.
    pub(super) fn commit(
        &self,
        sealed: Sealed,
        first: impl FnOnce() -> bool,
    ) -> Option<Result<Reply, CoreError>> {
        let mut turn = self.shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        while *turn != sealed.ticket {
            turn = self
                .shared
                .turn_changed
                .wait(turn)
                .unwrap_or_else(|e| e.into_inner());
        }
        // The turn passes on however this ends, even by a panic in what follows.
        struct PassTurn<'a>(&'a Shared, MutexGuard<'a, u64>);
        impl Drop for PassTurn<'_> {
            fn drop(&mut self) {
                *self.1 += 1;
                self.0.turn_changed.notify_all();
            }
        }
        let _turn = PassTurn(&self.shared, turn);
        if !self.save(sealed.version) || !first() {
            return None;
        }
        self.execute(sealed.outbound)
    }

    /// Makes `version` durable: when it is not saved yet, writes every change sealed so far
    /// in one batch. A failed write is logged and retried (with backoff) by the next commit;
    /// the commands still go out, because holding back a stop or a launch would hurt the
    /// training more than a stale file. The exception is a store that says another
    /// coordinator leads now: then nothing more goes out (returns false) and the coordinator
    /// stops serving.
    fn save(&self, version: u64) -> bool {
        if self.shared.is_deposed.load(Ordering::SeqCst) {
            return false;
        }
        if self.shared.saved_version.load(Ordering::SeqCst) >= version {
            return true;
        }
        let mut persister = self
            .shared
            .persister
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !persister.due(std::time::Instant::now()) {
            // Backing off after a failure: the commands still go out (see above).
            return true;
        }
        let batch = std::mem::take(&mut *self.unsaved());
        let batch_version = batch.version.max(version);
        let steps = batch.steps;
        let result = if batch.complete {
            let records = batch
                .records
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                .collect();
            persister.save(records, batch_version)
        } else {
            let changes = batch
                .records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            persister.save_changes(changes, batch_version)
        };
        match result {
            Ok(written) => {
                self.shared
                    .saved_version
                    .fetch_max(batch_version, Ordering::SeqCst);
                self.shared.save_stats.record(steps, written);
                if self.shared.save_pending.swap(false, Ordering::SeqCst) {
                    tracing::warn!("coordinator state saved again to {}", persister.describe());
                    self.publish_alert(format!(
                        "coordinator state saved again to {}",
                        persister.describe()
                    ));
                }
                true
            }
            Err(StoreError::NotLeader(why)) => {
                tracing::error!("stepping down: {why}");
                self.shared.is_deposed.store(true, Ordering::SeqCst);
                // The serving loop may not wait yet: `notify_one` keeps a permit for it.
                self.shared.deposed.notify_one();
                false
            }
            Err(e) => {
                self.unsaved().put_back(batch);
                self.shared.save_pending.store(true, Ordering::SeqCst);
                // One alert per outage; the retries (backing off) only log at debug.
                if persister.failures() == 1 {
                    let message = format!(
                        "cannot save coordinator state to {}: {e}; retrying with backoff \
                         (a restart now would lose what changed since the last save)",
                        persister.describe()
                    );
                    tracing::error!("{message}");
                    self.publish_alert(message);
                } else {
                    tracing::debug!(failures = persister.failures(), "save failed again: {e}");
                }
                true
            }
        }
    }
}

/// Counts of the group commit: batches written, steps they carried, records written.
#[derive(Debug, Default)]
pub(super) struct SaveStats {
    batches: std::sync::atomic::AtomicU64,
    steps: std::sync::atomic::AtomicU64,
    records: std::sync::atomic::AtomicU64,
}

impl SaveStats {
    fn record(&self, steps: u64, records: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.steps.fetch_add(steps, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
    }

    /// (batches, steps, records) so far.
    pub(super) fn get(&self) -> (u64, u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.steps.load(Ordering::Relaxed),
            self.records.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(complete: bool, records: &[(&str, Option<&str>)]) -> Changes {
        Changes {
            complete,
            records: records
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn later_steps_win_and_a_failed_batch_goes_back_under_newer_changes() {
        let mut unsaved = Unsaved::default();
        unsaved.merge(changes(false, &[("node/a", Some("1"))]), 1);
        unsaved.merge(
            changes(false, &[("node/a", Some("2")), ("job/j", Some("x"))]),
            2,
        );
        assert_eq!(unsaved.records["node/a"].as_deref(), Some(&b"2"[..]));
        assert_eq!((unsaved.version, unsaved.steps), (2, 2));
        let failed = std::mem::take(&mut unsaved);
        unsaved.merge(changes(false, &[("job/j", Some("y"))]), 3);
        unsaved.put_back(failed);
        assert_eq!(unsaved.records["node/a"].as_deref(), Some(&b"2"[..]));
        assert_eq!(unsaved.records["job/j"].as_deref(), Some(&b"y"[..]));
        assert_eq!((unsaved.version, unsaved.steps), (3, 3));
        // A whole state sealed later replaces everything before it.
        let failed = std::mem::take(&mut unsaved);
        unsaved.merge(changes(true, &[("meta", Some("m"))]), 4);
        unsaved.put_back(failed);
        assert!(unsaved.complete);
        assert_eq!(unsaved.records.len(), 1);
        assert_eq!(unsaved.version, 4);
    }
}
