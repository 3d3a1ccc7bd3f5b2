//! `holdfast nodes`: nodes with their state and health, filtered, with the fleet's counts by
//! state.

use holdfast_proto::v1 as pb;

use super::Addr;
use crate::tables;

/// Nodes asked for per call while following pages.
const PAGE: u32 = 1000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    addr: Addr,
    /// Only nodes in this state (ready, allocated, offline, fenced, cordoned, …).
    #[arg(long)]
    state: Option<String>,
    /// Only the nodes of this job.
    #[arg(long)]
    job: Option<String>,
    /// Only nodes with this health (healthy, degraded, unhealthy, unknown).
    #[arg(long)]
    health: Option<String>,
    /// Only nodes whose id, hostname or job id contains this text (case-insensitive).
    #[arg(long)]
    search: Option<String>,
    /// Show at most this many nodes (in node-id order).
    #[arg(long)]
    limit: Option<usize>,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let mut c = args.addr.connect().await?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut request = pb::ListNodesRequest {
        state: args.state.unwrap_or_default(),
        job_id: args.job.unwrap_or_default(),
        health: args.health.unwrap_or_default(),
        page_size: PAGE,
        page_token: String::new(),
        query: args.search.unwrap_or_default(),
        brief: false,
    };
    let mut nodes = Vec::new();
    let (total, counts) = loop {
        let page = c.list_nodes(request.clone()).await?.into_inner();
        nodes.extend(page.nodes);
        if page.next_page_token.is_empty() || nodes.len() >= limit {
            break (page.total, page.counts_by_state);
        }
        request.page_token = page.next_page_token;
    };
    nodes.truncate(limit);
    print!("{}", tables::nodes(&nodes));
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!(
        "{} of {total} matching shown; fleet: {}",
        nodes.len(),
        if counts.is_empty() {
            "no nodes".to_string()
        } else {
            counts.join(", ")
        }
    );
    Ok(0)
}
