//! The decision core at 100,000 nodes, in the simulation harness: does one `Cluster::step`
//! keep up with a fleet that size? 100,000 nodes (390 jobs of 256 nodes and 160 spares) send
//! heartbeats every 500 ms and their workers report a step every 2 s; the detector ticks every
//! 100 ms. Then faults, one at a time: a random job node is killed (its stream closes) or
//! frozen (silent), and the run goes on until the job runs again on a spare.
//!
//! `cargo bench -p holdfast-core --bench sim_100k` prints a table and, last, one JSON object.
//! `HOLDFAST_BENCH_NODES` (default 100000; rounded to whole jobs plus spares),
//! `HOLDFAST_BENCH_RANKS` (default 256 nodes per job), `HOLDFAST_BENCH_FAULTS` (default 10) and `HOLDFAST_BENCH_STEADY_S` (default 10 s of
//! simulated steady state).
//!
//! What it measures is the core alone, in one thread, with the harness's in-memory agents: wall
//! time per simulated second (under 1.0 = the core keeps up in real time), per input stepped,
//! per tick (the detector's pass over every node), and per fault (detected → the job running
//! again, in wall time and in simulated time). It leaves out the network, the encoding and the
//! store: those are the shell's (bench swarm measures them).

use std::time::Instant;

use holdfast_core::cluster::Role;
use holdfast_core::protocol::JobRequest;
use holdfast_core::sim::{InvariantChecks, JobParams, Sim};
use holdfast_core::CoordinatorConfig;

const SPARES: usize = 160;

fn env(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let wanted = env("HOLDFAST_BENCH_NODES", 100_000) as usize;
    let faults = env("HOLDFAST_BENCH_FAULTS", 10) as usize;
    let steady_s = env("HOLDFAST_BENCH_STEADY_S", 10) as i64;
    let ranks = env("HOLDFAST_BENCH_RANKS", 256) as u32;
    let jobs = wanted.saturating_sub(SPARES) / ranks as usize;
    let nodes = jobs * ranks as usize + SPARES;
    let config = CoordinatorConfig {
        max_nodes: nodes + 10_000,
        ..CoordinatorConfig::default()
    };
    let started = Instant::now();
    let mut sim = Sim::with_seed(config, 0x5CA1_E100);
    sim.set_invariant_checks(InvariantChecks::off());
    sim.keep_events(false);
    sim.add_nodes("w", jobs * ranks as usize, Role::Worker);
    sim.add_nodes("s", SPARES, Role::Spare);
    // Checked every simulated half second, not after every input: counting the ready nodes
    // is itself a pass over the fleet.
    let mut waited = 0;
    while sim.nodes_in("ready").len() < nodes {
        assert!(waited < 60_000, "every node registers");
        sim.run_for(500);
        waited += 500;
    }
    let registered_s = started.elapsed().as_secs_f64();
    let params = JobParams {
        step_ms: 2_000,
        checkpoint_every: 5,
    };
    for j in 0..jobs {
        let request = JobRequest {
            stall_timeout_s: 30.0,
            ..Sim::job_request(&format!("job-{j:03}"), ranks)
        };
        sim.submit(request, params).expect("the job is accepted");
    }
    assert!(
        sim.run_until(Sim::all_jobs_running, 60_000),
        "every job runs"
    );
    let setup_s = started.elapsed().as_secs_f64();
    sim.run_for(3_000);

    // Steady state: heartbeats, progress and ticks only.
    let before = sim.stats();
    let wall = Instant::now();
    sim.run_for(steady_s * 1_000);
    let steady_wall = wall.elapsed().as_secs_f64();
    let after = sim.stats();
    let inputs = after.inputs - before.inputs;
    let ticks = after.ticks - before.ticks;
    let realtime = steady_wall / steady_s as f64;
    let per_input_us = steady_wall * 1e6 / inputs.max(1) as f64;
    let core_s = (after.core_ns - before.core_ns) as f64 / 1e9;
    let core_per_sim_s = core_s / steady_s as f64;
    let core_per_input_us = core_s * 1e6 / inputs.max(1) as f64;

    // Faults, one at a time: kill or freeze a random job node, run until its job runs again.
    let mut fault_wall = Vec::new();
    let mut fault_sim = Vec::new();
    let mut relaunch_sim = Vec::new();
    for n in 0..faults {
        let running = sim.running_job_nodes();
        let node = sim.rng().pick(&running).clone();
        let before = sim.incidents().len();
        let wall = Instant::now();
        let at = sim.now();
        if n % 2 == 0 {
            sim.kill(&node);
        } else {
            sim.pause(&node, 600_000);
        }
        let settled = sim.run_until(
            |s| s.incidents().len() > before && s.open_incidents().is_empty(),
            120_000,
        );
        assert!(settled, "fault {n} on {node} recovered");
        fault_wall.push(wall.elapsed().as_secs_f64());
        fault_sim.push((sim.now() - at) as f64 / 1000.0);
        relaunch_sim.push((sim.now() - sim.incidents()[before].detected_at) as f64 / 1000.0);
        // A spare for the one fenced.
        sim.add_node(&format!("late-{n}"), Role::Spare);
        sim.run_for(2_000);
    }
    fault_wall.sort_by(f64::total_cmp);
    fault_sim.sort_by(f64::total_cmp);
    relaunch_sim.sort_by(f64::total_cmp);

    println!("the decision core at {nodes} nodes ({jobs} jobs of {ranks}, {SPARES} spares), sim");
    println!("setup (register, {jobs} jobs running): {setup_s:.1} s wall (registration {registered_s:.1} s)");
    println!(
        "steady {steady_s} s simulated: {steady_wall:.2} s wall ({realtime:.3} s per simulated s), \
         {inputs} inputs ({:.0}/s simulated), {per_input_us:.2} µs per input, {ticks} ticks; \
         of it in the core's step: {core_s:.2} s ({core_per_sim_s:.3} s per simulated s, \
         {core_per_input_us:.2} µs per input)",
        inputs as f64 / steady_s as f64
    );
    println!(
        "{faults} faults (kill / freeze a job node → job running again): wall P50 {:.2} s · max {:.2} s; \
         simulated P50 {:.2} s · max {:.2} s (of which detected → running P50 {:.2} s)",
        percentile(&fault_wall, 0.5),
        percentile(&fault_wall, 1.0),
        percentile(&fault_sim, 0.5),
        percentile(&fault_sim, 1.0),
        percentile(&relaunch_sim, 0.5)
    );
    println!(
        "{{\"nodes\":{nodes},\"jobs\":{jobs},\"steady_sim_s\":{steady_s},\"steady_wall_s\":{steady_wall:.3},\
         \"wall_per_sim_s\":{realtime:.4},\"inputs_per_sim_s\":{:.0},\"us_per_input\":{per_input_us:.3},\
         \"core_per_sim_s\":{core_per_sim_s:.4},\"core_us_per_input\":{core_per_input_us:.3},\
         \"faults\":{faults},\"fault_wall_p50_s\":{:.3},\"fault_wall_max_s\":{:.3},\
         \"fault_sim_p50_s\":{:.3},\"fault_sim_max_s\":{:.3},\"relaunch_sim_p50_s\":{:.3},\"total_wall_s\":{:.1}}}",
        inputs as f64 / steady_s as f64,
        percentile(&fault_wall, 0.5),
        percentile(&fault_wall, 1.0),
        percentile(&fault_sim, 0.5),
        percentile(&fault_sim, 1.0),
        percentile(&relaunch_sim, 0.5),
        started.elapsed().as_secs_f64()
    );
}
