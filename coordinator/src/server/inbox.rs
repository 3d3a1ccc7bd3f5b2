//! The agents' inbox. Every message of an agent stream becomes an input queued here, and one
//! thread steps the core with every input queued meanwhile under one hold of its lock, then
//! seals and commits them together: one merge and one save of what they changed, then their
//! commands and events in the order they were decided. The 1,024 ranks of a large job report
//! progress and evidence thousands of times a second, and a relaunch brings ~2,000 answers
//! (stopped workers, started workers) at once: each used to cost a seal (encoding the job's
//! record anew), a commit and a turn of its own.
//!
//! Order: a stream's inputs are queued in the order they arrived (its reader waits for room
//! when the queue is full: the agents' backpressure), its `Disconnected` after them, and a
//! batch is stepped in queue order. Inputs that need an answer (hellos, operator calls) and
//! the ticker step the core directly, between batches.

use std::sync::{Arc, Mutex, Weak};

use holdfast_core::cluster::Input;
use tokio::sync::mpsc;

use super::{Coordinator, Shared};
use crate::now_ms;

/// Inputs queued at most; a reader waits for room beyond it.
const INBOX_CAPACITY: usize = 16_384;
/// Inputs stepped under one hold of the core's lock at most, so an operator call or a tick
/// waits for no more than one such batch.
const MAX_BATCH: usize = 512;

/// An input waiting for room in the inbox (see [`Coordinator::enqueue`]).
pub(super) type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The queue of agent inputs; its receiving end moves to the inbox thread when serving starts.
pub(super) struct Inbox {
    tx: mpsc::Sender<Input>,
    rx: Mutex<Option<mpsc::Receiver<Input>>>,
}

impl Inbox {
    pub(super) fn new() -> Inbox {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        Inbox {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Coordinator {
    /// Queues an agent's input for the inbox thread; steps it here when that thread does not
    /// run (it could not start, or ended).
    ///
    /// Queued at once when there is room (nearly always): `None`. When the queue is full the
    /// caller awaits the returned future, which queues it once there is room. The input waits
    /// in that boxed future rather than in the caller's: a stream's reader, one per agent, stays
    /// a few hundred bytes instead of carrying room for an input and a send.
    pub(super) fn enqueue(&self, input: Input) -> Option<Pending> {
        match self.shared.inbox.tx.try_send(input) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(input)) => {
                let this = self.clone();
                Some(Box::pin(async move {
                    if let Err(mpsc::error::SendError(input)) =
                        this.shared.inbox.tx.send(input).await
                    {
                        this.step(input);
                    }
                }))
            }
            Err(mpsc::error::TrySendError::Closed(input)) => {
                self.step(input);
                None
            }
        }
    }

    /// Starts the inbox thread (once). It ends when the coordinator is dropped.
    pub(super) fn spawn_inbox(&self) {
        let rx = self
            .shared
            .inbox
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(rx) = rx else {
            return;
        };
        let shared = Arc::downgrade(&self.shared);
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("holdfast-inbox".into())
            .spawn(move || drain(rx, shared, runtime));
        if let Err(e) = spawned {
            tracing::error!(
                "cannot start the inbox thread; agent messages are stepped one by one: {e}"
            );
        }
    }

    /// Steps the core with `inputs` in order under one hold of its lock, then seals and
    /// commits them as one.
    pub(super) fn step_batch(&self, inputs: Vec<Input>) {
        let sealed = {
            let mut cluster = self.cluster();
            let mut commands = Vec::new();
            for input in inputs {
                commands.extend(cluster.step(input, now_ms()));
            }
            self.seal(&mut cluster, commands)
        };
        self.commit(sealed, || true);
    }
}

/// The inbox thread: takes what is queued (up to [`MAX_BATCH`]) and steps it as one batch.
fn drain(mut rx: mpsc::Receiver<Input>, shared: Weak<Shared>, runtime: tokio::runtime::Handle) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(input) => batch.push(input),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        // Commands may start async work (a checkpoint lookup, a provider call).
        let _runtime = runtime.enter();
        Coordinator { shared }.step_batch(std::mem::take(&mut batch));
    }
}
