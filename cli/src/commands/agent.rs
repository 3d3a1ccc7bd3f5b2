//! `holdfast agent`: the daemon on every node. The config file (or the defaults) with the
//! flags on top, then [`holdfast_agent::run`] until SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use holdfast_agent::config::NodeRole;
use holdfast_agent::join::JoinOptions;
use holdfast_agent::AgentConfig;
use holdfast_coordinator::daemon::{sdnotify, shutdown_signal};

use crate::client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config file (see deploy/agent.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Coordinator URL.
    #[arg(long, env = "HOLDFAST_COORDINATOR")]
    coordinator: Option<String>,
    /// Node id (default: the hostname).
    #[arg(long)]
    node_id: Option<String>,
    /// worker or spare.
    #[arg(long)]
    role: Option<String>,
    /// State directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where jobs keep their memory state tier (default /dev/shm/holdfast; "" = off).
    #[arg(long)]
    memory_tier_dir: Option<PathBuf>,
    /// Address other hosts reach this one at.
    #[arg(long)]
    advertise_address: Option<String>,
    /// Turn on the fault-injection test double (faults written to <state_dir>/inject are
    /// treated as real). For tests and the demo only.
    #[arg(long)]
    enable_fault_injection: bool,
    /// Serve the agent's Prometheus /metrics here (e.g. 0.0.0.0:9101; default: off).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Lifecycle script directory (on-create, health/*, on-fence).
    #[arg(long)]
    script_dir: Option<PathBuf>,
    /// Join the cluster with this token (`ID.SECRET`) when this agent has no node certificate
    /// yet (needs --ca-hash and an https:// coordinator). Later starts need no token.
    #[arg(
        long,
        env = "HOLDFAST_JOIN_TOKEN",
        hide_env_values = true,
        requires = "ca_hash"
    )]
    join: Option<String>,
    /// `sha256:…` of the cluster CA's public key: the coordinator is trusted only if its
    /// certificate chains to that CA (printed with every join token).
    #[arg(long, env = "HOLDFAST_CA_HASH")]
    ca_hash: Option<String>,
    /// Keep warm standby interpreters of this Python from the start (see `standby_python` in
    /// deploy/agent.toml), so a spare taking over a native-launcher job skips its imports.
    #[arg(long)]
    standby_python: Option<PathBuf>,
    /// The modules those standbys import, comma-separated (default: torch); a launch uses them
    /// only if its job's --warm-imports are the same.
    #[arg(long, value_delimiter = ',')]
    standby_imports: Option<Vec<String>>,
    /// Allow a plain http:// coordinator on another host (a lab: commands then arrive
    /// unauthenticated and run as root here).
    #[arg(long)]
    insecure: bool,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let join = match (&args.join, &args.ca_hash) {
        (Some(token), Some(ca_hash)) => Some(JoinOptions {
            token: token.clone(),
            ca_hash: ca_hash.clone(),
        }),
        _ => None,
    };
    let mut config = config(args)?;
    holdfast_agent::join::prepare(&mut config, join).await?;
    if holdfast_agent::renew::joined(&config) {
        tokio::spawn(holdfast_agent::renew::keep_renewed(config.clone()));
    }
    let health = holdfast_agent::health::HealthBoard::default();
    sdnotify::spawn_watchdog();
    sdnotify::notify_or_log("READY=1");
    holdfast_agent::run(config, health, sdnotify::stopping(shutdown_signal())).await?;
    Ok(0)
}

/// The config file (or the defaults) with the flags that were given on top.
fn config(args: Args) -> anyhow::Result<AgentConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            AgentConfig::from_toml(&text, &path.display().to_string())?
        }
        None => AgentConfig::default(),
    };
    if let Some(c) = args.coordinator {
        config.coordinator = client::normalize(&c);
    }
    set(&mut config.node_id, args.node_id);
    if let Some(r) = args.role {
        config.role = match r.as_str() {
            "worker" => NodeRole::Worker,
            "spare" => NodeRole::Spare,
            other => anyhow::bail!("--role: {other:?} is neither worker nor spare"),
        };
    }
    set(&mut config.state_dir, args.state_dir);
    set(&mut config.memory_tier_dir, args.memory_tier_dir);
    set(&mut config.advertise_address, args.advertise_address);
    set(&mut config.metrics_listen, args.metrics_listen);
    set(&mut config.script_dir, args.script_dir);
    set(&mut config.standby_python, args.standby_python);
    set(&mut config.standby_imports, args.standby_imports);
    config.fault_injection |= args.enable_fault_injection;
    config.insecure |= args.insecure;
    Ok(config)
}

/// A flag that was given replaces the config's value.
fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *slot = value;
    }
}
