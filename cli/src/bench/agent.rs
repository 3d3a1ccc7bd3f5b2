//! One simulated agent of the swarm: its own HTTP/2 connection (a tonic `Channel` of its own)
//! and one `holdfast.v1` session at a time, speaking as `agent/src/session.rs` does — hello,
//! heartbeats at the welcome's interval with a health summary and worker evidence, progress
//! while its (pretend) worker runs, and the answers a real agent gives to every command. No
//! process is started: a `Launch` is answered with a worker-started event at once.
//!
//! What the engine needs to measure lives in [`AgentProbe`] (shared with it): when each
//! heartbeat left, whether the engine silenced the agent, and the generator's own lateness.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_agent::backoff::Backoff;
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as ToCoordinator;
use pb::agent_service_client::AgentServiceClient;
use pb::coordinator_message::Body as FromCoordinator;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::now_ms;

/// Heartbeat send times kept per agent: enough to match the heartbeat the coordinator last
/// processed even when it is several intervals behind.
const SENDS_KEPT: usize = 64;

/// Shortest and longest heartbeat interval taken from a welcome, as the real agent clamps it.
const HEARTBEAT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

/// What the engine and one simulated agent share.
pub struct AgentProbe {
    pub node_id: String,
    /// Registered as a spare (takes over failed nodes' ranks) rather than a worker.
    pub spare: bool,
    /// Set by the engine: from now on the agent sends nothing (a hung or cut-off host). Its
    /// connection stays open until the coordinator closes it; it never reconnects.
    silenced: AtomicBool,
    /// When the engine silenced it (unix ms), 0 before.
    silenced_at_ms: AtomicI64,
    /// Unix ms of the heartbeats sent lately, oldest first.
    sends: Mutex<VecDeque<i64>>,
    /// A session is open and welcomed.
    pub welcomed: AtomicBool,
}

impl AgentProbe {
    pub fn new(node_id: String, spare: bool) -> AgentProbe {
        AgentProbe {
            node_id,
            spare,
            silenced: AtomicBool::new(false),
            silenced_at_ms: AtomicI64::new(0),
            sends: Mutex::new(VecDeque::with_capacity(SENDS_KEPT)),
            welcomed: AtomicBool::new(false),
        }
    }

    /// Stops the agent's heartbeats and everything else it sends; returns the time it did.
    pub fn silence(&self) -> i64 {
        let at = now_ms();
        self.silenced_at_ms.store(at, Ordering::SeqCst);
        self.silenced.store(true, Ordering::SeqCst);
        at
    }

    pub fn is_silenced(&self) -> bool {
        self.silenced.load(Ordering::SeqCst)
    }

    pub fn silenced_at_ms(&self) -> Option<i64> {
        let at = self.silenced_at_ms.load(Ordering::SeqCst);
        (at > 0).then_some(at)
    }

    fn record_send(&self, at: i64) {
        if let Ok(mut sends) = self.sends.lock() {
            if sends.len() == SENDS_KEPT {
                sends.pop_front();
            }
            sends.push_back(at);
        }
    }

    /// The lag of the heartbeat the coordinator processed last, given the coordinator's
    /// processing stamp `processed_ms` (`Node.last_heartbeat_unix_ms`) read by a `ListNodes`
    /// that was sent at `asked_ms`. The processed heartbeat is the latest one sent at or before
    /// the stamp; its lag is the stamp minus its send time. A heartbeat sent before the
    /// question and still unprocessed has waited at least `asked_ms` minus its send time: the
    /// larger of the two is returned, so a coordinator that is behind is never measured as
    /// on time. `None` when no kept send matches (the stamp is older than every kept send).
    pub fn lag_ms(&self, processed_ms: i64, asked_ms: i64) -> Option<i64> {
        let sends = self.sends.lock().ok()?;
        let processed = sends.iter().rev().find(|&&s| s <= processed_ms)?;
        let done = processed_ms - processed;
        let waiting = sends
            .iter()
            .find(|&&s| s > processed_ms && s < asked_ms)
            .map_or(0, |s| asked_ms - s);
        Some(done.max(waiting))
    }
}

/// What all agents of the swarm report into.
#[derive(Default)]
pub struct SwarmCounters {
    /// Heartbeat tick lateness in microseconds (scheduled tick → the task ran it), every tick
    /// from the steady phase on.
    pub lateness_us: Mutex<Vec<u32>>,
    /// Coordinator → agent delay of clock stamps, in microseconds: a `Ping`'s stamp (the
    /// coordinator's clock at the tick that sent it) to its arrival here (same host, same clock),
    /// from the steady phase on.
    pub ping_delay_us: Mutex<Vec<u32>>,
    pub heartbeats_sent: AtomicU64,
    /// Messages that could not be queued on a stream (the coordinator not reading).
    pub send_queue_full: AtomicU64,
    /// Sessions of agents never silenced that ended without the generator ending them.
    pub sessions_lost: AtomicU64,
    /// The first few reasons of those, for the report.
    pub lost_reasons: Mutex<Vec<String>>,
    /// The heartbeat interval the last welcome asked for, in ms.
    pub interval_ms: AtomicU64,
    pub launches: AtomicU64,
    pub stops: AtomicU64,
    /// Hellos the coordinator refused for admission (told to retry after a while).
    pub refusals: AtomicU64,
}

impl SwarmCounters {
    fn lost(&self, node: &str, why: &str) {
        self.sessions_lost.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut reasons) = self.lost_reasons.lock() {
            if reasons.len() < 5 {
                reasons.push(format!("{node}: {why}"));
            }
        }
    }
}

/// The worker a simulated agent pretends to run.
#[derive(Debug, Clone)]
struct Worker {
    job_id: String,
    generation: u64,
    pid: u32,
    step: u64,
}

/// Why a session ended.
enum SessionEnd {
    /// The generator is done.
    Stopped,
    /// The agent was silenced and its stream is gone: it stays away.
    Silenced,
    /// The connection failed or the coordinator closed it.
    Lost(String),
    /// The coordinator refused the hello for now (admission control) with this retry-after.
    Refused(Duration),
    /// The coordinator asked for a restart in place: a new session at once.
    Restart,
}

/// One simulated agent's settings.
pub struct AgentSpec {
    pub address: String,
    pub probe: Arc<AgentProbe>,
    pub counters: Arc<SwarmCounters>,
    /// A fake pid for its worker, unique in the swarm.
    pub pid: u32,
    /// A worker reports progress this often.
    pub step: Duration,
    /// Holds the first connect attempt back so a large swarm does not open every connection
    /// at once (a real fleet does not boot in one millisecond either).
    pub connect_gate: Arc<tokio::sync::Semaphore>,
    /// Its client certificate when the swarm speaks mutual TLS.
    pub tls: Option<Arc<AgentTls>>,
}

/// A simulated agent's TLS identity, as a joined agent holds it: the cluster CA and a client
/// certificate naming its node id.
pub struct AgentTls {
    pub ca: Arc<Vec<u8>>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Runs one simulated agent until `stop` turns true: sessions one after another, with the real
/// agent's backoff between them (`holdfast_agent::backoff`: full jitter under a ceiling of
/// 100 ms doubling to 2 s; a hello refused for admission waits the coordinator's retry-after
/// plus a jitter that widens with each refusal).
pub async fn run(spec: AgentSpec, mut stop: watch::Receiver<bool>) {
    let mut worker: Option<Worker> = None;
    let mut started_ms = now_ms();
    let mut backoff = Backoff::new(
        Duration::from_secs(2),
        Backoff::seed_for(&spec.probe.node_id),
    );
    let mut first = true;
    loop {
        let permit = if first {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                p = spec.connect_gate.clone().acquire_owned() => p.ok(),
            }
        } else {
            None
        };
        first = false;
        let opened = tokio::time::Instant::now();
        let (end, welcomed) = session(&spec, &mut worker, started_ms, permit, &mut stop).await;
        spec.probe.welcomed.store(false, Ordering::SeqCst);
        if welcomed && opened.elapsed() > Duration::from_secs(5) {
            backoff.reset();
        }
        let delay = match &end {
            SessionEnd::Refused(after) => {
                spec.counters.refusals.fetch_add(1, Ordering::Relaxed);
                backoff.refused(*after)
            }
            _ => backoff.failed(),
        };
        match end {
            SessionEnd::Stopped => return,
            SessionEnd::Silenced => {
                stopped(&mut stop).await;
                return;
            }
            SessionEnd::Restart => {
                started_ms = now_ms();
                continue;
            }
            SessionEnd::Lost(_) if spec.probe.is_silenced() => {
                stopped(&mut stop).await;
                return;
            }
            // A session that was up and ended without the generator asking: the coordinator
            // closed it or the connection broke. One that never came up is retried quietly
            // (the coordinator's listen backlog at start), as a real agent retries.
            SessionEnd::Lost(why) if welcomed => spec.counters.lost(&spec.probe.node_id, &why),
            SessionEnd::Lost(why) => tracing::debug!(node = spec.probe.node_id, "{why}"),
            SessionEnd::Refused(_) => {}
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Resolves once the generator says stop (or is gone). The receiver's guard is dropped inside,
/// so the future stays `Send`.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn health() -> pb::HealthSummary {
    let observed = now_ms();
    let check = |check: &str, state: pb::HealthState, reason: &str| pb::HealthCheck {
        check: check.into(),
        state: state as i32,
        reason: reason.into(),
        action: pb::HealthAction::None as i32,
        observed_unix_ms: observed,
    };
    // What a real agent on a host without a GPU driver reports.
    pb::HealthSummary {
        state: pb::HealthState::Healthy as i32,
        checks: vec![
            check("gpu", pb::HealthState::NotApplicable, "no NVIDIA driver"),
            check("memory", pb::HealthState::Healthy, "ok"),
            check("disk", pb::HealthState::Healthy, "ok"),
        ],
    }
}

fn hello(spec: &AgentSpec, worker: &Option<Worker>, started_ms: i64) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(ToCoordinator::Hello(pb::Hello {
            node_id: spec.probe.node_id.clone(),
            hostname: spec.probe.node_id.clone(),
            gpus: Vec::new(),
            role: if spec.probe.spare {
                pb::NodeRole::Spare as i32
            } else {
                pb::NodeRole::Worker as i32
            },
            boot_id: format!("swarm-{started_ms}"),
            agent_version: format!("{}-swarm", env!("CARGO_PKG_VERSION")),
            advertise_address: "127.0.0.1".into(),
            worker: worker.as_ref().map(|w| pb::WorkerStatus {
                job_id: w.job_id.clone(),
                generation: w.generation,
                pid: w.pid,
                running: true,
                last_step: w.step,
            }),
            sent_unix_ms: now_ms(),
            agent_started_unix_ms: started_ms,
        })),
    }
}

fn exited(worker: &Worker) -> ToCoordinator {
    ToCoordinator::WorkerEvent(pb::WorkerEvent {
        job_id: worker.job_id.clone(),
        generation: worker.generation,
        // A worker stopped by its agent ends on SIGTERM.
        kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
            code: None,
            signal: Some(15),
            stopped_by_agent: true,
        })),
        at_unix_ms: now_ms(),
    })
}

/// One session; the flag says whether it was welcomed.
async fn session(
    spec: &AgentSpec,
    worker: &mut Option<Worker>,
    started_ms: i64,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stop: &mut watch::Receiver<bool>,
) -> (SessionEnd, bool) {
    match open(spec, worker, started_ms, stop).await {
        Ok(open) => {
            spec.probe.welcomed.store(true, Ordering::SeqCst);
            drop(permit);
            let end = serve(spec, worker, stop, open).await;
            (end, true)
        }
        Err(end) => (end, false),
    }
}

/// A welcomed stream.
struct Open {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
    /// The heartbeat interval the welcome asked for (clamped as a real agent clamps it).
    interval: Duration,
    /// The welcome's term: commands of any other term are not obeyed.
    term: u64,
    /// The welcome's clock stamp and when it came, echoed in the first heartbeat.
    echo: (i64, i64),
}

/// Connects, says hello and reads the welcome: the open stream, the heartbeat interval, the
/// session's term and the welcome's clock stamp to echo.
async fn open(
    spec: &AgentSpec,
    worker: &Option<Worker>,
    started_ms: i64,
    stop: &mut watch::Receiver<bool>,
) -> Result<Open, SessionEnd> {
    let endpoint = match tonic::transport::Endpoint::from_shared(spec.address.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
        Err(e) => return Err(SessionEnd::Lost(format!("bad coordinator address: {e}"))),
    };
    let endpoint = match &spec.tls {
        None => endpoint,
        Some(tls) => {
            let config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(tls.ca.as_slice()))
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key))
                .domain_name(holdfast_coordinator::pki::COORDINATOR_NAME);
            endpoint
                .tls_config(config)
                .map_err(|e| SessionEnd::Lost(format!("TLS settings: {e}")))?
        }
    };
    // Its own connection: the channel is made for this agent alone.
    let channel = tokio::select! {
        _ = stopped(stop) => return Err(SessionEnd::Stopped),
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return Err(SessionEnd::Lost(format!("cannot connect to {}: {e}", spec.address))),
        },
    };
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(1024);
    if tx.try_send(hello(spec, worker, started_ms)).is_err() {
        return Err(SessionEnd::Lost("cannot queue hello".into()));
    }
    let mut inbound = tokio::select! {
        _ = stopped(stop) => return Err(SessionEnd::Stopped),
        r = client.session(ReceiverStream::new(rx)) => match r {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(refused(&status)),
        },
    };
    let welcome = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
    let Ok(welcome) = welcome else {
        return Err(SessionEnd::Lost("no welcome within 10 s".into()));
    };
    match welcome {
        Ok(Some(pb::CoordinatorMessage {
            body: Some(FromCoordinator::Welcome(w)),
        })) => {
            let ms = w
                .heartbeat_interval_ms
                .clamp(*HEARTBEAT_INTERVAL_MS.start(), *HEARTBEAT_INTERVAL_MS.end());
            Ok(Open {
                tx,
                inbound,
                interval: Duration::from_millis(ms),
                term: w.term,
                echo: (w.coordinator_unix_ms, now_ms()),
            })
        }
        Ok(other) => Err(SessionEnd::Lost(format!("expected welcome, got {other:?}"))),
        Err(status) => Err(refused(&status)),
    }
}

/// A refused session: for now (admission control, with its retry-after) or lost.
fn refused(status: &tonic::Status) -> SessionEnd {
    match holdfast_agent::backoff::retry_after(status) {
        Some(after) => SessionEnd::Refused(after),
        None => SessionEnd::Lost(format!(
            "coordinator refused the session: {}",
            status.message()
        )),
    }
}

/// Queues one message on the stream; false (and counted) when the queue is full.
fn queue(
    tx: &mpsc::Sender<pb::AgentMessage>,
    counters: &SwarmCounters,
    body: ToCoordinator,
) -> bool {
    if tx.try_send(pb::AgentMessage { body: Some(body) }).is_ok() {
        return true;
    }
    counters.send_queue_full.fetch_add(1, Ordering::Relaxed);
    false
}

/// The welcomed session: heartbeats, progress and answers to commands until it ends.
async fn serve(
    spec: &AgentSpec,
    worker: &mut Option<Worker>,
    stop: &mut watch::Receiver<bool>,
    open: Open,
) -> SessionEnd {
    let Open {
        tx,
        mut inbound,
        interval,
        term: session_term,
        echo,
    } = open;
    let mut clock_echo = Some(echo);
    spec.counters
        .interval_ms
        .store(interval.as_millis() as u64, Ordering::Relaxed);
    let send = |body: ToCoordinator| queue(&tx, &spec.counters, body);
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut next_progress = tokio::time::Instant::now() + spec.step;
    loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => {
                let _ = tx.try_send(pb::AgentMessage {
                    body: Some(ToCoordinator::Goodbye(pb::Goodbye {
                        reason: "bench swarm finished".into(),
                        restarting: false,
                    })),
                });
                let _ = tokio::time::timeout(Duration::from_millis(300), inbound.message()).await;
                return SessionEnd::Stopped;
            }
            scheduled = heartbeat.tick() => {
                let late = tokio::time::Instant::now().saturating_duration_since(scheduled);
                if let Ok(mut samples) = spec.counters.lateness_us.lock() {
                    samples.push(u32::try_from(late.as_micros()).unwrap_or(u32::MAX));
                }
                if spec.probe.is_silenced() {
                    continue;
                }
                seq += 1;
                let (echo_coordinator_unix_ms, echo_received_unix_ms) =
                    clock_echo.take().unwrap_or((0, 0));
                let sent = now_ms();
                let ok = send(ToCoordinator::Heartbeat(pb::Heartbeat {
                    seq,
                    sent_unix_ms: sent,
                    health: Some(health()),
                    echo_coordinator_unix_ms,
                    echo_received_unix_ms,
                }));
                if !ok {
                    return SessionEnd::Lost("send queue full (coordinator not reading)".into());
                }
                spec.probe.record_send(sent);
                spec.counters.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                if let Some(w) = worker.as_mut() {
                    send(ToCoordinator::WorkerEvidence(pb::WorkerEvidence {
                        job_id: w.job_id.clone(),
                        generation: w.generation,
                        state: pb::ProcessState::Running as i32,
                        cpu_permille: 1000,
                        output_quiet_ms: Some(0),
                    }));
                    if tokio::time::Instant::now() >= next_progress {
                        next_progress += spec.step;
                        w.step += 1;
                        send(ToCoordinator::Progress(pb::Progress {
                            job_id: w.job_id.clone(),
                            generation: w.generation,
                            step: w.step,
                            at_unix_ms: now_ms(),
                            memory: Vec::new(),
                            state_fallback: String::new(),
                        }));
                    }
                }
            }
            msg = inbound.message() => {
                let body = match msg {
                    Ok(Some(pb::CoordinatorMessage { body: Some(body) })) => body,
                    Ok(Some(_)) => continue,
                    Ok(None) if spec.probe.is_silenced() => return SessionEnd::Silenced,
                    Err(_) if spec.probe.is_silenced() => return SessionEnd::Silenced,
                    Ok(None) => return SessionEnd::Lost("coordinator closed the stream".into()),
                    Err(status) => return SessionEnd::Lost(status.message().to_string()),
                };
                // A silenced host hears commands but answers none.
                if spec.probe.is_silenced() {
                    continue;
                }
                if holdfast_agent::session::command_term(&body).is_some_and(|t| t != session_term) {
                    // Older terms are refused by a real agent, newer ones on this stream are
                    // forged: neither is obeyed.
                    continue;
                }
                match body {
                    FromCoordinator::Ping(p) => {
                        let received = now_ms();
                        clock_echo = Some((p.coordinator_unix_ms, received));
                        let delay_us = (received - p.coordinator_unix_ms).max(0).saturating_mul(1000);
                        if let Ok(mut samples) = spec.counters.ping_delay_us.lock() {
                            samples.push(u32::try_from(delay_us).unwrap_or(u32::MAX));
                        }
                    }
                    FromCoordinator::Welcome(_) => {}
                    FromCoordinator::Launch(l) => {
                        spec.counters.launches.fetch_add(1, Ordering::Relaxed);
                        if let Some(old) = worker.take() {
                            send(exited(&old));
                        }
                        let w = Worker {
                            job_id: l.job_id,
                            generation: l.generation,
                            pid: spec.pid,
                            step: l.resume_step,
                        };
                        send(ToCoordinator::WorkerEvent(pb::WorkerEvent {
                            job_id: w.job_id.clone(),
                            generation: w.generation,
                            kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted {
                                pid: w.pid,
                            })),
                            at_unix_ms: now_ms(),
                        }));
                        next_progress = tokio::time::Instant::now() + spec.step;
                        *worker = Some(w);
                    }
                    FromCoordinator::Stop(s) => {
                        spec.counters.stops.fetch_add(1, Ordering::Relaxed);
                        let matches = worker
                            .as_ref()
                            .is_some_and(|w| w.job_id == s.job_id && w.generation <= s.generation);
                        if matches {
                            if let Some(old) = worker.take() {
                                send(exited(&old));
                            }
                        }
                    }
                    FromCoordinator::Fence(_) => {
                        if let Some(old) = worker.take() {
                            send(exited(&old));
                        }
                    }
                    FromCoordinator::DumpStacks(d) => {
                        send(ToCoordinator::StackDump(pb::StackDump {
                            incident_id: d.incident_id,
                            text: "stacks not available: a simulated worker has none".into(),
                        }));
                    }
                    FromCoordinator::RunScript(r) => {
                        // What an agent without a script directory answers.
                        send(ToCoordinator::CommandResult(pb::CommandResult {
                            command_id: r.command_id,
                            ok: false,
                            message: format!(
                                "cannot run {:?}: this agent has no script_dir configured",
                                r.script
                            ),
                            output: String::new(),
                            exit_code: None,
                            duration_ms: 0,
                        }));
                    }
                    FromCoordinator::RestartAgent(r) => {
                        send(ToCoordinator::Goodbye(pb::Goodbye {
                            reason: format!("restarting: {}", r.reason),
                            restarting: true,
                        }));
                        let _ = tokio::time::timeout(Duration::from_millis(300), inbound.message()).await;
                        return SessionEnd::Restart;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_that_of_the_heartbeat_processed_or_of_one_still_waiting() {
        let probe = AgentProbe::new("n".into(), false);
        for at in [1_000, 1_500, 2_000] {
            probe.record_send(at);
        }
        // Processed the 1 500 heartbeat 3 ms after it left; asked before 2 000 left.
        assert_eq!(probe.lag_ms(1_503, 1_900), Some(3));
        // The 2 000 heartbeat left before the question and is not processed yet.
        assert_eq!(probe.lag_ms(1_503, 2_400), Some(400));
        // Nothing kept that old.
        assert_eq!(probe.lag_ms(900, 2_400), None);
    }
}
