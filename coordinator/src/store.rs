//! Durable coordinator state: the node registry, the jobs (with their generations and fenced
//! generations), the incidents and the coordinator's term, kept as one record per thing under a
//! string key (`meta`, `node/<id>`, `job/<id>`, `incident/<n>`).
//!
//! The core ([`crate::cluster`]) turns itself into records and back; this module only stores
//! them. [`Persister`] remembers what it last wrote and writes only the records that changed,
//! in one transaction, so a save after a single transition costs one small write.
//!
//! Backends: [`RedbStore`] (one file, the default for a single coordinator) and, behind the
//! `etcd` feature, the etcd store of [`crate::ha`]. [`MemoryStore`] keeps nothing across
//! restarts: it is what a coordinator started without a state file uses.

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
    /// Another coordinator leads now (HA): this one must stop acting.
    #[error("not the leader any more: {0}")]
    NotLeader(String),
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

/// Keeps nothing across restarts.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Records,
}

impl RecordStore for MemoryStore {
    fn load(&mut self) -> Result<Records, StoreError> {
        Ok(self.records.clone())
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        for (key, value) in changes {
            match value {
                Some(v) => self.records.insert(key.clone(), v.clone()),
                None => self.records.remove(key),
            };
        }
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
    written: Records,
    /// The core's durable version at the last successful save.
    saved_version: Option<u64>,
}

impl Persister {
    /// Wraps `store`; `written` is what it holds now (as returned by `load`).
    pub fn new(store: Box<dyn RecordStore>, written: Records) -> Persister {
        Persister {
            store,
            written,
            saved_version: None,
        }
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// True when `version` was already saved.
    pub fn is_saved(&self, version: u64) -> bool {
        self.saved_version == Some(version)
    }

    /// Writes the records that differ from the last save and deletes those that are gone.
    /// Returns how many records were written or deleted.
    pub fn save(&mut self, records: Records, version: u64) -> Result<usize, StoreError> {
        let mut changes: Vec<Change> = records
            .iter()
            .filter(|(k, v)| self.written.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        changes.extend(
            self.written
                .keys()
                .filter(|k| !records.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        self.store.apply(&changes)?;
        self.written = records;
        self.saved_version = Some(version);
        Ok(changes.len())
    }
}

#[cfg(test)]
mod tests {
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
}
