//! `holdfast bench swarm` against a real coordinator process on loopback: a small swarm with a
//! job and a silenced agent gives a complete report with no false timeout and the silence
//! detected; a coordinator that is not there is named as the cause.

use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_testkit::{holdfast_exe, Scratch};

/// Keys every `--json` report has (BENCHMARKS.md and scripts/bench-swarm.sh read them).
const KEYS: [&str; 12] = [
    "agents",
    "coordinator_cpu_cores",
    "coordinator_rss_mb",
    "heartbeat_lag_p50_s",
    "heartbeat_lag_p99_s",
    "false_timeouts",
    "detect_p50_s",
    "detect_p99_s",
    "job_start_s",
    "relaunch_s",
    "list_nodes_p99_s",
    "generator_behind",
];

/// Runs the bench command, bounded, and returns its exit code, stdout and stderr.
async fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let run = tokio::process::Command::new(holdfast_exe!())
        .arg("bench")
        .arg("swarm")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("bench swarm finished within 120 s")
        .expect("bench swarm ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report: the last line of the command's output, as JSON.
fn last_json(stdout: &str, stderr: &str) -> serde_json::Value {
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_swarm_reports_without_false_timeouts_and_detects_the_silenced_agent() {
    let dir = Scratch::new("bench-swarm");
    let cluster = LocalCluster::start(holdfast_exe!(), dir.path(), &[])
        .await
        .expect("coordinator started");
    let (code, stdout, stderr) = bench(&[
        "--coordinator",
        &cluster.addr,
        "--agents",
        "50",
        "--jobs",
        "1",
        "--nodes-per-job",
        "4",
        "--silence",
        "1",
        "--duration",
        "2",
        "--json",
    ])
    .await;
    let report = last_json(&stdout, &stderr);
    for key in KEYS {
        assert!(report.get(key).is_some(), "no {key} in {report}");
    }
    assert_eq!(report["agents"], 50, "{report}");
    assert_eq!(report["false_timeouts"], 0, "{report}");
    assert_eq!(report["silenced"], 1, "{report}");
    assert_eq!(report["undetected"], 0, "{report}");
    // The silenced agent is a rank of the job: detected, and the job relaunched.
    let detect = report["detect_p99_s"].as_f64().expect("a detection time");
    assert!(detect > 0.0 && detect < 10.0, "{report}");
    assert!(report["relaunch_s"].as_f64().is_some(), "{report}");
    assert!(report["job_start_s"].as_f64().is_some(), "{report}");
    // The coordinator was found by its port and measured.
    assert!(report["coordinator_rss_mb"].as_f64().is_some(), "{report}");
    assert!(report["heartbeat_lag_p99_s"].as_f64().is_some(), "{report}");
    assert!(report["generator_behind"].is_boolean(), "{report}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
}

#[tokio::test]
async fn a_coordinator_that_is_not_there_is_named() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, _, stderr) = bench(&["--coordinator", &addr, "--agents", "5"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("unreachable") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_speaks_mutual_tls_with_certificates_from_the_coordinators_pki() {
    let dir = Scratch::new("bench-swarm-tls");
    let pki = dir.join("pki");
    let pki_arg = pki.display().to_string();
    let mut cluster = LocalCluster::start(holdfast_exe!(), dir.path(), &["--pki-dir", &pki_arg])
        .await
        .expect("coordinator started");
    let https = cluster.use_https();
    let admin = std::fs::read_to_string(pki.join("admin.token")).expect("the admin token");
    let ca = pki.join("ca.pem").display().to_string();
    let (code, stdout, stderr) = bench(&[
        "--coordinator",
        &https,
        "--pki-dir",
        &pki_arg,
        "--ca-cert",
        &ca,
        "--token",
        admin.trim(),
        "--agents",
        "20",
        "--silence",
        "1",
        "--duration",
        "1",
        "--json",
    ])
    .await;
    let report = last_json(&stdout, &stderr);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(report["false_timeouts"], 0, "{report}");
    assert_eq!(report["undetected"], 0, "{report}");
    // Every agent holds a certificate of its own node id, recorded by the PKI.
    let issued: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pki.join("issued.json")).expect("issued.json"))
            .expect("issued.json is JSON");
    assert_eq!(issued.as_object().map(|o| o.len()), Some(20), "{issued}");
}
