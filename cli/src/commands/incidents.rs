//! `holdfast incidents`: recorded incidents with the time of each recovery phase.

use super::Addr;
use crate::{client, tables};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    addr: Addr,
    /// Only this job's incidents.
    #[arg(long)]
    job: Option<String>,
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let mut c = args.addr.connect().await?;
    let incidents = client::incidents(&mut c, args.job.as_deref().unwrap_or_default()).await?;
    if args.json {
        let list: Vec<_> = incidents
            .iter()
            .map(|i| tables::incident_json(i, i.fault_unix_ms))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        print!("{}", tables::incidents(&incidents));
    }
    Ok(0)
}
