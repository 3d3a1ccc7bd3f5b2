//! `holdfast-e2e`: runs the end-to-end training job on network-namespace hosts with one fault,
//! under holdfast or (`--baseline [torchrun|ft-launcher]`) under plain torchrun or NVIDIA's
//! `ft_launcher`, and prints what it measured as one JSON line. `scripts/bench-e2e.sh` installs what it needs and calls it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use holdfast_testkit::e2e::{
    self, E2eBaseline, E2eFault, E2eLauncher, Injection, JobOptions, NetnsCluster, Tools,
};
use holdfast_testkit::Rig;

#[derive(Parser)]
#[command(
    name = "holdfast-e2e",
    about = "One training job and one fault on network-namespace hosts"
)]
struct Args {
    /// The fault to inject.
    #[arg(long, value_enum, default_value_t = E2eFault::HostKill)]
    fault: E2eFault,
    /// No holdfast: plain `torchrun --max-restarts=3` with c10d rendezvous (the value may be
    /// left out), or `ft_launcher` with restarts, heartbeats and a hot spare.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "torchrun")]
    baseline: Option<E2eBaseline>,
    /// How holdfast starts the ranks: through torchrun, its native launcher, the native
    /// launcher with warm standby interpreters, or that with in-process restart.
    #[arg(long, value_enum, default_value_t = E2eLauncher::Torchrun)]
    mode: E2eLauncher,
    /// Print only the JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// Give up (recovered: false) after this many seconds.
    #[arg(long, default_value_t = 600)]
    bound_s: u64,
    /// Steps of the job.
    #[arg(long, default_value_t = 60)]
    steps: u64,
    /// Logs and agent state go here (default: a fresh temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    holdfast_cli::commands::init_logging();
    match run(&args) {
        Ok(line) => {
            if !args.json {
                eprintln!(
                    "{}",
                    serde_json::to_string_pretty(&line).unwrap_or_default()
                );
            }
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("holdfast-e2e: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find this program")?;
    let holdfast = exe.with_file_name("holdfast");
    let tools = Tools::from_env(&holdfast).map_err(|e| anyhow::anyhow!(e))?;
    let keep = args.dir.is_some();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("holdfast-e2e-{}", std::process::id()))
    });
    let bound = Duration::from_secs(args.bound_s);
    let options = JobOptions {
        steps: args.steps,
        prefix: format!(
            "{}-{}",
            args.baseline.map_or(args.mode.name(), E2eBaseline::name),
            args.fault.name()
        ),
        launcher: args.mode,
        ..Default::default()
    };
    let after_step = options.ckpt_every * 3 + 2;
    let mut cluster = NetnsCluster::start(tools, &dir, &[])?;
    let line = if let Some(baseline) = args.baseline {
        e2e::run_baseline(
            &mut cluster,
            &options,
            baseline,
            args.fault,
            after_step,
            bound,
        )?
        .json()
    } else {
        let mut agent_args: Vec<String> = Vec::new();
        if args.fault == E2eFault::Xid {
            agent_args.push("--enable-fault-injection".into());
        }
        if matches!(
            args.mode,
            E2eLauncher::NativeWarm | E2eLauncher::InProcess | E2eLauncher::Memtier
        ) {
            // Every agent keeps standbys from the start: the spare's too, so a replacement
            // launch is as warm as a restart in place.
            agent_args.push("--standby-python".into());
            agent_args.push(cluster.python().display().to_string());
            agent_args.push("--standby-imports".into());
            agent_args.push(e2e::WARM_IMPORTS.join(","));
        }
        let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
        cluster.start_nodes(options.nodes as usize, 1, &agent_args)?;
        let spec = cluster.job_spec(&options);
        let injection = Injection {
            fault: args.fault,
            after_step,
            node: None,
        };
        // Operator calls come from the control host's namespace.
        let run = cluster.control(async |cluster| {
            cluster
                .wait_ready(options.nodes as usize + 1, Duration::from_secs(30))
                .await?;
            cluster
                .run_job(spec, Some(injection), bound, |_, _| {})
                .await
        })??;
        let mut line = run.json();
        line["launcher"] = args.mode.name().into();
        line["phases"] = run.phases(&cluster.dir.join("nodes"));
        line
    };
    drop(cluster);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(line)
}
