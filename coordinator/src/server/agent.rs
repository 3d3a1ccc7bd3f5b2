//! The agent service: one bidirectional stream per agent. The first message must be a hello,
//! answered by the core's welcome before anything else goes to the node; every later message
//! becomes one input of the core, queued in the inbox (`inbox`: stepped in batches, in order).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use holdfast_core::cluster::{Command, Input, Reply};
use holdfast_core::error::CoreError;
use holdfast_core::{limits, NodeId};
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as FromAgent;
use pb::agent_service_server::AgentService;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming};

use super::{AgentConn, Coordinator, ToAgent};
use crate::error::CoordinatorError;
use crate::now_ms;

impl Coordinator {
    /// One message of an agent's stream as an input of the core (`None`: nothing to step).
    /// Refused (and the stream closed by the caller) when a field is outside
    /// [`holdfast_core::limits`].
    fn agent_input(node: &str, body: FromAgent) -> Result<Option<Input>, CoreError> {
        let node = NodeId::from(node);
        let input = match body {
            FromAgent::Hello(_) => {
                tracing::warn!(node = node.as_str(), "second hello on one stream ignored");
                return Ok(None);
            }
            FromAgent::Heartbeat(hb) => {
                limits::check_sent_at(hb.sent_unix_ms)?;
                let health = hb.health.clone().map(crate::wire::health);
                if let Some(health) = &health {
                    limits::check_health(health)?;
                }
                Input::Heartbeat {
                    echo: crate::wire::clock_echo(&hb),
                    node,
                    sent_at: hb.sent_unix_ms,
                    health,
                }
            }
            FromAgent::HealthReport(r) => match r.health {
                Some(health) => {
                    let health = crate::wire::health(health);
                    limits::check_health(&health)?;
                    Input::HealthReport { node, health }
                }
                None => return Ok(None),
            },
            FromAgent::WorkerEvent(e) => match crate::wire::worker_event(e) {
                Some(event) => {
                    limits::check_worker_event(&event)?;
                    Input::Worker { node, event }
                }
                None => return Ok(None),
            },
            FromAgent::Progress(p) => {
                let progress = crate::wire::progress(p);
                limits::check_progress(&progress)?;
                Input::Progress { node, progress }
            }
            FromAgent::WorkerEvidence(e) => Input::Evidence {
                node,
                evidence: crate::wire::worker_evidence(e),
            },
            FromAgent::StackDump(d) => Input::Stacks {
                node,
                incident_id: d.incident_id,
                // Bounded again by the core; cut here first so a huge message is not copied on.
                text: d
                    .text
                    .chars()
                    .take(holdfast_core::incident::STACKS_MAX_BYTES)
                    .collect(),
            },
            FromAgent::CommandResult(r) => {
                let result = crate::wire::command_result(r);
                limits::check_command_result(&result)?;
                tracing::info!(
                    node = node.as_str(),
                    command = result.command_id,
                    ok = result.ok,
                    "command result: {}",
                    limits::truncated(&result.message, limits::MAX_LOGGED)
                );
                Input::ScriptResult { node, result }
            }
            FromAgent::Goodbye(g) => {
                tracing::info!(
                    node = node.as_str(),
                    restarting = g.restarting,
                    "goodbye: {}",
                    limits::truncated(&g.reason, limits::MAX_LOGGED)
                );
                Input::Goodbye {
                    node,
                    restarting: g.restarting,
                }
            }
        };
        Ok(Some(input))
    }
}

#[tonic::async_trait]
impl AgentService for Coordinator {
    type SessionStream = Outbox;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
        // The port is shared with operators (who use tokens), so TLS lets clients in without a
        // certificate and the agent stream is where one is demanded. The certificate's
        // identities are kept: the hello must claim one of them.
        let certified: Option<Vec<String>> =
            if crate::tls::agents_need_certificates(self.cluster().config()) {
                let Some(leaf) = request
                    .peer_certs()
                    .and_then(|certs| certs.first().cloned())
                else {
                    tracing::warn!(%peer, "agent stream without a client certificate refused");
                    return Err(CoordinatorError::Unauthenticated(
                        "agents must present a client certificate signed by tls_client_ca_file"
                            .into(),
                    )
                    .into());
                };
                let pki_dir = self.cluster().config().pki_dir.clone();
                if !pki_dir.as_os_str().is_empty() {
                    revoked_refused(&pki_dir, leaf.as_ref(), &peer)?;
                }
                Some(crate::tls::certificate_identities(leaf.as_ref()))
            } else {
                None
            };
        let mut inbound = request.into_inner();
        let timeout = self.shared.hello_timeout;
        let first = match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => {
                let e = CoordinatorError::NoHello(timeout.as_millis() as u64);
                tracing::warn!(peer, "refused agent stream: {e}");
                return Err(e.into());
            }
            Ok(Err(status)) => {
                let e = CoordinatorError::BadMessage(status.message().to_string());
                tracing::warn!(peer, "refused agent stream: {e}");
                return Err(e.into());
            }
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before hello")),
            Ok(Ok(Some(msg))) => msg,
        };
        let Some(FromAgent::Hello(hello)) = first.body else {
            let e =
                CoordinatorError::BadMessage("the first message of a session must be hello".into());
            tracing::warn!(peer, "refused agent stream: {e}");
            return Err(e.into());
        };
        let hello = crate::wire::hello(hello);
        if let Err(e) = limits::check_hello(&hello) {
            let e = CoordinatorError::from(e);
            tracing::warn!(peer, "refused agent stream: {e}");
            return Err(e.into());
        }
        if let Some(identities) = &certified {
            if !identities.iter().any(|id| *id == hello.node_id) {
                let e = CoordinatorError::Unauthenticated(format!(
                    "hello claims node id {} but the client certificate is for {}",
                    hello.node_id,
                    if identities.is_empty() {
                        "no readable identity".to_string()
                    } else {
                        identities.join(", ")
                    }
                ));
                tracing::warn!(peer, "refused agent stream: {e}");
                return Err(e.into());
            }
        }
        // Admission control: past the hello rate, the agent waits its turn here when it comes
        // soon, and is told when to come back otherwise.
        let admitted = self
            .shared
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit_within(
                &hello.node_id,
                std::time::Instant::now(),
                self.shared.hello_hold,
            );
        match admitted {
            Ok(turn) if turn.is_zero() => {}
            Ok(turn) => self.hold(&peer, &hello.node_id, turn, &mut inbound).await?,
            Err(wait) => {
                tracing::debug!(
                    peer,
                    node = hello.node_id.as_str(),
                    "hello refused for {wait:?}: busy"
                );
                return Err(busy(wait));
            }
        }
        let conn = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let refusals = tx.clone();
        let close = Arc::new(Notify::new());
        let request = self.request_id();
        let input = Input::Hello {
            request,
            conn,
            hello,
        };
        let (welcome, sealed) = {
            let mut cluster = self.cluster();
            let mut commands = cluster.step(input, now_ms()).into_iter();
            // The reply comes first: the welcome goes out before any other command to the node.
            let welcome = match commands.next() {
                Some(Command::Reply {
                    reply: Ok(Reply::Welcome(welcome)),
                    ..
                }) => welcome,
                Some(Command::Reply { reply: Err(e), .. }) => {
                    let e = CoordinatorError::from(e);
                    tracing::warn!(peer, "refused agent stream: {e}");
                    return Err(e.into());
                }
                _ => return Err(Status::internal("the hello was not answered")),
            };
            (welcome, self.seal(&mut cluster, commands.collect()))
        };
        let node = welcome.node_id.to_string();
        let mut sent = false;
        self.commit(sealed, || {
            // The receiver is alive: it is returned below.
            let _ = tx.unbounded_send(Ok(Box::new(crate::wire::welcome(welcome))));
            self.agents().insert(
                NodeId::from(node.as_str()),
                AgentConn {
                    conn,
                    tx,
                    close: close.clone(),
                },
            );
            sent = true;
            true
        });
        if !sent {
            return Err(Status::unavailable(
                "this coordinator is not the leader any more",
            ));
        }
        tracing::info!(node, peer, conn, "agent session open");
        let reader = read_agent(self.clone(), node, conn, inbound, close, refusals);
        tokio::spawn(reader);
        Ok(Response::new(Outbox(rx)))
    }
}

impl Coordinator {
    /// Holds an admitted hello for its `turn` on its open stream. The agent sends nothing
    /// before its welcome: a stream that ends meanwhile is dropped, and one that sends is told
    /// to come back at its turn. A coordinator that fell behind meanwhile refuses it with a
    /// retry-after (admission holds until the detector is on time).
    async fn hold(
        &self,
        peer: &str,
        node: &NodeId,
        turn: std::time::Duration,
        inbound: &mut Streaming<pb::AgentMessage>,
    ) -> Result<(), Status> {
        tracing::debug!(peer, node = node.as_str(), "hello held for {turn:?}: busy");
        let until = tokio::time::Instant::now() + turn;
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            msg = inbound.message() => {
                return Err(match msg {
                    Ok(Some(_)) => busy(until.saturating_duration_since(tokio::time::Instant::now())),
                    Ok(None) | Err(_) => Status::cancelled("stream closed while waiting for admission"),
                });
            }
        }
        let resumed = self
            .shared
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resume(node, std::time::Instant::now());
        resumed.map_err(|wait| {
            tracing::debug!(
                peer,
                node = node.as_str(),
                "held hello refused for {wait:?}: behind"
            );
            busy(wait)
        })
    }
}

/// Reads an agent's stream until it ends, breaks, floods, sends what the core refuses, or
/// `close` is notified (a newer stream of the same node): each message becomes an input in
/// the inbox, then the stream's `Disconnected`. One runs per agent for as long as it is
/// connected, so what it holds is kept small (see [`Coordinator::enqueue`]).
#[allow(clippy::manual_async_fn)]
fn read_agent(
    this: Coordinator,
    node: String,
    conn: u64,
    mut inbound: Streaming<pb::AgentMessage>,
    close: Arc<Notify>,
    refusals: super::ToAgentTx,
) -> impl std::future::Future<Output = ()> {
    // A block rather than an `async fn`, whose arguments would be kept twice in the future.
    async move {
        let mut budget = MessageBudget::new(std::time::Instant::now());
        loop {
            let msg = tokio::select! {
                _ = close.notified() => break,
                msg = inbound.message() => msg,
            };
            // Decided without awaiting, so nothing of the message is held while waiting for room.
            let pending = match take_message(&this, &node, msg, &mut budget) {
                Ok(pending) => pending,
                Err(refusal) => {
                    if let Some(e) = refusal {
                        let _ = refusals.unbounded_send(Err(e.into()));
                    }
                    break;
                }
            };
            if let Some(pending) = pending {
                pending.await;
            }
        }
        {
            let mut agents = this.agents();
            if agents.get(node.as_str()).is_some_and(|a| a.conn == conn) {
                agents.remove(node.as_str());
            }
        }
        tracing::info!(node, conn, "agent session closed");
        // After the stream's last input, through the same queue.
        if let Some(pending) = this.enqueue(Input::Disconnected {
            node: node.into(),
            conn,
        }) {
            pending.await;
        }
    }
}

/// One message read from an agent's stream, queued in the inbox: `Ok` with what is left to
/// await to keep reading, `Err` when the stream ends (with the error to tell the agent, if any).
fn take_message(
    this: &Coordinator,
    node: &str,
    msg: Result<Option<pb::AgentMessage>, Status>,
    budget: &mut MessageBudget,
) -> Result<Option<super::inbox::Pending>, Option<CoordinatorError>> {
    let body = match msg {
        Ok(Some(pb::AgentMessage { body: Some(body) })) => body,
        Ok(Some(_)) => {
            tracing::warn!(node, "empty agent message ignored");
            return Ok(None);
        }
        Ok(None) => return Err(None),
        Err(status) => {
            tracing::warn!(node, "agent stream broke: {}", status.message());
            return Err(None);
        }
    };
    match budget.admit(&body, std::time::Instant::now()) {
        Admit::Yes => {}
        Admit::DropProgress => return Ok(None),
        Admit::Flood => {
            let e = CoordinatorError::Flood(MESSAGES_PER_SECOND);
            tracing::warn!(node, "agent stream closed: {e}");
            return Err(Some(e));
        }
    }
    match Coordinator::agent_input(node, body) {
        Ok(Some(input)) => Ok(this.enqueue(input)),
        Ok(None) => Ok(None),
        Err(e) => {
            let e = CoordinatorError::from(e);
            tracing::warn!(node, "agent stream closed: {e}");
            Err(Some(e))
        }
    }
}

/// The coordinator's side of an agent stream as tonic sends it: what was queued for the
/// agent, unboxed.
pub struct Outbox(futures::channel::mpsc::UnboundedReceiver<ToAgent>);

impl tokio_stream::Stream for Outbox {
    type Item = Result<pb::CoordinatorMessage, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|queued| queued.map(|item| item.map(|message| *message)))
    }
}

/// Messages one agent stream may send per second, sustained; bursts up to [`MESSAGE_BURST`]. A
/// real agent sends a few (heartbeats, health, its worker's events and progress).
pub const MESSAGES_PER_SECOND: u32 = 1000;
/// The burst a stream may send at once (a reconnecting agent replays its outbox).
pub const MESSAGE_BURST: u32 = 10_000;

/// What to do with one agent message under the stream's budget.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    /// Over budget, but only progress: dropped (the next one says the same, newer), so a job
    /// that steps thousands of times a second cannot flood the coordinator.
    DropProgress,
    /// Over budget with something that must not be lost: the stream is closed.
    Flood,
}

/// A token bucket per agent stream: [`MESSAGES_PER_SECOND`] refill, [`MESSAGE_BURST`] deep.
struct MessageBudget {
    tokens: f64,
    at: std::time::Instant,
    dropped: u64,
}

impl MessageBudget {
    fn new(now: std::time::Instant) -> MessageBudget {
        MessageBudget {
            tokens: f64::from(MESSAGE_BURST),
            at: now,
            dropped: 0,
        }
    }

    fn admit(&mut self, body: &FromAgent, now: std::time::Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens =
            (self.tokens + elapsed * f64::from(MESSAGES_PER_SECOND)).min(f64::from(MESSAGE_BURST));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Yes;
        }
        if matches!(body, FromAgent::Progress(_)) {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "agent progress over its rate: dropped"
                );
            }
            return Admit::DropProgress;
        }
        Admit::Flood
    }
}

/// The refusal of a hello beyond the admission rate: `unavailable`, with the retry-after in
/// milliseconds in the message and in the [`super::admission::RETRY_AFTER_KEY`] metadata.
fn busy(wait: std::time::Duration) -> Status {
    let ms = wait.as_millis();
    let mut status = Status::unavailable(format!(
        "the coordinator is admitting other agents; retry after {ms} ms"
    ));
    if let Ok(value) = ms.to_string().parse() {
        status
            .metadata_mut()
            .insert(super::admission::RETRY_AFTER_KEY, value);
    }
    status
}

/// Refuses a client certificate revoked in the cluster's PKI (`holdfast cert revoke`); a PKI
/// that cannot be read refuses too, rather than letting a possibly revoked node in.
fn revoked_refused(pki_dir: &std::path::Path, leaf: &[u8], peer: &str) -> Result<(), Status> {
    let Some(serial) = crate::pki::serial_of_der(leaf) else {
        return Err(
            CoordinatorError::Unauthenticated("unreadable client certificate".into()).into(),
        );
    };
    match crate::pki::Pki::new(pki_dir).is_revoked(&serial) {
        Ok(false) => Ok(()),
        Ok(true) => {
            tracing::warn!(%peer, serial, "agent stream with a revoked certificate refused");
            Err(CoordinatorError::Unauthenticated(format!(
                "client certificate {serial} was revoked; join again with a new token"
            ))
            .into())
        }
        Err(e) => {
            tracing::error!(%peer, "cannot check certificate revocation: {e}");
            Err(Status::unavailable("cannot check certificate revocation"))
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn bursts_pass_floods_drop_progress_then_close() {
        let start = Instant::now();
        let mut budget = MessageBudget::new(start);
        let progress = FromAgent::Progress(pb::Progress::default());
        let heartbeat = FromAgent::Heartbeat(pb::Heartbeat::default());
        for _ in 0..MESSAGE_BURST {
            assert_eq!(budget.admit(&heartbeat, start), Admit::Yes);
        }
        assert_eq!(budget.admit(&progress, start), Admit::DropProgress);
        assert_eq!(budget.admit(&heartbeat, start), Admit::Flood);
        // A second later the rate's worth is back.
        let later = start + Duration::from_secs(1);
        for _ in 0..MESSAGES_PER_SECOND {
            assert_eq!(budget.admit(&heartbeat, later), Admit::Yes);
        }
        assert_eq!(budget.admit(&heartbeat, later), Admit::Flood);
        // A steady real agent never comes near it.
        let mut steady = MessageBudget::new(start);
        for i in 0..100_000u64 {
            let at = start + Duration::from_millis(i);
            assert_eq!(steady.admit(&heartbeat, at), Admit::Yes);
        }
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;
    use tonic::codec::Codec;

    /// One reader runs per connected agent for as long as it is connected: its future is what
    /// each agent costs the coordinator beyond its connection (~2 KB before it was slimmed).
    #[tokio::test]
    async fn the_reader_of_an_agent_stream_stays_small() {
        let coordinator = Coordinator::new(holdfast_core::CoordinatorConfig::default());
        let mut codec = holdfast_proto::codec::SmallBufferCodec::<
            pb::CoordinatorMessage,
            pb::AgentMessage,
        >::default();
        let inbound =
            Streaming::new_request(codec.decoder(), tonic::body::Body::empty(), None, None);
        let (tx, _rx) = futures::channel::mpsc::unbounded();
        let reader = read_agent(coordinator, "n1".into(), 1, inbound, Arc::default(), tx);
        let bytes = std::mem::size_of_val(&reader);
        assert!(bytes <= 512, "an agent's reader is {bytes} bytes");
    }
}
