//! A host lost on EC2, end to end with the shipped `ec2` provider scripts against a real EC2 API
//! server (moto's): a coordinator (exec provider) and agents as real processes. Every host is an
//! instance launched from the launch template; "booting" an instance starts its agent, in a UTS
//! namespace of its own whose host name is the instance's (`ip-10-…`), advertising its private
//! address (what the template's user data does on EC2). The first host runs a one-node job and
//! is killed; the coordinator fences it, `fence` terminates exactly its instance, `provision`
//! launches a replacement tagged with the job, and the job resumes there from its checkpoint.
//! Needs root and `scripts/setup/42-ec2.sh` (skipped without them unless HOLDFAST_TEST_STRICT=1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_testkit::ec2::{self, Ec2Server};
use holdfast_testkit::{self as kit, holdfast_exe, Scratch};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The agents of booted instances, by instance id.
type Booted = Arc<Mutex<BTreeMap<String, Child>>>;

/// Boots instance `id` (private `address`, DNS name `dns`): starts its agent with the instance's
/// host name, as the launch template's user data would.
fn boot(exe: &Path, dir: &Path, coordinator: &str, id: &str, address: &str, dns: &str) -> Child {
    let host = dns.split('.').next().unwrap_or(dns);
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).expect("the agent's log");
    Command::new("unshare")
        .args(["--uts", "sh", "-c"])
        .arg(
            "hostname \"$1\" && exec \"$2\" agent --coordinator \"$3\" --advertise-address \"$4\" \
             --state-dir \"$5/nodes/$1\"",
        )
        .args(["agent", host])
        .arg(exe)
        .args([coordinator, address])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the agent's log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("booting {id}: {e}"))
}

/// Boots every instance the provider's record lists that has not booted yet, until `stop`.
fn boot_recorded(
    exe: PathBuf,
    dir: PathBuf,
    coordinator: String,
    record: PathBuf,
    booted: Booted,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, address, dns, ..] = fields[..] else {
                continue;
            };
            let mut booted = booted.lock().unwrap_or_else(|e| e.into_inner());
            if !booted.contains_key(id) {
                booted.insert(
                    id.to_string(),
                    boot(&exe, &dir, &coordinator, id, address, dns),
                );
            }
        }
        std::thread::sleep(kit::wait::POLL);
    }
}

#[tokio::test]
async fn a_host_lost_on_ec2_is_terminated_and_replaced_by_a_launched_instance() {
    let Some((moto, aws_bin)) = kit::require(ec2::tools()) else {
        return;
    };
    if kit::require(kit::netns::available()).is_none() {
        return;
    }
    let exe = holdfast_exe!();
    let dir = Scratch::new("e2e-ec2");
    let ec2 = Ec2Server::start(&moto, &aws_bin, &dir);
    ec2.launch_template("holdfast-gpu");

    let provider = kit::provider_scripts(&dir, "ec2");
    // This file's only test: the coordinator and its scripts inherit this environment.
    let path = std::env::var("PATH").unwrap_or_default();
    let mut env = ec2.env();
    env.extend([
        ("PATH", format!("{}:{path}", aws_bin.display())),
        ("HOLDFAST_EC2_LAUNCH_TEMPLATE", "holdfast-gpu".into()),
    ]);
    for (key, value) in env {
        std::env::set_var(key, value);
    }
    std::env::remove_var("STATE_DIRECTORY");
    let config = kit::exec_provider_config(&dir, &provider, 60000);
    let mut cluster = LocalCluster::start(exe, &dir, &["--config", &config])
        .await
        .expect("the coordinator starts");

    // The first host: an instance of the template that the operator launched and recorded.
    let first = ec2.aws(&[
        "ec2",
        "run-instances",
        "--launch-template",
        "LaunchTemplateName=holdfast-gpu",
        "--query",
        "Instances[0].InstanceId",
    ]);
    let (address, dns) = ec2.names(&first);
    let record = provider.join("ec2-instances");
    std::fs::write(&record, format!("{first} {address} {dns} job= request=\n")).unwrap();
    let booted: Booted = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let booter = {
        let (exe, dir, addr) = (exe.to_path_buf(), dir.to_path_buf(), cluster.addr.clone());
        let (record, booted, stop) = (record.clone(), booted.clone(), stop.clone());
        std::thread::spawn(move || boot_recorded(exe, dir, addr, record, booted, stop))
    };
    cluster
        .wait_ready(1, Duration::from_secs(30))
        .await
        .expect("the first instance's agent is ready");
    let host = dns.split('.').next().unwrap_or_default().to_string();
    let node = kit::node(&cluster, &host).await;
    assert_eq!(
        (node.hostname.as_str(), node.address.as_str()),
        (host.as_str(), address.as_str())
    );

    let id = kit::submit(&cluster, kit::train_spec(&dir, 1, 50))
        .await
        .job_id;
    kit::wait_job(&cluster, &id, Duration::from_secs(30), |j| j.step >= 15).await;
    // The host loses power: its agent and its worker's process group die at once.
    let worker = cluster.worker(&host);
    // The entry stays: a lost host does not boot again.
    if let Some(agent) = booted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&first)
    {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    if let Some(w) = worker {
        let _ = killpg(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
    }

    let (done, incidents) = kit::finish(&cluster, &id, Duration::from_secs(120)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = booter.join();
    cluster.shutdown();
    let launched: Vec<String> = {
        let mut booted = booted.lock().unwrap_or_else(|e| e.into_inner());
        for agent in booted.values_mut() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        booted.keys().filter(|id| **id != first).cloned().collect()
    };

    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.generation, 2, "{done:?}");
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(incidents[0].resumed_from_step >= 10, "{:?}", incidents[0]);
    // Exactly the lost host's instance was terminated; one replacement was launched for the
    // job, and its agent took the rank.
    assert!(
        matches!(ec2.state(&first).as_str(), "shutting-down" | "terminated"),
        "{}",
        ec2.state(&first)
    );
    assert_eq!(launched.len(), 1, "{launched:?}");
    let replacement = &launched[0];
    assert_eq!(ec2.state(replacement), "running");
    assert_eq!(ec2.tag(replacement, "holdfast:job"), id);
    let (_, replacement_dns) = ec2.names(replacement);
    let replacement_host = replacement_dns.split('.').next().unwrap_or_default();
    assert_eq!(done.nodes, [replacement_host], "{done:?}");
    assert_eq!(incidents[0].replacement_node_id, replacement_host);
}
