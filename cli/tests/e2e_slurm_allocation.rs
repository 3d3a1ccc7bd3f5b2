//! `holdfast launch` inside a Slurm allocation, end to end: Slurm's daemons on network-namespace
//! hosts (`holdfast_testkit::slurm`), a coordinator and agents as real processes. `sbatch -N 3`
//! allocates all three lab nodes; its batch script runs `holdfast launch --nodes 2`, which reads
//! `SLURM_JOB_NODELIST`: two of the allocation's nodes run the ranks, the third is their spare.
//! An agent outside the allocation (`outside-1`, a registered spare, which the coordinator would
//! otherwise pick first) is never used. The host of a rank is killed; the allocation's spare
//! takes its rank and the job resumes from its checkpoint; the Slurm job completes when the
//! holdfast job does. Needs root and `scripts/setup/43-slurm.sh` (skipped without them unless
//! HOLDFAST_TEST_STRICT=1).

use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;
use holdfast_testkit::slurm::{self, SlurmLab};
use holdfast_testkit::{self as kit, holdfast_exe};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The holdfast job's id (`--job-id`).
const JOB: &str = "in-slurm";

/// `args` as shell words (they are the test's own paths and flags: no single quotes).
fn shell_words(args: &[String]) -> String {
    let quoted: Vec<String> = (args.iter())
        .inspect(|a| assert!(!a.contains('\''), "{a}"))
        .map(|a| format!("'{a}'"))
        .collect();
    quoted.join(" ")
}

#[tokio::test]
async fn launch_in_an_allocation_keeps_to_its_nodes_and_repairs_from_its_spare() {
    let Some((dir, slurm)) = SlurmLab::for_test("e2e-slurm-alloc") else {
        return;
    };
    let exe = holdfast_exe!();
    let mut cluster = LocalCluster::start(exe, &dir, &[])
        .await
        .expect("the coordinator starts");
    // An agent on every node of the lab, each named as its Slurm node, and one outside it.
    let mut agents = std::collections::BTreeMap::new();
    for (node, _) in slurm::NODES {
        agents.insert(
            node,
            slurm::start_agent(exe, &cluster.addr, node, "worker", &dir),
        );
    }
    let _outside = slurm::start_agent(exe, &cluster.addr, "outside-1", "spare", &dir);
    cluster
        .wait_ready(4, Duration::from_secs(30))
        .await
        .expect("four agents are ready");

    // The batch script runs on the allocation's first node, in that host's network namespace;
    // the lab's coordinator listens on this machine's loopback, so the script steps back into
    // this process's network namespace (the environment, SLURM_JOB_NODELIST included, goes
    // with it) and runs holdfast launch there.
    let spec = kit::train_spec(&dir, 2, 60);
    let mut launch = vec![
        exe.display().to_string(),
        "launch".into(),
        "--coordinator".into(),
        cluster.addr.clone(),
        "--nodes".into(),
        "2".into(),
        "--job-id".into(),
        JOB.into(),
        "--checkpoint".into(),
        spec.checkpoint_uri.clone(),
        "--".into(),
    ];
    launch.extend(spec.command.iter().cloned());
    let script = kit::write_script(
        &dir,
        "batch.sh",
        &format!(
            "exec nsenter --net=/proc/{}/ns/net {}",
            std::process::id(),
            shell_words(&launch)
        ),
    );
    let output = dir.join("batch.out");
    let slurm_job = slurm.sbatch(
        &[
            "-p",
            slurm::ALL,
            "-N",
            "3",
            "--job-name",
            "holdfast",
            &format!("--output={}", output.display()),
        ],
        &script,
    );

    // The job appears once Slurm has started the batch script.
    let job = kit::wait_for(Duration::from_secs(60), || async {
        let mut client = cluster.client().await.map_err(|e| e.to_string())?;
        let batch = || std::fs::read_to_string(&output).unwrap_or_default();
        let job = (client
            .get_job(pb::GetJobRequest { job_id: JOB.into() })
            .await)
            .map_err(|s| {
                format!(
                    "{}; {:?}; batch output: {}",
                    s.message(),
                    slurm.job_state(&slurm_job).1,
                    batch()
                )
            })?
            .into_inner();
        kit::check(job.step >= 15, || format!("{job:?}")).map(|()| job)
    })
    .await;
    let allowed = job.spec.as_ref().map(|s| s.allowed_nodes.clone());
    let first_nodes = job.nodes.clone();
    // Ranks go to the allocation's nodes in node-id order: spare-1 and spare-2; work-1 (the
    // batch host) stays spare. The host of rank 0 loses power: its agent and worker die.
    assert_eq!(first_nodes, ["spare-1", "spare-2"], "{job:?}");
    let worker = cluster.worker("spare-1");
    drop(agents.remove("spare-1"));
    if let Some(w) = worker {
        let _ = killpg(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
    }

    let (done, incidents) = kit::finish(&cluster, JOB, Duration::from_secs(90)).await;
    let outside = kit::node(&cluster, "outside-1").await;
    let finished = kit::wait_for_blocking(Duration::from_secs(30), || {
        let (state, record) = slurm.job_state(&slurm_job);
        kit::check(
            !matches!(state.as_str(), "PENDING" | "RUNNING" | "COMPLETING" | ""),
            || format!("slurm job {slurm_job} not done: {record}"),
        )
        .map(|()| state)
    });
    let printed = std::fs::read_to_string(&output).unwrap_or_default();
    cluster.shutdown();

    let mut allowed = allowed.unwrap_or_default();
    allowed.sort();
    assert_eq!(allowed, ["spare-1", "spare-2", "work-1"], "{printed}");
    let incident = kit::assert_recovered_once(&done, &incidents, &printed);
    assert_eq!(incident.node_id, "spare-1");
    assert_eq!(incident.replacement_node_id, "work-1", "{incident:?}");
    assert!(incident.resumed_from_step >= 10, "{incident:?}");
    assert_eq!(done.nodes, ["work-1", "spare-2"], "{done:?}");
    // The agent outside the allocation never ran anything of the job.
    assert_eq!(
        (outside.state.as_str(), outside.job_id.as_str()),
        ("ready", "")
    );
    assert!(
        cluster.worker("outside-1").is_none(),
        "outside-1 ran a worker"
    );
    // The batch script's launch saw the allocation and followed the job to its end.
    assert!(
        printed.contains("2 of its 3 nodes run the ranks, 1 stay spare"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("job {JOB} succeeded")),
        "{printed}"
    );
    assert_eq!(finished, "COMPLETED", "{printed}");
}
