//! The exec replacement provider end to end, with the shipped static-host-list scripts: a job
//! on one node loses its host; the coordinator asks `provision`, which starts an agent on the
//! next standby host; that host registers, takes the rank, and the job resumes from its
//! checkpoint. The lost host goes to `fence`.

use std::time::Duration;

use holdfast_testkit::{self as kit, holdfast_exe, local_cluster, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test]
async fn a_lost_host_is_fenced_and_replaced_by_a_provisioned_one() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("provider");
    let provider = kit::provider_scripts(&dir, "static");
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
    let config_arg = kit::exec_provider_config(&dir, &provider, 20000);
    // The provider scripts inherit the coordinator's environment; this file's only test.
    std::env::set_var("HOLDFAST_STATIC_START", &start);

    let mut cluster = local_cluster(exe, &dir, &["--config", &config_arg], 1, 0).await;
    let id = kit::submit(&cluster, kit::train_spec(&dir, 1, 50))
        .await
        .job_id;
    kit::wait_job(&cluster, &id, Duration::from_secs(30), |j| j.step >= 15).await;
    cluster.kill_host("node-1").unwrap();

    let done = kit::wait_job(&cluster, &id, Duration::from_secs(60), |j| {
        j.state == "succeeded" || j.state == "failed"
    })
    .await;
    let pid = std::fs::read_to_string(dir.join("standby-1.pid")).unwrap_or_default();
    let incidents = kit::incidents(&cluster, &id).await;
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
}
