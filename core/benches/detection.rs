//! Detection at scale, in the simulation harness: 1,000 nodes (32 jobs of 30 nodes and 40
//! spares), each fault class injected on random job nodes, one at a time; then an hour of
//! coordinator pauses and control-network blips, counting the fences they cause (the target is
//! none).
//!
//! `cargo bench -p holdfast-core --bench detection` prints a table and, last, one JSON object.
//! `HOLDFAST_BENCH_TRIALS` (default 30) sets the trials per fault class and
//! `HOLDFAST_BENCH_HOUR_S` (default 3600) the simulated time of the false-fence run.
//!
//! What the harness models and does not is written in `holdfast_core::sim`'s docs; here the
//! job steps every 500 ms, its stall timeout is 5 s and the detector runs on the defaults
//! (500 ms heartbeats, 2 s timeout, 100 ms ticks).

use std::time::Instant;

use holdfast_core::cluster::Role;
use holdfast_core::protocol::JobRequest;
use holdfast_core::sim::{Exit, InvariantChecks, JobParams, Sim};
use holdfast_core::{CoordinatorConfig, UnixMillis};

const JOBS: usize = 32;
const RANKS: u32 = 30;
const SPARES: usize = 40;

#[derive(Debug, Clone, Copy)]
enum Class {
    ProcessKilled,
    HostFrozen,
    WorkerKilled,
    WorkerHung,
    FatalXid,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::ProcessKilled => "host killed (stream closes)",
            Class::HostFrozen => "host frozen (silent)",
            Class::WorkerKilled => "worker killed",
            Class::WorkerHung => "worker hung (stall)",
            Class::FatalXid => "fatal XID",
        }
    }
}

fn cluster(seed: u64) -> Sim {
    let mut sim = Sim::with_seed(CoordinatorConfig::default(), seed);
    sim.set_invariant_checks(InvariantChecks::off());
    sim.keep_events(false);
    let total = JOBS * RANKS as usize;
    sim.add_nodes("w", total, Role::Worker);
    sim.add_nodes("s", SPARES, Role::Spare);
    assert!(sim.run_until(|s| s.nodes_in("ready").len() == total + SPARES, 5_000));
    for j in 0..JOBS {
        let request = JobRequest {
            stall_timeout_s: 5.0,
            ..Sim::job_request(&format!("job-{j:02}"), RANKS)
        };
        let params = JobParams {
            step_ms: 500,
            checkpoint_every: 10,
        };
        sim.submit(request, params).expect("the job is accepted");
    }
    assert!(
        sim.run_until(Sim::all_jobs_running, 30_000),
        "every job runs"
    );
    sim.run_for(5_000);
    sim
}

/// Detection times (ms) of `trials` faults of `class` on random job nodes.
fn detect(class: Class, trials: usize, seed: u64) -> Vec<i64> {
    let mut sim = cluster(seed);
    let mut times = Vec::new();
    for _ in 0..trials {
        let running = sim.running_job_nodes();
        let node = sim.rng().pick(&running).clone();
        let before = sim.incidents().len();
        let at: UnixMillis = sim.now();
        match class {
            Class::ProcessKilled => sim.kill(&node),
            Class::HostFrozen => sim.pause(&node, 600_000),
            Class::WorkerKilled => sim.kill_worker(&node, Exit::Signal(9)),
            Class::WorkerHung => sim.hang_worker(&node),
            Class::FatalXid => sim.inject_fatal_health(&node),
        }
        let seen = sim.run_until(|s| s.incidents().len() > before, 60_000);
        if seen {
            times.push(sim.incidents()[before].detected_at - at);
        }
        // Spares for what was fenced, and time to settle before the next trial.
        let spare = format!("late-{}", sim.now());
        sim.add_node(&spare, Role::Spare);
        sim.run_until(|s| s.open_incidents().is_empty(), 60_000);
        sim.run_for(2_000);
    }
    times
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

/// An hour of coordinator pauses (0.5–30 s) and control-network blips (a third of the nodes cut
/// off for 1–10 s) with no real fault: returns (pauses, blips, fences, incidents).
fn false_fences(hour_ms: i64, seed: u64) -> (u32, u32, usize, usize) {
    let mut sim = cluster(seed);
    let nodes = sim.node_ids();
    let end = sim.now() + hour_ms;
    let (mut pauses, mut blips) = (0, 0);
    while sim.now() < end {
        let gap = sim.rng().between(20_000, 120_000);
        sim.run_for(gap);
        if sim.rng().chance(0.5) {
            let ms = sim.rng().between(500, 30_000);
            sim.pause_coordinator(ms);
            sim.run_for(ms + 1_000);
            pauses += 1;
        } else {
            let cut: Vec<String> = nodes
                .iter()
                .filter(|_| sim.rng().chance(1.0 / 3.0))
                .cloned()
                .collect();
            for node in &cut {
                sim.cut(node);
            }
            let blip = sim.rng().between(1_000, 10_000);
            sim.run_for(blip);
            for node in &cut {
                sim.heal(node);
            }
            blips += 1;
        }
    }
    sim.run_for(10_000);
    (
        pauses,
        blips,
        sim.nodes_in("fenced").len(),
        sim.incidents().len(),
    )
}

fn main() {
    let trials: usize = std::env::var("HOLDFAST_BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let hour_s: i64 = std::env::var("HOLDFAST_BENCH_HOUR_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_600);
    let started = Instant::now();
    println!("detection at 1,000 nodes (sim), {trials} trials per class");
    println!(
        "{:<30} {:>6} {:>9} {:>9}",
        "fault", "seen", "P50 (s)", "P99 (s)"
    );
    let mut json = Vec::new();
    let classes = [
        Class::ProcessKilled,
        Class::HostFrozen,
        Class::WorkerKilled,
        Class::WorkerHung,
        Class::FatalXid,
    ];
    for (i, class) in classes.into_iter().enumerate() {
        let mut times = detect(class, trials, 0xDE7E_C700 + i as u64);
        times.sort_unstable();
        let p50 = percentile(&times, 0.5).map(|t| t as f64 / 1000.0);
        let p99 = percentile(&times, 0.99).map(|t| t as f64 / 1000.0);
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<30} {:>3}/{:<2} {:>9} {:>9}",
            class.name(),
            times.len(),
            trials,
            show(p50),
            show(p99)
        );
        json.push(format!(
            "\"{}\":{{\"seen\":{},\"trials\":{trials},\"p50_s\":{},\"p99_s\":{}}}",
            class.name(),
            times.len(),
            p50.map_or("null".into(), |v| format!("{v:.3}")),
            p99.map_or("null".into(), |v| format!("{v:.3}"))
        ));
    }
    let (pauses, blips, fences, incidents) = false_fences(hour_s * 1000, 0xFA15E);
    println!(
        "false fences over {hour_s} s of injected trouble ({pauses} coordinator pauses of 0.5-30 s, \
         {blips} control-network blips cutting a third of the nodes for 1-10 s): {fences} fences, \
         {incidents} incidents"
    );
    println!("({:.1} s wall)", started.elapsed().as_secs_f64());
    println!(
        "{{{},\"false_fences\":{{\"simulated_s\":{hour_s},\"pauses\":{pauses},\"blips\":{blips},\"fences\":{fences},\"incidents\":{incidents}}}}}",
        json.join(",")
    );
}
