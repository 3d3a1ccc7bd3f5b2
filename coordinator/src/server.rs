//! The coordinator's async shell: gRPC services over real sockets, the failure detector's ticker,
//! and the executor of the core's effects. Decisions are made in [`crate::cluster`]; this module
//! only moves bytes and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as FromAgent;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use pb::operator_service_server::{OperatorService, OperatorServiceServer};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use holdfast_core::cluster::{Cluster, Command, Input, Reply};
use holdfast_core::error::CoreError;

use crate::checkpoint::CheckpointStore;
use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::now_ms;
use crate::provider::{
    ExecProvider, FenceRequest, ProvisionRequest, ReplacementProvider, SparePool,
};
use crate::store::{MemoryStore, Persister, RecordStore, StoreError};

type ToAgentTx = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, Status>>;

/// A live agent stream.
struct AgentConn {
    conn: u64,
    tx: ToAgentTx,
    /// Notified to make the reader drop the stream (heartbeat timeout).
    close: Arc<Notify>,
}

/// The running coordinator: the core behind a lock, the live agent streams, the event bus.
#[derive(Clone)]
pub struct Coordinator {
    shared: Arc<Shared>,
}

struct Shared {
    cluster: Mutex<Cluster>,
    /// Where the core's durable state goes; locked only while `cluster` is held.
    persister: Mutex<Persister>,
    agents: Mutex<HashMap<String, AgentConn>>,
    events: broadcast::Sender<pb::Event>,
    next_conn: AtomicU64,
    hello_timeout: Duration,
    /// Operator checks waiting for their report, by request id.
    checks: Mutex<HashMap<u64, oneshot::Sender<pb::CheckReport>>>,
    /// Request ids: they tie the core's replies to hellos and operator calls.
    next_request: AtomicU64,
    /// How long an operator check may take in all (every script at its timeout, plus slack).
    check_wait: Duration,
    /// Notified when the store says another coordinator leads: serving stops.
    deposed: Notify,
    is_deposed: std::sync::atomic::AtomicBool,
    /// Where replacement hosts come from (spare pool, or the operator's scripts).
    provider: Arc<dyn ReplacementProvider>,
}

impl Coordinator {
    /// A coordinator whose state lives in memory only.
    pub fn new(config: CoordinatorConfig) -> Coordinator {
        let persister = Persister::new(Box::new(MemoryStore::default()), Default::default());
        Coordinator::from_parts(Cluster::new(config), persister)
    }

    /// A coordinator over `store`: the state found there is restored (term bumped, nodes given a
    /// reconnect grace), an empty store starts a fresh cluster. The effects of the restore (a
    /// checkpoint resolution that was in flight) are carried out once the shell runs.
    pub fn open(
        config: CoordinatorConfig,
        mut store: Box<dyn RecordStore>,
    ) -> Result<(Coordinator, Vec<Command>), StoreError> {
        let records = store.load()?;
        let described = store.describe();
        let (cluster, effects) = match Cluster::restore(config.clone(), &records, now_ms())? {
            Some(restored) => restored,
            None => (Cluster::new(config), Vec::new()),
        };
        tracing::info!(
            term = cluster.term,
            nodes = cluster.nodes.len(),
            jobs = cluster.jobs.len(),
            "state in {described}"
        );
        let mut persister = Persister::new(store, records);
        // The new term is on disk before any agent hears of it.
        persister.save(cluster.to_records()?, cluster.durable_version())?;
        Ok((Coordinator::from_parts(cluster, persister), effects))
    }

    fn from_parts(cluster: Cluster, persister: Persister) -> Coordinator {
        let (events, _) = broadcast::channel(4096);
        Coordinator {
            shared: Arc::new(Shared {
                hello_timeout: Duration::from_millis(cluster.config().hello_timeout_ms),
                provider: provider_for(cluster.config()),
                checks: Mutex::new(HashMap::new()),
                next_request: AtomicU64::new(1),
                check_wait: Duration::from_millis(
                    cluster
                        .config()
                        .script_timeout_ms
                        .saturating_mul(cluster.config().check_scripts.len().max(1) as u64)
                        + 10_000,
                ),
                cluster: Mutex::new(cluster),
                persister: Mutex::new(persister),
                agents: Mutex::new(HashMap::new()),
                events,
                next_conn: AtomicU64::new(1),
                deposed: Notify::new(),
                is_deposed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Saves the core's state if something durable changed since the last save. Called with
    /// the core locked, before the effects of the change go out: what an agent or operator is
    /// told is never ahead of what a restarted coordinator would know. A failed write is
    /// logged and retried at the next change; the effects still go out, because holding back
    /// a stop or a launch would hurt the training more than a stale file. The exception is a
    /// store that says another coordinator leads now: then nothing more goes out (returns
    /// false) and the coordinator stops serving.
    fn persist(&self, cluster: &Cluster) -> bool {
        if self.shared.is_deposed.load(Ordering::SeqCst) {
            return false;
        }
        let mut persister = self
            .shared
            .persister
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let version = cluster.durable_version();
        if persister.is_saved(version) {
            return true;
        }
        let result = cluster
            .to_records()
            .map_err(StoreError::from)
            .and_then(|records| persister.save(records, version));
        match result {
            Ok(_) => true,
            Err(StoreError::NotLeader(why)) => {
                tracing::error!("stepping down: {why}");
                self.shared.is_deposed.store(true, Ordering::SeqCst);
                // The serving loop may not wait yet: `notify_one` keeps a permit for it.
                self.shared.deposed.notify_one();
                false
            }
            Err(e) => {
                tracing::error!(
                    "cannot save coordinator state to {}: {e}",
                    persister.describe()
                );
                true
            }
        }
    }

    /// The core, locked. A poisoned lock (a panic elsewhere) is taken over: the core's state is
    /// only changed by whole steps, so it is still consistent.
    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.shared
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn agents(&self) -> MutexGuard<'_, HashMap<String, AgentConn>> {
        self.shared.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Prometheus exposition of the current state (see [`crate::metrics`]).
    pub fn metrics_text(&self) -> String {
        let (nodes, jobs, incidents) = {
            let cluster = self.cluster();
            let nodes: Vec<pb::Node> = cluster
                .nodes
                .values()
                .map(|n| crate::view::node(n, &cluster.jobs))
                .collect();
            let jobs: Vec<pb::Job> = cluster.jobs.values().map(crate::view::job).collect();
            let incidents: Vec<pb::Incident> = cluster
                .incidents
                .iter()
                .map(crate::view::incident)
                .collect();
            (nodes, jobs, incidents)
        };
        crate::metrics::render(&nodes, &jobs, &incidents, now_ms())
    }

    /// Subscribes to the event bus.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.shared.events.subscribe()
    }

    /// A fresh request id, for an input whose reply the caller waits for.
    fn request_id(&self) -> u64 {
        self.shared.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Steps the core with `input` at the current time, saves what changed, and carries out
    /// the commands while the core is still locked, so commands reach each agent in the order
    /// they were decided. Returns the reply the step made to a waiting call, if any; `None`
    /// also when this coordinator no longer leads (nothing went out).
    fn step(&self, input: Input) -> Option<Result<Reply, CoreError>> {
        let mut cluster = self.cluster();
        let commands = cluster.step(input, now_ms());
        if !self.persist(&cluster) {
            return None;
        }
        self.execute(&cluster, commands)
    }

    /// Carries out `commands`; returns the reply none of the waiting checks took.
    fn execute(
        &self,
        cluster: &Cluster,
        commands: Vec<Command>,
    ) -> Option<Result<Reply, CoreError>> {
        let mut unclaimed = None;
        for command in commands {
            if let Some(reply) = self.execute_one(cluster, command) {
                unclaimed = Some(reply);
            }
        }
        unclaimed
    }

    fn execute_one(&self, cluster: &Cluster, command: Command) -> Option<Result<Reply, CoreError>> {
        {
            match command {
                Command::Send { node, command } => {
                    let agents = self.agents();
                    match agents.get(&node) {
                        Some(agent) => {
                            let msg = crate::wire::agent_command(command);
                            if agent.tx.send(Ok(msg)).is_err() {
                                tracing::warn!(
                                    node,
                                    "agent stream already closed; command dropped"
                                );
                            }
                        }
                        None => tracing::warn!(node, "agent not connected; command dropped"),
                    }
                }
                Command::Disconnect { node, reason } => {
                    if let Some(agent) = self.agents().remove(&node) {
                        tracing::warn!(node, "closing agent stream: {reason}");
                        // Tell the agent why before the stream goes.
                        let _ = agent.tx.send(Err(Status::unavailable(reason)));
                        agent.close.notify_one();
                    }
                }
                Command::ResolveCheckpoint {
                    job_id,
                    uri,
                    fenced,
                } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let result = if uri.is_empty() {
                            Ok(None)
                        } else {
                            match CheckpointStore::open(&uri) {
                                Ok(store) => store
                                    .resolve_latest(&fenced)
                                    .await
                                    .map_err(|e| e.to_string()),
                                Err(e) => Err(e.to_string()),
                            }
                        };
                        match &result {
                            Ok(Some(c)) => {
                                tracing::info!(job = job_id, step = c.step, "resume from {}", c.uri)
                            }
                            Ok(None) => {
                                tracing::info!(job = job_id, "no complete checkpoint; fresh start")
                            }
                            Err(e) => {
                                tracing::warn!(job = job_id, "checkpoint resolution failed: {e}")
                            }
                        }
                        this.step(Input::CheckpointResolved { job_id, result });
                    });
                }
                Command::Provision {
                    request_id,
                    job_id,
                    count,
                } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let request = ProvisionRequest {
                            request_id,
                            job_id: job_id.clone(),
                            count,
                        };
                        let result = this
                            .shared
                            .provider
                            .provision(request)
                            .await
                            .map(|p| p.hosts)
                            .map_err(|e| e.to_string());
                        this.step(Input::ProvisionResult {
                            job_id,
                            count,
                            result,
                        });
                    });
                }
                Command::FenceHost {
                    node,
                    hostname,
                    address,
                    reason,
                } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let request = FenceRequest {
                            node_id: node.clone(),
                            hostname,
                            address,
                            reason,
                        };
                        let result = this
                            .shared
                            .provider
                            .fence(request)
                            .await
                            .map_err(|e| e.to_string());
                        this.step(Input::FenceHostResult { node, result });
                    });
                }
                Command::Reply { request, reply } => {
                    let waiter = self
                        .shared
                        .checks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&request);
                    match (waiter, reply) {
                        (Some(tx), Ok(Reply::Check { node_id, report })) => {
                            // The caller may have given up; nothing to do then.
                            let _ = tx.send(crate::wire::check_report(&report, &node_id));
                        }
                        (_, reply) => return Some(reply),
                    }
                }
                Command::Publish(event) => {
                    if event.kind != holdfast_core::protocol::EventKind::Progress {
                        tracing::info!(target: "holdfast::event", "{}", event.message);
                    }
                    // No subscribers is fine.
                    let _ = self
                        .shared
                        .events
                        .send(crate::wire::event(&event, &cluster.jobs));
                }
            }
        }
        None
    }

    /// Runs the failure detector's clock until the process ends.
    fn spawn_ticker(&self, tick: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                this.step(Input::Tick);
            }
        });
    }

    fn handle_agent_message(&self, node: &str, body: FromAgent) {
        let node = node.to_string();
        let input = match body {
            FromAgent::Hello(_) => {
                tracing::warn!(node, "second hello on one stream ignored");
                return;
            }
            FromAgent::Heartbeat(hb) => Input::Heartbeat {
                node,
                sent_at: hb.sent_unix_ms,
                health: hb.health.map(crate::wire::health),
            },
            FromAgent::HealthReport(r) => match r.health {
                Some(health) => Input::HealthReport {
                    node,
                    health: crate::wire::health(health),
                },
                None => return,
            },
            FromAgent::WorkerEvent(e) => match crate::wire::worker_event(e) {
                Some(event) => Input::Worker { node, event },
                None => return,
            },
            FromAgent::Progress(p) => Input::Progress {
                node,
                progress: crate::wire::progress(p),
            },
            FromAgent::CommandResult(r) => {
                tracing::info!(
                    node,
                    command = r.command_id,
                    ok = r.ok,
                    "command result: {}",
                    r.message
                );
                Input::ScriptResult {
                    node,
                    result: crate::wire::command_result(r),
                }
            }
            FromAgent::Goodbye(g) => {
                tracing::info!(node, restarting = g.restarting, "goodbye: {}", g.reason);
                Input::Goodbye {
                    node,
                    restarting: g.restarting,
                }
            }
        };
        self.step(input);
    }
}

impl Coordinator {
    fn job_reply(
        &self,
        reply: Option<Result<Reply, CoreError>>,
    ) -> Result<Response<pb::Job>, Status> {
        match reply {
            Some(Ok(Reply::Job(job))) => Ok(Response::new(crate::view::job(&job))),
            Some(Err(e)) => Err(CoordinatorError::from(e).into()),
            _ => Err(not_answered()),
        }
    }

    fn node_reply(
        &self,
        reply: Option<Result<Reply, CoreError>>,
    ) -> Result<Response<pb::Node>, Status> {
        match reply {
            Some(Ok(Reply::Node(node))) => {
                let cluster = self.cluster();
                Ok(Response::new(crate::view::node(&node, &cluster.jobs)))
            }
            Some(Err(e)) => Err(CoordinatorError::from(e).into()),
            _ => Err(not_answered()),
        }
    }
}

/// A call the core did not answer: this coordinator stopped leading while it ran.
fn not_answered() -> Status {
    Status::unavailable("this coordinator is not the leader any more")
}

/// The provider the config names.
fn provider_for(config: &CoordinatorConfig) -> Arc<dyn ReplacementProvider> {
    if config.provisions_hosts() {
        Arc::new(ExecProvider {
            dir: config.provider_dir.clone(),
            timeout: Duration::from_millis(config.provider_timeout_ms),
            attempts: config.provider_attempts,
            retry_delay: Duration::from_millis(config.provider_retry_ms),
        })
    } else {
        Arc::new(SparePool)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Coordinator {
    type SessionStream = UnboundedReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
        // The port is shared with operators (who use tokens), so TLS lets clients in without a
        // certificate and the agent stream is where one is demanded.
        if crate::tls::agents_need_certificates(self.cluster().config())
            && request.peer_certs().is_none_or(|certs| certs.is_empty())
        {
            tracing::warn!(%peer, "agent stream without a client certificate refused");
            return Err(CoordinatorError::Unauthenticated(
                "agents must present a client certificate signed by tls_client_ca_file".into(),
            )
            .into());
        }
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
        let conn = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let close = Arc::new(Notify::new());
        let node = {
            let mut cluster = self.cluster();
            let request = self.request_id();
            let mut commands = cluster
                .step(
                    Input::Hello {
                        request,
                        conn,
                        hello: crate::wire::hello(hello),
                    },
                    now_ms(),
                )
                .into_iter();
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
            let node = welcome.node_id.clone();
            if !self.persist(&cluster) {
                return Err(Status::unavailable(
                    "this coordinator is not the leader any more",
                ));
            }
            // The receiver is alive: it is returned below.
            let _ = tx.send(Ok(crate::wire::welcome(welcome)));
            self.agents().insert(
                node.clone(),
                AgentConn {
                    conn,
                    tx,
                    close: close.clone(),
                },
            );
            self.execute(&cluster, commands.collect());
            node
        };
        tracing::info!(node, peer, conn, "agent session open");
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = close.notified() => break,
                    msg = inbound.message() => match msg {
                        Ok(Some(pb::AgentMessage { body: Some(body) })) => this.handle_agent_message(&node, body),
                        Ok(Some(_)) => tracing::warn!(node, "empty agent message ignored"),
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(node, "agent stream broke: {}", status.message());
                            break;
                        }
                    }
                }
            }
            {
                let mut agents = this.agents();
                if agents.get(&node).is_some_and(|a| a.conn == conn) {
                    agents.remove(&node);
                }
            }
            tracing::info!(node, conn, "agent session closed");
            this.step(Input::Disconnected { node, conn });
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl OperatorService for Coordinator {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("invalid job spec: spec is missing"))?;
        if !spec.checkpoint_uri.is_empty() {
            if let Err(e) = CheckpointStore::open(&spec.checkpoint_uri) {
                let e = CoordinatorError::InvalidJob {
                    field: "checkpoint_uri",
                    reason: e.to_string(),
                };
                tracing::warn!("job refused: {e}");
                return Err(e.into());
            }
        }
        let request = self.request_id();
        let job = crate::wire::job_request(spec);
        match self.step(Input::Submit { request, job }) {
            Some(Ok(Reply::Job(job))) => Ok(Response::new(crate::view::job(&job))),
            Some(Err(e)) => {
                tracing::warn!("job refused: {e}");
                Err(CoordinatorError::from(e).into())
            }
            _ => Err(not_answered()),
        }
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        let cluster = self.cluster();
        let job = if id.is_empty() {
            cluster.jobs.values().max_by_key(|j| j.submitted_at)
        } else {
            cluster.jobs.get(&id)
        };
        job.map(|j| Response::new(crate::view::job(j)))
            .ok_or_else(|| {
                CoordinatorError::from(CoreError::NoSuchJob(if id.is_empty() {
                    "submitted yet".into()
                } else {
                    id
                }))
                .into()
            })
    }

    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let cluster = self.cluster();
        let jobs = cluster.jobs.values().map(crate::view::job).collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn stop_job(
        &self,
        request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        let request = self.request_id();
        self.job_reply(self.step(Input::StopJob {
            request,
            job_id: id,
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let cluster = self.cluster();
        let nodes = cluster
            .nodes
            .values()
            .map(|n| crate::view::node(n, &cluster.jobs))
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = request.into_inner();
        let request = self.request_id();
        self.node_reply(self.step(Input::Cordon {
            request,
            node: r.node_id,
            reason: r.reason,
        }))
    }

    async fn uncordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = request.into_inner();
        let request = self.request_id();
        self.node_reply(self.step(Input::Uncordon {
            request,
            node: r.node_id,
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let job_id = request.into_inner().job_id;
        let cluster = self.cluster();
        let incidents = cluster
            .incidents
            .iter()
            .filter(|i| job_id.is_empty() || i.job_id == job_id)
            .map(crate::view::incident)
            .collect();
        Ok(Response::new(pb::ListIncidentsResponse { incidents }))
    }

    async fn check_node(
        &self,
        request: Request<pb::CheckNodeRequest>,
    ) -> Result<Response<pb::CheckReport>, Status> {
        let node_id = request.into_inner().node_id;
        let id = self.request_id();
        let (tx, rx) = oneshot::channel();
        self.shared
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let started = match self.step(Input::CheckNode {
            request: id,
            node: node_id.clone(),
        }) {
            Some(Err(e)) => Err(CoordinatorError::from(e)),
            _ => Ok(()),
        };
        let forget = || {
            self.shared
                .checks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
        };
        if let Err(e) = started {
            forget();
            return Err(e.into());
        }
        match tokio::time::timeout(self.shared.check_wait, rx).await {
            Ok(Ok(report)) => Ok(Response::new(report)),
            Ok(Err(_)) => Err(Status::aborted(format!(
                "the check of {node_id} was abandoned"
            ))),
            Err(_) => {
                forget();
                Err(Status::deadline_exceeded(format!(
                    "no check report from {node_id} within {} s",
                    self.shared.check_wait.as_secs()
                )))
            }
        }
    }

    async fn restart_agent(
        &self,
        request: Request<pb::RestartAgentRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = request.into_inner();
        let request = self.request_id();
        self.node_reply(self.step(Input::RestartAgent {
            request,
            node: r.node_id,
            reason: r.reason,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let job_id = request.into_inner().job_id;
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.subscribe()).filter_map(
            move |item| match item {
                Ok(event)
                    if job_id.is_empty() || event.job_id.is_empty() || event.job_id == job_id =>
                {
                    Some(Ok(event))
                }
                Ok(_) => None,
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Ok(pb::Event {
                        at_unix_ms: now_ms(),
                        kind: "log".into(),
                        kind_enum: pb::EventKind::Log as i32,
                        message: format!("{n} events dropped: watcher too slow"),
                        ..Default::default()
                    }))
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Why the coordinator stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    State(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokenFileError),
    #[error(transparent)]
    TlsFile(#[from] crate::tls::TlsFileError),
    #[error("TLS settings (tls_cert_file, tls_key_file, tls_client_ca_file): {0}")]
    Tls(tonic::transport::Error),
}

/// Serves the agent stream and the operator API (gRPC and gRPC-web), the dashboard and
/// `/metrics` on `listener` until `shutdown` resolves, keeping the state in memory only.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let coordinator = Coordinator::new(config);
    serve(coordinator, Vec::new(), listener, shutdown).await
}

/// [`run`] with the state in `store`: restored on start, saved on every durable change.
pub async fn run_with_store(
    listener: TcpListener,
    config: CoordinatorConfig,
    store: Box<dyn RecordStore>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (coordinator, effects) = Coordinator::open(config, store)?;
    serve(coordinator, effects, listener, shutdown).await
}

async fn serve(
    coordinator: Coordinator,
    effects: Vec<Command>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Read before anything runs: a bad token file stops the start, naming its line.
    let tokens_file = coordinator.cluster().config().operator_tokens_file.clone();
    let tokens = if tokens_file.as_os_str().is_empty() {
        tracing::warn!(
            "operator_tokens_file is not set: the operator API is open to anyone who can reach \
             this port"
        );
        None
    } else {
        Some(std::sync::Arc::new(crate::auth::OperatorTokens::load(
            &tokens_file,
        )?))
    };
    let tls = crate::tls::server_config(coordinator.cluster().config())?;
    let tick = Duration::from_millis(coordinator.cluster().config().tick_ms);
    {
        let cluster = coordinator.cluster();
        coordinator.execute(&cluster, effects);
    }
    coordinator.spawn_ticker(tick);
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "coordinator serving");
    let incoming = TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    let mut grpc = tonic::service::Routes::new(AgentServiceServer::new(coordinator.clone()))
        .add_service(OperatorServiceServer::new(coordinator.clone()))
        .into_axum_router();
    // Tokens guard the operator API only (`enforce` passes other paths through): agents are not
    // operators and never send one.
    if let Some(tokens) = tokens {
        grpc = grpc.route_layer(axum::middleware::from_fn_with_state(
            tokens,
            crate::auth::enforce,
        ));
    }
    let grpc = grpc
        // Only the gRPC routes speak gRPC-web: the layer refuses plain HTTP/1 requests, which the
        // dashboard's page and /metrics are.
        .layer(tonic_web::GrpcWebLayer::new());
    let deposed = coordinator.clone();
    let routes = crate::dashboard::routes(coordinator, grpc);
    // HTTP/1.1 for browsers: gRPC-web (the dashboard's API calls), the page and /metrics.
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).map_err(ServeError::Tls)?;
    }
    server
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .accept_http1(true)
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = deposed.shared.deposed.notified() => {
                    tracing::error!("another coordinator leads: no longer serving");
                }
            }
        })
        .await?;
    Ok(())
}
