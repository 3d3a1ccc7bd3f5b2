//! Integration tier for node health: the built `holdfast` binary as real processes on loopback,
//! GPU faults entering through the agents' fault-injection seam (the same classification path
//! a real NVML or kernel-log event takes).

use std::time::Duration;

use holdfast_cli::demo::{self, DemoOptions, Fault, LocalCluster};
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, repo_root, Scratch};

/// An injected fatal XID fences the node at once, the spare replaces it and the job resumes
/// from its latest complete checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_fatal_xid_fences_and_replaces_the_node_and_the_job_resumes() {
    let options = DemoOptions {
        fault: Fault::Xid,
        steps: 60,
        fault_at_step: 25,
        json: true,
        ..Default::default()
    };
    let report = demo::run(holdfast_exe!(), &options).await.unwrap();
    assert_eq!(report.job.state, "succeeded", "{}", report.job.message);
    assert_eq!((report.job.step, report.job.generation), (60, 2));
    assert_eq!(report.incidents.len(), 1, "{:#?}", report.incidents);
    let i = &report.incidents[0];
    assert_eq!(
        (i.cause.as_str(), i.action.as_str()),
        ("health_fatal", "replace_node")
    );
    assert!(
        i.detail.contains("Xid 79") && i.detail.contains("via injected"),
        "{}",
        i.detail
    );
    assert_eq!(i.node_id, report.victim);
    assert_eq!(i.replacement_node_id, "spare-1");
    let detect_s = (i.detected_unix_ms - report.fault_at) as f64 / 1000.0;
    assert!(
        (0.0..1.0).contains(&detect_s),
        "fault → detection {detect_s} s"
    );
    assert!(i.fenced_unix_ms >= i.detected_unix_ms && i.resumed_unix_ms > i.relaunched_unix_ms);
    assert!(i.resumed_from_step >= 10 && i.resumed_from_step <= 25);
}

fn check<'a>(n: &'a pb::Node, name: &str) -> Option<&'a pb::HealthCheck> {
    n.health.as_ref()?.checks.iter().find(|c| c.check == name)
}

/// Waits until node `seam` reports its check `name` in a way `cond` accepts.
async fn wait_check(
    cluster: &LocalCluster,
    name: &str,
    within: Duration,
    cond: impl Fn(&pb::HealthCheck) -> bool,
) -> pb::Node {
    kit::wait_node(cluster, "seam", within, name, |n| {
        check(n, name).is_some_and(&cond)
    })
    .await
}

/// The seam is refused unless enabled; a hung GPU probe turns Unknown while heartbeats go on;
/// an application XID is a worker fault that does not fence; GPU checks are not applicable on
/// a host without GPUs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seam_is_off_by_default_hung_probe_is_unknown_and_worker_xids_do_not_fence() {
    let dir = Scratch::new("it-health");
    let agent_config = "fault_injection = true\nhealth_poll_interval_ms = 100\nprobe_timeout_ms = 300\ndebounce_count = 2\n";
    let (mut cluster, config) =
        kit::coordinator_with_agent_config(holdfast_exe!(), &dir, agent_config).await;
    cluster.start_agent("plain", "worker", &[]).unwrap();
    cluster
        .start_agent("seam", "worker", &["--config", &config])
        .unwrap();
    cluster
        .wait_ready(2, Duration::from_secs(30))
        .await
        .unwrap();

    // Without the option the inject file is never read.
    cluster.inject("plain", "xid 79 gpu 0").unwrap();

    // GPU checks are reported, and not applicable on this GPU-less host.
    let n = wait_check(&cluster, "ecc", Duration::from_secs(10), |_| true).await;
    assert_eq!(
        check(&n, "ecc").unwrap().state,
        pb::HealthState::NotApplicable as i32
    );
    assert!(n.gpus.is_empty());

    // A probe that hangs for 3 s: Unknown within its 300 ms timeout, heartbeats continue.
    cluster.inject("seam", "hang-probe 3").unwrap();
    let hung = wait_check(&cluster, "ecc", Duration::from_secs(2), |c| {
        c.state == pb::HealthState::Unknown as i32
    })
    .await;
    assert!(
        check(&hung, "ecc")
            .unwrap()
            .reason
            .contains("did not answer within"),
        "{:?}",
        check(&hung, "ecc")
    );
    let later = kit::wait_node(
        &cluster,
        "seam",
        Duration::from_secs(2),
        "heartbeats",
        |n| n.last_heartbeat_unix_ms >= hung.last_heartbeat_unix_ms + 1000,
    )
    .await;
    assert!(later.connected && later.state == "ready", "{later:#?}");
    assert_eq!(
        check(&later, "ecc").unwrap().state,
        pb::HealthState::Unknown as i32,
        "still hung"
    );
    // When the probe answers again the check clears.
    wait_check(&cluster, "ecc", Duration::from_secs(6), |c| {
        c.state == pb::HealthState::NotApplicable as i32
    })
    .await;

    // An application XID is a worker fault: restart-worker advice, the node stays in service.
    cluster.inject("seam", "xid 13 gpu 1").unwrap();
    let n = wait_check(&cluster, "xid-worker", Duration::from_secs(3), |_| true).await;
    let c = check(&n, "xid-worker").unwrap();
    assert_eq!(
        (c.state, c.action),
        (
            pb::HealthState::Degraded as i32,
            pb::HealthAction::RestartWorker as i32
        )
    );
    assert!(
        c.reason.contains("Xid 13") && c.reason.contains("gpu 1"),
        "{}",
        c.reason
    );
    assert_eq!(n.state, "ready");

    // The plain agent never took its inject file.
    let plain = kit::node(&cluster, "plain").await;
    assert!(check(&plain, "xid").is_none(), "{plain:#?}");
    assert_eq!(plain.state, "ready");
    assert!(cluster
        .state_dir("plain")
        .join(holdfast_agent::health::inject::INJECT_FILE)
        .exists());
}

/// The shipped deep checks keep their contract: one line, exit 0 on pass or "not applicable"
/// (every GPU check on a host without GPUs), non-zero on failure.
#[test]
fn deep_check_scripts_follow_their_contract() {
    let dir = repo_root().join("lifecycle-scripts/health");
    let no_gpu = !std::path::Path::new("/dev/nvidiactl").exists();
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // `host` is the CPU-only host check (lifecycle-scripts/README.md's contract, tested with
        // the lifecycle flow); `_gpus.py` is the GPU checks' shared module (and Python may
        // leave its bytecode beside it); the GPU checks here print exactly one line.
        let shared = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('_'));
        if path.extension().is_some_and(|e| e == "md")
            || path.ends_with("host")
            || shared
            || path.is_dir()
        {
            continue;
        }
        let out = std::process::Command::new(&path)
            .env("HOLDFAST_MATMUL_N", "256")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{}: {stdout:?}", path.display());
        let line = lines[0];
        if no_gpu {
            assert!(
                out.status.success() && line.starts_with("not applicable"),
                "{}: {:?} {line}",
                path.display(),
                out.status
            );
        } else {
            let passed = line.starts_with("pass") || line.starts_with("not applicable");
            assert_eq!(out.status.success(), passed, "{}: {line}", path.display());
        }
        ran += 1;
    }
    assert_eq!(ran, 3, "gpu-matmul, nccl-allreduce, dcgm-diag");
    let bad = std::process::Command::new(dir.join("dcgm-diag.sh"))
        .env("HOLDFAST_DCGM_LEVEL", "9")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("HOLDFAST_DCGM_LEVEL"));
}
