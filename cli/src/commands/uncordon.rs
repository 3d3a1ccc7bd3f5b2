//! `holdfast uncordon`: puts a cordoned or fenced (repaired) node back into service.

use super::Addr;

#[derive(clap::Args, Debug)]
pub struct Args {
    node: String,
    #[command(flatten)]
    addr: Addr,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    super::cordon::set(&args.addr, args.node, String::new(), false).await
}
