//! High availability with etcd (cargo feature `etcd`): several coordinators, one leader.
//!
//! Leadership is a key (`<prefix>/leader`) created only if absent and bound to a lease the
//! leader keeps alive; its value is the leader's advertised address, so standbys and operators
//! can name it. A standby polls for the key to disappear (the leader's lease ran out: it died or
//! lost etcd) and then creates it itself. The state lives under `<prefix>/state/` as the same
//! records as the single-coordinator file ([`crate::store`]); every write is a transaction that
//! only applies while the leader key still carries this coordinator's lease, so a deposed leader
//! that still runs can never overwrite its successor's state. A write refused that way returns
//! [`StoreError::NotLeader`]; the shell then drops the write's effects and stops serving.
//!
//! Standbys do not listen: agents and the CLI, given every coordinator's address, get
//! "connection refused" (UNAVAILABLE) from a standby and try the next address.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use tokio::sync::watch;

use crate::store::{Change, RecordStore, Records, StoreError};

/// How to reach etcd and how to lead.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// etcd client endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of this coordinator group (several groups can share one etcd).
    pub prefix: String,
    /// Lease TTL of the leadership: a dead leader is replaced after at most this long.
    pub lease_ttl_s: i64,
    /// What this coordinator publishes as its address while it leads.
    pub advertise: String,
    /// How often a standby looks whether the leadership is free.
    pub poll: Duration,
    /// TLS to etcd: the CA its certificate must chain to, and a client certificate.
    pub tls: Option<EtcdTls>,
    /// etcd authentication: user and password.
    pub auth: Option<EtcdAuth>,
    /// etcd's transaction limits: a bigger save is refused whole.
    pub limits: crate::store::TxnLimits,
}

/// TLS to etcd, as PEM text read at start.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA etcd's serving certificate must chain to.
    pub ca_pem: String,
    /// A client certificate and its key (etcd's `--client-cert-auth`).
    pub identity: Option<(String, String)>,
}

/// An etcd user and its password; the password never appears in `Debug` or the logs.
#[derive(Clone)]
pub struct EtcdAuth {
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EtcdAuth {{ user: {:?}, password: (hidden) }}",
            self.user
        )
    }
}

impl EtcdSettings {
    fn connect_options(&self) -> Option<etcd_client::ConnectOptions> {
        if self.tls.is_none() && self.auth.is_none() {
            return None;
        }
        let mut options = etcd_client::ConnectOptions::new();
        if let Some(tls) = &self.tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        if let Some(auth) = &self.auth {
            options = options.with_user(&auth.user, &auth.password);
        }
        Some(options)
    }
}

/// Why etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot start the etcd client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("etcd {what}: {source}")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
}

fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> HaError {
    move |source| HaError::Etcd { what, source }
}

/// This coordinator leads: its lease, and a signal that turns true when the lease is lost.
pub struct Leadership {
    client: Client,
    lease: i64,
    leader_key: String,
    state_prefix: String,
    limits: crate::store::TxnLimits,
    /// Turns true once the lease could not be kept alive: stop serving.
    pub lost: watch::Receiver<bool>,
}

/// The runtime every etcd call runs on. It is the coordinator's own thread, apart from the
/// serving runtime: state writes block (under the core's lock, on purpose), and a write that
/// needed a serving thread to make progress could wait on itself.
fn etcd_runtime() -> Result<&'static tokio::runtime::Runtime, HaError> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("holdfast-etcd")
        .enable_all()
        .build()
        .map_err(HaError::Runtime)?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `fut` on the etcd runtime and waits for it from synchronous code.
fn run_blocking<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let rt = etcd_runtime().map_err(|e| StoreError::Backend(e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let wait = || {
        rx.recv()
            .map_err(|_| StoreError::Backend("the etcd runtime stopped".into()))
    };
    let in_multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if in_multi_thread {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// Connects to etcd and waits until this coordinator leads. While it waits it logs who leads.
pub async fn campaign(settings: &EtcdSettings) -> Result<Leadership, HaError> {
    let rt = etcd_runtime()?;
    let settings = settings.clone();
    rt.spawn(async move { campaign_on_etcd_runtime(&settings).await })
        .await
        .map_err(|e| HaError::Runtime(std::io::Error::other(e.to_string())))?
}

async fn campaign_on_etcd_runtime(settings: &EtcdSettings) -> Result<Leadership, HaError> {
    let prefix = settings.prefix.trim_end_matches('/').to_string();
    let leader_key = format!("{prefix}/leader");
    // etcd may still be starting (or briefly away): wait for it rather than give up.
    let mut attempt = 0u32;
    let (mut client, lease) = loop {
        match connect_and_lease(settings).await {
            Ok(ok) => break ok,
            Err(e) if attempt < 120 => {
                if attempt.is_multiple_of(10) {
                    tracing::warn!("waiting for etcd: {e}");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let (tx, lost) = watch::channel(false);
    spawn_keep_alive(client.clone(), lease, settings.lease_ttl_s, tx);
    let mut last_seen = String::new();
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader_key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                leader_key.as_str(),
                settings.advertise.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(leader_key.as_str(), None)]);
        let response = client.txn(txn).await.map_err(etcd("campaign"))?;
        if response.succeeded() {
            tracing::info!(lease, "leading as {}", settings.advertise);
            return Ok(Leadership {
                client,
                lease,
                leader_key,
                state_prefix: format!("{prefix}/state/"),
                limits: settings.limits,
                lost,
            });
        }
        let leader = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        if leader != last_seen {
            tracing::info!("standby: the leader is {leader}");
            last_seen = leader;
        }
        if *lost.borrow() {
            return Err(HaError::Etcd {
                what: "lease keep-alive",
                source: etcd_client::Error::LeaseKeepAliveError(
                    "lease lost while standing by".into(),
                ),
            });
        }
        tokio::time::sleep(settings.poll).await;
    }
}

async fn connect_and_lease(settings: &EtcdSettings) -> Result<(Client, i64), HaError> {
    let mut client = Client::connect(&settings.endpoints, settings.connect_options())
        .await
        .map_err(|source| HaError::Connect {
            endpoints: settings.endpoints.join(","),
            source,
        })?;
    let lease = client
        .lease_grant(settings.lease_ttl_s, None)
        .await
        .map_err(etcd("lease grant"))?
        .id();
    Ok((client, lease))
}

/// Keeps the lease alive at a third of its TTL; a failure, or etcd answering that the lease is
/// gone, flips `lost`.
fn spawn_keep_alive(mut client: Client, lease: i64, ttl_s: i64, lost: watch::Sender<bool>) {
    tokio::spawn(async move {
        let every = Duration::from_millis((ttl_s.max(1) as u64 * 1000) / 3);
        let result: Result<(), String> = async {
            let (mut keeper, mut responses) = client
                .lease_keep_alive(lease)
                .await
                .map_err(|e| e.to_string())?;
            loop {
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(every * 2, responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return Err("the lease expired".to_string()),
                    Ok(Ok(None)) => return Err("keep-alive stream closed".to_string()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("no keep-alive answer".to_string()),
                }
                tokio::time::sleep(every).await;
            }
        }
        .await;
        if let Err(e) = result {
            tracing::error!(lease, "leadership lease lost: {e}");
        }
        let _ = lost.send(true);
    });
}

impl Leadership {
    /// The state store of this leadership: writes only apply while the lease leads.
    pub fn store(&self) -> EtcdStore {
        EtcdStore {
            client: self.client.clone(),
            lease: self.lease,
            leader_key: self.leader_key.clone(),
            prefix: self.state_prefix.clone(),
            limits: self.limits,
        }
    }
}

/// The coordinator's records in etcd, written only while this coordinator leads.
pub struct EtcdStore {
    client: Client,
    lease: i64,
    leader_key: String,
    prefix: String,
    limits: crate::store::TxnLimits,
}

impl RecordStore for EtcdStore {
    fn load(&mut self) -> Result<Records, StoreError> {
        let mut client = self.client.clone();
        let prefix = self.prefix.clone();
        let key = prefix.clone();
        let response =
            run_blocking(
                async move { client.get(key, Some(GetOptions::new().with_prefix())).await },
            )?
            .map_err(|e| StoreError::Backend(format!("reading {prefix} from etcd: {e}")))?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(prefix.as_str())?;
                Some((key.to_string(), kv.value().to_vec()))
            })
            .collect())
    }

    /// One transaction, or nothing: a save etcd could not take whole is refused before it is
    /// sent (split over several transactions, a crash between them would leave half a save).
    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        crate::store::fits_one_txn(changes, &self.prefix, self.limits)?;
        {
            let mut client = self.client.clone();
            let ops: Vec<TxnOp> = changes
                .iter()
                .map(|(key, value)| {
                    let key = format!("{}{key}", self.prefix);
                    match value {
                        Some(v) => TxnOp::put(key, v.clone(), None),
                        None => TxnOp::delete(key, None),
                    }
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::lease(
                    self.leader_key.as_str(),
                    CompareOp::Equal,
                    self.lease,
                )])
                .and_then(ops);
            let response = run_blocking(async move { client.txn(txn).await })?
                .map_err(|e| StoreError::Backend(format!("writing state to etcd: {e}")))?;
            if !response.succeeded() {
                return Err(StoreError::NotLeader(format!(
                    "{} no longer holds lease {:x}",
                    self.leader_key, self.lease
                )));
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("etcd under {} (lease {:x})", self.prefix, self.lease)
    }
}
