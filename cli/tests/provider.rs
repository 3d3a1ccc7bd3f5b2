//! The exec replacement provider end to end, with the shipped static-host-list scripts: a job
//! on one node loses its host; the coordinator asks `provision`, which starts an agent on the
//! next standby host; that host registers, takes the rank, and the job resumes from its
//! checkpoint. The lost host goes to `fence`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;

mod common;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test]
async fn a_lost_host_is_fenced_and_replaced_by_a_provisioned_one() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_holdfast"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("holdfast-provider-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let provider = dir.join("provider");
    std::fs::create_dir_all(&provider).unwrap();
    for script in ["provision", "fence"] {
        let to = provider.join(script);
        std::fs::copy(
            repo.join("lifecycle-scripts/providers/static").join(script),
            &to,
        )
        .unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        provider.join("hosts"),
        "# standby hosts\nstandby-1\nstandby-2\n",
    )
    .unwrap();
    // "Starting the agent on a host" is starting a local agent process with that node id.
    let start = format!(
        "{exe} agent --coordinator http://$(cat {dir}/coordinator.addr) --node-id {{host}} --role spare \
         --state-dir {dir}/nodes/{{host}} >{dir}/{{host}}.log 2>&1 & echo $! > {dir}/{{host}}.pid",
        exe = exe.display(),
        dir = dir.display()
    );
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "provider = \"exec\"\nprovider_dir = \"{}\"\nprovider_timeout_ms = 20000\nprovider_attempts = 2\nprovider_retry_ms = 100\n",
            provider.display()
        ),
    )
    .unwrap();
    // The provider scripts inherit the coordinator's environment; this file's only test.
    std::env::set_var("HOLDFAST_STATIC_START", &start);

    let config_arg = config.display().to_string();
    let mut cluster = LocalCluster::start(&exe, &dir, &["--config", &config_arg])
        .await
        .unwrap();
    cluster.start_agent("node-1", "worker", &[]).unwrap();
    cluster
        .wait_ready(1, Duration::from_secs(20))
        .await
        .unwrap();
    let mut client = cluster.client().await.unwrap();
    let spec = common::train_spec(&dir, 1, 50);
    let id = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let get = |mut c: holdfast_cli::client::Client, id: String| async move {
        c.get_job(pb::GetJobRequest { job_id: id })
            .await
            .unwrap()
            .into_inner()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while get(client.clone(), id.clone()).await.step < 15 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.kill_host("node-1").unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let j = get(client.clone(), id.clone()).await;
        if j.state == "succeeded" || j.state == "failed" {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pid = std::fs::read_to_string(dir.join("standby-1.pid")).unwrap_or_default();
    let incidents = client
        .list_incidents(pb::ListIncidentsRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .incidents;
    let fenced = std::fs::read_to_string(provider.join("hosts.fenced")).unwrap_or_default();
    let used = std::fs::read_to_string(provider.join("hosts.used")).unwrap_or_default();
    cluster.shutdown();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }

    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.nodes, ["standby-1"]);
    assert_eq!(done.generation, 2);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].replacement_node_id, "standby-1");
    assert!(incidents[0].resumed_from_step >= 10, "{:?}", incidents[0]);
    assert_eq!(used.trim(), "standby-1", "one host asked for, one started");
    assert!(
        fenced.contains(" node=node-1 ") && fenced.contains("agent stream closed"),
        "{fenced:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
