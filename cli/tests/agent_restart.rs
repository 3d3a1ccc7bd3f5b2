//! Restarting an agent (SIGTERM, as `systemctl restart` does) while its job trains leaves the
//! worker running: the new agent adopts it from `worker.json`, follows its log for progress,
//! and the job finishes in the same generation with no incident.

use std::path::PathBuf;
use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;

mod common;
use nix::sys::signal::kill;
use nix::unistd::Pid;

async fn nodes(cluster: &LocalCluster) -> Vec<pb::Node> {
    let mut client = cluster.client().await.unwrap();
    client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
}

async fn job(cluster: &LocalCluster, id: &str) -> pb::Job {
    let mut client = cluster.client().await.unwrap();
    client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn agent_restart_mid_training_keeps_the_job_in_its_generation() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_holdfast"));
    let dir = std::env::temp_dir().join(format!("holdfast-agent-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = LocalCluster::start(&exe, &dir, &[]).await.unwrap();
    cluster.start_agent("node-1", "worker", &[]).unwrap();
    cluster.start_agent("node-2", "worker", &[]).unwrap();
    cluster
        .wait_ready(2, Duration::from_secs(20))
        .await
        .unwrap();

    let mut client = cluster.client().await.unwrap();
    let spec = pb::JobSpec {
        stall_timeout_s: 5.0,
        ..common::train_spec(&dir, 2, 100)
    };
    let id = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(job(&cluster, &id).await.state == "running" && job(&cluster, &id).await.step >= 15) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            job(&cluster, &id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    let step_at_restart = job(&cluster, &id).await.step;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_agent("node-2", "worker", &[]).unwrap();

    // The new agent reports the same worker in its hello and its progress from the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n2 = nodes(&cluster)
            .await
            .into_iter()
            .find(|n| n.node_id == "node-2")
            .unwrap();
        if n2.connected && n2.worker_pid == worker.pid && n2.last_step > step_at_restart + 5 {
            assert_eq!(n2.state, "allocated");
            assert_eq!(n2.generation, 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-2 after restart: {n2:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let done = loop {
        let j = job(&cluster, &id).await;
        if j.state != "running" {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.generation, 1, "the job was relaunched: {done:?}");
    assert_eq!(done.restarts, 0);
    assert_eq!(done.step, 100);
    let incidents = client
        .list_incidents(pb::ListIncidentsRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert!(incidents.is_empty(), "{incidents:?}");
    cluster.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn rolling_upgrade_restarts_every_agent_batch_by_batch_without_disturbing_the_job() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_holdfast"));
    let dir = std::env::temp_dir().join(format!("holdfast-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = LocalCluster::start(&exe, &dir, &[]).await.unwrap();
    for node in ["node-1", "node-2", "node-3"] {
        cluster.start_agent(node, "worker", &[]).unwrap();
    }
    cluster
        .wait_ready(3, Duration::from_secs(20))
        .await
        .unwrap();
    let mut client = cluster.client().await.unwrap();
    let spec = common::train_spec(&dir, 2, 150);
    let id = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while job(&cluster, &id).await.step < 10 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = nodes(&cluster).await;
    let out = tokio::process::Command::new(&exe)
        .args([
            "upgrade-agents",
            "--batch-size",
            "2",
            "--wait",
            "20",
            "--coordinator",
            &cluster.addr,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The idle node goes in the first batch, before the nodes that train.
    assert!(
        text.contains("batch 1/2: restarting node-3, node-1"),
        "{text}"
    );
    assert!(text.contains("batch 2/2: healthy"), "{text}");
    let after = nodes(&cluster).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.node_id, a.node_id);
        assert_ne!(
            b.agent_started_unix_ms, a.agent_started_unix_ms,
            "{} not restarted",
            a.node_id
        );
        assert_eq!(b.worker_pid, a.worker_pid, "{} worker changed", a.node_id);
    }
    let running = job(&cluster, &id).await;
    assert_eq!(
        (running.state.as_str(), running.generation),
        ("running", 1),
        "{running:?}"
    );
    // A node that does not exist is refused, and the tool says why and fails.
    let out = tokio::process::Command::new(&exe)
        .args([
            "upgrade-agents",
            "--nodes",
            "nope",
            "--coordinator",
            &cluster.addr,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connected node"));
    let mut client = cluster.client().await.unwrap();
    client
        .stop_job(pb::StopJobRequest { job_id: id })
        .await
        .unwrap();
    cluster.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
