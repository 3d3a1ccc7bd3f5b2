//! `holdfast incidents`: recorded incidents with the time of each recovery phase.

use super::JobQuery;
use crate::{client, tables};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    query: JobQuery,
    /// After the table, each stall's ranks: what their agents saw of the workers when the
    /// stall was judged, and the workers' Python stacks (py-spy) dumped after it.
    #[arg(long)]
    stacks: bool,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let JobQuery { addr, job, json } = args.query;
    let mut c = addr.connect().await?;
    let incidents = client::incidents(&mut c, job.as_deref().unwrap_or_default()).await?;
    if json {
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
            let stacks = if r.stacks.is_empty() {
                "(no stacks yet)"
            } else {
                r.stacks.trim_end()
            };
            for line in stacks.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use holdfast_proto::v1 as pb;

    #[test]
    fn stacks_are_printed_under_each_rank() {
        let incident = pb::Incident {
            id: 4,
            node_id: "node-2".into(),
            detail: "no progress for 2.0 s; rank 1 (node-2) singled out".into(),
            ranks: vec![
                pb::RankEvidence {
                    rank: 0,
                    node_id: "node-1".into(),
                    evidence: "process sleeping".into(),
                    stacks: "Thread 1 (idle)\n    exchange (train_demo.py:40)\n".into(),
                },
                pb::RankEvidence {
                    rank: 1,
                    node_id: "node-2".into(),
                    evidence: "process stopped".into(),
                    stacks: String::new(),
                },
            ],
            ..Default::default()
        };
        let text = super::ranks(&[incident, pb::Incident::default()]);
        assert!(text.contains("incident 4 (node-2)"), "{text}");
        assert!(
            text.contains(
                "  rank 0 on node-1: process sleeping\n    Thread 1 (idle)\n        exchange"
            ),
            "{text}"
        );
        assert!(
            text.contains("  rank 1 on node-2: process stopped\n    (no stacks yet)"),
            "{text}"
        );
    }
}
