//! `holdfast status`: jobs and nodes.

use holdfast_proto::v1 as pb;

use super::Addr;
use crate::tables;

pub async fn run(addr: Addr) -> anyhow::Result<i32> {
    let mut c = addr.connect().await?;
    let jobs = c.list_jobs(pb::ListJobsRequest {}).await?.into_inner().jobs;
    let nodes = c
        .list_nodes(pb::ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes;
    print!("{}\n{}", tables::jobs(&jobs), tables::nodes(&nodes));
    Ok(0)
}
