//! Finds the checkpoint a new generation resumes from, through `object_store`: local files by
//! default, or S3, Google Cloud Storage or Azure Blob Storage at scale.
//!
//! Layout contract (the training script writes it): a checkpoint is `<prefix>/step-<N>/`, and it
//! counts only once `<prefix>/step-<N>/COMPLETE` exists, written last. The marker may hold JSON
//! `{"step": N, "generation": G}`; a checkpoint whose marker names a fenced generation and was
//! written after that generation's fence came from a zombie and is never resumed from.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;

use crate::UnixMillis;

/// Name of the completion marker inside a checkpoint directory.
pub const COMPLETE_MARKER: &str = "COMPLETE";

pub use holdfast_core::checkpoint::{Checkpoint, FencedGeneration};
pub use holdfast_core::Generation;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint URI {uri:?} is not valid: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("cannot list checkpoints under {uri}: {source}")]
    List {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot read completion marker {path}: {source}")]
    Marker {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

#[derive(Debug, Deserialize, Default)]
struct Marker {
    generation: Option<Generation>,
}

/// One checkpoint prefix in one object store.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URI as given, without a trailing slash: checkpoint URIs are built from it.
    base_uri: String,
}

impl CheckpointStore {
    /// Opens `uri`: `file:///abs/path`, `s3://bucket/prefix`, `gs://bucket/prefix`, or
    /// `az://container/prefix` (also `azure://`, `abfs[s]://container/prefix` and
    /// `abfs[s]://container@account.dfs.core.windows.net/prefix`). Credentials, region and
    /// endpoint come from the environment variables each store's client reads: `AWS_*` for S3
    /// (`AWS_ENDPOINT` for another server), `GOOGLE_*` for GCS (`GOOGLE_SERVICE_ACCOUNT`,
    /// `GOOGLE_BASE_URL`), `AZURE_*` for Azure (`AZURE_STORAGE_ACCOUNT_NAME`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR` with `AZURITE_BLOB_STORAGE_URL`).
    pub fn open(uri: &str) -> Result<CheckpointStore, CheckpointError> {
        let bad = |reason: String| CheckpointError::BadUri {
            uri: uri.to_string(),
            reason,
        };
        let base_uri = uri.trim_end_matches('/').to_string();
        let url = url::Url::parse(&base_uri).map_err(|e| bad(e.to_string()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("not an absolute file path".into()))?;
                let prefix = Path::from_absolute_path(&path).map_err(|e| bad(e.to_string()))?;
                (
                    Arc::new(object_store::local::LocalFileSystem::new()),
                    prefix,
                )
            }
            // Each cloud's builder reads its credentials and endpoint from the environment.
            "s3" => {
                let built = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(base_uri.as_str())
                    .build();
                (shared(built).map_err(bad)?, object_path(&url))
            }
            "gs" => {
                let built = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(base_uri.as_str())
                    .build();
                (shared(built).map_err(bad)?, object_path(&url))
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let built = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(base_uri.as_str())
                    .build();
                (shared(built).map_err(bad)?, object_path(&url))
            }
            other => {
                let supported = "file://, s3://, gs://, az:// or abfs://";
                return Err(bad(format!(
                    "scheme {other:?} is not supported (use {supported})"
                )));
            }
        };
        Ok(CheckpointStore {
            store,
            prefix,
            base_uri,
        })
    }

    /// Opens a prefix inside an already built store (tests, custom stores).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        base_uri: &str,
    ) -> CheckpointStore {
        CheckpointStore {
            store,
            prefix: Path::from(prefix),
            base_uri: base_uri.trim_end_matches('/').to_string(),
        }
    }

    /// The newest complete checkpoint not written by a fenced generation after its fence, or
    /// `None` when there is none (a fresh start).
    pub async fn resolve_latest(
        &self,
        fenced: &[FencedGeneration],
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let listing = match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::List {
                    uri: self.base_uri.clone(),
                    source,
                })
            }
        };
        let mut steps: Vec<(u64, Path)> = listing
            .common_prefixes
            .into_iter()
            .filter_map(|dir| {
                let name = dir.filename()?.to_string();
                let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                Some((step, dir))
            })
            .collect();
        steps.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        for (step, dir) in steps {
            let marker_path = dir.clone().join(COMPLETE_MARKER);
            let meta = match self.store.head(&marker_path).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(step, "checkpoint has no completion marker; skipped");
                    continue;
                }
                Err(source) => {
                    return Err(CheckpointError::Marker {
                        path: marker_path.to_string(),
                        source,
                    })
                }
            };
            let marker = self.read_marker(&marker_path).await?;
            let written_at = meta.last_modified.timestamp_millis();
            let zombie = marker.generation.and_then(|g| {
                fenced
                    .iter()
                    .find(|f| f.generation == g && written_after(written_at, f.fenced_at))
            });
            if let Some(f) = zombie {
                tracing::warn!(
                    step,
                    generation = f.generation.get(),
                    "checkpoint written by generation {} after its fence; skipped",
                    f.generation
                );
                continue;
            }
            return Ok(Some(Checkpoint {
                step,
                uri: format!("{}/step-{step}", self.base_uri),
                generation: marker.generation,
            }));
        }
        Ok(None)
    }

    async fn read_marker(&self, path: &Path) -> Result<Marker, CheckpointError> {
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(|source| CheckpointError::Marker {
                path: path.to_string(),
                source,
            })?
            .bytes()
            .await
            .map_err(|source| CheckpointError::Marker {
                path: path.to_string(),
                source,
            })?;
        // An empty or non-JSON marker still marks the checkpoint complete.
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
    }
}

/// A built store, shared; a builder's error as text.
fn shared<S: ObjectStore>(built: object_store::Result<S>) -> Result<Arc<dyn ObjectStore>, String> {
    built
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| e.to_string())
}

/// The object path a bucket URI names: its path without the leading slash (the bucket or
/// container is the URI's host).
fn object_path(url: &url::Url) -> Path {
    Path::from(url.path().trim_start_matches('/'))
}

/// Whether an object stamped `written_at` was written after `fenced_at`. S3 stamps Last-Modified
/// to the second (truncated), so "after" means in a later second than the fence: a marker
/// completed within the fence's own second holds state from before the fence and precedes any
/// write of the next generation, which needs seconds to start.
fn written_after(written_at: UnixMillis, fenced_at: UnixMillis) -> bool {
    if written_at.rem_euclid(1000) == 0 {
        written_at.div_euclid(1000) > fenced_at.div_euclid(1000)
    } else {
        written_at > fenced_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    async fn put(store: &InMemory, path: &str, body: &str) {
        store
            .put(&Path::from(path), PutPayload::from(body.to_string()))
            .await
            .unwrap();
    }

    fn open(store: Arc<InMemory>) -> CheckpointStore {
        CheckpointStore::with_store(store, "run", "mem://run/")
    }

    #[tokio::test]
    async fn picks_the_latest_complete_checkpoint_and_skips_a_partial_one() {
        let mem = Arc::new(InMemory::new());
        put(&mem, "run/step-10/model.bin", "a").await;
        put(
            &mem,
            "run/step-10/COMPLETE",
            r#"{"step":10,"generation":1}"#,
        )
        .await;
        put(&mem, "run/step-20/model.bin", "b").await;
        put(&mem, "run/step-20/COMPLETE", "").await;
        put(&mem, "run/step-30/model.bin", "partial").await;
        put(&mem, "run/notes.txt", "x").await;
        let found = open(mem).resolve_latest(&[]).await.unwrap().unwrap();
        assert_eq!(found.step, 20);
        assert_eq!(found.uri, "mem://run/step-20");
        assert_eq!(found.generation, None);
    }

    #[tokio::test]
    async fn numeric_not_lexical_order() {
        let mem = Arc::new(InMemory::new());
        put(&mem, "run/step-9/COMPLETE", "").await;
        put(&mem, "run/step-100/COMPLETE", "").await;
        let found = open(mem).resolve_latest(&[]).await.unwrap().unwrap();
        assert_eq!(found.step, 100);
    }

    #[tokio::test]
    async fn empty_prefix_is_a_fresh_start() {
        let mem = Arc::new(InMemory::new());
        assert_eq!(open(mem).resolve_latest(&[]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_checkpoint_of_a_fenced_generation_after_its_fence_is_skipped() {
        let mem = Arc::new(InMemory::new());
        put(&mem, "run/step-10/COMPLETE", r#"{"generation":1}"#).await;
        put(&mem, "run/step-20/COMPLETE", r#"{"generation":2}"#).await;
        let written = mem
            .head(&Path::from("run/step-20/COMPLETE"))
            .await
            .unwrap()
            .last_modified
            .timestamp_millis();
        // Fenced before step-20's marker was written: step-20 came from a zombie.
        let fenced = [FencedGeneration {
            generation: 2.into(),
            fenced_at: written - 1,
        }];
        let store = open(mem);
        let found = store.resolve_latest(&fenced).await.unwrap().unwrap();
        assert_eq!((found.step, found.generation), (10, Some(Generation(1))));
        // Fenced after the marker: the checkpoint is legitimate.
        let fenced_later = [FencedGeneration {
            generation: 2.into(),
            fenced_at: written + 1000,
        }];
        assert_eq!(
            store
                .resolve_latest(&fenced_later)
                .await
                .unwrap()
                .unwrap()
                .step,
            20
        );
    }

    #[test]
    fn second_precision_stamps_count_as_after_the_fence_from_the_next_second() {
        // Stamped 12:00:05 (truncated) vs a fence at 12:00:05.400: written within the fence's
        // second, not after it.
        assert!(!written_after(5_000, 5_400));
        assert!(!written_after(4_000, 5_400));
        assert!(written_after(6_000, 5_400));
        // Millisecond stamps are compared as they are.
        assert!(!written_after(5_399, 5_400));
        assert!(written_after(5_401, 5_400));
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        let err = CheckpointStore::open("hdfs://namenode/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
        let err = CheckpointStore::open("not a uri").unwrap_err().to_string();
        assert!(err.contains("not a uri"), "{err}");
    }

    #[test]
    fn cloud_uris_open_and_say_what_is_missing() {
        // Builders read the environment; a machine configured for Azure has nothing to show.
        if std::env::vars().any(|(k, _)| k.starts_with("AZURE_")) {
            return;
        }
        let err = CheckpointStore::open("az://holdfast/run")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("az://holdfast/run") && err.to_lowercase().contains("account"),
            "{err}"
        );
        // The container@account form names the account itself.
        let store = CheckpointStore::open("abfss://ckpt@acct.dfs.core.windows.net/run/a");
        assert!(store.is_ok(), "{:?}", store.err());
        assert_eq!(
            store.map(|s| s.prefix.to_string()).ok().as_deref(),
            Some("run/a")
        );
    }

    #[tokio::test]
    async fn local_files_resolve() {
        let dir = std::env::temp_dir().join(format!("hf-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("step-5")).unwrap();
        std::fs::write(dir.join("step-5/COMPLETE"), "{}").unwrap();
        std::fs::create_dir_all(dir.join("step-6")).unwrap();
        let uri = format!("file://{}", dir.display());
        let found = CheckpointStore::open(&uri)
            .unwrap()
            .resolve_latest(&[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.step, 5);
        assert_eq!(found.uri, format!("{uri}/step-5"));
        let missing = format!("file://{}/nothing-here", dir.display());
        assert_eq!(
            CheckpointStore::open(&missing)
                .unwrap()
                .resolve_latest(&[])
                .await
                .unwrap(),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
