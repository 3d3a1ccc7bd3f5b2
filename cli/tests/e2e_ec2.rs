//! A host lost on EC2, end to end with the shipped `ec2` provider scripts against a real EC2 API
//! server (moto's): a coordinator (exec provider) and agents as real processes. Every host is an
//! instance launched from the launch template; "booting" an instance starts its agent, in a UTS
//! namespace of its own whose host name is the instance's (`ip-10-…`), advertising its private
//! address (what the template's user data does on EC2). The first host runs a one-node job and
//! is killed; the coordinator fences it, `fence` terminates exactly its instance, `provision`
//! launches a replacement tagged with the job, and the job resumes there from its checkpoint.
//! Needs root and `scripts/setup/42-ec2.sh` (skipped without them unless HOLDFAST_TEST_STRICT=1).

use std::time::Duration;

use holdfast_testkit::ec2::{self, Ec2Server};
use holdfast_testkit::{self as kit, holdfast_exe, Scratch};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

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
    // This file's only test: the coordinator and its scripts inherit this environment.
    let mut provider = ec2::Ec2Provider::install(&ec2, &aws_bin, &dir);
    // The first host: an instance of the template that the operator launched and recorded.
    let (mut cluster, first, address, host) = provider.start_cluster(&ec2, exe, &dir).await;
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
    provider.kill_agent(&first);
    if let Some(w) = worker {
        let _ = killpg(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
    }

    let (done, incidents) = kit::finish(&cluster, &id, Duration::from_secs(120)).await;
    cluster.shutdown();
    let launched: Vec<String> = provider
        .shut_down()
        .into_iter()
        .filter(|id| *id != first)
        .collect();

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
