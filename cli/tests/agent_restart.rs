//! Restarting an agent (SIGTERM, as `systemctl restart` does) while its job trains leaves the
//! worker running: the new agent adopts it from `worker.json`, follows its log for progress,
//! and the job finishes in the same generation with no incident.

use std::time::Duration;

use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, local_cluster, Scratch};
use nix::sys::signal::kill;
use nix::unistd::Pid;

#[tokio::test]
async fn agent_restart_mid_training_keeps_the_job_in_its_generation() {
    let dir = Scratch::new("agent-restart");
    let mut cluster = local_cluster(holdfast_exe!(), &dir, &[], 2, 0).await;
    let spec = pb::JobSpec {
        stall_timeout_s: 5.0,
        ..kit::train_spec(&dir, 2, 100)
    };
    let id = kit::submit(&cluster, spec).await.job_id;
    kit::wait_job(&cluster, &id, Duration::from_secs(30), |j| {
        j.state == "running" && j.step >= 15
    })
    .await;

    // systemctl restart: SIGTERM, the agent exits, the worker keeps training.
    let worker = cluster.worker("node-2").expect("node-2 runs a worker");
    let status = cluster
        .stop_agent("node-2", Duration::from_secs(10))
        .unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert!(
        kill(Pid::from_raw(worker.pid as i32), None).is_ok(),
        "worker died with its agent"
    );
    let step_at_restart = kit::job(&cluster, &id).await.step;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_agent("node-2", "worker", &[]).unwrap();

    // The new agent reports the same worker in its hello and its progress from the log.
    let n2 = kit::wait_node(
        &cluster,
        "node-2",
        Duration::from_secs(20),
        "node-2 after restart",
        |n| n.connected && n.worker_pid == worker.pid && n.last_step > step_at_restart + 5,
    )
    .await;
    assert_eq!(n2.state, "allocated");
    assert_eq!(n2.generation, 1);

    let done = kit::wait_job(&cluster, &id, Duration::from_secs(40), |j| {
        j.state != "running"
    })
    .await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.generation, 1, "the job was relaunched: {done:?}");
    assert_eq!(done.restarts, 0);
    assert_eq!(done.step, 100);
    let incidents = kit::incidents(&cluster, &id).await;
    assert!(incidents.is_empty(), "{incidents:?}");
}

#[tokio::test]
async fn rolling_upgrade_restarts_every_agent_batch_by_batch_without_disturbing_the_job() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("upgrade");
    let cluster = local_cluster(exe, &dir, &[], 3, 0).await;
    let id = kit::submit(&cluster, kit::train_spec(&dir, 2, 150))
        .await
        .job_id;
    kit::wait_job(&cluster, &id, Duration::from_secs(30), |j| j.step >= 10).await;
    let before = kit::nodes(&cluster).await;
    let out = kit::run_async(tokio::process::Command::new(exe).args([
        "upgrade-agents",
        "--batch-size",
        "2",
        "--wait",
        "20",
        "--coordinator",
        &cluster.addr,
    ]))
    .await;
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    // The idle node goes in the first batch, before the nodes that train.
    assert!(
        out.stdout.contains("batch 1/2: restarting node-3, node-1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("batch 2/2: healthy"), "{}", out.stdout);
    let after = kit::nodes(&cluster).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.node_id, a.node_id);
        assert_ne!(
            b.agent_started_unix_ms, a.agent_started_unix_ms,
            "{} not restarted",
            a.node_id
        );
        assert_eq!(b.worker_pid, a.worker_pid, "{} worker changed", a.node_id);
    }
    let running = kit::job(&cluster, &id).await;
    assert_eq!(
        (running.state.as_str(), running.generation),
        ("running", 1),
        "{running:?}"
    );
    // A node that does not exist is refused, and the tool says why and fails.
    let out = kit::run_async(tokio::process::Command::new(exe).args([
        "upgrade-agents",
        "--nodes",
        "nope",
        "--coordinator",
        &cluster.addr,
    ]))
    .await;
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("no connected node"));
    let mut client = cluster.client().await.unwrap();
    client
        .stop_job(pb::StopJobRequest { job_id: id })
        .await
        .unwrap();
}
