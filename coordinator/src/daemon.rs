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
    /// Serve without TLS or operator tokens on any address (labs only; warned at every start).
    pub insecure: bool,
    /// Where the cluster CA and join tokens are kept (default: `pki` beside the state file).
    pub pki_dir: Option<PathBuf>,
    /// More names and addresses for the serving certificate (agents verify the built-in
    /// [`crate::pki::COORDINATOR_NAME`]; operators verify the address they dial).
    pub tls_names: Vec<String>,
}

/// How the port is protected, decided at start from the config and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// TLS and/or operator tokens from the config file.
    Configured,
    /// The cluster CA, serving certificate and tokens in this directory (made on first start).
    Bootstrapped(PathBuf),
    /// No authentication, loopback only.
    LoopbackOnly,
    /// No authentication on a reachable address: `--insecure`.
    Insecure,
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
    #[error("{key}: cannot read {}", path.display())]
    EtcdFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error(
        "refusing to serve {listen} without authentication: with a state file the coordinator \
         bootstraps a cluster CA and join tokens beside it; here there is none, so give \
         --pki-dir DIR (or configure tls_* and operator_tokens_file, or pass --insecure for a lab)"
    )]
    NoPkiDir { listen: String },
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// Runs the coordinator daemon until `shutdown` resolves (then tells systemd it is stopping
/// and shuts down gracefully). A coordinator whose etcd lease is lost exits the process with
/// status 3 at once.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    crate::malloc::map_large_allocations();
    let mut config = load_config(&options)?;
    protect(&options, &mut config)?;
    if let (true, StateOptions::File(state)) =
        (config.archive_file.as_os_str().is_empty(), &options.state)
    {
        let state = std::path::absolute(state).unwrap_or_else(|_| state.clone());
        config.archive_file = state.with_file_name("archive.jsonl");
    }
    // The token and TLS files are read again when serving; reading them here as well stops a
    // bad one before the port opens and before systemd hears READY.
    if !config.operator_tokens_file.as_os_str().is_empty() {
        OperatorTokens::load(&config.operator_tokens_file)?;
    }
    crate::tls::server_config(&config)?;
    // Opened before listening: a state file another coordinator holds is an error before any
    // agent can connect, and a standby does not listen until it leads.
    let (store, lost) = open_store(&options.state, &config).await?;
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

/// Decides how the port is protected and, when bootstrapping, points `config` at the PKI:
/// configured TLS or tokens are used as they are; otherwise a loopback address is served
/// without authentication (protected mode: only this host reaches it), `--insecure` serves any
/// address without it (warned), and any other address gets the cluster CA, a serving
/// certificate, the admin token and a join token from the PKI directory, made on first start.
pub fn protect(
    options: &ServeOptions,
    config: &mut CoordinatorConfig,
) -> Result<Protection, DaemonError> {
    let configured = !config.operator_tokens_file.as_os_str().is_empty()
        || !config.tls_cert_file.as_os_str().is_empty();
    if configured {
        if options.insecure {
            tracing::warn!("--insecure ignored: the config sets TLS or operator tokens");
        }
        return Ok(Protection::Configured);
    }
    if options.insecure {
        tracing::warn!(
            listen = %options.listen,
            "--insecure: no TLS, no agent certificates and no operator tokens; anyone who can \
             reach this port can run commands as root on every agent"
        );
        return Ok(Protection::Insecure);
    }
    let default_dir = match &options.state {
        StateOptions::File(path) => path.parent().map(|p| p.join("pki")),
        StateOptions::Memory | StateOptions::Etcd(_) => None,
    };
    if options.pki_dir.is_none() && is_loopback(&options.listen) {
        tracing::warn!(
            listen = %options.listen,
            "protected mode: authentication is off, so only this host can reach the \
             coordinator; listen on another address to bootstrap TLS and join tokens"
        );
        return Ok(Protection::LoopbackOnly);
    }
    let Some(dir) = options.pki_dir.clone().or(default_dir) else {
        return Err(DaemonError::NoPkiDir {
            listen: options.listen.clone(),
        });
    };
    let pki = crate::pki::Pki::new(&dir);
    let mut names = options.tls_names.clone();
    if let Ok(addr) = options.listen.parse::<std::net::SocketAddr>() {
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
    }
    let boot = pki.bootstrap(&names, crate::now_ms())?;
    pki.apply(config);
    let port = options.listen.rsplit(':').next().unwrap_or("7070");
    if let Some(token) = &boot.admin_token {
        eprintln!(
            "holdfast: made the cluster CA in {dir}. Admin operator token (shown once; kept in \
             {dir}/admin.token):\n  {token}",
            dir = dir.display()
        );
    }
    if let Some(token) = &boot.join_token {
        eprintln!(
            "holdfast: join agents with (token valid 24 h; more with `holdfast token create`):\n  \
             holdfast agent --coordinator https://<this host>:{port} --join {token} --ca-hash {}",
            boot.ca_hash
        );
    }
    tracing::info!(pki = %dir.display(), ca_hash = %boot.ca_hash, "TLS, agent certificates and operator tokens from the cluster PKI");
    Ok(Protection::Bootstrapped(dir))
}

/// Whether `listen` (`host:port`) is a loopback address.
pub fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// The state store and, under etcd, the signal that the leadership was lost.
type OpenedStore = (
    Box<dyn RecordStore>,
    Option<tokio::sync::watch::Receiver<bool>>,
);

async fn open_store(
    state: &StateOptions,
    config: &CoordinatorConfig,
) -> Result<OpenedStore, DaemonError> {
    match state {
        StateOptions::Etcd(etcd) => lead_with_etcd(etcd, config).await,
        StateOptions::Memory => Ok((Box::new(MemoryStore), None)),
        StateOptions::File(path) => Ok((Box::new(RedbStore::open(path)?), None)),
    }
}

/// Waits for the etcd leadership, then returns the etcd state store and the lease-lost signal.
#[cfg(feature = "etcd")]
async fn lead_with_etcd(
    etcd: &EtcdOptions,
    config: &CoordinatorConfig,
) -> Result<OpenedStore, DaemonError> {
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|source| DaemonError::EtcdFile {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    let set = |p: &std::path::Path| !p.as_os_str().is_empty();
    let tls = if set(&config.etcd_ca_file) {
        let identity = if set(&config.etcd_cert_file) {
            Some((
                read("etcd_cert_file", &config.etcd_cert_file)?,
                read("etcd_key_file", &config.etcd_key_file)?,
            ))
        } else {
            None
        };
        Some(crate::ha::EtcdTls {
            ca_pem: read("etcd_ca_file", &config.etcd_ca_file)?,
            identity,
        })
    } else {
        None
    };
    let auth = if config.etcd_user.is_empty() {
        None
    } else {
        let text = read("etcd_password_file", &config.etcd_password_file)?;
        Some(crate::ha::EtcdAuth {
            user: config.etcd_user.clone(),
            password: text.lines().next().unwrap_or_default().to_string(),
        })
    };
    // With a CA, etcd is dialled over TLS whatever scheme the endpoints were given with.
    let endpoints = (etcd.endpoints.iter())
        .map(|e| match (&tls, e.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => e.clone(),
        })
        .collect();
    let settings = crate::ha::EtcdSettings {
        endpoints,
        tls,
        auth,
        limits: crate::store::TxnLimits {
            max_ops: config.etcd_max_txn_ops,
            max_request_bytes: config.etcd_max_request_bytes,
        },
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
async fn lead_with_etcd(
    _: &EtcdOptions,
    _: &CoordinatorConfig,
) -> Result<OpenedStore, DaemonError> {
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
