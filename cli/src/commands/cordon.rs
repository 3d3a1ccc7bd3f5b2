//! `holdfast cordon`: takes a node out of service.

use holdfast_proto::v1 as pb;

use super::{refused, Addr};

#[derive(clap::Args, Debug)]
pub struct Args {
    node: String,
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    addr: Addr,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    set(&args.addr, args.node, args.reason, true).await
}

/// Cordons `node` (or, with `cordon` false, puts it back into service) and prints its state.
pub(super) async fn set(
    addr: &Addr,
    node: String,
    reason: String,
    cordon: bool,
) -> anyhow::Result<i32> {
    let mut c = addr.connect().await?;
    let request = pb::CordonRequest {
        node_id: node,
        reason,
    };
    let changed = if cordon {
        c.cordon(request).await
    } else {
        c.uncordon(request).await
    };
    let n = changed.map_err(refused)?.into_inner();
    println!("node {} is {}", n.node_id, n.state);
    Ok(0)
}
