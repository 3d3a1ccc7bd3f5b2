//! Operator API tokens end to end, on a real coordinator process with `operator_tokens_file`
//! and a real agent: a call without a (known) token is UNAUTHENTICATED; a viewer reads but may
//! not submit (PERMISSION_DENIED naming the method and role); an operator submits; the agent
//! stream needs no token; the CLI sends `--token` / `HOLDFAST_TOKEN` and, without one, says a
//! token is needed; the dashboard (raw gRPC-web, then headless Chromium opened with `?token=`)
//! sends the token while the page and `/metrics` stay open; a bad token file stops the coordinator naming its line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use holdfast_cli::client::connect_with_token;
use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;

mod common;

const VIEWER: &str = "viewer-0123456789abcdef";
const OPERATOR: &str = "operator-0123456789abcdef";

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_holdfast"))
}

/// Runs the CLI with `args` (and no token from the environment unless `token_env`).
fn cli(addr: &str, args: &[&str], token_env: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(exe());
    cmd.args(args)
        .env("HOLDFAST_COORDINATOR", addr)
        .env_remove("HOLDFAST_TOKEN");
    if let Some(t) = token_env {
        cmd.env("HOLDFAST_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One raw HTTP/1.1 request over loopback; returns the whole response as text.
fn http(addr: &str, request: &str, body: &[u8]) -> String {
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.replace("{host}", host).as_bytes())
        .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC-web ListNodes call as the dashboard makes it, with `authorization` if given.
fn grpc_web_list_nodes(addr: &str, authorization: Option<&str>) -> String {
    let auth = authorization.map_or(String::new(), |a| format!("authorization: {a}\r\n"));
    let empty = [0u8, 0, 0, 0, 0];
    http(
        addr,
        &format!(
            "POST /holdfast.v1.OperatorService/ListNodes HTTP/1.1\r\nHost: {{host}}\r\n\
             content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n{auth}\
             content-length: {}\r\nConnection: close\r\n\r\n",
            empty.len()
        ),
        &empty,
    )
}

/// The dashboard in headless Chromium (`dashboard_token.cjs`), opened with `?token=`. Needs
/// Chromium, node and playwright-core (scripts/setup/70-browser.sh); without them it fails
/// under HOLDFAST_TEST_STRICT=1, else skips.
fn dashboard_with_token(url: &str) {
    let chromium =
        std::env::var("HOLDFAST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node_modules = std::env::var("HOLDFAST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("../target/test-cache/browser/node_modules"));
    let missing = if !Path::new(&chromium).exists() {
        Some(format!("no chromium at {chromium}"))
    } else if !node_modules.join("playwright-core").exists() {
        Some(format!("no playwright-core in {}", node_modules.display()))
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(
            std::env::var("HOLDFAST_TEST_STRICT").is_err(),
            "dashboard token check cannot run: {why} (run scripts/setup/70-browser.sh)"
        );
        eprintln!("skipped: dashboard token check: {why}");
        return;
    }
    let out = Command::new("node")
        .arg(manifest.join("tests/dashboard_token.cjs"))
        .env("NODE_PATH", &node_modules)
        .env("HOLDFAST_CHROMIUM", &chromium)
        .env("DASHBOARD_URL", url)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"ok\":true"),
        "dashboard with ?token=: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_config(dir: &Path, tokens: &str) -> String {
    let tokens_path = dir.join("operator-tokens");
    std::fs::write(&tokens_path, tokens).unwrap();
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!("operator_tokens_file = \"{}\"\n", tokens_path.display()),
    )
    .unwrap();
    config.display().to_string()
}

#[tokio::test]
async fn operator_api_needs_a_token_with_the_right_role() {
    let dir = std::env::temp_dir().join(format!("holdfast-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(
        &dir,
        &format!("# test tokens\nviewer {VIEWER}\noperator {OPERATOR}\n"),
    );
    let mut cluster = LocalCluster::start(&exe(), &dir, &["--config", &config])
        .await
        .unwrap();
    let addr = cluster.addr.clone();
    // Agents send no token: their stream is not the operator API.
    cluster.start_agent("node-1", "worker", &[]).unwrap();

    // No token, or one not in the file: UNAUTHENTICATED.
    let mut anonymous = connect_with_token(&addr, None).await.unwrap();
    let err = anonymous
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("needs a token"), "{err:?}");
    let mut stranger = connect_with_token(&addr, Some("not-a-token-of-this-cluster"))
        .await
        .unwrap();
    let err = stranger
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // A viewer reads: the agent registered without any token.
    let mut viewer = connect_with_token(&addr, Some(VIEWER)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = viewer
            .list_nodes(pb::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        if nodes
            .iter()
            .any(|n| n.node_id == "node-1" && n.state == "ready")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-1 not ready: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …but may not submit.
    let spec = common::train_spec(&dir, 1, 20);
    let err = viewer
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("SubmitJob") && err.message().contains("viewer"),
        "{err:?}"
    );

    // An operator submits, and a viewer sees the job.
    let mut operator = connect_with_token(&addr, Some(OPERATOR)).await.unwrap();
    let job = operator
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner();
    let seen = viewer
        .get_job(pb::GetJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.job_id, job.job_id);

    // The CLI: without a token it says one is needed; with --token or HOLDFAST_TOKEN it works.
    let (ok, _, stderr) = cli(&addr, &["nodes"], None);
    assert!(!ok);
    assert!(
        stderr.contains("needs an operator API token") && stderr.contains("--token"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = cli(&addr, &["nodes", "--token", VIEWER], None);
    assert!(ok && stdout.contains("node-1"), "{stdout}{stderr}");
    let (ok, _, stderr) = cli(&addr, &["stop", &job.job_id], Some(VIEWER));
    assert!(!ok);
    assert!(stderr.contains("operator role"), "{stderr}");
    let (ok, stdout, stderr) = cli(&addr, &["stop", &job.job_id], Some(OPERATOR));
    assert!(ok, "{stdout}{stderr}");

    // The dashboard: the page and /metrics are open; its gRPC-web calls need the token.
    let page = http(
        &addr,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        &[],
    );
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let metrics = http(
        &addr,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        &[],
    );
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let refused = grpc_web_list_nodes(&addr, None);
    assert!(refused.contains("grpc-status: 16"), "{refused}");
    let answered = grpc_web_list_nodes(&addr, Some(&format!("Bearer {VIEWER}")));
    assert!(
        answered.contains("grpc-status:0") || answered.contains("grpc-status: 0"),
        "{answered}"
    );
    assert!(answered.contains("node-1"), "{answered}");
    dashboard_with_token(&format!("{addr}/?token={VIEWER}"));
    drop(cluster);

    // A token file with a bad line stops the coordinator at start, naming file and line.
    let bad = write_config(&dir, &format!("viewer {VIEWER}\nadmin {OPERATOR}\n"));
    let out = Command::new(exe())
        .args(["coordinator", "--ephemeral", "--listen", "127.0.0.1:0"])
        .args(["--config", &bad])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("operator-tokens line 2: unknown role \"admin\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
