//! `holdfast report`: MTTD/MTTR percentiles of recorded incidents and a job's ETTR (see
//! [`crate::reports`]).

use super::Addr;
use crate::reports;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    addr: Addr,
    /// The job whose ETTR is shown (default: the latest submitted).
    #[arg(long)]
    job: Option<String>,
    /// One JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    reports::report(&args.addr.coordinator, args.job, args.json).await
}
