//! Fence → replacement-ready time through each replacement provider, with the lab each provider's
//! end-to-end test builds: the warm spare pool (no provider), the shipped `static`, `slurm` and
//! `ec2` exec-provider scripts (Slurm's daemons in network namespaces, moto's EC2 API server).
//! Each run starts a fresh lab, runs a one-node training job, kills the host running it
//! mid-training (its agent and its worker's process group at once) and prints one JSON line:
//! `provider`, `fenced_in_provider` (the provider's own record shows the lost host fenced),
//! `replacement_ready_s` (the incident's fenced → replaced), `detect_s` (fault → detected),
//! `resumed_s` (fenced → first step of the new generation), `resumed`.
//! Ignored in the normal run; scripts/bench-providers.sh runs one test with --exact, since the
//! exec providers read their settings from this process's environment.

use std::path::Path;
use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;
use holdfast_testkit::ec2::{self, Ec2Server};
use holdfast_testkit::slurm::{self, SlurmLab};
use holdfast_testkit::{self as kit, holdfast_exe, local_cluster, Scratch};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Each run's number and its own scratch directory (`HOLDFAST_BENCH_RUNS` runs, 3 by default).
fn runs(provider: &str) -> impl Iterator<Item = (usize, Scratch)> + '_ {
    let runs = std::env::var("HOLDFAST_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    (1..=runs).map(move |run| (run, Scratch::new(&format!("bench-provider-{provider}"))))
}

/// Prints the run's JSON line from the job as it ended and its incidents.
fn report(
    provider: &str,
    run: usize,
    fenced_in_provider: bool,
    done: &pb::Job,
    incidents: &[pb::Incident],
) {
    let incident = incidents.first();
    let seconds =
        |from: i64, to: i64| (from > 0 && to >= from).then(|| (to - from) as f64 / 1000.0);
    let ready = incident.and_then(|i| seconds(i.fenced_unix_ms, i.replaced_unix_ms));
    let detect = incident.and_then(|i| seconds(i.fault_unix_ms, i.detected_unix_ms));
    let back = incident.and_then(|i| seconds(i.fenced_unix_ms, i.resumed_unix_ms));
    let resumed = done.state == "succeeded"
        && incident.is_some_and(|i| i.resumed_unix_ms > 0 && i.resumed_from_step > 0);
    println!(
        "{}",
        serde_json::json!({
            "provider": provider,
            "run": run,
            "fenced_in_provider": fenced_in_provider,
            "replacement_ready_s": ready,
            "detect_s": detect,
            "resumed_s": back,
            "resumed": resumed,
            "replacement": incident.map(|i| i.replacement_node_id.clone()),
            "resumed_from_step": incident.map(|i| i.resumed_from_step),
        })
    );
}

/// Submits a one-node job, waits until it is training, and returns its id.
async fn training(cluster: &LocalCluster, dir: &Path) -> String {
    let id = kit::submit(cluster, kit::train_spec(dir, 1, 50))
        .await
        .job_id;
    kit::wait_job(cluster, &id, Duration::from_secs(60), |j| j.step >= 15).await;
    id
}

/// Kills the process group of the host's worker, if any (the host lost power).
fn kill_worker(worker: Option<holdfast_agent::worker::WorkerRecord>) {
    if let Some(w) = worker {
        let _ = killpg(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
    }
}

fn kill_pid_file(path: &Path) {
    let pid = std::fs::read_to_string(path).unwrap_or_default();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[tokio::test]
#[ignore]
async fn bench_replacement_spares() {
    let exe = holdfast_exe!();
    for (run, dir) in runs("spares") {
        let mut cluster = local_cluster(exe, &dir, &[], 1, 1).await;
        let id = training(&cluster, &dir).await;
        cluster.kill_host("node-1").expect("killing node-1");
        let (done, incidents) = kit::finish(&cluster, &id, Duration::from_secs(120)).await;
        // No provider: the fence is holdfast's own record.
        let fenced = kit::node(&cluster, "node-1").await.state == "fenced";
        cluster.shutdown();
        report("spares", run, fenced, &done, &incidents);
    }
}

#[tokio::test]
#[ignore]
async fn bench_replacement_static() {
    let exe = holdfast_exe!();
    for (run, dir) in runs("static") {
        let provider = kit::provider_scripts(&dir, "static");
        std::fs::write(provider.join("hosts"), "standby-1\nstandby-2\n").expect("hosts");
        let start = format!(
            "{exe} agent --coordinator http://$(cat {dir}/coordinator.addr) --node-id {{host}} \
             --role spare --state-dir {dir}/nodes/{{host}} >{dir}/{{host}}.log 2>&1 & \
             echo $! > {dir}/{{host}}.pid",
            exe = exe.display(),
            dir = dir.display()
        );
        std::env::set_var("HOLDFAST_STATIC_START", &start);
        let config = kit::exec_provider_config(&dir, &provider, 20000);
        let mut cluster = local_cluster(exe, &dir, &["--config", &config], 1, 0).await;
        let id = training(&cluster, &dir).await;
        cluster.kill_host("node-1").expect("killing node-1");
        let (done, incidents) = kit::finish(&cluster, &id, Duration::from_secs(120)).await;
        cluster.shutdown();
        for host in ["standby-1", "standby-2"] {
            kill_pid_file(&dir.join(format!("{host}.pid")));
        }
        let fenced = std::fs::read_to_string(provider.join("hosts.fenced")).unwrap_or_default();
        report(
            "static",
            run,
            fenced.contains(" node=node-1 "),
            &done,
            &incidents,
        );
    }
}

#[tokio::test]
#[ignore]
async fn bench_replacement_slurm() {
    kit::require(slurm::available()).expect("Slurm (scripts/setup/43-slurm.sh) and root");
    let exe = holdfast_exe!();
    for (run, dir) in runs("slurm") {
        let slurm = SlurmLab::start(&dir);
        let (mut cluster, work, path) = slurm.start_cluster(exe, &dir, "work-1").await;
        let id = training(&cluster, &dir).await;
        let worker = cluster.worker("work-1");
        drop(work);
        kill_worker(worker);
        let (done, incidents) = kit::finish(&cluster, &id, Duration::from_secs(120)).await;
        let reasons = slurm.reasons();
        let states = slurm.states();
        cluster.shutdown();
        for spare in ["spare-1", "spare-2"] {
            kill_pid_file(&dir.join(format!("{spare}.pid")));
        }
        let fenced = reasons
            .get("work-1")
            .is_some_and(|r| r.starts_with("holdfast fenced work-1: "))
            && states.get("work-1").is_some_and(|s| s.starts_with("drain"));
        report("slurm", run, fenced, &done, &incidents);
        drop(slurm);
        std::env::set_var("PATH", &path);
    }
}

#[tokio::test]
#[ignore]
async fn bench_replacement_ec2() {
    let (moto, aws_bin) =
        kit::require(ec2::tools()).expect("moto and the aws CLI (scripts/setup/42-ec2.sh)");
    kit::require(kit::netns::available()).expect("root for UTS namespaces");
    let exe = holdfast_exe!();
    for (run, dir) in runs("ec2") {
        let ec2 = Ec2Server::start(&moto, &aws_bin, &dir);
        let mut provider = ec2::Ec2Provider::install(&ec2, &aws_bin, &dir);
        let (mut cluster, first, _, host) = provider.start_cluster(&ec2, exe, &dir).await;
        let id = training(&cluster, &dir).await;
        let worker = cluster.worker(&host);
        provider.kill_agent(&first);
        kill_worker(worker);
        let (done, incidents) = kit::finish(&cluster, &id, Duration::from_secs(180)).await;
        cluster.shutdown();
        let launched = provider.shut_down().len().saturating_sub(1);
        // Exactly the lost host's instance is gone, and only it.
        let fenced = matches!(
            ec2.state(&first).as_str(),
            "shutting-down" | "terminated" | "stopping" | "stopped"
        ) && launched == 1;
        report("ec2", run, fenced, &done, &incidents);
        std::env::set_var("PATH", &provider.path_before);
    }
}
