//! The coordinator's async shell: gRPC services over real sockets, the failure detector's ticker,
//! and the executor of the core's commands. Decisions are made in `holdfast-core`'s
//! `Cluster::step`; this module only moves bytes and time.
//!
//! ## Layout
//! - this file — the [`Coordinator`]: the core behind its lock.
//! - `commit` — the ordered commit of each step (save what changed, then send what was
//!   decided), with group commit of the saves.
//! - `admission` — admission control of new agent sessions (hellos beyond a rate are told
//!   when to come back).
//! - [`agent`] — the agent stream.
//! - `inbox` — agent inputs queued and stepped in batches by one thread (one seal and one
//!   commit per batch).
//! - [`operator`] — the operator API.
//! - [`executor`] — carrying out the core's commands; the ticker.
//! - [`serve`] — one port for gRPC, gRPC-web, the dashboard and `/metrics`.
//!
//! ## Ordering
//! A step runs under the core's lock and is *sealed* there: it takes a ticket, the records it
//! changed (only those) are merged into the unsaved batch, and its events are copied out. The
//! lock is then released and the step is *committed* in ticket order: the batch holding its
//! changes is saved (one write for every step sealed meanwhile: group commit), then its
//! commands go out. So a slow disk never holds the core (heartbeats keep being processed), and
//! still nothing is told to an agent or an operator before a restarted coordinator would know
//! it, and commands reach each agent in the order they were decided.

mod admission;
mod agent;
mod commit;
#[cfg(test)]
mod commit_tests;
mod executor;
mod inbox;
mod join;
mod operator;
mod serve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use holdfast_core::cluster::{Cluster, Command, Input, Reply};
use holdfast_core::error::CoreError;
use holdfast_core::NodeId;
use holdfast_proto::v1 as pb;
use tokio::sync::{broadcast, oneshot, Notify};
use tonic::Status;

use crate::config::CoordinatorConfig;
use crate::now_ms;
use crate::provider::{ExecProvider, ReplacementProvider, SparePool};
use crate::store::{MemoryStore, Persister, RecordStore, StoreError};

pub use agent::{MESSAGES_PER_SECOND, MESSAGE_BURST};
pub use serve::{run, run_with_store, ServeError};

/// What goes to one agent: a message, or the status that ends its stream. The message is
/// boxed: the channel allocates its slots 32 at a time, each the size of its item, and a
/// `CoordinatorMessage` inline (its largest variant, a launch) made that ~9.5 KB per
/// connected agent where 32 pointers are 512 bytes (heap profile: BENCHMARKS.md).
type ToAgent = Result<Box<pb::CoordinatorMessage>, Status>;
/// The queue to one agent's stream: futures' channel, whose empty queue is a few dozen bytes
/// (tokio's allocates a block of 32 slots up front), held once per connected agent.
type ToAgentTx = futures::channel::mpsc::UnboundedSender<ToAgent>;

/// An event as the bus carries it: encoded once and shared by every watcher. The bus keeps
/// its last 4,096 events for watchers that fall behind; held as `pb::Event` values each slot
/// took the largest event's size (~1.3 KB, 5.5 MB in all, resident from the first event on),
/// encoded they take their own (a node's event ~150 bytes).
pub type BusEvent = Arc<[u8]>;

/// `event` encoded for the bus.
pub fn encode_event(event: &pb::Event) -> BusEvent {
    prost::Message::encode_to_vec(event).into()
}

/// An event off the bus (`None`: not an event, which the bus never carries).
pub fn decode_event(bytes: &[u8]) -> Option<pb::Event> {
    <pb::Event as prost::Message>::decode(bytes).ok()
}

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
    /// Where the core's durable state goes; used by one commit at a time.
    persister: Mutex<Persister>,
    /// Changes sealed and not saved yet (commit.rs).
    unsaved: Mutex<commit::Unsaved>,
    /// The core's durable version at the last successful save.
    saved_version: AtomicU64,
    /// A save failed and has not succeeded since (an alert tells when it does again).
    save_pending: AtomicBool,
    save_stats: commit::SaveStats,
    /// Agent inputs waiting to be stepped (inbox.rs).
    inbox: inbox::Inbox,
    /// Admission control of new agent sessions (admission.rs).
    admission: Mutex<admission::Admission>,
    /// Tickets of sealed steps, handed out under the core's lock.
    next_ticket: AtomicU64,
    /// The ticket whose turn it is to commit.
    turn: Mutex<u64>,
    turn_changed: Condvar,
    agents: Mutex<HashMap<NodeId, AgentConn>>,
    events: broadcast::Sender<BusEvent>,
    next_conn: AtomicU64,
    hello_timeout: Duration,
    /// How long a hello may wait its admission turn on its stream (`hello_hold_ms`).
    hello_hold: Duration,
    /// Operator checks waiting for their report, by request id.
    checks: Mutex<HashMap<u64, oneshot::Sender<pb::CheckReport>>>,
    /// Request ids: they tie the core's replies to hellos and operator calls.
    next_request: AtomicU64,
    /// How long an operator check may take in all (every script at its timeout, plus slack).
    check_wait: Duration,
    /// Notified when the store says another coordinator leads: serving stops.
    deposed: Notify,
    is_deposed: AtomicBool,
    /// Where replacement hosts come from (spare pool, or the operator's scripts).
    provider: Arc<dyn ReplacementProvider>,
}

/// One output of a step, ready to go out without the core.
// Outputs live from a step to its commit and are moved, never stored for long: boxing the
// large variant would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Outbound {
    /// A command for the executor.
    Command(Command),
    /// An event for watchers, already in its wire form (views are made from the state the
    /// step left).
    Event(pb::Event),
}

impl Coordinator {
    /// A coordinator whose state lives in memory only.
    pub fn new(config: CoordinatorConfig) -> Coordinator {
        let persister = Persister::new(Box::new(MemoryStore), Default::default());
        Coordinator::from_parts(Cluster::new(config), persister)
    }

    /// A coordinator over `store`: the state found there is restored (term bumped, nodes given a
    /// reconnect grace), an empty store starts a fresh cluster. The commands of the restore (a
    /// checkpoint resolution that was in flight) are carried out once the shell runs.
    pub fn open(
        config: CoordinatorConfig,
        mut store: Box<dyn RecordStore>,
    ) -> Result<(Coordinator, Vec<Command>), StoreError> {
        let records = store.load()?;
        let described = store.describe();
        let (cluster, commands) = match Cluster::restore(config.clone(), &records, now_ms())? {
            Some(restored) => restored,
            None => (Cluster::new(config), Vec::new()),
        };
        tracing::info!(
            term = cluster.term.get(),
            nodes = cluster.nodes.len(),
            jobs = cluster.jobs.len(),
            "state in {described}"
        );
        let mut persister = Persister::new(store, records);
        // The new term is on disk before any agent hears of it.
        persister.save(cluster.to_records()?, cluster.durable_version())?;
        Ok((Coordinator::from_parts(cluster, persister), commands))
    }

    fn from_parts(cluster: Cluster, persister: Persister) -> Coordinator {
        let (events, _) = broadcast::channel(4096);
        let config = cluster.config();
        Coordinator {
            shared: Arc::new(Shared {
                hello_timeout: Duration::from_millis(config.hello_timeout_ms),
                hello_hold: Duration::from_millis(config.hello_hold_ms),
                provider: provider_for(config),
                checks: Mutex::new(HashMap::new()),
                next_request: AtomicU64::new(1),
                check_wait: Duration::from_millis(
                    config
                        .script_timeout_ms
                        .saturating_mul(config.check_scripts.len().max(1) as u64)
                        + 10_000,
                ),
                unsaved: Mutex::new(commit::Unsaved::default()),
                inbox: inbox::Inbox::new(),
                saved_version: AtomicU64::new(cluster.durable_version()),
                save_pending: AtomicBool::new(false),
                save_stats: commit::SaveStats::default(),
                admission: Mutex::new(admission::Admission::new(
                    config.hello_rate_per_s,
                    config.hello_burst,
                    std::time::Instant::now(),
                )),
                next_ticket: AtomicU64::new(0),
                turn: Mutex::new(0),
                turn_changed: Condvar::new(),
                cluster: Mutex::new(cluster),
                persister: Mutex::new(persister),
                agents: Mutex::new(HashMap::new()),
                events,
                next_conn: AtomicU64::new(1),
                deposed: Notify::new(),
                is_deposed: AtomicBool::new(false),
            }),
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

    /// The core, locked, once every step sealed before has been committed: what an operator
    /// reads is saved, so a restarted coordinator never knows less than an operator was shown.
    /// Commits never take the core's lock, so waiting for them while holding it cannot block
    /// them, and no new step can seal meanwhile.
    fn settled(&self) -> MutexGuard<'_, Cluster> {
        let cluster = self.cluster();
        let sealed = self.shared.next_ticket.load(Ordering::SeqCst);
        let mut turn = self.shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        while *turn < sealed {
            turn = self
                .shared
                .turn_changed
                .wait(turn)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(turn);
        cluster
    }

    fn agents(&self) -> MutexGuard<'_, HashMap<NodeId, AgentConn>> {
        self.shared.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Prometheus exposition of the current state (see [`crate::metrics`]).
    pub fn metrics_text(&self) -> String {
        let (nodes, jobs, incidents) = {
            let cluster = self.settled();
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
        let ((hellos_admitted, hellos_refused), hellos_held) = {
            let admission = self
                .shared
                .admission
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            (admission.counts(), admission.held())
        };
        let (save_batches, saved_steps, saved_records) = self.shared.save_stats.get();
        let mut text = crate::metrics::render(&nodes, &jobs, &incidents, now_ms());
        text.push_str(&crate::metrics::render_shell(
            &crate::metrics::ShellCounters {
                hellos_admitted,
                hellos_held,
                hellos_refused,
                save_batches,
                saved_steps,
                saved_records,
            },
        ));
        text
    }

    /// Subscribes to the event bus (events encoded: [`decode_event`]).
    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.shared.events.subscribe()
    }

    /// A fresh request id, for an input whose reply the caller waits for.
    fn request_id(&self) -> u64 {
        self.shared.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Steps the core with `input` at the current time, then saves what changed and carries
    /// out the commands in the order steps were taken (see the module's "Ordering"). Returns
    /// the reply the step made to a waiting call, if any; `None` also when this coordinator no
    /// longer leads (nothing went out).
    fn step(&self, input: Input) -> Option<Result<Reply, CoreError>> {
        let sealed = {
            let mut cluster = self.cluster();
            let commands = cluster.step(input, now_ms());
            self.seal(&mut cluster, commands)
        };
        self.commit(sealed, || true)
    }

    /// Carries out commands the core made outside a step (those of a restore).
    fn carry_out(&self, commands: Vec<Command>) {
        let sealed = {
            let mut cluster = self.cluster();
            self.seal(&mut cluster, commands)
        };
        self.commit(sealed, || true);
    }

    /// Tells watchers and the log about a problem of the coordinator itself.
    fn publish_alert(&self, message: String) {
        self.publish(pb::Event {
            at_unix_ms: now_ms(),
            kind: "alert".into(),
            kind_enum: pb::EventKind::Alert as i32,
            message,
            ..Default::default()
        });
    }
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
