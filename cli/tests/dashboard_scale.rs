//! The dashboard at scale, in headless Chromium (`cli/tests/dashboard_scale.cjs`): a coordinator
//! process holding 2,000 simulated agents (the swarm generator's agents, `holdfast bench swarm`'s
//! library, each with its own HTTP/2 connection speaking `holdfast.v1`) and two jobs.
//! - the heatmap draws one cell per node, 2,000, grouped by job with free workers and spares
//!   apart;
//! - the search narrows the node table (by node id, by job);
//! - the table keeps a few dozen rows in the DOM however far it scrolls, and reaches the last
//!   node;
//! - the throughput chart draws steps/s for both jobs, and marks the incident once the test
//!   silences a rank of one of them.
//!
//! With `HOLDFAST_DASHBOARD_SCALE_SCREENSHOT=docs/dashboard-2000-nodes.png` (relative to the
//! repository) it saves the page as that screenshot. Needs Chromium and playwright-core
//! (scripts/setup/70-browser.sh); without them it fails under HOLDFAST_TEST_STRICT=1, else skips.

use std::sync::Arc;
use std::time::Duration;

use holdfast_cli::bench::agent::{self, AgentProbe, AgentSpec, SwarmCounters};
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, script_line, Browser, Scratch};
use tokio::io::AsyncWriteExt;

/// Simulated agents (spares included); `HOLDFAST_DASHBOARD_SCALE_AGENTS` for fewer (at least
/// 200) on a box too loaded to register 2,000 in debug builds.
fn agents() -> usize {
    std::env::var("HOLDFAST_DASHBOARD_SCALE_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
        .max(200)
}
const SPARES: usize = 40;
/// Agents started at once; each wave is ready before the next starts.
const WAVE: usize = 250;
/// Until a wave is ready. Each join makes the coordinator save its whole state (a record of
/// every node), so a wave takes longer as the swarm grows.
const REGISTER_WITHIN: Duration = Duration::from_secs(90);
/// Two jobs, of these sizes.
const JOBS: [(&str, u32); 2] = [("llm-a", 16), ("llm-b", 8)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_two_thousand_agents_as_a_heatmap_a_table_and_a_chart() {
    let exe = holdfast_exe!();
    let total = agents();
    let Some(browser) = kit::require(Browser::find()) else {
        return;
    };
    let dir = Scratch::new("dashboard-scale");
    // Heartbeats every 2 s instead of 500 ms: a debug-built coordinator and generator share this
    // box with the browser, and the page is the subject here, not heartbeat load.
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        "heartbeat_interval_ms = 2000\nheartbeat_timeout_ms = 6000\n",
    )
    .expect("config written");
    let config = config.display().to_string();
    // State in memory: at this size each join rewrites every node's record, which a loaded
    // disk's fsyncs would turn into stalls of seconds.
    let cluster =
        holdfast_cli::demo::LocalCluster::start(exe, &dir, &["--config", &config, "--ephemeral"])
            .await
            .expect("coordinator starts");

    // The swarm: node-0000 … node-1959 workers, node-1960 … node-1999 spares (of 2,000), in waves
    // of WAVE, each wave ready before the next starts.
    let counters = Arc::new(SwarmCounters::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let (stop_agents, stop) = tokio::sync::watch::channel(false);
    let mut probes = Vec::with_capacity(total);
    let mut agents = tokio::task::JoinSet::new();
    let mut client = cluster.client().await.expect("an operator client");
    let started = std::time::Instant::now();
    for wave in (0..total).step_by(WAVE) {
        for i in wave..(wave + WAVE).min(total) {
            let probe = Arc::new(AgentProbe::new(format!("node-{i:04}"), i >= total - SPARES));
            probes.push(probe.clone());
            agents.spawn(agent::run(
                AgentSpec {
                    address: cluster.addr.clone(),
                    probe,
                    counters: counters.clone(),
                    pid: 100_000 + i as u32,
                    step: Duration::from_millis(500),
                    connect_gate: gate.clone(),
                    tls: None,
                },
                stop.clone(),
            ));
        }
        let want = (wave + WAVE).min(total);
        // Asked once a second: each ListNodes walks every node.
        let ready = tokio::time::timeout(REGISTER_WITHIN, async {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let request = pb::ListNodesRequest {
                    page_size: 1,
                    ..Default::default()
                };
                if let Ok(page) = client.list_nodes(request).await {
                    let counts = page.into_inner().counts_by_state;
                    if counts.get("ready").is_some_and(|&n| n as usize == want) {
                        return;
                    }
                }
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "{want} agents not ready within {REGISTER_WITHIN:?}"
        );
    }
    eprintln!("{total} agents ready in {:?}", started.elapsed());
    for (job, nodes) in JOBS {
        client
            .submit_job(pb::SubmitJobRequest {
                spec: Some(pb::JobSpec {
                    job_id: job.into(),
                    command: vec!["swarm-worker".into(), "{node_rank}".into()],
                    nodes,
                    // The other ranks of a pretend job keep stepping: a silenced rank is a
                    // fault at once instead of vouched for.
                    progress_vouches: Some(false),
                    ..Default::default()
                }),
            })
            .await
            .expect("job accepted");
    }
    let mut members = Vec::new();
    for (job, _) in JOBS {
        let running = kit::wait_job(&cluster, job, Duration::from_secs(30), |j| {
            j.state == "running" && j.step >= 3
        })
        .await;
        members.push(running.nodes);
    }

    let screenshot = std::env::var("HOLDFAST_DASHBOARD_SCALE_SCREENSHOT")
        .map(|p| kit::repo_root().join(p))
        .unwrap_or_else(|_| dir.join("dashboard-2000-nodes.png"));
    let (mut page, mut stdin, mut lines) = browser.open_dashboard(
        "dashboard_scale.cjs",
        &format!("{}/", cluster.addr),
        &screenshot,
        &[
            ("DASHBOARD_NODES", total.to_string()),
            ("DASHBOARD_JOBS", JOBS.map(|(j, _)| j).join(",")),
        ],
    );

    // The map: every node a cell, grouped by job, free workers and spares apart.
    let ready = script_line(&mut lines, Duration::from_secs(60)).await;
    assert_eq!(ready["stage"], "ready", "{ready}");
    assert_eq!(ready["cells"], total, "{ready}");
    let groups = &ready["groups"];
    for (job, nodes) in JOBS {
        assert_eq!(groups[job], nodes, "{ready}");
    }
    let free = total - SPARES - JOBS.iter().map(|(_, n)| *n as usize).sum::<usize>();
    assert_eq!(groups["free workers"], free, "{ready}");
    assert_eq!(groups["spares"], SPARES, "{ready}");
    assert_eq!(ready["counts"]["allocated"], 24, "{ready}");
    // The search narrows the table: node-01xx is a hundred nodes, a job's name its nodes.
    assert_eq!(ready["search"]["node-01"], 100, "{ready}");
    assert_eq!(ready["search"][JOBS[1].0], JOBS[1].1, "{ready}");
    // The table holds a few dozen rows whatever the scroll, and reaches the last node.
    assert_eq!(ready["table"]["total"], total, "{ready}");
    assert_eq!(
        ready["table"]["lastShown"],
        format!("node-{:04}", total - 1),
        "{ready}"
    );
    assert!(
        ready["table"]["maxRows"].as_u64().unwrap() <= 60,
        "virtualised: {ready}"
    );
    assert!(
        ready["table"]["lastStep"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "the last page read in full: {ready}"
    );
    assert!(
        ready["domElements"].as_u64().unwrap() < 1500,
        "one canvas, not an element per node: {ready}"
    );
    for (job, _) in JOBS {
        assert!(
            ready["rates"][job].as_f64().unwrap_or(0.0) > 0.0,
            "steps/s of {job}: {ready}"
        );
    }

    // Silence a rank of llm-a: its incident is marked on the chart.
    let victim = members[0].last().cloned().expect("llm-a has nodes");
    probes
        .iter()
        .find(|p| p.node_id == victim)
        .expect("the victim is ours")
        .silence();
    stdin
        .write_all(format!("fault {victim}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let done = script_line(&mut lines, Duration::from_secs(30)).await;
    assert_eq!(done["stage"], "done", "{done}");
    assert_eq!(done["mark"]["job"], "llm-a", "{done}");
    assert!(
        done["mark"]["title"]
            .as_str()
            .is_some_and(|t| t.contains(&victim)),
        "{done}"
    );
    assert_eq!(done["consoleErrors"].as_array().unwrap().len(), 0, "{done}");
    let _ = tokio::time::timeout(Duration::from_secs(10), page.wait()).await;
    assert!(screenshot.exists(), "{}", screenshot.display());

    let _ = stop_agents.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while agents.join_next().await.is_some() {}
    })
    .await;
}
