//! Restart-to-reconciled time of a single coordinator with many connected agents: the
//! coordinator (a real process with its redb state file) is SIGKILLed and started again; the
//! clock runs from the restart until every agent is connected and ready again.
//! Agents run in this process as tasks (each a full agent with its own state directory and gRPC
//! stream). Ignored in the normal run; scripts/bench-restart.sh runs it.

use std::time::{Duration, Instant};

use holdfast_cli::demo::LocalCluster;
use holdfast_testkit::{self as kit, holdfast_exe, Scratch};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_restart_to_reconciled() {
    let agents: usize = env_or("HOLDFAST_BENCH_AGENTS", 100);
    let runs: usize = env_or("HOLDFAST_BENCH_RUNS", 5);
    let backoff_ms: u64 = env_or("HOLDFAST_BENCH_AGENT_BACKOFF_MS", 2000);
    let dir = Scratch::new("bench-restart");
    let mut cluster = LocalCluster::start(holdfast_exe!(), &dir, &[])
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for i in 0..agents {
        let config = holdfast_agent::AgentConfig {
            coordinator: cluster.addr.clone(),
            node_id: format!("n{i:03}"),
            state_dir: dir.join("nodes").join(format!("n{i:03}")),
            reconnect_max_backoff_ms: backoff_ms,
            ..Default::default()
        };
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = holdfast_agent::run(config, Default::default(), shutdown).await {
                eprintln!("agent failed: {e}");
            }
        });
    }
    kit::wait_for(Duration::from_secs(60), || async {
        let n = kit::ready_count(&cluster).await;
        kit::check(n >= agents, || format!("{n} of {agents} agents connected"))
    })
    .await;
    let mut times = Vec::new();
    for run in 1..=runs {
        cluster.kill_coordinator().unwrap();
        let started = Instant::now();
        cluster.restart_coordinator().await.unwrap();
        let listening = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(60);
        while kit::ready_count(&cluster).await < agents {
            assert!(Instant::now() < deadline, "agents did not all come back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = started.elapsed().as_secs_f64();
        eprintln!(
            "run {run}: listening after {:.3} s, {agents} agents reconciled after {t:.3} s",
            listening.as_secs_f64()
        );
        times.push(t);
        // Let the agents settle on the new coordinator before the next kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "restart_to_reconciled_s agents {agents} agent_max_backoff_ms {backoff_ms} {}",
        kit::timing_summary(&mut times)
    );
    let _ = stop_tx.send(true);
}
