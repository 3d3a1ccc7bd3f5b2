//! `holdfast cordon`: takes a node out of service.

use holdfast_proto::v1 as pb;

use super::{refused, Addr};
use crate::client;

#[derive(clap::Args, Debug)]
pub struct Args {
    node: String,
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    addr: Addr,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let mut c = client::connect(&args.addr.coordinator).await?;
    let request = pb::CordonRequest {
        node_id: args.node,
        reason: args.reason,
    };
    let n = c.cordon(request).await.map_err(refused)?.into_inner();
    println!("node {} is {}", n.node_id, n.state);
    Ok(0)
}
