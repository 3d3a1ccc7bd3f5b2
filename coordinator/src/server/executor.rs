//! The executor of the core's commands: messages to agents, closed streams, checkpoint
//! lookups, provider calls, replies to waiting calls, events for watchers; and the ticker that
//! drives the failure detector's clock.

use std::future::Future;
use std::time::Duration;

use holdfast_core::cluster::{Command, Input, Reply};
use holdfast_core::error::CoreError;
use holdfast_proto::v1 as pb;
use tonic::Status;

use super::{Coordinator, Outbound};

/// Every this many ticks (a minute at the default 100 ms) the whole state is compared with
/// what was saved, not only the records the steps named.
const FULL_SAVE_EVERY_TICKS: u64 = 600;
use crate::checkpoint::{CheckpointStore, Resolution};
use crate::provider::{FenceRequest, ProvisionRequest};

impl Coordinator {
    /// Carries out a step's commands in order; returns the reply no waiting check took.
    pub(super) fn execute(&self, outbound: Vec<Outbound>) -> Option<Result<Reply, CoreError>> {
        let mut unclaimed = None;
        for out in outbound {
            let reply = match out {
                Outbound::Command(command) => self.execute_one(command),
                Outbound::Event(event) => {
                    self.publish(event);
                    None
                }
            };
            if reply.is_some() {
                unclaimed = reply;
            }
        }
        unclaimed
    }

    /// Tells watchers (and the log).
    pub(super) fn publish(&self, event: pb::Event) {
        if event.event_kind() != pb::EventKind::Progress {
            tracing::info!(target: "holdfast::event", "{}", event.message);
        }
        // No subscribers is fine.
        let _ = self.shared.events.send(super::encode_event(&event));
    }

    /// The newest open incident of `node`, for the provider's `fence` (a drain reason, a tag).
    fn open_incident_of(&self, node: &str) -> Option<u64> {
        self.cluster()
            .incidents
            .iter()
            .filter(|i| i.node_id == node && i.is_open())
            .map(|i| i.id)
            .max()
    }

    fn execute_one(&self, command: Command) -> Option<Result<Reply, CoreError>> {
        {
            match command {
                Command::Send { node, command } => {
                    let agents = self.agents();
                    match agents.get(&node) {
                        Some(agent) => {
                            let msg = crate::wire::agent_command(command);
                            if agent.tx.unbounded_send(Ok(Box::new(msg))).is_err() {
                                tracing::warn!(
                                    node = node.as_str(),
                                    "agent stream already closed; command dropped"
                                );
                            }
                        }
                        None => tracing::warn!(
                            node = node.as_str(),
                            "agent not connected; command dropped"
                        ),
                    }
                }
                Command::Disconnect { node, reason } => {
                    if let Some(agent) = self.agents().remove(&node) {
                        tracing::warn!(node = node.as_str(), "closing agent stream: {reason}");
                        // Tell the agent why before the stream goes.
                        let _ = agent.tx.unbounded_send(Err(Status::unavailable(reason)));
                        agent.close.notify_one();
                    }
                }
                Command::ResolveCheckpoint {
                    job_id,
                    uri,
                    fenced,
                    verify_checksums,
                } => self.answer_later(move |_| async move {
                    let resolved = if uri.is_empty() {
                        Ok(Resolution::default())
                    } else {
                        match CheckpointStore::open(&uri) {
                            Ok(store) => store
                                .resolve(&fenced, verify_checksums)
                                .await
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    let job = job_id.as_str();
                    match &resolved {
                        Ok(Resolution {
                            checkpoint: Some(c),
                            ..
                        }) => tracing::info!(job, step = c.step, "resume from {}", c.uri),
                        Ok(_) => tracing::info!(job, "no complete checkpoint; fresh start"),
                        Err(e) => tracing::warn!(job, "checkpoint resolution failed: {e}"),
                    }
                    let (result, skipped) = match resolved {
                        Ok(r) => (Ok(r.checkpoint), r.skipped),
                        Err(e) => (Err(e), Vec::new()),
                    };
                    Input::CheckpointResolved {
                        job_id,
                        result,
                        skipped,
                    }
                }),
                Command::Provision {
                    request_id,
                    job_id,
                    count,
                } => self.answer_later(move |this| async move {
                    let request = ProvisionRequest {
                        request_id,
                        job_id: job_id.to_string(),
                        count,
                    };
                    let result = this.shared.provider.provision(request).await;
                    Input::ProvisionResult {
                        job_id,
                        count,
                        result: result.map(|p| p.hosts).map_err(|e| e.to_string()),
                    }
                }),
                Command::FenceHost {
                    node,
                    hostname,
                    address,
                    reason,
                } => self.answer_later(move |this| async move {
                    let incident_id = this.open_incident_of(&node);
                    let request = FenceRequest {
                        node_id: node.to_string(),
                        hostname,
                        address,
                        reason,
                        incident_id,
                    };
                    let result = this.shared.provider.fence(request).await;
                    Input::FenceHostResult {
                        node,
                        result: result.map_err(|e| e.to_string()),
                    }
                }),
                Command::Archive { jobs, incidents } => self.answer_later(|this| async move {
                    let path = this.cluster().config().archive_file.clone();
                    let now = crate::now_ms();
                    let written = tokio::task::spawn_blocking(move || {
                        crate::archive::export(&path, &jobs, &incidents, now)
                    })
                    .await;
                    let result = written.unwrap_or_else(|e| Err(format!("archive task: {e}")));
                    if let Err(e) = &result {
                        tracing::error!("archive failed, records kept: {e}");
                    }
                    Input::Archived { result }
                }),
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
                // Turned into a wire event when the step was sealed.
                Command::Publish(_) => {}
            }
        }
        None
    }

    /// Runs `work` (a checkpoint lookup, a provider call) off the core's lock, then steps the
    /// core with the input it answers with.
    fn answer_later<F, Work>(&self, work: Work)
    where
        Work: FnOnce(Coordinator) -> F,
        F: Future<Output = Input> + Send + 'static,
    {
        let this = self.clone();
        let answer = work(self.clone());
        tokio::spawn(async move {
            this.step(answer.await);
        });
    }

    /// Paces admission by the tick's lateness (see `admission`), and tells the core which
    /// agents were refused admission since the last tick: alive, so a known node among them
    /// keeps its grace while it waits its turn.
    fn admission_waits(&self, late: Duration) {
        let waiting = {
            let mut admission = self
                .shared
                .admission
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            admission.tick_late(late);
            admission.take_waiting()
        };
        if let Some((nodes, wait)) = waiting {
            let wait = wait + super::admission::RETRY_AFTER_MAX;
            let until = crate::now_ms().saturating_add(wait.as_millis() as i64);
            self.step(Input::AdmissionWait { nodes, until });
        }
    }

    /// Runs the failure detector's clock until the process ends.
    pub(super) fn spawn_ticker(&self, tick: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut ticks: u64 = 0;
            loop {
                let due = interval.tick().await;
                ticks = ticks.wrapping_add(1);
                let late = due.elapsed();
                this.admission_waits(late);
                if ticks.is_multiple_of(FULL_SAVE_EVERY_TICKS) {
                    // A change made without naming its record is caught here.
                    this.cluster().mark_all_changed();
                }
                this.step(Input::Tick);
            }
        });
    }
}
