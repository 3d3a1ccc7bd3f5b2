//! The control plane surviving its own failures, end to end with real processes on loopback:
//! the coordinator SIGKILLed at each recovery phase, a long coordinator outage with a fault in
//! the middle of it, and a partitioned (SIGSTOPped) node that heals after it was fenced.

use std::path::Path;
use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, local_cluster, python, Rig, Scratch, Train};
use nix::sys::signal::Signal;
use tokio_stream::StreamExt;

fn spec(python: &str, dir: &Path, steps: u64) -> pb::JobSpec {
    let train = Train {
        python: python.into(),
        steps,
        ..Default::default()
    };
    pb::JobSpec {
        stall_timeout_s: 5.0,
        restart_budget: 3,
        total_steps: steps,
        ..train.spec(dir)
    }
}

/// A coordinator with `workers` worker agents and `spares` spare agents, all ready.
async fn start(dir: &Path, workers: usize, spares: usize) -> LocalCluster {
    let grace = ["--reconnect-grace-ms", "6000"];
    local_cluster(holdfast_exe!(), dir, &grace, workers, spares).await
}

/// Like [`start`] with two workers and no spare yet, and a coordinator that runs a bootstrap
/// script on every joining node: quick for the workers, 3 s for the spare (`slow-scripts`).
async fn start_with_bootstrap(dir: &Path) -> LocalCluster {
    kit::write_script(&dir.join("quick-scripts"), "on-create", "echo ok");
    kit::write_script(&dir.join("slow-scripts"), "on-create", "sleep 3; echo ok");
    let config = kit::write_file(
        dir,
        "coordinator.toml",
        "bootstrap_script = \"on-create\"\nscript_timeout_ms = 20000\n",
    );
    let mut cluster = LocalCluster::start(
        holdfast_exe!(),
        dir,
        &["--reconnect-grace-ms", "6000", "--config", &config],
    )
    .await
    .unwrap();
    let quick = dir.join("quick-scripts").display().to_string();
    cluster
        .start_nodes(2, 0, &["--script-dir", &quick])
        .unwrap();
    cluster
        .wait_ready(2, Duration::from_secs(30))
        .await
        .unwrap();
    cluster
}

async fn wait_step(cluster: &LocalCluster, id: &str, step: u64) -> pb::Job {
    kit::wait_job(cluster, id, Duration::from_secs(60), |j| {
        j.state == "running" && j.step >= step
    })
    .await
}

async fn finish(cluster: &LocalCluster, id: &str) -> (pb::Job, Vec<pb::Incident>) {
    kit::finish(cluster, id, Duration::from_secs(120)).await
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
    let dir = Scratch::new(&format!("cp-{phase:?}").to_lowercase());
    let late_spare = matches!(phase, Phase::Replacing | Phase::Bootstrapping);
    let spares = if late_spare { 0 } else { 1 };
    let mut cluster = if phase == Phase::Bootstrapping {
        start_with_bootstrap(&dir).await
    } else {
        start(&dir, 2, spares).await
    };
    let id = kit::submit(&cluster, spec(python, &dir, 60)).await.job_id;
    wait_step(&cluster, &id, 15).await;
    let mut client = cluster.client().await.unwrap();
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
        kit::wait_node(
            &cluster,
            "spare-1",
            Duration::from_secs(20),
            "the spare bootstrapping",
            |n| n.state == "bootstrapping",
        )
        .await;
    }
    cluster.kill_coordinator().unwrap();
    drop(events);
    cluster.restart_coordinator().await.unwrap();
    if phase == Phase::Replacing {
        cluster.start_agent("spare-1", "spare", &[]).unwrap();
    }
    let (done, incidents) = finish(&cluster, &id).await;
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default();
    let i = kit::assert_recovered_once(&done, &incidents, &format!("{phase:?}\n{log}"));
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
    assert_eq!(kit::node(&cluster, "node-2").await.state, "fenced");
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
    let dir = Scratch::new("cp-outage");
    let mut cluster = start(&dir, 2, 1).await;
    let steps = outage.as_secs() * 10 + 120;
    // Independent ranks: rank 0 trains on through the outage after rank 1's worker dies.
    let train = Train {
        python: python.clone(),
        steps,
        synchronous: false,
        ..Default::default()
    };
    let job = pb::JobSpec {
        stall_timeout_s: 5.0,
        restart_budget: 3,
        total_steps: steps,
        ..train.spec(&dir)
    };
    let id = kit::submit(&cluster, job).await.job_id;
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
    let newest = std::fs::read_dir(kit::checkpoint_dir(&dir))
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
    // The outage itself is no incident; the worker killed during it is exactly one.
    let i = kit::assert_recovered_once(&done, &incidents, "outage");
    assert_eq!(
        (i.cause.as_str(), i.node_id.as_str()),
        ("worker_exited", "node-2"),
        "{i:?}"
    );
    assert!(i.detail.contains('9'), "{i:?} (killed pid {killed})");
    assert!(i.resumed_unix_ms > 0, "{i:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_that_heals_after_its_fence_stays_fenced_and_its_zombie_is_stopped() {
    let Some(python) = python() else { return };
    let dir = Scratch::new("cp-partition");
    let mut cluster = start(&dir, 2, 1).await;
    // Rank 0's agent is cut off below while its worker keeps stepping with the others: a job
    // that lets progress vouch for it would keep it. This one does not (its ranks stand for a
    // job whose ranks do not wait on each other), so the node is lost and its worker a zombie.
    let job = pb::JobSpec {
        progress_vouches: Some(false),
        ..spec(&python, &dir, 90)
    };
    let id = kit::submit(&cluster, job).await.job_id;
    let at = wait_step(&cluster, &id, 15).await;
    // Cut rank 0's agent off (its worker, the one that writes checkpoints, keeps running).
    let zombie = cluster.worker("node-1").unwrap();
    cluster.signal_agent("node-1", Signal::SIGSTOP).unwrap();
    let relaunched = kit::wait_job(&cluster, &id, Duration::from_secs(30), |j| {
        j.generation == 2 && j.state == "running"
    })
    .await;
    assert!(
        !relaunched.nodes.contains(&"node-1".to_string()),
        "{relaunched:?}"
    );
    // The zombie kept writing generation-1 checkpoints after its fence; give it time to write
    // one more, then heal the partition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.signal_agent("node-1", Signal::SIGCONT).unwrap();
    kit::wait_for(Duration::from_secs(20), || async {
        kit::check(cluster.worker("node-1").is_none(), || {
            "the zombie worker was not stopped".into()
        })
    })
    .await;
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(zombie.pid as i32), None).is_err(),
        "zombie {} still alive",
        zombie.pid
    );
    let n = kit::node(&cluster, "node-1").await;
    assert!(n.connected && n.state == "fenced", "{n:?}");
    let (done, incidents) = finish(&cluster, &id).await;
    // Generation 2 resumed from a checkpoint written before the fence, never from the
    // zombie's later ones.
    let i = kit::assert_recovered_once(&done, &incidents, "partition");
    assert!(
        i.resumed_from_step <= at.step + 30,
        "resumed from step {} (fault at step {})",
        i.resumed_from_step,
        at.step
    );
}

#[test]
fn demo_kill_coordinator_finishes_with_no_incident_and_no_new_generation() {
    if python().is_none() {
        return;
    }
    let out = kit::run(std::process::Command::new(holdfast_exe!()).args([
        "demo",
        "--fault",
        "kill-coordinator",
        "--json",
        "--steps",
        "60",
    ]));
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(out.ok(), "{stdout}\n{stderr}");
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

/// Progress vouches for liveness, with real processes: node-1's agent is stopped (as a crashed
/// or cut-off agent would be) for well past the heartbeat timeout while its worker keeps
/// stepping with the others in a synchronous job. The job is not torn down: no incident, the
/// same generation, the same worker when the agent is back, and the job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_agent_is_lost_while_its_synchronous_job_steps_keeps_its_ranks() {
    let Some(python) = python() else { return };
    let dir = Scratch::new("cp-vouch");
    let mut cluster = start(&dir, 2, 1).await;
    let id = kit::submit(&cluster, spec(&python, &dir, 120)).await.job_id;
    let at = wait_step(&cluster, &id, 15).await;
    let worker = cluster.worker("node-1").unwrap();
    cluster.signal_agent("node-1", Signal::SIGSTOP).unwrap();
    // Past the 2 s heartbeat timeout, with the job still stepping.
    let later = kit::wait_job(&cluster, &id, Duration::from_secs(30), |j| {
        j.step >= at.step + 50
    })
    .await;
    assert_eq!(later.generation, 1, "the job was not relaunched: {later:?}");
    cluster.signal_agent("node-1", Signal::SIGCONT).unwrap();
    let (done, incidents) = finish(&cluster, &id).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.generation, 1, "{done:?}");
    assert!(incidents.is_empty(), "{incidents:?}");
    let still = cluster.worker("node-1");
    assert!(
        still.is_none() || still.is_some_and(|w| w.pid == worker.pid),
        "node-1 kept its worker"
    );
}

/// The coordinator's own stalls are never a node's fault, with real processes: the
/// coordinator is stopped (SIGSTOP, as a VM pause, a swap storm or a debugger would) for
/// pauses from just over the heartbeat timeout to well past it, during training, and
/// continued. No incident, no fence, the same generation; training goes on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_coordinator_fences_nobody_when_it_continues() {
    let Some(python) = python() else { return };
    let dir = Scratch::new("cp-sigstop");
    let cluster = start(&dir, 2, 1).await;
    let id = kit::submit(&cluster, spec(&python, &dir, 400)).await.job_id;
    let mut at = wait_step(&cluster, &id, 10).await;
    for pause in [Duration::from_millis(2_500), Duration::from_secs(8)] {
        let rank0 = cluster.worker("node-1").unwrap();
        cluster.signal_coordinator(Signal::SIGSTOP).unwrap();
        tokio::time::sleep(pause).await;
        cluster.signal_coordinator(Signal::SIGCONT).unwrap();
        // Training went on while the coordinator was stopped, with the same worker.
        let still = cluster.worker("node-1").unwrap();
        assert_eq!(
            (still.pid, still.generation),
            (rank0.pid, 1),
            "after {pause:?}"
        );
        at = wait_step(&cluster, &id, at.step + 20).await;
        assert_eq!(at.generation, 1, "after {pause:?}: {at:?}");
        for node in ["node-1", "node-2", "spare-1"] {
            let n = kit::node(&cluster, node).await;
            assert_ne!(n.state, "fenced", "after {pause:?}: {n:?}");
        }
        let incidents = cluster
            .client()
            .await
            .unwrap()
            .list_incidents(pb::ListIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .incidents;
        assert!(incidents.is_empty(), "after {pause:?}: {incidents:?}");
    }
}
