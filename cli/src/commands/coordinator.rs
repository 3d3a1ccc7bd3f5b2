//! `holdfast coordinator`: the control plane daemon. Start-up itself is
//! [`holdfast_coordinator::daemon`]; this maps the flags onto it.

use std::path::PathBuf;

use holdfast_coordinator::daemon::{self, EtcdOptions, ServeOptions, StateOptions};

use crate::client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: String,
    /// TOML config file (see deploy/coordinator.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the bound address to this file once listening (useful with port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Override heartbeat_timeout_ms.
    #[arg(long)]
    heartbeat_timeout_ms: Option<u64>,
    /// The state file (nodes, jobs, generations, incidents, term): reloaded on start, so a
    /// restarted coordinator carries on where the previous one stopped.
    #[arg(
        long,
        env = "HOLDFAST_COORDINATOR_STATE",
        default_value = "/var/lib/holdfast/coordinator.redb"
    )]
    state: PathBuf,
    /// Keep the state in memory only (nothing survives a restart).
    #[arg(long, conflicts_with = "state")]
    ephemeral: bool,
    /// Override reconnect_grace_ms.
    #[arg(long)]
    reconnect_grace_ms: Option<u64>,
    /// High availability: etcd endpoints (comma-separated). The coordinator then keeps its
    /// state in etcd instead of --state, and serves only while it holds the leadership.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix in etcd of this group of coordinators.
    #[arg(long, default_value = "/holdfast")]
    etcd_prefix: String,
    /// Seconds a dead leader keeps the leadership before a standby takes over.
    #[arg(long, default_value_t = 2)]
    etcd_lease_ttl_s: i64,
    /// The address agents and operators reach this coordinator at (published while leading);
    /// default http://<listen address>.
    #[arg(long)]
    advertise: Option<String>,
    /// Serve without TLS, agent certificates or operator tokens on any address (a lab behind
    /// its own network boundary). Warned at every start. Without it, a non-loopback address
    /// gets the cluster CA and join tokens (made on first start), and without those the
    /// coordinator serves loopback only.
    #[arg(long)]
    insecure: bool,
    /// Where the cluster CA, serving certificate, operator and join tokens are kept
    /// (default: `pki` beside --state). Giving it bootstraps even on a loopback address.
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// Another name or address for the serving certificate (repeatable), for operators who
    /// dial the coordinator by it.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let state = if !args.etcd.is_empty() {
        StateOptions::Etcd(EtcdOptions {
            endpoints: args.etcd.iter().map(|e| client::normalize(e)).collect(),
            prefix: args.etcd_prefix,
            lease_ttl_s: args.etcd_lease_ttl_s,
            advertise: args
                .advertise
                .unwrap_or_else(|| client::normalize(&args.listen)),
        })
    } else if args.ephemeral {
        StateOptions::Memory
    } else {
        StateOptions::File(args.state)
    };
    let options = ServeOptions {
        listen: args.listen,
        config: args.config,
        addr_file: args.addr_file,
        heartbeat_timeout_ms: args.heartbeat_timeout_ms,
        reconnect_grace_ms: args.reconnect_grace_ms,
        state,
        insecure: args.insecure,
        pki_dir: args.pki_dir,
        tls_names: args.tls_names,
    };
    daemon::serve(options, daemon::shutdown_signal()).await?;
    Ok(0)
}
