//! `holdfast upgrade-agents`: rolling agent restarts (see [`crate::upgrade`]).

use std::time::Duration;

use super::Addr;
use crate::upgrade;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agents restarted at once.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Seconds a batch has to come back healthy.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Only these nodes (comma-separated); default: every connected node.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    #[command(flatten)]
    addr: Addr,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let mut c = args.addr.connect().await?;
    let report = upgrade::run(
        &mut c,
        args.batch_size,
        Duration::from_secs(args.wait),
        &args.nodes,
        |line| println!("{line}"),
    )
    .await?;
    println!(
        "upgraded: {}",
        if report.upgraded.is_empty() {
            "-".into()
        } else {
            report.upgraded.join(", ")
        }
    );
    if report.problems.is_empty() {
        return Ok(0);
    }
    for (node, problem) in &report.problems {
        println!("NOT HEALTHY {node}: {problem}");
    }
    if !report.skipped.is_empty() {
        println!("stopped; not restarted: {}", report.skipped.join(", "));
    }
    Ok(1)
}
