//! `holdfast`: parses flags, sets up logging and hands over to the subcommand
//! ([`holdfast_cli::commands`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use holdfast_cli::client;
use holdfast_cli::commands::{self, *};

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Keeps synchronous distributed training running through node failures",
    long_about = "holdfast detects failed GPU nodes in seconds, fences them, takes a replacement and \
relaunches the job from the latest complete checkpoint.\n\nStart a coordinator (on a reachable \
address it makes a cluster CA on first start and prints the command that joins an agent), an \
agent on every node (`holdfast agent --join TOKEN --ca-hash sha256:…` the first time), then \
`holdfast launch --nodes N -- <training command>`. `holdfast demo` runs all of it on this \
machine."
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
    Coordinator(coordinator::Args),
    /// Run the agent on a node.
    Agent(agent::Args),
    /// Submit a training job and follow it to its end; exits 0 when it succeeds.
    Launch(launch::Args),
    /// Show jobs and nodes.
    Status(Addr),
    /// Show nodes with their state and health.
    Nodes(nodes::Args),
    /// Show recorded incidents with the time of each recovery phase.
    Incidents(incidents::Args),
    /// Take a node out of service: no job will be given it.
    Cordon(cordon::Args),
    /// Put a cordoned or fenced (repaired) node back into service.
    Uncordon(uncordon::Args),
    /// Stop a job.
    Stop(stop::Args),
    /// Run a coordinator, agents and a training job on this machine, inject a fault, report.
    Demo(demo::Args),
    /// MTTD/MTTR percentiles of recorded incidents and a job's ETTR (effective training time).
    Report(report::Args),
    /// Days a training run takes with failures, for a given (or holdfast's measured) downtime.
    WhatIf(what_if::Args),
    /// Restart agents batch by batch while jobs keep running (each agent re-executes its
    /// binary, so a newly installed one takes over); stops at the first batch that does not
    /// come back healthy. Exits 0 when every agent was restarted.
    UpgradeAgents(upgrade_agents::Args),
    /// Run the configured deep check (health scripts) on a node now and print each script's
    /// result; exits 0 when every script passed. The report is kept on the node.
    Check(check::Args),
    /// Join tokens for new agents (on the coordinator's host): create, list, revoke.
    Token(token::Args),
    /// Node certificates issued to joined agents (on the coordinator's host): list, revoke.
    Cert(cert::Args),
    /// Benchmarks against a running coordinator (`bench swarm`: many simulated agents).
    Bench(bench::Args),
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
    if matches!(cli.command, Cmd::Coordinator(_) | Cmd::Agent(_)) {
        commands::init_logging();
    }
    match run(cli.command).await {
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

async fn run(command: Cmd) -> anyhow::Result<i32> {
    match command {
        Cmd::Coordinator(args) => coordinator::run(args).await,
        Cmd::Agent(args) => agent::run(args).await,
        Cmd::Launch(args) => launch::run(args).await,
        Cmd::Status(addr) => status::run(addr).await,
        Cmd::Nodes(args) => nodes::run(args).await,
        Cmd::Incidents(args) => incidents::run(args).await,
        Cmd::Cordon(args) => cordon::run(args).await,
        Cmd::Uncordon(args) => uncordon::run(args).await,
        Cmd::Stop(args) => stop::run(args).await,
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::Report(args) => report::run(args).await,
        Cmd::WhatIf(args) => what_if::run(args).await,
        Cmd::UpgradeAgents(args) => upgrade_agents::run(args).await,
        Cmd::Check(args) => check::run(args).await,
        Cmd::Token(args) => token::run(args).await,
        Cmd::Cert(args) => cert::run(args).await,
        Cmd::Bench(args) => bench::run(args).await,
    }
}
