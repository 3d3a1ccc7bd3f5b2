//! `holdfast stop`: stops a job.

use holdfast_proto::v1 as pb;

use super::{refused, Addr};

#[derive(clap::Args, Debug)]
pub struct Args {
    job: String,
    #[command(flatten)]
    addr: Addr,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let request = pb::StopJobRequest { job_id: args.job };
    let j = (args.addr.connect().await?)
        .stop_job(request)
        .await
        .map_err(refused)?
        .into_inner();
    println!("job {} is {}", j.job_id, j.state);
    Ok(0)
}
