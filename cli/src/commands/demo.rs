//! `holdfast demo`: a whole cluster on this machine with one fault (see [`crate::demo`]).

use anyhow::Context;

use crate::demo::{self, DemoOptions, Fault};
use crate::follow;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Worker nodes.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Spare nodes.
    #[arg(long, default_value_t = 1)]
    spares: u32,
    /// The fault to inject after a few checkpoints.
    #[arg(long, value_enum, default_value_t = Fault::KillAgent)]
    fault: Fault,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Steps of the training job.
    #[arg(long, default_value_t = 80)]
    steps: u64,
    /// Keep the working directory (logs, checkpoints).
    #[arg(long)]
    keep: bool,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("cannot find the holdfast binary")?;
    let options = DemoOptions {
        nodes: args.nodes,
        spares: args.spares,
        fault: args.fault,
        steps: args.steps,
        json: args.json,
        keep: args.keep,
        ..Default::default()
    };
    if options.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    if matches!(options.fault, Fault::KillAgent | Fault::Xid) && options.spares == 0 {
        anyhow::bail!(
            "--fault {} needs at least one spare (--spares 1)",
            options.fault.name()
        );
    }
    if options.fault == Fault::BadSpare && options.spares < 2 {
        anyhow::bail!("--fault bad-spare needs two spares (--spares 2): the first is bad");
    }
    let report = demo::run(&exe, &options).await?;
    demo::print_report(&report, args.json);
    if args.json {
        println!("{}", report.to_json());
    }
    Ok(follow::exit_code(&report.job.state))
}
