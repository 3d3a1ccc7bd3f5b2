//! `holdfast launch`: submits a job and follows it to its end.

use std::time::Duration;

use anyhow::Context;
use holdfast_proto::v1 as pb;

use super::Addr;
use crate::{follow, hostlist};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of nodes.
    #[arg(long)]
    nodes: u32,
    #[command(flatten)]
    addr: Addr,
    /// Checkpoint prefix URI (file:///path or s3://bucket/prefix).
    #[arg(long, default_value = "")]
    checkpoint: String,
    /// Seconds without progress before a rank counts as hung (0 = off).
    #[arg(long, default_value_t = 0.0)]
    stall_timeout: f64,
    /// Restarts in place for worker faults (0 = the coordinator's default).
    #[arg(long, default_value_t = 0)]
    restart_budget: u32,
    /// Fewest nodes the job can run on: with no replacement in time it shrinks to the
    /// surviving nodes if at least this many remain (0 = never shrink).
    #[arg(long, default_value_t = 0)]
    min_nodes: u32,
    /// Regex with one capture group giving the step in output lines.
    #[arg(long, default_value = "")]
    progress_regex: String,
    /// Job id (default: assigned).
    #[arg(long, default_value = "")]
    job_id: String,
    /// KEY=VALUE environment for every worker (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Submit and return without following.
    #[arg(long)]
    detach: bool,
    /// Do not let the job's progress vouch for a node whose agent goes silent. By default, in
    /// a synchronous job (every rank waits for the others at each step), a node whose agent is
    /// lost while the other ranks keep stepping keeps its ranks until the job's next fault.
    /// Turn it off for jobs whose ranks do not wait on each other.
    #[arg(long)]
    no_progress_vouching: bool,
    /// Run the command under holdfast's native launcher with this many ranks per node:
    /// `--nproc-per-node 8 -- python train.py …` starts 8 processes on each node with
    /// torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK,
    /// MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID), a fresh MASTER_PORT per generation and
    /// no torchrun in between. Unset: the command is its own launcher (e.g. torchrun).
    #[arg(long)]
    nproc_per_node: Option<u32>,
    /// With --nproc-per-node and a `python SCRIPT …` command: each agent keeps a standby
    /// interpreter per local rank with these modules imported (comma-separated; `torch` when
    /// given without a value), so a relaunch skips the imports.
    #[arg(long, num_args = 0..=1, default_missing_value = "torch", value_delimiter = ',')]
    warm_imports: Vec<String>,
    /// Ignore the Slurm allocation this runs in. By default, when SLURM_JOB_NODELIST is set
    /// (inside `sbatch` or `salloc`), the job runs only on the allocation's nodes (an agent's
    /// node id, or its first DNS label, is its Slurm node name): `--nodes` of them run the
    /// ranks, the rest are its spares, and no replacement is ever taken from outside.
    #[arg(long)]
    no_slurm_allocation: bool,
    /// With --nproc-per-node, for a job written with `holdfast.run` (python/holdfast): on a
    /// fault the surviving ranks keep running and re-form the process group in place, only
    /// the failed ranks are launched, and they take the state from a survivor (no step lost).
    /// A fault or a timeout while the group re-forms falls back to relaunching every rank.
    #[arg(long)]
    in_process: bool,
    /// The training command; placeholders like {node_rank}, {nnodes}, {rdzv_endpoint} are
    /// substituted on each node.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// The nodes of the Slurm allocation this runs in, when it runs in one and may use it.
fn allocation(args: &Args) -> anyhow::Result<Vec<String>> {
    let list = match std::env::var("SLURM_JOB_NODELIST") {
        _ if args.no_slurm_allocation => return Ok(Vec::new()),
        Err(std::env::VarError::NotPresent) => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("SLURM_JOB_NODELIST: {e}"),
        Ok(list) => list,
    };
    let names = hostlist::expand(&list).map_err(|e| {
        anyhow::anyhow!("SLURM_JOB_NODELIST: {e} (pass --no-slurm-allocation to ignore it)")
    })?;
    let slurm_job = std::env::var("SLURM_JOB_ID").unwrap_or_else(|_| "?".into());
    let spares = names
        .len()
        .checked_sub(args.nodes as usize)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the Slurm allocation (job {slurm_job}) has {} nodes ({list}) but --nodes is {}: \
             allocate at least {} (sbatch -N), or pass --no-slurm-allocation",
                names.len(),
                args.nodes,
                args.nodes
            )
        })?;
    println!(
        "inside Slurm job {slurm_job}: {} of its {} nodes run the ranks, {spares} stay spare ({list})",
        args.nodes,
        names.len()
    );
    Ok(names)
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let allowed_nodes = allocation(&args)?;
    let mut c = args.addr.connect().await?;
    let spec = pb::JobSpec {
        job_id: args.job_id,
        command: args.command,
        nodes: args.nodes,
        checkpoint_uri: args.checkpoint,
        stall_timeout_s: args.stall_timeout,
        restart_budget: args.restart_budget,
        progress_regex: args.progress_regex,
        env: args.env.into_iter().collect(),
        total_steps: 0,
        min_nodes: args.min_nodes,
        progress_vouches: args.no_progress_vouching.then_some(false),
        nproc_per_node: args.nproc_per_node,
        warm_imports: args.warm_imports,
        allowed_nodes,
        restart: if args.in_process { "in_process" } else { "" }.into(),
    };
    // Watch first: a job that starts fast must not run ahead of its follower.
    let events = follow::watch(&mut c).await?;
    let job = follow::submit(&mut c, spec).await.context("job refused")?;
    println!("job {} accepted on {}", job.job_id, job.nodes.join(", "));
    if args.detach {
        return Ok(0);
    }
    let done = follow::follow_events(
        &mut c,
        Some(&args.addr.coordinator),
        events,
        &job.job_id,
        Duration::from_secs(u64::MAX / 4),
        |_| {},
        true,
    )
    .await?;
    println!(
        "job {} {} at step {}: {}",
        done.job_id, done.state, done.step, done.message
    );
    Ok(follow::exit_code(&done.state))
}
