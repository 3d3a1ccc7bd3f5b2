//! `holdfast nodes`: nodes with their state and health.

use holdfast_proto::v1 as pb;

use super::Addr;
use crate::tables;

pub async fn run(addr: Addr) -> anyhow::Result<i32> {
    let mut c = addr.connect().await?;
    let nodes = c
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    print!("{}", tables::nodes(&nodes));
    Ok(0)
}
