//! A host lost under Slurm, end to end with the shipped `slurm` provider scripts: a coordinator
//! (exec provider) and agents as real processes, Slurm's daemons on network-namespace hosts
//! (`holdfast_testkit::slurm`). The agent of Slurm node `work-1` (its own UTS namespace, so its
//! host name is the node's name) runs a one-node job; the host is killed; the coordinator fences
//! it, the `fence` script drains `work-1` in Slurm with holdfast's reason, `provision` takes an
//! idle spare of partition `spare` and starts its agent, and the job resumes there from its
//! checkpoint. Needs root and `scripts/setup/43-slurm.sh` (skipped without them unless
//! HOLDFAST_TEST_STRICT=1).

use std::time::Duration;

use holdfast_testkit::slurm::SlurmLab;
use holdfast_testkit::{self as kit, holdfast_exe};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

#[tokio::test]
async fn a_host_lost_under_slurm_is_drained_and_a_spare_takes_its_rank() {
    let Some((dir, slurm)) = SlurmLab::for_test("e2e-slurm") else {
        return;
    };
    let exe = holdfast_exe!();

    // The coordinator runs on loopback, outside the lab: its scripts reach slurmctld through
    // sinfo/scontrol wrappers that enter the controller's namespace. "Starting the agent on a
    // node" starts a local agent with the node's host name. This file's only test: the
    // coordinator and its scripts inherit this process's environment.
    let (mut cluster, work, _path) = slurm.start_cluster(exe, &dir, "work-1").await;
    let node = kit::node(&cluster, "work-1").await;
    assert_eq!(node.hostname, "work-1", "{node:?}");

    let id = kit::submit(&cluster, kit::train_spec(&dir, 1, 50))
        .await
        .job_id;
    kit::wait_job(&cluster, &id, Duration::from_secs(30), |j| j.step >= 15).await;
    // The host loses power: its agent and its worker's process group die at once.
    let worker = cluster.worker("work-1");
    drop(work);
    if let Some(w) = worker {
        let _ = killpg(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
    }

    let (done, incidents) = kit::finish(&cluster, &id, Duration::from_secs(90)).await;
    let reasons = slurm.reasons();
    let states = slurm.states();
    let taken = done.nodes.first().cloned().unwrap_or_default();
    let shown = kit::run(
        slurm
            .client("scontrol")
            .args(["-o", "show", "node", &taken]),
    );
    cluster.shutdown();
    for spare in ["spare-1", "spare-2"] {
        let pid = std::fs::read_to_string(dir.join(format!("{spare}.pid"))).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.generation, 2, "{done:?}");
    assert!(taken.starts_with("spare-"), "{done:?}");
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].replacement_node_id, taken);
    assert!(incidents[0].resumed_from_step >= 10, "{:?}", incidents[0]);
    // Slurm drained exactly the lost node, saying why; the spare holdfast took is marked.
    assert_eq!(
        reasons.keys().collect::<Vec<_>>(),
        ["work-1"],
        "{reasons:?} {states:?}"
    );
    assert!(
        reasons["work-1"].starts_with(&format!(
            "holdfast fenced work-1: incident {}: ",
            incidents[0].id
        )),
        "{reasons:?}"
    );
    assert!(states["work-1"].starts_with("drain"), "{states:?}");
    assert!(
        shown
            .stdout
            .contains(&format!(" Comment=holdfast:job={id}:")),
        "{}",
        shown.stdout
    );
}
