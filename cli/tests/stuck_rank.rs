//! Integration tier: which rank stopped a synchronous job. Three real agents run the demo job
//! in its synchronous mode (every rank waits for every other at every step), so when one rank
//! stops all stop; the agents' evidence must name the stuck rank's node, whatever its position.

use std::path::Path;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, local_cluster, Scratch, Train};
use nix::sys::signal::Signal;

fn exe() -> &'static Path {
    holdfast_exe!()
}

/// How a rank gets stuck.
#[derive(Debug, Clone, Copy)]
enum Stuck {
    /// SIGSTOP of its worker.
    Stopped,
    /// Busy in its own code, never reaching the next exchange.
    Spinning,
}

/// A synchronous 3-node demo job with a short stall timeout: ranks exchange files in
/// `<dir>/sync` at every step.
fn sync_job(dir: &Path, python: &str) -> pb::JobSpec {
    let mut spec = Train {
        python: python.into(),
        nodes: 3,
        steps: 100_000,
        step_time_s: 0.05,
        ckpt_every: 1_000,
        synchronous: true,
    }
    .spec(dir);
    spec.stall_timeout_s = 2.0;
    spec
}

/// Runs the job on the cluster, makes rank `rank` stuck as `how` once training is under way
/// and returns the first incident, with the node that rank ran on.
async fn stall_one(
    cluster: &mut holdfast_cli::demo::LocalCluster,
    dir: &Path,
    python: &str,
    rank: usize,
    how: Stuck,
) -> (pb::Incident, String) {
    let _ = std::fs::remove_dir_all(dir.join("sync"));
    let job = kit::submit(cluster, sync_job(dir, python)).await;
    let running = kit::wait_job(cluster, &job.job_id, Duration::from_secs(20), |j| {
        j.state == "running" && j.step >= 3
    })
    .await;
    let node = running.nodes[rank].clone();
    match how {
        Stuck::Stopped => {
            cluster
                .signal_worker(&node, Signal::SIGSTOP)
                .expect("the worker is stopped");
        }
        Stuck::Spinning => {
            std::fs::write(dir.join("sync").join(format!("spin.rank-{rank}")), "")
                .expect("the spin file is written");
        }
    }
    // The incident, once every rank's agent answered with its stacks.
    let incident = kit::wait_for(Duration::from_secs(20), || async {
        match kit::incidents(cluster, &job.job_id).await.first() {
            Some(i) if !i.ranks.is_empty() && i.ranks.iter().all(|r| !r.stacks.is_empty()) => {
                Ok(i.clone())
            }
            other => Err(format!("no incident with stacks yet: {other:?}")),
        }
    })
    .await;
    // Unstick the rank before the job is stopped (a stopped process only dies by SIGKILL).
    match how {
        Stuck::Stopped => {
            let _ = cluster.signal_worker(&node, Signal::SIGCONT);
        }
        Stuck::Spinning => {
            let _ = std::fs::remove_file(dir.join("sync").join(format!("spin.rank-{rank}")));
        }
    }
    let mut client = cluster.client().await.expect("an operator client");
    let stop = pb::StopJobRequest {
        job_id: job.job_id.clone(),
    };
    client.stop_job(stop).await.expect("the job stops");
    kit::wait_job(cluster, &job.job_id, Duration::from_secs(20), |j| {
        j.state == "stopped"
    })
    .await;
    (incident, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_names_the_stuck_rank_in_every_position() {
    let Some(python) = kit::python() else {
        return;
    };
    let dir = Scratch::new("it-stuck-rank");
    let mut cluster = local_cluster(exe(), &dir, &[], 3, 0).await;
    let cases = [
        (0, Stuck::Stopped),
        (1, Stuck::Stopped),
        (2, Stuck::Stopped),
        (1, Stuck::Spinning),
    ];
    for (rank, how) in cases {
        let (incident, node) = stall_one(&mut cluster, &dir, &python, rank, how).await;
        assert_eq!(incident.cause, "progress_stalled", "{incident:?}");
        assert_eq!(
            incident.node_id, node,
            "rank {rank} {how:?}: {}",
            incident.detail
        );
        let why = match how {
            Stuck::Stopped => "stopped",
            Stuck::Spinning => "spins",
        };
        assert!(
            incident.detail.contains("singled out") && incident.detail.contains(why),
            "{}",
            incident.detail
        );
        assert_eq!(incident.ranks.len(), 3, "{incident:?}");
        // With py-spy (scripts/setup/45-pyspy.sh puts it on PATH) the stacks show where each
        // rank was: the waiting ones in the exchange, a spinning one in its own loop.
        let py_spy = holdfast_agent::worker::find_py_spy(Path::new("")).is_some();
        for r in &incident.ranks {
            let want = match (py_spy, how) {
                (false, _) => "stacks not available",
                (true, Stuck::Spinning) if r.rank as usize == rank => "spin_while_told",
                (true, Stuck::Stopped) if r.rank as usize == rank => "train_demo.py",
                (true, _) => "exchange",
            };
            assert!(r.stacks.contains(want), "rank {}: {}", r.rank, r.stacks);
        }
        assert!(
            incident.ranks[rank].evidence.contains(match how {
                Stuck::Stopped => "process stopped",
                Stuck::Spinning => "process running",
            }),
            "{:?}",
            incident.ranks
        );
    }
}
