//! `holdfast`: parses flags and hands over to the libraries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use holdfast_cli::{client, demo, follow, reports, tables};
use holdfast_proto::v1 as pb;

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Keeps synchronous distributed training running through node failures",
    long_about = "holdfast detects failed GPU nodes in seconds, fences them, takes a replacement and \
relaunches the job from the latest complete checkpoint.\n\nStart a coordinator, an agent on every \
node, then `holdfast launch --nodes N -- <training command>`. `holdfast demo` runs all of it on \
this machine."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Operator API token (see operator_tokens_file in deploy/coordinator.toml), sent by every
    /// command that calls the coordinator.
    #[arg(long, env = "HOLDFAST_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM CA that signed the coordinator's certificate, for `https://` coordinator addresses.
    #[arg(long, env = "HOLDFAST_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator (control plane).
    Coordinator(CoordinatorArgs),
    /// Run the agent on a node.
    Agent(AgentArgs),
    /// Submit a training job and follow it to its end; exits 0 when it succeeds.
    Launch(LaunchArgs),
    /// Show jobs and nodes.
    Status(Addr),
    /// Show nodes with their state and health.
    Nodes(Addr),
    /// Show recorded incidents with the time of each recovery phase.
    Incidents {
        #[command(flatten)]
        addr: Addr,
        /// Only this job's incidents.
        #[arg(long)]
        job: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Take a node out of service: no job will be given it.
    Cordon {
        node: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        addr: Addr,
    },
    /// Put a cordoned or fenced (repaired) node back into service.
    Uncordon {
        node: String,
        #[command(flatten)]
        addr: Addr,
    },
    /// Stop a job.
    Stop {
        job: String,
        #[command(flatten)]
        addr: Addr,
    },
    /// Run a coordinator, agents and a training job on this machine, inject a fault, report.
    Demo(DemoArgs),
    /// MTTD/MTTR percentiles of recorded incidents and a job's ETTR (effective training time).
    Report {
        #[command(flatten)]
        addr: Addr,
        /// The job whose ETTR is shown (default: the latest submitted).
        #[arg(long)]
        job: Option<String>,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Days a training run takes with failures, for a given (or holdfast's measured) downtime.
    WhatIf(reports::WhatIfArgs),
    /// Restart agents batch by batch while jobs keep running (each agent re-executes its
    /// binary, so a newly installed one takes over); stops at the first batch that does not
    /// come back healthy. Exits 0 when every agent was restarted.
    UpgradeAgents {
        /// Agents restarted at once.
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Seconds a batch has to come back healthy.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Only these nodes (comma-separated); default: every connected node.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        #[command(flatten)]
        addr: Addr,
    },
    /// Run the configured deep check (health scripts) on a node now and print each script's
    /// result; exits 0 when every script passed. The report is kept on the node.
    Check {
        node: String,
        #[command(flatten)]
        addr: Addr,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct Addr {
    /// Coordinator address (host:port or URL).
    #[arg(long, env = "HOLDFAST_COORDINATOR", default_value = client::DEFAULT_COORDINATOR)]
    coordinator: String,
}

#[derive(clap::Args)]
struct CoordinatorArgs {
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
}

#[derive(clap::Args)]
struct AgentArgs {
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
}

#[derive(clap::Args)]
struct LaunchArgs {
    /// Number of nodes.
    #[arg(long)]
    nodes: u32,
    #[command(flatten)]
    addr: Addr,
    /// Checkpoint prefix URI (file:///path or s3://bucket/prefix).
    #[arg(long, default_value = "")]
    checkpoint: String,
    /// Seconds without progress before a rank counts as hung (0 = off).
    #[arg(long, default_value_t = 0.0)]
    stall_timeout: f64,
    /// Restarts in place for worker faults (0 = the coordinator's default).
    #[arg(long, default_value_t = 0)]
    restart_budget: u32,
    /// Fewest nodes the job can run on: with no replacement in time it shrinks to the
    /// surviving nodes if at least this many remain (0 = never shrink).
    #[arg(long, default_value_t = 0)]
    min_nodes: u32,
    /// Regex with one capture group giving the step in output lines.
    #[arg(long, default_value = "")]
    progress_regex: String,
    /// Job id (default: assigned).
    #[arg(long, default_value = "")]
    job_id: String,
    /// KEY=VALUE environment for every worker (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Submit and return without following.
    #[arg(long)]
    detach: bool,
    /// The training command; placeholders like {node_rank}, {nnodes}, {rdzv_endpoint} are
    /// substituted on each node.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Worker nodes.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Spare nodes.
    #[arg(long, default_value_t = 1)]
    spares: u32,
    /// The fault to inject after a few checkpoints.
    #[arg(long, value_enum, default_value_t = demo::Fault::KillAgent)]
    fault: demo::Fault,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Steps of the training job.
    #[arg(long, default_value_t = 80)]
    steps: u64,
    /// Keep the working directory (logs, checkpoints).
    #[arg(long)]
    keep: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOLDFAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
}

/// `signal`, then tells systemd the service is stopping.
async fn stopping(signal: impl std::future::Future<Output = ()>) {
    signal.await;
    holdfast_cli::sdnotify::notify_or_log("STOPPING=1");
}

type LeaderStore = (
    Box<dyn holdfast_coordinator::store::RecordStore>,
    Option<tokio::sync::watch::Receiver<bool>>,
);

/// Waits for the etcd leadership, then returns the etcd state store and the lease-lost signal.
#[cfg(feature = "etcd")]
async fn lead_with_etcd(args: &CoordinatorArgs) -> anyhow::Result<LeaderStore> {
    let settings = holdfast_coordinator::ha::EtcdSettings {
        endpoints: args.etcd.iter().map(|e| client::normalize(e)).collect(),
        prefix: args.etcd_prefix.clone(),
        lease_ttl_s: args.etcd_lease_ttl_s.max(1),
        advertise: args
            .advertise
            .clone()
            .unwrap_or_else(|| client::normalize(&args.listen)),
        poll: Duration::from_millis(100),
    };
    let leadership = holdfast_coordinator::ha::campaign(&settings).await?;
    let store: Box<dyn holdfast_coordinator::store::RecordStore> = Box::new(leadership.store());
    Ok((store, Some(leadership.lost.clone())))
}

#[cfg(not(feature = "etcd"))]
async fn lead_with_etcd(_: &CoordinatorArgs) -> anyhow::Result<LeaderStore> {
    anyhow::bail!(
        "--etcd: this holdfast was built without etcd support (cargo build --features etcd)"
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(token) = &cli.token {
        client::set_token(token);
    }
    if let Some(ca) = &cli.ca_cert {
        client::set_ca_cert(ca);
    }
    match run(cli).await {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("holdfast: {e:#}");
            if let Some(hint) = client::auth_hint(&e) {
                eprintln!("holdfast: {hint}");
            }
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Coordinator(args) => {
            init_logging();
            let mut config = match &args.config {
                Some(path) => holdfast_coordinator::CoordinatorConfig::load(path)?,
                None => holdfast_coordinator::CoordinatorConfig::default(),
            };
            if let Some(t) = args.heartbeat_timeout_ms {
                config.heartbeat_timeout_ms = t;
            }
            if let Some(g) = args.reconnect_grace_ms {
                config.reconnect_grace_ms = g;
            }
            config.validate().context("invalid coordinator config")?;
            // The token and TLS files are read again when serving; reading them here as well
            // stops a bad one before the port opens and before systemd hears READY.
            if !config.operator_tokens_file.as_os_str().is_empty() {
                holdfast_coordinator::auth::OperatorTokens::load(&config.operator_tokens_file)?;
            }
            holdfast_coordinator::tls::server_config(&config)?;
            // Opened before listening: a state file another coordinator holds is an error
            // before any agent can connect, and a standby does not listen until it leads.
            let (store, lost) = if !args.etcd.is_empty() {
                lead_with_etcd(&args).await?
            } else if args.ephemeral {
                let store: Box<dyn holdfast_coordinator::store::RecordStore> =
                    Box::new(holdfast_coordinator::store::MemoryStore::default());
                (store, None)
            } else {
                let store: Box<dyn holdfast_coordinator::store::RecordStore> =
                    Box::new(holdfast_coordinator::store::RedbStore::open(&args.state)?);
                (store, None)
            };
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let bound = listener.local_addr()?;
            if let Some(path) = &args.addr_file {
                std::fs::write(path, format!("{bound}\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let lost_leadership = async move {
                match lost {
                    Some(mut lost) => {
                        while !*lost.borrow() {
                            if lost.changed().await.is_err() {
                                break;
                            }
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            // A coordinator that lost its lease must stop acting at once: a standby may lead
            // already. Long-lived streams would hold a graceful shutdown open, so it exits.
            tokio::spawn(async move {
                lost_leadership.await;
                tracing::error!("lost the etcd leadership lease: exiting");
                std::process::exit(3);
            });
            holdfast_cli::sdnotify::spawn_watchdog();
            holdfast_cli::sdnotify::notify_or_log("READY=1");
            holdfast_coordinator::run_with_store(
                listener,
                config,
                store,
                stopping(shutdown_signal()),
            )
            .await?;
            Ok(0)
        }
        Cmd::Agent(args) => {
            init_logging();
            let mut config = match &args.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    holdfast_agent::AgentConfig::from_toml(&text, &path.display().to_string())?
                }
                None => holdfast_agent::AgentConfig::default(),
            };
            if let Some(c) = args.coordinator {
                config.coordinator = client::normalize(&c);
            }
            if let Some(n) = args.node_id {
                config.node_id = n;
            }
            if let Some(r) = args.role {
                config.role = match r.as_str() {
                    "worker" => holdfast_agent::config::NodeRole::Worker,
                    "spare" => holdfast_agent::config::NodeRole::Spare,
                    other => anyhow::bail!("--role: {other:?} is neither worker nor spare"),
                };
            }
            if let Some(s) = args.state_dir {
                config.state_dir = s;
            }
            if let Some(a) = args.advertise_address {
                config.advertise_address = a;
            }
            if args.enable_fault_injection {
                config.fault_injection = true;
            }
            if let Some(m) = args.metrics_listen {
                config.metrics_listen = m;
            }
            if let Some(d) = args.script_dir {
                config.script_dir = d;
            }
            let health = holdfast_agent::health::HealthBoard::default();
            holdfast_cli::sdnotify::spawn_watchdog();
            holdfast_cli::sdnotify::notify_or_log("READY=1");
            holdfast_agent::run(config, health, stopping(shutdown_signal())).await?;
            Ok(0)
        }
        Cmd::Launch(args) => launch(args).await,
        Cmd::Status(addr) => {
            let mut c = client::connect(&addr.coordinator).await?;
            let jobs = c.list_jobs(pb::ListJobsRequest {}).await?.into_inner().jobs;
            let nodes = c
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            print!("{}\n{}", tables::jobs(&jobs), tables::nodes(&nodes));
            Ok(0)
        }
        Cmd::Nodes(addr) => {
            let mut c = client::connect(&addr.coordinator).await?;
            let nodes = c
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            print!("{}", tables::nodes(&nodes));
            Ok(0)
        }
        Cmd::Incidents { addr, job, json } => {
            let mut c = client::connect(&addr.coordinator).await?;
            let incidents = c
                .list_incidents(pb::ListIncidentsRequest {
                    job_id: job.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .incidents;
            if json {
                let list: Vec<_> = incidents
                    .iter()
                    .map(|i| tables::incident_json(i, i.fault_unix_ms))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                print!("{}", tables::incidents(&incidents));
            }
            Ok(0)
        }
        Cmd::Cordon { node, reason, addr } => {
            let mut c = client::connect(&addr.coordinator).await?;
            let n = c
                .cordon(pb::CordonRequest {
                    node_id: node,
                    reason,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            println!("node {} is {}", n.node_id, n.state);
            Ok(0)
        }
        Cmd::Uncordon { node, addr } => {
            let mut c = client::connect(&addr.coordinator).await?;
            let n = c
                .uncordon(pb::CordonRequest {
                    node_id: node,
                    reason: String::new(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            println!("node {} is {}", n.node_id, n.state);
            Ok(0)
        }
        Cmd::Stop { job, addr } => {
            let mut c = client::connect(&addr.coordinator).await?;
            let j = c
                .stop_job(pb::StopJobRequest { job_id: job })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            println!("job {} is {}", j.job_id, j.state);
            Ok(0)
        }
        Cmd::Report { addr, job, json } => reports::report(&addr.coordinator, job, json).await,
        Cmd::WhatIf(args) => reports::what_if(args).await,
        Cmd::UpgradeAgents {
            batch_size,
            wait,
            nodes,
            addr,
        } => {
            if batch_size == 0 {
                anyhow::bail!("--batch-size must be at least 1");
            }
            let mut c = client::connect(&addr.coordinator).await?;
            let report = holdfast_cli::upgrade::run(
                &mut c,
                batch_size,
                Duration::from_secs(wait),
                &nodes,
                |line| println!("{line}"),
            )
            .await?;
            println!(
                "upgraded: {}",
                if report.upgraded.is_empty() {
                    "-".into()
                } else {
                    report.upgraded.join(", ")
                }
            );
            if report.problems.is_empty() {
                return Ok(0);
            }
            for (node, problem) in &report.problems {
                println!("NOT HEALTHY {node}: {problem}");
            }
            if !report.skipped.is_empty() {
                println!("stopped; not restarted: {}", report.skipped.join(", "));
            }
            Ok(1)
        }
        Cmd::Check { node, addr, json } => {
            let mut c = client::connect(&addr.coordinator).await?;
            let report = c
                .check_node(pb::CheckNodeRequest { node_id: node })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if json {
                let scripts: Vec<_> = report
                    .scripts
                    .iter()
                    .map(|s| {
                        serde_json::json!({"script": s.script, "ok": s.ok, "exit_code": s.exit_code,
                            "duration_ms": s.duration_ms, "message": s.message, "output": s.output})
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"node": report.node_id, "ok": report.ok, "purpose": report.purpose,
                        "started_unix_ms": report.started_unix_ms, "duration_ms": report.duration_ms, "scripts": scripts})
                );
            } else {
                print!("{}", tables::check_report(&report));
            }
            Ok(if report.ok { 0 } else { 1 })
        }
        Cmd::Demo(args) => {
            let exe = std::env::current_exe().context("cannot find the holdfast binary")?;
            let options = demo::DemoOptions {
                nodes: args.nodes,
                spares: args.spares,
                fault: args.fault,
                steps: args.steps,
                json: args.json,
                keep: args.keep,
                ..Default::default()
            };
            if options.nodes == 0 {
                anyhow::bail!("--nodes must be at least 1");
            }
            if matches!(options.fault, demo::Fault::KillAgent | demo::Fault::Xid)
                && options.spares == 0
            {
                anyhow::bail!(
                    "--fault {} needs at least one spare (--spares 1)",
                    options.fault.name()
                );
            }
            if options.fault == demo::Fault::BadSpare && options.spares < 2 {
                anyhow::bail!("--fault bad-spare needs two spares (--spares 2): the first is bad");
            }
            let report = demo::run(&exe, &options).await?;
            demo::print_report(&report, args.json);
            if args.json {
                println!("{}", report.to_json());
            }
            Ok(follow::exit_code(&report.job.state))
        }
    }
}

async fn launch(args: LaunchArgs) -> anyhow::Result<i32> {
    let mut c = client::connect(&args.addr.coordinator).await?;
    let spec = pb::JobSpec {
        job_id: args.job_id,
        command: args.command,
        nodes: args.nodes,
        checkpoint_uri: args.checkpoint,
        stall_timeout_s: args.stall_timeout,
        restart_budget: args.restart_budget,
        progress_regex: args.progress_regex,
        env: args.env.into_iter().collect(),
        total_steps: 0,
        min_nodes: args.min_nodes,
        progress_vouches: None,
    };
    // Watch first: a job that starts fast must not run ahead of its follower.
    let events = follow::watch(&mut c).await?;
    let job = follow::submit(&mut c, spec).await.context("job refused")?;
    println!("job {} accepted on {}", job.job_id, job.nodes.join(", "));
    if args.detach {
        return Ok(0);
    }
    let done = follow::follow_events_at(
        &mut c,
        &args.addr.coordinator,
        events,
        &job.job_id,
        Duration::from_secs(u64::MAX / 4),
        |_| {},
        true,
    )
    .await?;
    println!(
        "job {} {} at step {}: {}",
        done.job_id, done.state, done.step, done.message
    );
    Ok(follow::exit_code(&done.state))
}
