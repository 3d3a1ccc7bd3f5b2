//! The coordinator as a daemon (`holdfast coordinator`): everything between the command line
//! and [`run_with_store`](crate::run_with_store) — the config file and its overrides, the token
//! and TLS files checked before the port opens, the state store (a redb file, memory, or etcd
//! once this coordinator leads), the listening socket, systemd's notify protocol and the
//! signals that stop it.
//!
//! [`sdnotify`] and [`shutdown_signal`] serve the agent daemon as well.

use std::future::Future;
use std::path::PathBuf;

use crate::auth::{OperatorTokens, TokenFileError};
use crate::config::ConfigError;
use crate::server::ServeError;
use crate::store::{MemoryStore, RecordStore, RedbStore, StoreError};
use crate::tls::TlsFileError;
use crate::CoordinatorConfig;

/// How `holdfast coordinator` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// TOML config file; the defaults without one.
    pub config: Option<PathBuf>,
    /// Where the bound address is written once listening.
    pub addr_file: Option<PathBuf>,
    /// Overrides the config's `heartbeat_timeout_ms`.
    pub heartbeat_timeout_ms: Option<u64>,
    /// Overrides the config's `reconnect_grace_ms`.
    pub reconnect_grace_ms: Option<u64>,
    /// Where the state is kept.
    pub state: StateOptions,
}

/// Where the coordinator keeps its state (nodes, jobs, generations, incidents, term).
#[derive(Debug, Clone)]
pub enum StateOptions {
    /// A redb file, reloaded on start: a restarted coordinator carries on where it stopped.
    File(PathBuf),
    /// Memory only: nothing survives a restart.
    Memory,
    /// etcd, shared by a group of coordinators of which only the leader serves.
    Etcd(EtcdOptions),
}

/// A group of coordinators that share their state in etcd (high availability).
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix of this group of coordinators.
    pub prefix: String,
    /// Seconds a dead leader keeps the leadership before a standby takes over (at least 1).
    pub lease_ttl_s: i64,
    /// The URL agents and operators reach this coordinator at, published while it leads.
    pub advertise: String,
}

/// Why the coordinator did not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    LoadConfig(#[from] ConfigError),
    #[error("invalid coordinator config")]
    InvalidConfig(#[source] ConfigError),
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    #[error(transparent)]
    Tls(#[from] TlsFileError),
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Etcd(#[from] crate::ha::HaError),
    #[error("--etcd: this holdfast was built without etcd support (cargo build --features etcd)")]
    EtcdNotBuiltIn,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    BoundAddress(std::io::Error),
    #[error("writing {}", path.display())]
    AddrFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the coordinator daemon until `shutdown` resolves (then tells systemd it is stopping
/// and shuts down gracefully). A coordinator whose etcd lease is lost exits the process with
/// status 3 at once.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let config = load_config(&options)?;
    // The token and TLS files are read again when serving; reading them here as well stops a
    // bad one before the port opens and before systemd hears READY.
    if !config.operator_tokens_file.as_os_str().is_empty() {
        OperatorTokens::load(&config.operator_tokens_file)?;
    }
    crate::tls::server_config(&config)?;
    // Opened before listening: a state file another coordinator holds is an error before any
    // agent can connect, and a standby does not listen until it leads.
    let (store, lost) = open_store(&options.state).await?;
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            address: options.listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(DaemonError::BoundAddress)?;
    if let Some(path) = &options.addr_file {
        std::fs::write(path, format!("{bound}\n")).map_err(|source| DaemonError::AddrFile {
            path: path.clone(),
            source,
        })?;
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
    // A coordinator that lost its lease must stop acting at once: a standby may lead already.
    // Long-lived streams would hold a graceful shutdown open, so it exits.
    tokio::spawn(async move {
        lost_leadership.await;
        tracing::error!("lost the etcd leadership lease: exiting");
        std::process::exit(3);
    });
    sdnotify::spawn_watchdog();
    sdnotify::notify_or_log("READY=1");
    crate::run_with_store(listener, config, store, sdnotify::stopping(shutdown)).await?;
    Ok(())
}

/// The config file (or the defaults) with the command line's overrides, validated.
fn load_config(options: &ServeOptions) -> Result<CoordinatorConfig, DaemonError> {
    let mut config = match &options.config {
        Some(path) => CoordinatorConfig::load(path)?,
        None => CoordinatorConfig::default(),
    };
    if let Some(t) = options.heartbeat_timeout_ms {
        config.heartbeat_timeout_ms = t;
    }
    if let Some(g) = options.reconnect_grace_ms {
        config.reconnect_grace_ms = g;
    }
    config.validate().map_err(DaemonError::InvalidConfig)?;
    Ok(config)
}

/// The state store and, under etcd, the signal that the leadership was lost.
type OpenedStore = (
    Box<dyn RecordStore>,
    Option<tokio::sync::watch::Receiver<bool>>,
);

async fn open_store(state: &StateOptions) -> Result<OpenedStore, DaemonError> {
    match state {
        StateOptions::Etcd(etcd) => lead_with_etcd(etcd).await,
        StateOptions::Memory => Ok((Box::new(MemoryStore::default()), None)),
        StateOptions::File(path) => Ok((Box::new(RedbStore::open(path)?), None)),
    }
}

/// Waits for the etcd leadership, then returns the etcd state store and the lease-lost signal.
#[cfg(feature = "etcd")]
async fn lead_with_etcd(etcd: &EtcdOptions) -> Result<OpenedStore, DaemonError> {
    let settings = crate::ha::EtcdSettings {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        lease_ttl_s: etcd.lease_ttl_s.max(1),
        advertise: etcd.advertise.clone(),
        poll: std::time::Duration::from_millis(100),
    };
    let leadership = crate::ha::campaign(&settings).await?;
    let store: Box<dyn RecordStore> = Box::new(leadership.store());
    Ok((store, Some(leadership.lost.clone())))
}

#[cfg(not(feature = "etcd"))]
async fn lead_with_etcd(_: &EtcdOptions) -> Result<OpenedStore, DaemonError> {
    Err(DaemonError::EtcdNotBuiltIn)
}

/// Resolves on SIGTERM (what systemd sends) or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
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

pub mod sdnotify {
    //! systemd's notify protocol (`Type=notify` units): `READY=1` once serving, `STOPPING=1`
    //! on shutdown, `WATCHDOG=1` every half `WatchdogSec`. One datagram per message to the unix
    //! socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without
    //! the variable (not run by systemd) every call is a no-op.

    use std::future::Future;
    use std::io;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    /// Sends `state` (e.g. `"READY=1"`); `Ok(false)` when not run under a notify-aware manager.
    pub fn notify(state: &str) -> io::Result<bool> {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(false);
        };
        let target = target.to_string_lossy().into_owned();
        let socket = UnixDatagram::unbound()?;
        if let Some(name) = target.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &target)?;
        }
        Ok(true)
    }

    /// Logs instead of failing: a lost notification must not take the service down.
    pub fn notify_or_log(state: &str) {
        if let Err(e) = notify(state) {
            tracing::warn!("cannot notify systemd ({state}): {e}");
        }
    }

    /// Half the watchdog period systemd asked for, if it asked this process
    /// (`$WATCHDOG_USEC`, and `$WATCHDOG_PID` absent or ours).
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok()? != std::process::id() {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }

    /// Pings the watchdog from the runtime for as long as it runs: a wedged runtime stops the
    /// pings and systemd restarts the service.
    pub fn spawn_watchdog() {
        let Some(every) = watchdog_interval() else {
            return;
        };
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            loop {
                interval.tick().await;
                notify_or_log("WATCHDOG=1");
            }
        });
    }

    /// `signal`, then tells systemd the service is stopping.
    pub async fn stopping(signal: impl Future<Output = ()>) {
        signal.await;
        notify_or_log("STOPPING=1");
    }
}
