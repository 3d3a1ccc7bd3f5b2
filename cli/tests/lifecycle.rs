//! The lifecycle-script contract end to end: real coordinator and agent processes, the shipped
//! scripts plus failing, garbage-printing and hanging ones. A node that passes bootstrap and
//! check becomes ready with its report kept; one that fails or times out is fenced with the
//! script's output in the reason; `holdfast check` runs the deep check on demand; and in the
//! bad-spare demo the first spare fails its replacement check and the second takes over.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use holdfast_cli::demo::{write_lifecycle_setup, LocalCluster};
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, write_script as script, Scratch};

fn exe() -> &'static Path {
    holdfast_exe!()
}

/// Waits until `id` is in `state`, or fails with what it is in.
async fn wait_state(cluster: &LocalCluster, id: &str, state: &str, within: Duration) -> pb::Node {
    kit::wait_node(cluster, id, within, &format!("state {state}"), |n| {
        n.state == state
    })
    .await
}

#[tokio::test]
async fn bootstrap_and_checks_gate_readiness_and_failures_fence_with_output() {
    let dir = Scratch::new("lifecycle");
    // The shipped scripts, and a coordinator that runs on-create then health/host.
    let (good, _) = write_lifecycle_setup(&dir).unwrap();
    let config_arg = kit::write_file(
        &dir,
        "coordinator-fast.toml",
        "bootstrap_script = \"on-create\"\ncheck_scripts = [\"health/host\"]\nscript_timeout_ms = 1500\n",
    );
    // A bootstrap that prints binary garbage then its reason, and a check that hangs.
    let broken = dir.join("broken-scripts");
    script(
        &broken,
        "on-create",
        "head -c 3000 /dev/urandom; echo; echo 'failed: /data is not mounted'; exit 4",
    );
    let hanging = dir.join("hanging-scripts");
    script(&hanging, "on-create", "echo ok");
    script(
        &hanging,
        "health/host",
        "echo starting the burn-in; sleep 60",
    );

    let mut cluster = LocalCluster::start(exe(), &dir, &["--config", &config_arg])
        .await
        .unwrap();
    for (id, scripts) in [("good", &good), ("broken", &broken), ("hanging", &hanging)] {
        let arg = scripts.display().to_string();
        cluster
            .start_agent(id, "worker", &["--script-dir", &arg])
            .unwrap();
    }

    let good_node = wait_state(&cluster, "good", "ready", Duration::from_secs(20)).await;
    let report = good_node
        .last_check
        .expect("a ready node keeps its join report");
    assert!(report.ok && report.purpose == "join", "{report:?}");
    let names: Vec<&str> = report.scripts.iter().map(|s| s.script.as_str()).collect();
    assert_eq!(names, ["on-create", "health/host"]);
    assert!(
        report.scripts[1].output.contains("ok: host healthy"),
        "{:?}",
        report.scripts[1]
    );
    assert!(report.scripts.iter().all(|s| s.exit_code == Some(0)));

    let broken_node = wait_state(&cluster, "broken", "fenced", Duration::from_secs(20)).await;
    assert!(
        broken_node.fence_reason.contains("exit code 4")
            && broken_node.fence_reason.contains("/data is not mounted"),
        "{}",
        broken_node.fence_reason
    );
    let broken_report = broken_node.last_check.unwrap();
    assert_eq!(
        broken_report.scripts.len(),
        1,
        "no check runs after a failed bootstrap"
    );
    assert_eq!(broken_report.scripts[0].exit_code, Some(4));

    let hanging_node = wait_state(&cluster, "hanging", "fenced", Duration::from_secs(20)).await;
    assert!(
        hanging_node.fence_reason.contains("timed out"),
        "{}",
        hanging_node.fence_reason
    );
    assert!(
        hanging_node.fence_reason.contains("starting the burn-in"),
        "{}",
        hanging_node.fence_reason
    );
    let hung = &hanging_node.last_check.unwrap().scripts[1];
    assert!(
        hung.duration_ms >= 1500 && hung.duration_ms < 10_000,
        "{hung:?}"
    );

    // `holdfast check`: passes on the good node, then fails once the host is marked bad, and
    // only reports (the node stays ready; the operator decides).
    let check = |node: &str| {
        kit::run(Command::new(exe()).args(["check", node, "--coordinator", &cluster.addr]))
    };
    let out = check("good");
    let text = &out.stdout;
    assert!(out.ok(), "{text} {}", out.stderr);
    assert!(
        text.contains("PASSED") && text.contains("health/host"),
        "{text}"
    );
    std::fs::write(
        cluster.state_dir("good").join("unhealthy"),
        "fan 3 failed\n",
    )
    .unwrap();
    let out = check("good");
    let text = &out.stdout;
    assert_eq!(out.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("fan 3 failed"),
        "{text}"
    );
    let after = kit::node(&cluster, "good").await;
    assert_eq!(after.state, "ready");
    let kept = after.last_check.unwrap();
    assert!(!kept.ok && kept.purpose == "operator", "{kept:?}");
    // A check of a node that does not exist is a clear error.
    let out = check("nope");
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("no node nope"));
}

#[test]
fn bad_spare_demo_rejects_the_first_spare_and_recovers_on_the_second() {
    let out = kit::run(Command::new(exe()).args([
        "demo",
        "--spares",
        "2",
        "--fault",
        "bad-spare",
        "--json",
        "--steps",
        "60",
    ]));
    let stdout = &out.stdout;
    assert!(out.ok(), "{stdout}\n{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["job_state"], "succeeded", "{report}");
    let incident = &report["incidents"][0];
    assert_eq!(incident["replacement"], "spare-2", "{report}");
    let rejected = incident["rejected_candidates"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{report}");
    let rejected = rejected[0].as_str().unwrap();
    assert!(
        rejected.starts_with("spare-1: health/host failed with exit code 1"),
        "{rejected}"
    );
    assert!(
        rejected.contains("uncorrectable memory errors"),
        "{rejected}"
    );
}
