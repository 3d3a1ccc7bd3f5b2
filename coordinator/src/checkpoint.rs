//! Finds the checkpoint a new generation resumes from, through `object_store`: local files by
//! default, or S3, Google Cloud Storage or Azure Blob Storage at scale.
//!
//! Layout contract (the training script writes it): a checkpoint is `<prefix>/step-<N>/`, and it
//! counts only once `<prefix>/step-<N>/COMPLETE` exists, written last. The marker may hold JSON
//! `{"step": N, "generation": G}`; a checkpoint whose marker names a fenced generation and was
//! written after that generation's fence came from a zombie and is never resumed from.
//!
//! The marker may also carry a manifest, `"files": {"model.pt": {"size": N, "sha256": "…"}}`
//! (paths relative to the checkpoint directory; `python/holdfast/checkpoint.py` writes it). A
//! checkpoint with a manifest counts only when every file listed exists with its size, and,
//! when checksums are asked for, its SHA-256; one that does not is passed over for the previous
//! one, and the reason comes back in [`Resolution::skipped`].

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
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

/// Markers larger than this are not read: a manifest of thousands of files still fits.
const MAX_MARKER_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Deserialize, Default)]
struct Marker {
    generation: Option<Generation>,
    /// The manifest: each file of the checkpoint with its size and digest.
    files: Option<BTreeMap<String, ManifestEntry>>,
}

/// One file of a checkpoint as its marker's manifest lists it.
#[derive(Debug, Deserialize)]
struct ManifestEntry {
    size: u64,
    sha256: Option<String>,
}

/// What a resolution found: the checkpoint to resume from (none: a fresh start), and the newer
/// ones passed over because their files did not match their manifest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The newest complete, verified checkpoint not written by a zombie.
    pub checkpoint: Option<Checkpoint>,
    /// "step-N: reason" for each newer checkpoint passed over, newest first.
    pub skipped: Vec<String>,
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
    /// `None` when there is none (a fresh start); manifests checked by size only.
    pub async fn resolve_latest(
        &self,
        fenced: &[FencedGeneration],
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.resolve(fenced, false).await?.checkpoint)
    }

    /// The newest complete checkpoint not written by a fenced generation after its fence and
    /// whose files match its marker's manifest (sizes; SHA-256 too with `checksums`), with the
    /// newer ones passed over and why.
    pub async fn resolve(
        &self,
        fenced: &[FencedGeneration],
        checksums: bool,
    ) -> Result<Resolution, CheckpointError> {
        let mut resolution = Resolution::default();
        let listing = match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(resolution),
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
            if meta.size > MAX_MARKER_BYTES {
                let why = format!("its marker is {} bytes, over {MAX_MARKER_BYTES}", meta.size);
                resolution.skipped.push(format!("step-{step}: {why}"));
                continue;
            }
            let marker = match self.read_marker(&marker_path).await? {
                Ok(marker) => marker,
                Err(why) => {
                    tracing::warn!(step, "checkpoint skipped: {why}");
                    resolution.skipped.push(format!("step-{step}: {why}"));
                    continue;
                }
            };
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
            if let Some(files) = &marker.files {
                if let Some(why) = self.damage(&dir, files, checksums).await? {
                    tracing::warn!(
                        step,
                        "checkpoint does not match its manifest; skipped: {why}"
                    );
                    resolution.skipped.push(format!("step-{step}: {why}"));
                    continue;
                }
            }
            resolution.checkpoint = Some(Checkpoint {
                step,
                uri: format!("{}/step-{step}", self.base_uri),
                generation: marker.generation,
            });
            return Ok(resolution);
        }
        Ok(resolution)
    }

    /// How the files under `dir` differ from `files` (the first difference found), or `None`
    /// when they match: each exists with its size, and its SHA-256 when `checksums`.
    async fn damage(
        &self,
        dir: &Path,
        files: &BTreeMap<String, ManifestEntry>,
        checksums: bool,
    ) -> Result<Option<String>, CheckpointError> {
        for (name, entry) in files {
            let inside = !name.is_empty()
                && !name.starts_with('/')
                && name.split('/').all(|part| !matches!(part, "" | "." | ".."));
            if !inside {
                return Ok(Some(format!(
                    "its manifest names {:?}, not a path inside the checkpoint",
                    holdfast_core::limits::truncated(name, 256)
                )));
            }
            let path = name.split('/').fold(dir.clone(), |p, part| p.join(part));
            let read_error = |source| CheckpointError::Marker {
                path: path.to_string(),
                source,
            };
            let meta = match self.store.head(&path).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => {
                    return Ok(Some(format!("{name} is missing")));
                }
                Err(source) => return Err(read_error(source)),
            };
            if meta.size != entry.size {
                return Ok(Some(format!(
                    "{name} is {} bytes, its manifest says {}",
                    meta.size, entry.size
                )));
            }
            let Some(expected) = entry.sha256.as_deref().filter(|_| checksums) else {
                continue;
            };
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            let mut body = self
                .store
                .get(&path)
                .await
                .map_err(read_error)?
                .into_stream();
            while let Some(chunk) = body.next().await {
                digest.update(&chunk.map_err(read_error)?);
            }
            if !hex(digest.finish().as_ref()).eq_ignore_ascii_case(expected) {
                return Ok(Some(format!(
                    "{name}: its SHA-256 differs from its manifest's"
                )));
            }
        }
        Ok(None)
    }

    /// The marker at `path`: its contents, or why it is unusable (a manifest that does not
    /// parse). A store error is the error.
    async fn read_marker(&self, path: &Path) -> Result<Result<Marker, String>, CheckpointError> {
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
        // An empty or non-JSON marker still marks the checkpoint complete; one that carries a
        // manifest must be readable, or nothing can be verified.
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Ok(Ok(Marker::default()));
        };
        if value.get("files").is_none() {
            return Ok(Ok(serde_json::from_value(value).unwrap_or_default()));
        }
        Ok(serde_json::from_value(value)
            .map_err(|e| format!("its marker's manifest is unreadable: {e}")))
    }
}

/// Bytes as lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    /// A checkpoint at `step` holding `model.bin` = `body`, with a manifest that lists it as
    /// `listed` (its size and digest).
    async fn with_manifest(mem: &InMemory, step: u64, body: &str, listed: &str) {
        put(mem, &format!("run/step-{step}/model.bin"), body).await;
        let sha = hex(ring::digest::digest(&ring::digest::SHA256, listed.as_bytes()).as_ref());
        let marker = serde_json::json!({
            "step": step,
            "generation": 1,
            "files": {"model.bin": {"size": listed.len(), "sha256": sha}},
        });
        put(
            mem,
            &format!("run/step-{step}/COMPLETE"),
            &marker.to_string(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_truncated_checkpoint_is_passed_over_for_the_previous_one_with_the_reason() {
        let mem = Arc::new(InMemory::new());
        with_manifest(&mem, 10, "weights-10", "weights-10").await;
        with_manifest(&mem, 20, "weig", "weights-20").await;
        let Resolution {
            checkpoint,
            skipped,
        } = open(mem).resolve(&[], false).await.unwrap();
        assert_eq!(checkpoint.map(|c| c.step), Some(10));
        assert_eq!(
            skipped,
            ["step-20: model.bin is 4 bytes, its manifest says 10"]
        );
    }

    #[tokio::test]
    async fn a_corrupted_file_of_the_same_size_is_caught_only_when_checksums_are_asked_for() {
        let mem = Arc::new(InMemory::new());
        with_manifest(&mem, 10, "weights-10", "weights-10").await;
        with_manifest(&mem, 20, "weights-2X", "weights-20").await;
        let store = open(mem);
        let sizes_only = store.resolve(&[], false).await.unwrap();
        assert_eq!(sizes_only.checkpoint.map(|c| c.step), Some(20));
        assert!(sizes_only.skipped.is_empty());
        let checked = store.resolve(&[], true).await.unwrap();
        assert_eq!(checked.checkpoint.map(|c| c.step), Some(10));
        assert_eq!(
            checked.skipped,
            ["step-20: model.bin: its SHA-256 differs from its manifest's"]
        );
    }

    #[tokio::test]
    async fn a_missing_file_a_path_outside_and_an_unreadable_manifest_are_passed_over() {
        let mem = Arc::new(InMemory::new());
        with_manifest(&mem, 10, "weights-10", "weights-10").await;
        let markers = [
            (20, r#"{"files": {"optim.bin": {"size": 3}}}"#),
            (30, r#"{"files": {"../step-10/model.bin": {"size": 10}}}"#),
            (40, r#"{"files": ["model.bin"]}"#),
        ];
        for (step, marker) in markers {
            put(&mem, &format!("run/step-{step}/COMPLETE"), marker).await;
        }
        let found = open(mem).resolve(&[], true).await.unwrap();
        assert_eq!(found.checkpoint.map(|c| c.step), Some(10));
        assert_eq!(found.skipped.len(), 3, "{:?}", found.skipped);
        assert!(found.skipped[0].starts_with("step-40: its marker's manifest is unreadable"));
        assert!(found.skipped[1].starts_with("step-30: its manifest names \"../step-10"));
        assert_eq!(found.skipped[2], "step-20: optim.bin is missing");
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
