//! `holdfast report`: MTTD/MTTR percentiles of recorded incidents and a job's ETTR (see
//! [`crate::reports`]).

use crate::reports;

/// `holdfast report`'s flags.
pub type Args = super::JobQuery;

pub async fn run(args: Args) -> anyhow::Result<i32> {
    reports::report(&args.addr.coordinator, args.job, args.json).await
}
