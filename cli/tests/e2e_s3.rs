//! End-to-end tier: the coordinator's checkpoint resolver through object_store's S3 client against
//! a real S3 server (s3s-fs) on a network-namespace host. Needs root and
//! `scripts/setup/41-s3.sh` (skipped without them unless HOLDFAST_TEST_STRICT=1).

use holdfast_coordinator::checkpoint::{CheckpointStore, Generation};
use holdfast_testkit::checkpoints::{self, latest, marker};
use holdfast_testkit::e2e::{NetnsCluster, Tools, BUCKET};
use holdfast_testkit::{holdfast_exe, Scratch};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

async fn put(store: &dyn ObjectStore, key: &str, body: &str) {
    store
        .put(&ObjectPath::from(key), PutPayload::from(body.to_string()))
        .await
        .unwrap_or_else(|e| panic!("putting {key}: {e}"));
}

/// Writes checkpoint `step` under `prefix` through the API: `model.pt` with `model` (if any),
/// then the `COMPLETE` marker of `generation` (none: a checkpoint cut off mid-write).
async fn put_checkpoint(
    store: &dyn ObjectStore,
    prefix: &str,
    step: u64,
    model: Option<&str>,
    generation: Option<u64>,
) {
    if let Some(body) = model {
        put(store, &format!("{prefix}/step-{step}/model.pt"), body).await;
    }
    if let Some(generation) = generation {
        let key = format!("{prefix}/step-{step}/COMPLETE");
        put(store, &key, &marker(step, generation)).await;
    }
}

#[test]
fn checkpoints_resolve_through_s3() {
    let Some(tools) = Tools::for_tests(holdfast_exe!()) else {
        return;
    };
    let dir = Scratch::new("e2e-s3");
    let cluster = NetnsCluster::start(tools, &dir, &[]).expect("starting the S3 server");
    let objects = checkpoints::lay_out(&cluster.s3_root().join(BUCKET), "big", 1000, 100);
    assert_eq!(objects, 100_000);
    // The coordinator opens s3:// URIs from the standard AWS_* variables; this test's process
    // plays the coordinator.
    for (key, value) in cluster.s3_env() {
        std::env::set_var(key, value);
    }
    cluster
        .block_on(async {
            let s3 = cluster.s3_store().unwrap();

            // The latest complete checkpoint is chosen; a newer partial one is skipped.
            put_checkpoint(&*s3, "run", 10, Some("a"), Some(1)).await;
            put_checkpoint(&*s3, "run", 20, Some("b"), Some(1)).await;
            put_checkpoint(&*s3, "run", 30, Some("partial"), None).await;
            let store = CheckpointStore::open(&format!("s3://{BUCKET}/run")).unwrap();
            let found = latest(&store, &[]).await;
            assert_eq!(found.step, 20);
            assert_eq!(found.uri, format!("s3://{BUCKET}/run/step-20"));
            assert_eq!(found.generation, Some(Generation(1)));
            let empty = CheckpointStore::open(&format!("s3://{BUCKET}/nothing-here")).unwrap();
            assert_eq!(empty.resolve_latest(&[]).await.unwrap(), None);

            // A checkpoint of a fenced generation written after its fence is never chosen; one
            // it wrote before the fence is.
            put_checkpoint(&*s3, "zombie", 10, None, Some(1)).await;
            let (fence, into_next_second) = checkpoints::fence_generation_2_now();
            tokio::time::sleep(into_next_second).await;
            let cut_off = Some("written by a cut-off host");
            put_checkpoint(&*s3, "zombie", 20, cut_off, Some(2)).await;
            let store = CheckpointStore::open(&format!("s3://{BUCKET}/zombie")).unwrap();
            checkpoints::assert_zombie_refused(&store, fence).await;

            // A prefix of 100,000 objects (1,000 checkpoints of 100 objects, the newest
            // partial) resolves to the newest complete one, in bounded time.
            let uri = format!("s3://{BUCKET}/big");
            checkpoints::assert_large_prefix_resolves(&uri, objects, 1000).await;
        })
        .unwrap();
}
