//! `holdfast bench swarm`: many simulated agents against a running coordinator, and what it
//! costs the coordinator (engine: [`crate::bench`]; results: BENCHMARKS.md).

use std::time::Duration;

use crate::bench::{self, SwarmOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Subcommand, Debug)]
enum Bench {
    /// Run N simulated agents (one HTTP/2 connection each) against a coordinator started
    /// separately, optionally with jobs and silenced agents, and report the coordinator's CPU
    /// and memory, heartbeat lag, detection and relaunch times and false timeouts. Exits 0
    /// when there was no false timeout, every silenced agent was detected and every job
    /// started and relaunched.
    Swarm(SwarmArgs),
}

#[derive(clap::Args, Debug)]
struct SwarmArgs {
    /// The coordinator (host:port or URL; https:// with --pki-dir).
    #[arg(long, env = "HOLDFAST_COORDINATOR", default_value = crate::client::DEFAULT_COORDINATOR)]
    coordinator: String,
    /// Simulated agents, spares included.
    #[arg(long)]
    agents: usize,
    /// Of them, registered as spares (default: one per job).
    #[arg(long)]
    spares: Option<usize>,
    /// Jobs to submit once the swarm is ready.
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Nodes per job.
    #[arg(long, default_value_t = 4)]
    nodes_per_job: usize,
    /// Agents to silence after the steady phase (one rank of each job first).
    #[arg(long, default_value_t = 0)]
    silence: usize,
    /// Seconds of the steady phase (heartbeats only), over which CPU is measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The coordinator's process id (default: the process listening on its port).
    #[arg(long)]
    coordinator_pid: Option<u32>,
    /// Milliseconds between progress reports of a pretend worker.
    #[arg(long, default_value_t = 1000)]
    step_ms: u64,
    /// Agents connecting at once while the swarm starts.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The coordinator's PKI directory (made by `holdfast coordinator --pki-dir`): each agent
    /// gets a client certificate for its node id from it and speaks mutual TLS, as joined
    /// agents do. Operator calls then need --token and --ca-cert.
    #[arg(long)]
    pki_dir: Option<std::path::PathBuf>,
    /// Print a JSON object as the last line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let Bench::Swarm(args) = args.bench;
    if !(args.duration.is_finite() && args.duration >= 0.0) {
        anyhow::bail!("--duration: a number of seconds, 0 or more");
    }
    let options = SwarmOptions {
        coordinator: args.coordinator,
        pki_dir: args.pki_dir,
        agents: args.agents,
        spares: args.spares.unwrap_or(args.jobs),
        jobs: args.jobs,
        nodes_per_job: args.nodes_per_job,
        silence: args.silence,
        duration: Duration::from_secs_f64(args.duration),
        coordinator_pid: args.coordinator_pid,
        step: Duration::from_millis(args.step_ms.max(1)),
        connect_concurrency: args.connect_concurrency,
    };
    let report = bench::run(&options).await?;
    print!("{}", report.text());
    if args.json {
        println!("{}", report.to_json());
    }
    Ok(if report.passed() { 0 } else { 1 })
}
