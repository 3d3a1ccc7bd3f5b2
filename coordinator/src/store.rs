//! Durable coordinator state: the node registry, the jobs (with their generations and fenced
//! generations), the incidents and the coordinator's term, kept as one record per thing under a
//! string key (`meta`, `node/<id>`, `job/<id>`, `incident/<n>`).
//!
//! The core ([`crate::cluster`]) turns itself into records and back; this module only stores
//! them. [`Persister`] remembers what it last wrote and writes only the records that changed,
//! in one transaction, so a save after a single transition costs one small write; the
//! coordinator hands it the records a group of steps changed ([`Persister::save_changes`]),
//! never the whole state but after a restore.
//!
//! Backends: [`RedbStore`] (one file, the default for a single coordinator) and, behind the
//! `etcd` feature, the etcd store of [`crate::ha`]. [`MemoryStore`] keeps nothing: it is
//! what a coordinator started with `--ephemeral` uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

pub use holdfast_core::records::Records;

/// One change: `Some(bytes)` writes the record, `None` deletes it.
pub type Change = (String, Option<Vec<u8>>);

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state file {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] holdfast_core::records::CorruptRecord),
    #[error("state store: {0}")]
    Backend(String),
    /// A save that cannot be written in one transaction of the backend (etcd's limits):
    /// refused whole before anything is written, so the state is never half-applied.
    #[error(
        "state save refused, nothing written: {changes} changes of {bytes} bytes do not fit in \
         one etcd transaction ({limit}); raise etcd's --max-txn-ops / --max-request-bytes and etcd_max_txn_ops / \
         etcd_max_request_bytes"
    )]
    TooLarge {
        changes: usize,
        bytes: usize,
        limit: String,
    },
    /// Another coordinator leads now (HA): this one must stop acting.
    #[error("not the leader any more: {0}")]
    NotLeader(String),
}

/// etcd's limits on one transaction (its `--max-txn-ops` and `--max-request-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnLimits {
    /// Most operations in one transaction (etcd's default: 128).
    pub max_ops: usize,
    /// Most bytes in one request (etcd's default: 1.5 MiB).
    pub max_request_bytes: usize,
}

impl Default for TxnLimits {
    fn default() -> Self {
        TxnLimits {
            max_ops: 128,
            max_request_bytes: 1536 * 1024,
        }
    }
}
/// What a request carries besides the records' keys and values (the lease compare, framing),
/// kept free under [`ETCD_MAX_REQUEST_BYTES`].
const REQUEST_OVERHEAD: usize = 16 * 1024;

/// Refuses `changes` (keys under `prefix`) that one etcd transaction within `limits` cannot
/// hold, naming the limit they pass; the caller then writes nothing.
pub fn fits_one_txn(changes: &[Change], prefix: &str, limits: TxnLimits) -> Result<(), StoreError> {
    let TxnLimits {
        max_ops,
        max_request_bytes,
    } = limits;
    // Each operation costs its key, its value and a few bytes of protobuf framing.
    let bytes: usize = (changes.iter())
        .map(|(k, v)| prefix.len() + k.len() + v.as_ref().map_or(0, Vec::len) + 16)
        .sum();
    let limit = if changes.len() > max_ops {
        format!("at most {max_ops} operations")
    } else if bytes + REQUEST_OVERHEAD > max_request_bytes {
        format!("at most {max_request_bytes} bytes per request")
    } else {
        return Ok(());
    };
    Err(StoreError::TooLarge {
        changes: changes.len(),
        bytes,
        limit,
    })
}

/// Where records live. Implementations write a batch atomically: all of it or none.
pub trait RecordStore: Send {
    /// Every stored record.
    fn load(&mut self) -> Result<Records, StoreError>;
    /// Writes and deletes `changes` in one atomic, durable step.
    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Names the store in logs.
    fn describe(&self) -> String;
}

/// Keeps nothing: the store of a coordinator whose state lives only in its memory
/// (`--ephemeral`). What it is given is dropped — the core's state is the one copy, and nothing
/// reads a store again before the process ends — so it costs nothing per record (a copy of
/// every node's record would be ~200 bytes each at 10,000 nodes, held for nothing).
#[derive(Debug, Default)]
pub struct MemoryStore;

impl RecordStore for MemoryStore {
    fn load(&mut self) -> Result<Records, StoreError> {
        Ok(Records::new())
    }

    fn apply(&mut self, _changes: &[Change]) -> Result<(), StoreError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory (nothing survives a restart)".into()
    }
}

/// One redb file. Each `apply` is one write transaction, committed with fsync before it returns.
pub struct RedbStore {
    path: PathBuf,
    db: redb::Database,
}

impl RedbStore {
    /// Opens (or creates) the file; its parent directory is created when missing. A file left
    /// by a killed coordinator is recovered by redb on open.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: redb::Error::Io(e),
            })?;
        }
        let db = redb::Database::create(path).map_err(|e| StoreError::Open {
            path: shown.clone(),
            source: e.into(),
        })?;
        Ok(RedbStore {
            path: path.to_path_buf(),
            db,
        })
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }
}

impl RecordStore for RedbStore {
    fn load(&mut self) -> Result<Records, StoreError> {
        let read = |e: redb::Error| StoreError::Read {
            path: self.shown(),
            source: e,
        };
        let txn = self.db.begin_read().map_err(|e| read(e.into()))?;
        let table = match txn.open_table(RECORDS) {
            Ok(t) => t,
            // A fresh file has no table yet.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Records::new()),
            Err(e) => return Err(read(e.into())),
        };
        let mut records = Records::new();
        for entry in table.iter().map_err(|e| read(e.into()))? {
            let (k, v) = entry.map_err(|e| read(e.into()))?;
            records.insert(k.value().to_string(), v.value().to_vec());
        }
        Ok(records)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let write = |e: redb::Error| StoreError::Write {
            path: self.shown(),
            source: e,
        };
        let txn = self.db.begin_write().map_err(|e| write(e.into()))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| write(e.into()))?;
            for (key, value) in changes {
                match value {
                    Some(v) => {
                        table
                            .insert(key.as_str(), v.as_slice())
                            .map_err(|e| write(e.into()))?;
                    }
                    None => {
                        table.remove(key.as_str()).map_err(|e| write(e.into()))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| write(e.into()))
    }

    fn describe(&self) -> String {
        format!("redb file {}", self.shown())
    }
}

/// A store plus what was last written to it: saves only what changed.
pub struct Persister {
    store: Box<dyn RecordStore>,
    /// What the store holds, by key: a digest of each record's bytes, enough to tell a changed
    /// record from an unchanged one (the bytes themselves would be a second copy of the whole
    /// state, ~200 bytes a node).
    written: BTreeMap<String, Digest>,
    digester: Digester,
    /// The core's durable version at the last successful save.
    saved_version: Option<u64>,
    /// Saves that failed in a row, and when the next may be tried.
    failures: u32,
    retry_at: Option<std::time::Instant>,
}

/// The longest pause between two tries of a failing save.
pub const SAVE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// The first pause after a failed save; each further failure doubles it.
const SAVE_BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_millis(100);

impl Persister {
    /// Wraps `store`; `written` is what it holds now (as returned by `load`).
    pub fn new(store: Box<dyn RecordStore>, written: Records) -> Persister {
        let digester = Digester::default();
        Persister {
            store,
            written: digester.all(&written),
            digester,
            saved_version: None,
            failures: 0,
            retry_at: None,
        }
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// True when `version` was already saved.
    pub fn is_saved(&self, version: u64) -> bool {
        self.saved_version == Some(version)
    }

    /// How long until a failed save may be tried again (zero when it may now).
    pub fn retry_in(&self, now: std::time::Instant) -> std::time::Duration {
        self.retry_at.map_or(std::time::Duration::ZERO, |at| {
            at.saturating_duration_since(now)
        })
    }

    /// Saves that failed in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// False while a failed save backs off: a full disk is not hammered with a rewrite of the
    /// changes on every step (the changes wait; the next try writes them all).
    pub fn due(&self, now: std::time::Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// Writes the records that differ from the last save and deletes those that are gone.
    /// Returns how many records were written or deleted. A failure backs off (100 ms, doubling
    /// up to [`SAVE_BACKOFF_MAX`]); see [`Persister::due`].
    pub fn save(&mut self, records: Records, version: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        let result = self.write(records, version).map(|written| n = written);
        self.track(result)?;
        Ok(n)
    }

    /// Writes `changes` (records of a group of steps; `None` deletes) in one transaction,
    /// leaving out those already stored as they are. Returns how many were written or
    /// deleted; fails and backs off as [`Persister::save`] does.
    pub fn save_changes(
        &mut self,
        changes: Vec<Change>,
        version: u64,
    ) -> Result<usize, StoreError> {
        let changes: Vec<(Change, Option<Digest>)> = changes
            .into_iter()
            .map(|change| {
                let digest = change.1.as_deref().map(|v| self.digester.of(v));
                (change, digest)
            })
            .filter(|((k, _), digest)| self.written.get(k) != digest.as_ref())
            .collect();
        let (changes, digests): (Vec<Change>, Vec<Option<Digest>>) = changes.into_iter().unzip();
        let result = self.store.apply(&changes);
        self.track(result)?;
        for ((key, _), digest) in changes.iter().zip(digests) {
            match digest {
                Some(d) => self.written.insert(key.clone(), d),
                None => self.written.remove(key),
            };
        }
        self.saved_version = Some(version);
        Ok(changes.len())
    }

    /// Keeps the count of failures in a row and the backoff after one.
    fn track(&mut self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.retry_at = None;
                Ok(())
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let pause = SAVE_BACKOFF_FIRST
                    .saturating_mul(1 << self.failures.saturating_sub(1).min(16))
                    .min(SAVE_BACKOFF_MAX);
                self.retry_at = Some(std::time::Instant::now() + pause);
                Err(e)
            }
        }
    }

    fn write(&mut self, records: Records, version: u64) -> Result<usize, StoreError> {
        let digests = self.digester.all(&records);
        let mut changes: Vec<Change> = records
            .iter()
            .filter(|(k, _)| self.written.get(*k) != digests.get(*k))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        changes.extend(
            self.written
                .keys()
                .filter(|k| !records.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        self.store.apply(&changes)?;
        self.written = digests;
        self.saved_version = Some(version);
        Ok(changes.len())
    }
}

/// A record's length and two 64-bit hashes of its bytes under independent random keys: two
/// different records share one with odds of about 2^-128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(usize, u64, u64);

/// Makes [`Digest`]s (its keys are drawn when the persister is made; digests never leave it).
#[derive(Debug, Default)]
struct Digester(
    std::collections::hash_map::RandomState,
    std::collections::hash_map::RandomState,
);

impl Digester {
    fn of(&self, bytes: &[u8]) -> Digest {
        use std::hash::BuildHasher;
        Digest(bytes.len(), self.0.hash_one(bytes), self.1.hash_one(bytes))
    }

    fn all(&self, records: &Records) -> BTreeMap<String, Digest> {
        records
            .iter()
            .map(|(k, v)| (k.clone(), self.of(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_save_larger_than_one_etcd_transaction_is_refused_naming_the_limit() {
        let change = |i: usize, bytes: usize| (format!("node/n{i}"), Some(vec![b'x'; bytes]));
        let limits = TxnLimits::default();
        let small: Vec<Change> = (0..128).map(|i| change(i, 100)).collect();
        fits_one_txn(&small, "/holdfast/state/", limits).unwrap();
        let many: Vec<Change> = (0..=128).map(|i| change(i, 100)).collect();
        let err = fits_one_txn(&many, "/holdfast/state/", limits).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("129 changes"), "{text}");
        assert!(text.contains("at most 128 operations"), "{text}");
        assert!(text.contains("nothing written"), "{text}");
        let big: Vec<Change> = (0..4).map(|i| change(i, 512 * 1024)).collect();
        let text = fits_one_txn(&big, "", limits).unwrap_err().to_string();
        assert!(text.contains("bytes per request"), "{text}");
        // Raised limits (etcd started with larger ones) take it.
        let raised = TxnLimits {
            max_ops: 1024,
            max_request_bytes: 8 << 20,
        };
        fits_one_txn(&many, "", raised).unwrap();
        fits_one_txn(&big, "", raised).unwrap();
    }

    use super::*;

    #[test]
    fn redb_keeps_records_across_reopen_and_persister_writes_only_changes() {
        let dir = std::env::temp_dir().join(format!("holdfast-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("state.redb");
        {
            let mut store = RedbStore::open(&path).unwrap();
            assert!(store.load().unwrap().is_empty());
            let mut p = Persister::new(Box::new(store), Records::new());
            let mut r = Records::new();
            r.insert("a".into(), b"1".to_vec());
            r.insert("b".into(), b"2".to_vec());
            assert_eq!(p.save(r.clone(), 1).unwrap(), 2);
            assert!(p.is_saved(1));
            r.insert("b".into(), b"3".to_vec());
            r.remove("a");
            // One write, one delete.
            assert_eq!(p.save(r.clone(), 2).unwrap(), 2);
            assert_eq!(p.save(r, 3).unwrap(), 0);
        }
        let mut store = RedbStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["b"], b"3");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_path_names_the_file() {
        let err = RedbStore::open(Path::new("/proc/holdfast/state.redb"))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/proc/holdfast/state.redb"),
            "{err}"
        );
    }

    /// A store whose disk is full while `full` is set.
    struct FullDisk {
        full: std::sync::Arc<std::sync::atomic::AtomicBool>,
        inner: MemoryStore,
        batches: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl RecordStore for FullDisk {
        fn load(&mut self) -> Result<Records, StoreError> {
            self.inner.load()
        }
        fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Backend("No space left on device".into()));
            }
            self.batches.lock().unwrap().push(changes.len());
            self.inner.apply(changes)
        }
        fn describe(&self) -> String {
            "a full disk".into()
        }
    }

    #[test]
    fn a_failing_save_backs_off_and_the_next_one_writes_only_the_changes() {
        let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = FullDisk {
            full: full.clone(),
            inner: MemoryStore,
            batches: batches.clone(),
        };
        let mut p = Persister::new(Box::new(store), Records::new());
        let record = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
        let all: Records = (0..100)
            .map(|i| record(&format!("node/{i}"), "ready"))
            .collect();
        p.save(all.clone(), 1).unwrap();
        full.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut changed = all.clone();
        changed.insert("node/7".into(), b"fenced".to_vec());
        assert!(p.save(changed.clone(), 2).is_err());
        let now = std::time::Instant::now();
        assert_eq!(p.failures(), 1);
        assert!(!p.due(now), "a failed save backs off");
        assert!(p.retry_in(now) <= std::time::Duration::from_millis(100));
        for _ in 0..20 {
            let _ = p.save(changed.clone(), 2);
        }
        assert!(p.retry_in(std::time::Instant::now()) <= SAVE_BACKOFF_MAX);
        assert!(p.retry_in(std::time::Instant::now()) > std::time::Duration::from_secs(10));
        full.store(false, std::sync::atomic::Ordering::SeqCst);
        p.save(changed, 2).unwrap();
        assert_eq!(p.failures(), 0);
        assert!(p.due(std::time::Instant::now()));
        assert_eq!(
            *batches.lock().unwrap(),
            vec![100, 1],
            "only the changed record"
        );
    }
}
