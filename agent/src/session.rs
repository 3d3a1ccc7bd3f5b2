//! The agent's stream to the coordinator: connect, hello, heartbeats, commands, reconnect with
//! jittered backoff (see [`crate::backoff`]; a hello refused for admission waits the
//! coordinator's retry-after). Heartbeats run in the same loop that forwards commands and
//! never wait on the worker: commands are handed to the supervisor and carried out there.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_core::now_ms;
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as ToCoordinator;
use pb::agent_service_client::AgentServiceClient;
use pb::coordinator_message::Body as FromCoordinator;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{AgentConfig, NodeRole};
use crate::fencing::store::SharedFencing;
use crate::fencing::OlderTerm;
use crate::health::HealthBoard;
use crate::scripts::ScriptRunner;
use crate::worker::{Supervisor, WorkerCommand, WorkerSnapshot};
use crate::{identity, Outbox, AGENT_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot restart in place: {0}")]
    Restart(String),
    #[error("invalid agent config: {0}")]
    Config(#[from] crate::config::AgentConfigError),
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr} (metrics_listen): {source}")]
    MetricsListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a session ended.
enum SessionEnd {
    /// The agent is shutting down.
    Shutdown,
    /// The connection failed or broke; try again.
    Lost(String),
    /// The coordinator refused the hello for now (admission control): try again after the
    /// retry-after it named.
    Refused(String, Duration),
    /// The coordinator asked the agent to restart in place (rolling upgrade).
    Restart(String),
}

/// What lives across sessions.
struct AgentState {
    config: AgentConfig,
    node_id: String,
    health: HealthBoard,
    snapshot: Arc<Mutex<WorkerSnapshot>>,
    outbox_rx: mpsc::UnboundedReceiver<pb::AgentMessage>,
    /// Messages taken from the outbox that could not be sent; they go first next session.
    unsent: VecDeque<pb::AgentMessage>,
    commands: mpsc::UnboundedSender<WorkerCommand>,
    heartbeat_seq: u64,
    /// The host's GPUs, announced in every hello.
    gpus: Vec<pb::Gpu>,
    metrics: crate::metrics::AgentMetrics,
    /// Highest coordinator term and generations seen (durable), shared with the supervisor:
    /// welcomes, scripts and restarts of older terms are refused.
    fencing: SharedFencing,
    /// Runs the coordinator's `RunScript` requests; results go back through `outbox`.
    scripts: ScriptRunner,
    outbox: Outbox,
    /// The coordinator addresses and which one the next session tries.
    addresses: Vec<String>,
    next_address: usize,
    /// Samples the worker's processes for the evidence sent with every heartbeat.
    evidence: crate::worker::EvidenceSampler,
}

impl AgentState {
    fn address(&self) -> &str {
        self.addresses
            .get(self.next_address % self.addresses.len().max(1))
            .map_or("", String::as_str)
    }
}

/// Runs the agent until `shutdown` resolves: the supervisor, and sessions with the coordinator
/// one after another. Workers keep running when the agent stops.
pub async fn run(
    config: AgentConfig,
    health: HealthBoard,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let (outbox, outbox_rx) = mpsc::unbounded_channel();
    run_with_outbox(config, health, outbox, outbox_rx, shutdown).await
}

/// [`run`] with a caller-made outbox, so monitors started beside the agent can report into it.
pub async fn run_with_outbox(
    config: AgentConfig,
    health: HealthBoard,
    outbox: Outbox,
    outbox_rx: mpsc::UnboundedReceiver<pb::AgentMessage>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    config.validate()?;
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.display().to_string(),
        source,
    })?;
    let node_id = config.effective_node_id();
    // The health monitors run beside the session for the agent's whole life.
    let gpus = crate::health::monitor::start(&config, health.clone(), outbox.clone());
    tracing::info!(node = node_id, gpus = gpus.len(), "health monitors started");
    let snapshot = Arc::new(Mutex::new(WorkerSnapshot::default()));
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let scripts = script_runner(&config, &node_id);
    let mut supervisor = Supervisor::new(
        outbox.clone(),
        node_id.clone(),
        config.effective_address(),
        config.state_dir.clone(),
        Duration::from_millis(config.progress_file_poll_ms),
        snapshot.clone(),
    )
    .with_on_fence(scripts.clone(), config.on_fence_timeout_ms)
    .with_py_spy(crate::worker::find_py_spy(&config.py_spy))
    .with_standby(crate::worker::configured_standby(&config))
    .with_memory_dir(config.memory_tier_dir.clone());
    supervisor.adopt();
    let metrics = crate::metrics::AgentMetrics::default();
    if !config.metrics_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen)
            .await
            .map_err(|source| AgentError::MetricsListen {
                addr: config.metrics_listen.clone(),
                source,
            })?;
        tracing::info!(addr = ?listener.local_addr().ok(), "agent metrics on /metrics");
        tokio::spawn(crate::metrics::serve(
            listener,
            node_id.clone(),
            metrics.clone(),
            health.clone(),
            snapshot.clone(),
        ));
    }
    let fencing = supervisor.fencing();
    let config_addresses = config.coordinators();
    let supervisor = tokio::spawn(supervisor.run(commands_rx));
    let mut state = AgentState {
        config,
        node_id,
        health,
        snapshot,
        outbox_rx,
        unsent: VecDeque::new(),
        commands,
        heartbeat_seq: 0,
        gpus,
        metrics,
        fencing,
        scripts,
        outbox,
        addresses: config_addresses,
        next_address: 0,
        evidence: crate::worker::EvidenceSampler::default(),
    };
    // Stamp the start now, before any hello.
    let _ = *crate::restart::STARTED_MS;
    tokio::pin!(shutdown);
    let mut restart: Option<String> = None;
    let mut backoff = crate::backoff::Backoff::new(
        Duration::from_millis(state.config.reconnect_max_backoff_ms),
        crate::backoff::Backoff::seed_for(&state.node_id),
    );
    loop {
        let started = tokio::time::Instant::now();
        match session(&mut state, &mut shutdown).await {
            SessionEnd::Shutdown => break,
            SessionEnd::Restart(why) => {
                restart = Some(why);
                break;
            }
            SessionEnd::Refused(why, retry_after) => {
                let delay = backoff.refused(retry_after);
                tracing::info!(
                    node = state.node_id,
                    "coordinator {} refused the session for now: {why}; retrying in {delay:?}",
                    state.address()
                );
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            SessionEnd::Lost(why) => {
                state.metrics.session_lost();
                if started.elapsed() > Duration::from_secs(5) {
                    backoff.reset();
                }
                let delay = backoff.failed();
                tracing::warn!(
                    node = state.node_id,
                    "coordinator session with {} ended: {why}; retrying in {delay:?}",
                    state.address()
                );
                // Several coordinators: try the next one straight away; back off only once
                // every address failed (the leader may have moved).
                state.next_address = state.next_address.wrapping_add(1);
                if state.addresses.len() > 1
                    && !state.next_address.is_multiple_of(state.addresses.len())
                {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    continue;
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    drop(state.commands);
    let _ = supervisor.await;
    if let Some(why) = restart {
        // Workers keep running: the re-executed agent adopts them from worker.json.
        tracing::info!("agent restarting in place: {why}");
        return Err(AgentError::Restart(crate::restart::exec_self()));
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// The script runner with the variables every lifecycle script gets.
fn script_runner(config: &AgentConfig, node_id: &str) -> ScriptRunner {
    let role = match config.role {
        NodeRole::Worker => "worker",
        NodeRole::Spare => "spare",
    };
    let base_env = [
        ("HOLDFAST_NODE_ID", node_id.to_string()),
        ("HOLDFAST_ROLE", role.to_string()),
        ("HOLDFAST_STATE_DIR", config.state_dir.display().to_string()),
        ("HOLDFAST_COORDINATOR", config.coordinator.clone()),
        ("HOLDFAST_ADVERTISE_ADDRESS", config.effective_address()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ScriptRunner {
        dir: (!config.script_dir.as_os_str().is_empty()).then(|| config.script_dir.clone()),
        base_env,
    }
}

fn hello(state: &AgentState) -> pb::AgentMessage {
    let snap = state.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    pb::AgentMessage {
        body: Some(ToCoordinator::Hello(pb::Hello {
            node_id: state.node_id.clone(),
            hostname: identity::hostname(),
            gpus: state.gpus.clone(),
            role: match state.config.role {
                NodeRole::Worker => pb::NodeRole::Worker as i32,
                NodeRole::Spare => pb::NodeRole::Spare as i32,
            },
            boot_id: identity::boot_id(),
            agent_version: AGENT_VERSION.into(),
            advertise_address: state.config.effective_address(),
            worker: snap.record.map(|r| pb::WorkerStatus {
                job_id: r.job_id,
                generation: r.generation,
                pid: r.pid,
                running: true,
                last_step: snap.last_step,
            }),
            sent_unix_ms: now_ms(),
            agent_started_unix_ms: *crate::restart::STARTED_MS,
        })),
    }
}

/// The TLS settings of the stream (`None`: plain TCP), read from the configured PEM files on
/// every connect so renewed certificates are picked up without a restart.
fn client_tls(config: &AgentConfig) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    if config.tls_ca_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
    };
    let ca = read("tls_ca_file", &config.tls_ca_file)?;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if !config.tls_server_name.is_empty() {
        tls = tls.domain_name(config.tls_server_name.clone());
    }
    if !config.tls_cert_file.as_os_str().is_empty() {
        let cert = read("tls_cert_file", &config.tls_cert_file)?;
        let key = read("tls_key_file", &config.tls_key_file)?;
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

async fn session(
    state: &mut AgentState,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> SessionEnd {
    let endpoint = match tonic::transport::Endpoint::from_shared(state.address().to_string()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
        Err(e) => return SessionEnd::Lost(format!("bad coordinator address: {e}")),
    };
    let endpoint = match client_tls(&state.config) {
        Ok(None) => endpoint,
        Ok(Some(tls)) => match endpoint.tls_config(tls) {
            Ok(e) => e,
            Err(e) => return SessionEnd::Lost(format!("TLS settings: {e}")),
        },
        Err(e) => return SessionEnd::Lost(e),
    };
    let channel = tokio::select! {
        _ = shutdown.as_mut() => return SessionEnd::Shutdown,
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => {
                // The causes say why (refused, or a certificate this agent does not trust).
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why = format!("{why}: {cause}");
                    source = cause.source();
                }
                return SessionEnd::Lost(format!("cannot connect to {}: {why}", state.address()));
            }
        },
    };
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(1024);
    if tx.try_send(hello(state)).is_err() {
        return SessionEnd::Lost("cannot queue hello".into());
    }
    let mut inbound = tokio::select! {
        _ = shutdown.as_mut() => return SessionEnd::Shutdown,
        r = client.session(ReceiverStream::new(rx)) => match r {
            Ok(r) => r.into_inner(),
            Err(status) => return refused(&status),
        },
    };
    // The coordinator's last clock stamp (welcome or ping) and when it arrived (agent clock),
    // echoed once in the next heartbeat: the coordinator measures the clock offset from the
    // round trip.
    let mut clock_echo: Option<(i64, i64)>;
    // `session_term` is the welcome's term: a coordinator's term is fixed for its life, so a
    // command claiming a newer one on this stream is forged and never reaches the fencing state.
    let (interval, session_term) = match inbound.message().await {
        Ok(Some(pb::CoordinatorMessage {
            body: Some(FromCoordinator::Welcome(w)),
        })) => {
            // Without TLS the peer is unauthenticated: a jump far past the terms seen is not
            // persisted (it would make the agent refuse the real coordinator until an operator
            // removes the fencing file).
            let authenticated = !state.config.tls_ca_file.as_os_str().is_empty();
            if let Some(refusal) =
                term_jump_refusal(state.fencing.decide(|f| f.term()), w.term, authenticated)
            {
                return SessionEnd::Lost(format!("coordinator at {}: {refusal}", state.address()));
            }
            // From here on, the supervisor refuses commands of older terms too.
            if let Err(OlderTerm { term, current }) = state.fencing.decide(|f| f.observe(w.term)) {
                // A coordinator that lost its leadership (or a stale copy) still serving.
                return SessionEnd::Lost(format!(
                    "coordinator at {} has term {term} but term {current} was already seen; \
                     refusing it (if its state was reset on purpose, remove {})",
                    state.address(),
                    state.fencing.path().display()
                ));
            }
            let interval =
                heartbeat_interval(state.config.heartbeat_interval_ms, w.heartbeat_interval_ms);
            clock_echo = Some((w.coordinator_unix_ms, now_ms()));
            tracing::info!(
                node = state.node_id,
                term = w.term,
                "connected to coordinator {}",
                state.address()
            );
            state.metrics.session_opened();
            (interval, w.term)
        }
        Ok(other) => return SessionEnd::Lost(format!("expected welcome, got {other:?}")),
        Err(status) => return refused(&status),
    };
    while let Some(msg) = state.unsent.pop_front() {
        if let Err(e) = tx.try_send(msg) {
            state.unsent.push_front(e.into_inner());
            return SessionEnd::Lost("send queue full".into());
        }
    }
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                let _ = tx.try_send(pb::AgentMessage {
                    body: Some(ToCoordinator::Goodbye(pb::Goodbye {
                        reason: "agent shutting down".into(),
                        restarting: true,
                    })),
                });
                // Give the goodbye a moment to leave.
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_millis(300), inbound.message()).await;
                return SessionEnd::Shutdown;
            }
            _ = heartbeat.tick() => {
                state.heartbeat_seq += 1;
                let (echo_coordinator_unix_ms, echo_received_unix_ms) =
                    clock_echo.take().unwrap_or((0, 0));
                let hb = pb::AgentMessage {
                    body: Some(ToCoordinator::Heartbeat(pb::Heartbeat {
                        seq: state.heartbeat_seq,
                        sent_unix_ms: now_ms(),
                        health: Some(state.health.summary()),
                        echo_coordinator_unix_ms,
                        echo_received_unix_ms,
                    })),
                };
                if tx.try_send(hb).is_err() {
                    return SessionEnd::Lost("send queue full (coordinator not reading)".into());
                }
                state.metrics.heartbeat_sent();
                let worker = state.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
                if let Some(evidence) = state.evidence.sample(&worker) {
                    let _ = tx.try_send(pb::AgentMessage {
                        body: Some(ToCoordinator::WorkerEvidence(evidence)),
                    });
                }
            }
            msg = state.outbox_rx.recv() => {
                let Some(msg) = msg else { return SessionEnd::Shutdown };
                if let Err(e) = tx.try_send(msg) {
                    state.unsent.push_back(e.into_inner());
                    return SessionEnd::Lost("send queue full (coordinator not reading)".into());
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::CoordinatorMessage { body: Some(body) }))
                    if command_term(&body).is_some_and(|term| term > session_term) =>
                {
                    tracing::warn!(
                        term = command_term(&body),
                        session_term,
                        "refused a command claiming a newer term than its coordinator's welcome"
                    );
                }
                Ok(Some(pb::CoordinatorMessage { body: Some(FromCoordinator::RestartAgent(r)) })) => {
                    if state.fencing.admit_term(r.term).is_err() {
                        tracing::warn!(term = r.term, "refused a restart of an older coordinator term");
                        continue;
                    }
                    let _ = tx.try_send(pb::AgentMessage {
                        body: Some(ToCoordinator::Goodbye(pb::Goodbye {
                            reason: format!("restarting: {}", r.reason),
                            restarting: true,
                        })),
                    });
                    drop(tx);
                    let _ = tokio::time::timeout(Duration::from_millis(300), inbound.message()).await;
                    return SessionEnd::Restart(r.reason);
                }
                Ok(Some(pb::CoordinatorMessage { body: Some(FromCoordinator::Ping(p)) })) => {
                    clock_echo = Some((p.coordinator_unix_ms, now_ms()));
                }
                Ok(Some(pb::CoordinatorMessage { body: Some(body) })) => dispatch(state, body),
                Ok(Some(_)) => {}
                Ok(None) => return SessionEnd::Lost("coordinator closed the stream".into()),
                Err(status) => return SessionEnd::Lost(status.message().to_string()),
            }
        }
    }
}

/// How a refused session ends: refused for now (admission control, with a retry-after) or
/// lost.
fn refused(status: &tonic::Status) -> SessionEnd {
    let why = format!("coordinator refused the session: {}", status.message());
    match crate::backoff::retry_after(status) {
        Some(after) => SessionEnd::Refused(why, after),
        None => SessionEnd::Lost(why),
    }
}

/// Shortest and longest heartbeat interval the agent accepts from a welcome (or its config):
/// a coordinator asking for more is clamped, not obeyed (a zero or overflowing interval would
/// stop the agent).
const HEARTBEAT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

/// Largest term increase accepted from an unauthenticated (plain HTTP) coordinator. Terms grow
/// by one per coordinator start or election, so a real coordinator never jumps this far.
const MAX_UNAUTHENTICATED_TERM_JUMP: u64 = 10_000;

/// The heartbeat interval: the welcome's when it gives one, else the configured one, clamped to
/// [`HEARTBEAT_INTERVAL_MS`].
fn heartbeat_interval(configured_ms: u64, welcome_ms: u64) -> Duration {
    let ms = if welcome_ms > 0 {
        welcome_ms
    } else {
        configured_ms
    };
    Duration::from_millis(ms.clamp(*HEARTBEAT_INTERVAL_MS.start(), *HEARTBEAT_INTERVAL_MS.end()))
}

/// Why a welcome's `offered` term is refused before it is persisted, when the agent has seen
/// `seen` and the coordinator is not authenticated by TLS; `None` when it may be observed.
fn term_jump_refusal(seen: u64, offered: u64, authenticated: bool) -> Option<String> {
    if authenticated || offered <= seen.saturating_add(MAX_UNAUTHENTICATED_TERM_JUMP) {
        return None;
    }
    Some(format!(
        "its term {offered} is more than {MAX_UNAUTHENTICATED_TERM_JUMP} past term {seen}, \
         already seen, and the connection is not authenticated (no tls_ca_file); refusing it"
    ))
}

/// The coordinator term a command carries.
pub fn command_term(body: &FromCoordinator) -> Option<u64> {
    match body {
        FromCoordinator::Welcome(_) => None,
        FromCoordinator::Launch(l) => Some(l.term),
        FromCoordinator::Stop(s) => Some(s.term),
        FromCoordinator::Fence(f) => Some(f.term),
        FromCoordinator::RunScript(r) => Some(r.term),
        FromCoordinator::RestartAgent(r) => Some(r.term),
        FromCoordinator::DumpStacks(d) => Some(d.term),
        // A clock stamp changes nothing on the agent.
        FromCoordinator::Ping(_) => None,
    }
}

fn dispatch(state: &mut AgentState, body: FromCoordinator) {
    let command = match body {
        FromCoordinator::Launch(l) => WorkerCommand::Launch(Box::new(l)),
        FromCoordinator::Stop(s) => WorkerCommand::Stop(s),
        FromCoordinator::Fence(f) => WorkerCommand::Fence(f),
        FromCoordinator::DumpStacks(d) => WorkerCommand::DumpStacks(d),
        FromCoordinator::Welcome(_)
        | FromCoordinator::RestartAgent(_)
        | FromCoordinator::Ping(_) => return,
        FromCoordinator::RunScript(r) => {
            if state.fencing.admit_term(r.term).is_err() {
                tracing::warn!(
                    script = r.script,
                    term = r.term,
                    "refused a script of an older coordinator term"
                );
                return;
            }
            // Scripts run beside the heartbeats: a long deep check must not look like a dead agent.
            let runner = state.scripts.clone();
            let outbox = state.outbox.clone();
            tokio::spawn(async move {
                tracing::info!(
                    script = r.script,
                    command = r.command_id,
                    "running lifecycle script"
                );
                let result = runner.run(&r).await;
                tracing::info!(
                    script = r.script,
                    ok = result.ok,
                    ms = result.duration_ms,
                    "{}",
                    result.message
                );
                let _ = outbox.send(pb::AgentMessage {
                    body: Some(ToCoordinator::CommandResult(result)),
                });
            });
            return;
        }
    };
    if state.commands.send(command).is_err() {
        tracing::error!("worker supervisor is gone; command dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_welcome_heartbeat_interval_is_clamped() {
        assert_eq!(heartbeat_interval(500, 0), Duration::from_millis(500));
        assert_eq!(heartbeat_interval(500, 1000), Duration::from_millis(1000));
        assert_eq!(heartbeat_interval(500, 1), Duration::from_millis(50));
        assert_eq!(heartbeat_interval(0, 0), Duration::from_millis(50));
        assert_eq!(heartbeat_interval(500, u64::MAX), Duration::from_secs(60));
        // The clamped interval is one tokio accepts (a huge one overflowed the deadline).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let _ = tokio::time::interval(heartbeat_interval(500, u64::MAX));
        });
    }

    #[test]
    fn an_unauthenticated_coordinator_cannot_jump_the_term_far() {
        assert_eq!(term_jump_refusal(0, 1, false), None);
        assert_eq!(term_jump_refusal(5, 10_005, false), None);
        let refusal = term_jump_refusal(5, 10_006, false).expect("refused");
        assert!(refusal.contains("not authenticated"), "{refusal}");
        assert!(term_jump_refusal(0, u64::MAX, false).is_some());
        assert_eq!(term_jump_refusal(u64::MAX, u64::MAX, false), None);
        assert_eq!(term_jump_refusal(0, u64::MAX, true), None);
    }

    #[test]
    fn every_command_but_the_welcome_carries_its_term() {
        let launch = FromCoordinator::Launch(pb::Launch {
            term: 7,
            ..Default::default()
        });
        assert_eq!(command_term(&launch), Some(7));
        let welcome = FromCoordinator::Welcome(pb::Welcome::default());
        assert_eq!(command_term(&welcome), None);
    }
}
