//! The coordinator's checkpoint resolver through object_store's Google Cloud Storage and Azure
//! Blob Storage clients, each against a real server of that API started by the test on
//! loopback: fake-gcs-server (`gs://`) and Azurite (`az://`, `abfs://`). The same contract
//! as for S3 (`e2e_s3.rs`): the latest complete checkpoint is chosen, a partial one is skipped,
//! a checkpoint a fenced generation wrote after its fence is refused, and a prefix of 100,000
//! objects resolves within 30 s. Those 100,000 objects are written into the server's own
//! on-disk store ([`holdfast_testkit::seed`]: through the emulators' APIs they would take 6 to
//! 30 minutes), and listed and read through the server's API. Needs
//! `scripts/setup/44-object-stores.sh` (skipped without it unless HOLDFAST_TEST_STRICT=1).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_coordinator::checkpoint::{CheckpointStore, Generation};
use holdfast_testkit::checkpoints::{self, latest, marker};
use holdfast_testkit::{self as kit, seed, KillOnDrop, Scratch};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// The large prefix, as on S3: 100,000 objects, here in 10,000 checkpoints of 10, the newest
/// partial: more checkpoints than one listing page holds on Azure (Azurite's pages hold 5,000
/// entries: the client follows its continuation marker) and on GCS (1,000; fake-gcs-server's
/// XML listing, object_store's, answers in one page of any size).
const PREFIX: (u64, u64) = (10_000, 10);

/// The server binary that `variable` (exported by `scripts/setup/44-object-stores.sh`) names.
/// For the test `name`: the emulator `variable` names (skipped without it, see
/// [`kit::require`]), a scratch directory in memory (the server's store, 100,000 objects in
/// 0.1 to 0.5 GB) and a free port for it.
fn emulator(variable: &str, name: &str) -> Option<(PathBuf, Scratch, u16)> {
    let program = kit::require(server(variable))?;
    Some((program, Scratch::in_memory(name), kit::free_port()))
}

fn server(variable: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!("{variable} is not set (source scripts/setup/44-object-stores.sh)")
        })?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{variable}={} does not exist", path.display()))
    }
}

/// Starts `command` with its output in `dir/<name>.log`; waits until `port` accepts.
fn start(command: &mut Command, dir: &Path, name: &str, port: u16) -> KillOnDrop {
    let child = kit::spawn_logged(command, dir, name);
    kit::wait_for_blocking(Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map(drop)
            .map_err(|e| format!("{name} not listening on {port} yet: {e}"))
    });
    child
}

/// How the test writes checkpoints, as a training job would.
#[derive(Clone)]
enum Writer {
    /// Through object_store.
    Store(Arc<dyn ObjectStore>),
    /// Through the GCS JSON API's media upload, at this `host:port` (the client libraries
    /// training jobs use write this way; fake-gcs-server lacks the XML API's PUT that
    /// object_store writes with, and the resolver only reads).
    GcsJson { address: String, bucket: String },
}

impl Writer {
    async fn put(&self, key: &str, body: &str) {
        match self {
            Writer::Store(store) => store
                .put(&ObjectPath::from(key), PutPayload::from(body.to_string()))
                .await
                .map(drop)
                .unwrap_or_else(|e| panic!("putting {key}: {e}")),
            Writer::GcsJson { address, bucket } => {
                let reply = kit::http(
                    address,
                    &format!(
                        "POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name={key} HTTP/1.1\r\n\
                         Host: {{host}}\r\nContent-Type: application/octet-stream\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    ),
                    body.as_bytes(),
                );
                assert!(reply.starts_with("HTTP/1.1 200"), "putting {key}: {reply}");
            }
        }
    }
}

/// The resolver's contract on one store: `api` writes into the bucket that `base` (a URI such
/// as `gs://bucket`) names, and `CheckpointStore::open` reads it through the environment.
async fn resolver_contract(api: Writer, base: &str) {
    // The latest complete checkpoint is chosen; a newer partial one is skipped.
    for (step, complete) in [(10, true), (20, true), (30, false)] {
        api.put(&format!("run/step-{step}/model.pt"), "weights")
            .await;
        if complete {
            api.put(&format!("run/step-{step}/COMPLETE"), &marker(step, 1))
                .await;
        }
    }
    let store = CheckpointStore::open(&format!("{base}/run")).unwrap();
    let found = latest(&store, &[]).await;
    assert_eq!(
        (found.step, found.generation, found.uri.as_str()),
        (
            20,
            Some(Generation(1)),
            format!("{base}/run/step-20").as_str()
        )
    );
    let empty = CheckpointStore::open(&format!("{base}/nothing-here")).unwrap();
    assert_eq!(empty.resolve_latest(&[]).await.unwrap(), None);

    // A checkpoint of a fenced generation written after its fence is refused; one it wrote
    // before the fence is legitimate.
    api.put("zombie/step-10/COMPLETE", &marker(10, 1)).await;
    let (fence, into_next_second) = checkpoints::fence_generation_2_now();
    tokio::time::sleep(into_next_second).await;
    api.put("zombie/step-20/model.pt", "written by a cut-off host")
        .await;
    api.put("zombie/step-20/COMPLETE", &marker(20, 2)).await;
    let store = CheckpointStore::open(&format!("{base}/zombie")).unwrap();
    checkpoints::assert_zombie_refused(&store, fence).await;
}

/// Writes the first object of the large prefix under `big` through `api` (the template whose
/// record the seeders copy), then `seed` lays out the rest on disk; prints the times and
/// returns how many objects the prefix holds.
async fn seed_big(api: &Writer, seed: impl FnOnce(&str) -> u64) -> u64 {
    let (template, body) = checkpoints::many_checkpoints("big", PREFIX.0, PREFIX.1)
        .next()
        .expect("a first object");
    api.put(&template, &body).await;
    let started = Instant::now();
    let objects = seed(&template);
    println!(
        "seeded {objects} objects ({} checkpoints) into the server's store in {:.1} s",
        PREFIX.0,
        started.elapsed().as_secs_f64()
    );
    objects
}

#[tokio::test]
async fn checkpoints_resolve_through_google_cloud_storage() {
    let Some((gcs, dir, port)) = emulator("HOLDFAST_GCS_SERVER", "checkpoints-gcs") else {
        return;
    };
    let address = format!("localhost:{port}");
    // The filesystem backend: it reads objects from this directory on each request, so the
    // large prefix can be laid out there beside the server.
    let root = dir.join("gcs");
    let _server = start(
        Command::new(&gcs)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .args([
                "-backend",
                "filesystem",
                "-filesystem-root",
                root.to_str().expect("a UTF-8 scratch path"),
                "-public-host",
                &address,
                "-log-level",
                "warn",
            ]),
        &dir,
        "gcs",
        port,
    );
    // object_store cannot create buckets: the JSON API's insert does.
    let body = r#"{"name": "holdfast-ckpt"}"#;
    let reply = kit::http(
        &address,
        &format!(
            "POST /storage/v1/b?project=holdfast HTTP/1.1\r\nHost: {{host}}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        body.as_bytes(),
    );
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "creating the bucket: {reply}"
    );
    // object_store's GCS client reads GOOGLE_*: a service-account key that points it at the
    // emulator and turns OAuth off (the emulator checks no tokens).
    let key = format!(
        r#"{{"disable_oauth": true, "gcs_base_url": "http://localhost:{port}", "client_email": "", "private_key": "", "private_key_id": ""}}"#
    );
    std::env::set_var("GOOGLE_SERVICE_ACCOUNT_KEY", key);
    let writer = Writer::GcsJson {
        address,
        bucket: "holdfast-ckpt".into(),
    };
    resolver_contract(writer.clone(), "gs://holdfast-ckpt").await;
    let bucket = root.join("holdfast-ckpt");
    let objects = seed_big(&writer, |template| {
        seed::seed_fake_gcs(&bucket, template, "big", PREFIX.0, PREFIX.1)
    })
    .await;
    let uri = "gs://holdfast-ckpt/big";
    checkpoints::assert_large_prefix_resolves(uri, objects, PREFIX.0).await;
}

/// Azurite's well-known development account (public, in Azure's documentation).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Creates a container in Azurite with a SharedKey-signed request (object_store cannot create
/// containers); Python's standard library does the signing.
fn create_container(port: u16, container: &str) {
    let Some(python) = kit::python() else {
        panic!("no python3 to create the container with");
    };
    let script = r#"
import base64, hashlib, hmac, http.client, sys
from email.utils import formatdate
port, container, account, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
date, version = formatdate(usegmt=True), "2021-08-06"
to_sign = ("PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n"
           f"/{account}/{account}/{container}\nrestype:container")
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest())
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
c.request("PUT", f"/{account}/{container}?restype=container", headers={
    "x-ms-date": date, "x-ms-version": version,
    "Authorization": f"SharedKey {account}:{sig.decode()}"})
r = c.getresponse()
if r.status != 201:
    sys.exit(f"creating container {container}: {r.status} {r.read()!r}")
"#;
    let ran = kit::run(Command::new(python).args([
        "-c",
        script,
        &port.to_string(),
        container,
        AZURITE_ACCOUNT,
        AZURITE_KEY,
    ]));
    assert!(ran.ok(), "{}", ran.stderr);
}

#[tokio::test]
async fn checkpoints_resolve_through_azure_blob_storage() {
    let Some((azurite, dir, port)) = emulator("HOLDFAST_AZURITE", "checkpoints-azure") else {
        return;
    };
    // Its database and blobs on disk, where the large prefix is added while it is stopped.
    let location = dir.join("azurite");
    let azurite_on = |name: &str| {
        start(
            Command::new(&azurite)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
                .arg("--location")
                .arg(&location)
                .current_dir(&dir),
            &dir,
            name,
            port,
        )
    };
    let mut server = azurite_on("azurite");
    create_container(port, "holdfast-ckpt");
    // object_store's Azure client reads AZURE_*; the emulator flag selects Azurite's account and
    // key, AZURITE_BLOB_STORAGE_URL its address. Requests are signed with that key.
    let env = [
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
        (
            "AZURITE_BLOB_STORAGE_URL",
            format!("http://127.0.0.1:{port}"),
        ),
    ];
    for (key, value) in &env {
        std::env::set_var(key, value);
    }
    let api = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_container_name("holdfast-ckpt")
        .build()
        .unwrap();
    let writer = Writer::Store(Arc::new(api));
    resolver_contract(writer.clone(), "az://holdfast-ckpt").await;
    let objects = seed_big(&writer, |template| {
        // Azurite loads its database when it starts and writes it back when it stops.
        let started = Instant::now();
        server.interrupt(Duration::from_secs(60));
        let stopped = started.elapsed().as_secs_f64();
        let objects = seed::seed_azurite(
            &location,
            "holdfast-ckpt",
            template,
            "big",
            PREFIX.0,
            PREFIX.1,
        );
        let written = started.elapsed().as_secs_f64();
        server = azurite_on("azurite-seeded");
        println!(
            "Azurite stopped in {stopped:.1} s, its database written in {:.1} s, loaded in {:.1} s",
            written - stopped,
            started.elapsed().as_secs_f64() - written
        );
        objects
    })
    .await;
    let uri = "az://holdfast-ckpt/big";
    checkpoints::assert_large_prefix_resolves(uri, objects, PREFIX.0).await;
    // The other spellings of the same container resolve the same.
    for uri in ["abfs://holdfast-ckpt/run", "azure://holdfast-ckpt/run"] {
        let store = CheckpointStore::open(uri).unwrap();
        assert_eq!(latest(&store, &[]).await.step, 20, "{uri}");
    }
}
