//! Restarting an agent (SIGTERM, as `systemctl restart` does) while its job trains leaves the
//! worker running: the new agent adopts it from `worker.json`, follows its log for progress,
//! and the job finishes in the same generation with no incident.

use std::path::PathBuf;
use std::time::Duration;

use holdfast_cli::demo::{LocalCluster, TRAIN_SCRIPT};
use holdfast_proto::v1 as pb;
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
    let script = dir.join("train.py");
    std::fs::write(&script, TRAIN_SCRIPT).unwrap();
    let mut cluster = LocalCluster::start(&exe, &dir, &[]).await.unwrap();
    cluster.start_agent("node-1", "worker", &[]).unwrap();
    cluster.start_agent("node-2", "worker", &[]).unwrap();
    cluster
        .wait_ready(2, Duration::from_secs(20))
        .await
        .unwrap();

    let mut client = cluster.client().await.unwrap();
    let spec = pb::JobSpec {
        command: vec![
            "python3".into(),
            script.display().to_string(),
            "--steps".into(),
            "100".into(),
            "--step-time".into(),
            "0.1".into(),
            "--ckpt-every".into(),
            "10".into(),
        ],
        nodes: 2,
        checkpoint_uri: format!("file://{}", dir.join("ckpt").display()),
        stall_timeout_s: 5.0,
        ..Default::default()
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
