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
    /// After the table, each stall's ranks: what their agents saw of the workers when the
    /// stall was judged, and the workers' Python stacks (py-spy) dumped after it.
    #[arg(long)]
    stacks: bool,
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
        if args.stacks {
            print!("{}", ranks(&incidents));
        }
    }
    Ok(0)
}

/// Each stall incident's ranks: node, evidence, stacks.
fn ranks(incidents: &[holdfast_proto::v1::Incident]) -> String {
    let mut out = String::new();
    for i in incidents.iter().filter(|i| !i.ranks.is_empty()) {
        out.push_str(&format!(
            "\nincident {} ({}): {}\n",
            i.id, i.node_id, i.detail
        ));
        for r in &i.ranks {
            out.push_str(&format!(
                "  rank {} on {}: {}\n",
                r.rank, r.node_id, r.evidence
            ));
        }
    }
    out
}
