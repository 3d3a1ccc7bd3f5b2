//! The control plane surviving its own failures, end to end with real processes on loopback:
//! the coordinator SIGKILLed at each recovery phase, a long coordinator outage with a fault in
//! the middle of it, and a partitioned (SIGSTOPped) node that heals after it was fenced.

use std::path::{Path, PathBuf};
use std::time::Duration;

use holdfast_cli::demo::{LocalCluster, TRAIN_SCRIPT};
use holdfast_cli::follow;
use holdfast_proto::v1 as pb;
use nix::sys::signal::Signal;
use tokio_stream::StreamExt;

const EXE: &str = env!("CARGO_BIN_EXE_holdfast");

fn python() -> Option<String> {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("python3".into());
    }
    assert!(
        std::env::var("HOLDFAST_TEST_STRICT").is_err(),
        "python3 is needed for the training script"
    );
    eprintln!("skipped: python3 not found");
    None
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("holdfast-cp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spec(python: &str, dir: &Path, steps: u64) -> pb::JobSpec {
    let script = dir.join("train_demo.py");
    std::fs::write(&script, TRAIN_SCRIPT).unwrap();
    pb::JobSpec {
        command: vec![
            python.into(),
            script.display().to_string(),
            "--steps".into(),
            steps.to_string(),
            "--step-time".into(),
            "0.1".into(),
            "--ckpt-every".into(),
            "10".into(),
        ],
        nodes: 2,
        checkpoint_uri: format!("file://{}", dir.join("checkpoints").display()),
        stall_timeout_s: 5.0,
        restart_budget: 3,
        total_steps: steps,
        ..Default::default()
    }
}

/// A coordinator with `workers` worker agents and `spares` spare agents, all ready.
async fn start(dir: &Path, workers: usize, spares: usize) -> LocalCluster {
    let mut cluster = LocalCluster::start(Path::new(EXE), dir, &["--reconnect-grace-ms", "6000"])
        .await
        .unwrap();
    for i in 1..=workers {
        cluster
            .start_agent(&format!("node-{i}"), "worker", &[])
            .unwrap();
    }
    for i in 1..=spares {
        cluster
            .start_agent(&format!("spare-{i}"), "spare", &[])
            .unwrap();
    }
    cluster
        .wait_ready(workers + spares, Duration::from_secs(30))
        .await
        .unwrap();
    cluster
}

/// Like [`start`] with two workers and no spare yet, and a coordinator that runs a bootstrap
/// script on every joining node: quick for the workers, 3 s for the spare (`slow-scripts`).
async fn start_with_bootstrap(dir: &Path) -> LocalCluster {
    use std::os::unix::fs::PermissionsExt;
    let script = |scripts: &str, body: &str| {
        let path = dir.join(scripts).join("on-create");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("quick-scripts", "echo ok");
    script("slow-scripts", "sleep 3; echo ok");
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        "bootstrap_script = \"on-create\"\nscript_timeout_ms = 20000\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let mut cluster = LocalCluster::start(
        Path::new(EXE),
        dir,
        &["--reconnect-grace-ms", "6000", "--config", &config],
    )
    .await
    .unwrap();
    let quick = dir.join("quick-scripts").display().to_string();
    for i in 1..=2 {
        cluster
            .start_agent(&format!("node-{i}"), "worker", &["--script-dir", &quick])
            .unwrap();
    }
    cluster
        .wait_ready(2, Duration::from_secs(30))
        .await
        .unwrap();
    cluster
}

async fn job(cluster: &LocalCluster, id: &str) -> pb::Job {
    let mut client = cluster.client().await.unwrap();
    client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_step(cluster: &LocalCluster, id: &str, step: u64) -> pb::Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(cluster, id).await;
        if j.state == "running" && j.step >= step {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never reached step {step}: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn finish(cluster: &LocalCluster, id: &str) -> (pb::Job, Vec<pb::Incident>) {
    let mut client = cluster.client().await.unwrap();
    let done = follow::follow(&mut client, id, Duration::from_secs(120), |_| {}, false)
        .await
        .unwrap();
    let incidents = client
        .list_incidents(pb::ListIncidentsRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .incidents;
    (done, incidents)
}

async fn node_state(cluster: &LocalCluster, node: &str) -> pb::Node {
    find_node(cluster, node).await.unwrap()
}

async fn find_node(cluster: &LocalCluster, node: &str) -> Option<pb::Node> {
    let mut client = cluster.client().await.unwrap();
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    nodes.into_iter().find(|n| n.node_id == node)
}

/// Where in a recovery the coordinator is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The incident was opened (fencing in progress).
    Detected,
    /// The failed node is fenced and the job waits for a replacement (none is ready yet; the
    /// spare joins after the restart).
    Replacing,
    /// The replacement (a spare that joins after the fault) runs its bootstrap script.
    Bootstrapping,
    /// Every rank has a node; the checkpoint to resume from is being resolved.
    Relaunching,
    /// `Launch` of the new generation went out.
    Launched,
}

fn matches(phase: Phase, event: &pb::Event) -> bool {
    if phase == Phase::Detected {
        return event.kind == "incident";
    }
    let Some(j) = &event.job else { return false };
    match phase {
        Phase::Detected => false,
        Phase::Replacing | Phase::Bootstrapping => {
            j.state == "recovering" && j.phase == "replacing"
        }
        Phase::Relaunching => j.state == "recovering" && j.phase == "relaunching",
        Phase::Launched => j.state == "launching" && j.generation == 2,
    }
}

/// Kills a host, SIGKILLs the coordinator once the recovery reached `phase`, restarts it, and
/// checks the job resumes exactly once: generation 2, one incident, closed.
async fn kill_coordinator_during(python: &str, phase: Phase) {
    let dir = workdir(&format!("{phase:?}").to_lowercase());
    let late_spare = matches!(phase, Phase::Replacing | Phase::Bootstrapping);
    let spares = if late_spare { 0 } else { 1 };
    let mut cluster = if phase == Phase::Bootstrapping {
        start_with_bootstrap(&dir).await
    } else {
        start(&dir, 2, spares).await
    };
    let mut client = cluster.client().await.unwrap();
    let submitted = follow::submit(&mut client, spec(python, &dir, 60))
        .await
        .unwrap();
    let id = submitted.job_id.clone();
    wait_step(&cluster, &id, 15).await;
    let mut events = client
        .watch_events(pb::WatchEventsRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    cluster.kill_host("node-2").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("{phase:?}: phase never seen"))
            .unwrap()
            .unwrap();
        if matches(phase, &event) {
            break;
        }
    }
    if phase == Phase::Bootstrapping {
        // The spare joins; the coordinator dies while its bootstrap script runs.
        let scripts = dir.join("slow-scripts").display().to_string();
        cluster
            .start_agent("spare-1", "spare", &["--script-dir", &scripts])
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while find_node(&cluster, "spare-1").await.map(|n| n.state) != Some("bootstrapping".into())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the spare never bootstrapped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster.kill_coordinator().unwrap();
    drop(events);
    cluster.restart_coordinator().await.unwrap();
    if phase == Phase::Replacing {
        cluster.start_agent("spare-1", "spare", &[]).unwrap();
    }
    let (done, incidents) = finish(&cluster, &id).await;
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default();
    assert_eq!(done.state, "succeeded", "{phase:?}: {done:?}\n{log}");
    assert_eq!(
        done.generation, 2,
        "{phase:?}: resumed more than once: {done:?}\n{log}"
    );
    assert_eq!(incidents.len(), 1, "{phase:?}: {incidents:?}");
    let i = &incidents[0];
    assert_eq!(
        (i.cause.as_str(), i.to_generation),
        ("agent_lost", 2),
        "{phase:?}: {i:?}"
    );
    assert!(
        i.resumed_unix_ms > 0,
        "{phase:?}: incident not closed: {i:?}"
    );
    assert_eq!(i.replacement_node_id, "spare-1");
    assert_eq!(node_state(&cluster, "node-2").await.state, "fenced");
    let restored = log
        .lines()
        .find(|l| l.contains("coordinator restored: term 2"))
        .unwrap_or_else(|| panic!("{phase:?}: no restore in {log}"));
    // The state on disk was taken at (or after) the phase, never before the fault.
    assert!(
        restored.contains("recovering/")
            || restored.contains("launching g2")
            || restored.contains("running g2"),
        "{phase:?}: {restored}"
    );
    eprintln!(
        "{phase:?}: {}",
        &restored[restored.find("coordinator restored").unwrap_or(0)..]
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_at_each_recovery_phase_resumes_the_job_exactly_once() {
    let Some(python) = python() else { return };
    for phase in [
        Phase::Detected,
        Phase::Replacing,
        Phase::Bootstrapping,
        Phase::Relaunching,
        Phase::Launched,
    ] {
        kill_coordinator_during(&python, phase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_coordinator_outage_does_not_stop_training_and_a_fault_during_it_is_handled_after() {
    let Some(python) = python() else { return };
    let outage = Duration::from_secs(
        std::env::var("HOLDFAST_TEST_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let dir = workdir("outage");
    let mut cluster = start(&dir, 2, 1).await;
    let mut client = cluster.client().await.unwrap();
    let steps = outage.as_secs() * 10 + 120;
    let id = follow::submit(&mut client, spec(&python, &dir, steps))
        .await
        .unwrap()
        .job_id;
    let before = wait_step(&cluster, &id, 10).await;
    let rank0 = cluster.worker("node-1").unwrap();
    cluster.kill_coordinator().unwrap();
    let down_at = tokio::time::Instant::now();
    // Halfway through the outage, rank 1's worker dies (a fault nobody can see yet).
    tokio::time::sleep(outage / 2).await;
    let killed = cluster.signal_worker("node-2", Signal::SIGKILL).unwrap();
    tokio::time::sleep_until(down_at + outage).await;
    // Training went on all along: the same rank-0 process, checkpoints well past the outage's
    // start.
    let still = cluster.worker("node-1").unwrap();
    assert_eq!(
        (still.pid, still.generation),
        (rank0.pid, 1),
        "rank 0 was restarted during the outage"
    );
    let newest = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    assert!(
        newest >= before.step + outage.as_secs() * 10 / 2,
        "training did not progress during the outage: newest checkpoint {newest}"
    );
    cluster.restart_coordinator().await.unwrap();
    let (done, incidents) = finish(&cluster, &id).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    // The outage itself is no incident; the worker killed during it is exactly one.
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(
        (i.cause.as_str(), i.node_id.as_str()),
        ("worker_exited", "node-2"),
        "{i:?}"
    );
    assert!(i.detail.contains('9'), "{i:?} (killed pid {killed})");
    assert_eq!(done.generation, 2, "{done:?}");
    assert!(i.resumed_unix_ms > 0, "{i:?}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_that_heals_after_its_fence_stays_fenced_and_its_zombie_is_stopped() {
    let Some(python) = python() else { return };
    let dir = workdir("partition");
    let mut cluster = start(&dir, 2, 1).await;
    let mut client = cluster.client().await.unwrap();
    let id = follow::submit(&mut client, spec(&python, &dir, 90))
        .await
        .unwrap()
        .job_id;
    let at = wait_step(&cluster, &id, 15).await;
    // Cut rank 0's agent off (its worker, the one that writes checkpoints, keeps running).
    let zombie = cluster.worker("node-1").unwrap();
    cluster.signal_agent("node-1", Signal::SIGSTOP).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let relaunched = loop {
        let j = job(&cluster, &id).await;
        if j.generation == 2 && j.state == "running" {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "no relaunch: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !relaunched.nodes.contains(&"node-1".to_string()),
        "{relaunched:?}"
    );
    // The zombie kept writing generation-1 checkpoints after its fence; give it time to write
    // one more, then heal the partition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.signal_agent("node-1", Signal::SIGCONT).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster.worker("node-1").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the zombie worker was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(zombie.pid as i32), None).is_err(),
        "zombie {} still alive",
        zombie.pid
    );
    let n = node_state(&cluster, "node-1").await;
    assert!(n.connected && n.state == "fenced", "{n:?}");
    let (done, incidents) = finish(&cluster, &id).await;
    assert_eq!(
        (done.state.as_str(), done.generation),
        ("succeeded", 2),
        "{done:?}"
    );
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    // Generation 2 resumed from a checkpoint written before the fence, never from the
    // zombie's later ones.
    let i = &incidents[0];
    assert!(
        i.resumed_from_step <= at.step + 30,
        "resumed from step {} (fault at step {})",
        i.resumed_from_step,
        at.step
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_kill_coordinator_finishes_with_no_incident_and_no_new_generation() {
    if python().is_none() {
        return;
    }
    let out = std::process::Command::new(EXE)
        .args([
            "demo",
            "--fault",
            "kill-coordinator",
            "--json",
            "--steps",
            "60",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(report["job_state"], "succeeded", "{report}");
    assert_eq!(report["generation"], 1, "{report}");
    assert_eq!(report["fault_node"], "coordinator", "{report}");
    assert_eq!(
        report["incidents"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    assert!(stderr.contains("SIGKILL of the coordinator"), "{stderr}");
}
