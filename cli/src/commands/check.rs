//! `holdfast check`: runs a node's deep check now and prints each script's result.

use holdfast_proto::v1 as pb;

use super::{refused, Addr};
use crate::tables;

#[derive(clap::Args, Debug)]
pub struct Args {
    node: String,
    #[command(flatten)]
    addr: Addr,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let mut c = args.addr.connect().await?;
    let request = pb::CheckNodeRequest { node_id: args.node };
    let report = c.check_node(request).await.map_err(refused)?.into_inner();
    if args.json {
        println!("{}", json(&report));
    } else {
        print!("{}", tables::check_report(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}

fn json(report: &pb::CheckReport) -> serde_json::Value {
    let scripts: Vec<_> = report
        .scripts
        .iter()
        .map(|s| {
            serde_json::json!({"script": s.script, "ok": s.ok, "exit_code": s.exit_code,
                "duration_ms": s.duration_ms, "message": s.message, "output": s.output})
        })
        .collect();
    serde_json::json!({"node": report.node_id, "ok": report.ok, "purpose": report.purpose,
        "started_unix_ms": report.started_unix_ms, "duration_ms": report.duration_ms, "scripts": scripts})
}
