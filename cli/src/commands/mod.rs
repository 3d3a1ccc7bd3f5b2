//! One module per subcommand of `holdfast`, each with its flags (`Args`) and its `run`, which
//! returns the process's exit code. `main` only parses, sets up logging and dispatches.

pub mod agent;
pub mod bench;
pub mod cert;
pub mod check;
pub mod coordinator;
pub mod cordon;
pub mod demo;
pub mod incidents;
pub mod launch;
pub mod nodes;
pub mod report;
pub mod status;
pub mod stop;
pub mod token;
pub mod uncordon;
pub mod upgrade_agents;
pub mod what_if;

use crate::client;

/// The coordinator a command talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct Addr {
    /// Coordinator address (host:port or URL).
    #[arg(long, env = "HOLDFAST_COORDINATOR", default_value = client::DEFAULT_COORDINATOR)]
    pub coordinator: String,
}

/// A coordinator, an optional job and the output format: what the commands that read
/// incidents take.
#[derive(clap::Args, Debug)]
pub struct JobQuery {
    #[command(flatten)]
    pub addr: Addr,
    /// The job: `incidents` lists only its incidents, `report` shows its ETTR (default: every
    /// job's incidents, the latest submitted job's ETTR).
    #[arg(long)]
    pub job: Option<String>,
    /// JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl Addr {
    /// An operator API client of this coordinator.
    pub async fn connect(&self) -> anyhow::Result<client::Client> {
        client::connect(&self.coordinator).await
    }
}

/// Logs to stderr at `$HOLDFAST_LOG` (default `info`). The daemons log; the other commands
/// print what they have to say and would only be cluttered.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOLDFAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A refused operator call as the error the user reads: the coordinator's message says what
/// is wrong, the status code around it would only add noise.
pub(crate) fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
