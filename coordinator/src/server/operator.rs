//! The operator service: jobs, nodes, incidents, checks, agent restarts and the event stream.
//! Calls that change something are inputs of the core answered by its reply; reads look at the
//! core's state directly.

use std::pin::Pin;

use futures::Stream;
use holdfast_core::cluster::{Input, Reply};
use holdfast_core::error::CoreError;
use holdfast_proto::v1 as pb;
use pb::operator_service_server::OperatorService;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::Coordinator;
use crate::checkpoint::CheckpointStore;
use crate::error::CoordinatorError;
use crate::now_ms;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

impl Coordinator {
    /// Steps the core with the input `make` builds for a fresh request id: the core's reply, or
    /// its refusal as a status.
    fn ask(&self, make: impl FnOnce(u64) -> Input) -> Result<Reply, Status> {
        let request = self.request_id();
        match self.step(make(request)) {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => Err(CoordinatorError::from(e).into()),
            None => Err(not_answered()),
        }
    }

    /// [`Coordinator::ask`] for a call answered with the job.
    fn ask_job(&self, make: impl FnOnce(u64) -> Input) -> Result<Response<pb::Job>, Status> {
        match self.ask(make)? {
            Reply::Job(job) => Ok(Response::new(crate::view::job(&job))),
            _ => Err(not_answered()),
        }
    }

    /// [`Coordinator::ask`] for a call answered with the node.
    fn ask_node(&self, make: impl FnOnce(u64) -> Input) -> Result<Response<pb::Node>, Status> {
        match self.ask(make)? {
            Reply::Node(node) => {
                let cluster = self.settled();
                Ok(Response::new(crate::view::node(&node, &cluster.jobs)))
            }
            _ => Err(not_answered()),
        }
    }
}

/// A call the core did not answer: this coordinator stopped leading while it ran.
fn not_answered() -> Status {
    Status::unavailable("this coordinator is not the leader any more")
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
        let job = crate::wire::job_request(spec);
        self.ask_job(|request| Input::Submit { request, job })
            .inspect_err(|status| tracing::warn!("job refused: {}", status.message()))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let viewer = crate::auth::is_viewer(&request);
        let id = request.into_inner().job_id;
        let cluster = self.settled();
        let job = if id.is_empty() {
            cluster.jobs.values().max_by_key(|j| j.submitted_at)
        } else {
            cluster.jobs.get(id.as_str())
        };
        job.map(|j| Response::new(crate::view::job_for(j, viewer)))
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
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let viewer = crate::auth::is_viewer(&request);
        let cluster = self.settled();
        let jobs = cluster
            .jobs
            .values()
            .map(|j| crate::view::job_for(j, viewer))
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn stop_job(
        &self,
        request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        self.ask_job(|request| Input::StopJob {
            request,
            job_id: id.into(),
        })
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let filter = request.into_inner();
        let cluster = self.settled();
        let views = cluster
            .nodes
            .values()
            .map(|n| crate::view::node(n, &cluster.jobs));
        Ok(Response::new(crate::view::node_page(views, &filter)))
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = request.into_inner();
        self.ask_node(|request| Input::Cordon {
            request,
            node: r.node_id.into(),
            reason: r.reason,
        })
    }

    async fn uncordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = request.into_inner();
        self.ask_node(|request| Input::Uncordon {
            request,
            node: r.node_id.into(),
        })
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let filter = request.into_inner();
        let after: u64 = match filter.page_token.as_str() {
            "" => 0,
            token => token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token: not one this call gave"))?,
        };
        let cluster = self.settled();
        let matching = cluster.incidents.iter().filter(|i| {
            (filter.job_id.is_empty() || i.job_id.as_str() == filter.job_id)
                && (filter.node_id.is_empty() || i.node_id.as_str() == filter.node_id)
        });
        let total = matching.clone().count();
        let limit = crate::view::page_len(filter.page_size);
        let mut incidents: Vec<pb::Incident> = matching
            .filter(|i| i.id > after)
            .take(limit.saturating_add(1))
            .map(crate::view::incident)
            .collect();
        let mut next_page_token = String::new();
        if incidents.len() > limit {
            incidents.truncate(limit);
            next_page_token = incidents.last().map_or(String::new(), |i| i.id.to_string());
        }
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents,
            next_page_token,
            total: u32::try_from(total).unwrap_or(u32::MAX),
        }))
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
            node: node_id.clone().into(),
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
        self.ask_node(|request| Input::RestartAgent {
            request,
            node: r.node_id.into(),
            reason: r.reason,
        })
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let viewer = crate::auth::is_viewer(&request);
        let job_id = request.into_inner().job_id;
        let events = self.subscribe();
        Ok(Response::new(watch_stream(
            events,
            job_id,
            WATCH_BACKLOG,
            viewer,
        )))
    }
}

/// Most events one watcher may have queued (decided but not yet taken by its connection);
/// a watcher further behind is dropped, so a client that never reads holds no more than this.
const WATCH_BACKLOG: usize = 256;

/// One watcher's stream: a task takes its events off the bus at once (so it never pins the
/// bus's ring) into a queue of `backlog`; when the queue is full the watcher is dropped — it gets
/// what was queued, then one last event saying why, then `resource_exhausted`.
fn watch_stream(
    mut events: tokio::sync::broadcast::Receiver<super::BusEvent>,
    job_id: String,
    backlog: usize,
    viewer: bool,
) -> EventStream {
    use tokio::sync::broadcast::error::RecvError;
    use tokio::sync::mpsc::error::TrySendError;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::Event>(backlog);
    let (why_tx, why_rx) = oneshot::channel::<String>();
    tokio::spawn(async move {
        let why = loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = events.recv() => event,
            };
            let event = match event {
                Ok(bytes) => match super::decode_event(&bytes) {
                    Some(event) => Ok(event),
                    None => continue,
                },
                Err(e) => Err(e),
            };
            match event {
                Ok(mut event)
                    if job_id.is_empty() || event.job_id.is_empty() || event.job_id == job_id =>
                {
                    if viewer {
                        if let Some(job) = event.job.as_mut() {
                            crate::view::hide_env(job);
                        }
                    }
                    match tx.try_send(event) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            break format!("watcher too slow: {backlog} events queued unread")
                        }
                        Err(TrySendError::Closed(_)) => return,
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => break format!("watcher too slow: {n} events missed"),
                Err(RecvError::Closed) => return,
            }
        };
        // The queue's sender goes with the task, so the stream ends after what was queued.
        let _ = why_tx.send(why);
    });
    let last = futures::stream::once(why_rx).filter_map(|why| {
        why.ok().map(|why| {
            tracing::warn!("event watcher dropped: {why}");
            futures::stream::iter([
                Ok(pb::Event {
                    at_unix_ms: now_ms(),
                    kind: "log".into(),
                    kind_enum: pb::EventKind::Log as i32,
                    message: format!("{why}; this stream ends here, watch again to resume"),
                    ..Default::default()
                }),
                Err(Status::resource_exhausted(why)),
            ])
        })
    });
    let queued = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    Box::pin(queued.chain(futures::StreamExt::flatten(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(job_id: &str) -> pb::Event {
        pb::Event {
            job_id: job_id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_dropped_with_a_reason() {
        let (bus, events) = tokio::sync::broadcast::channel(4096);
        let mut stream = watch_stream(events, String::new(), 8, false);
        for _ in 0..20 {
            bus.send(crate::server::encode_event(&event("j")))
                .expect("a receiver");
        }
        let mut queued = 0;
        let last = loop {
            match stream.next().await {
                Some(Ok(e)) if e.message.is_empty() => queued += 1,
                Some(Ok(e)) => break e.message,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(queued, 8, "only the backlog is kept");
        assert!(last.contains("watcher too slow"), "{last}");
        let end = stream.next().await;
        assert!(
            matches!(&end, Some(Err(s)) if s.code() == tonic::Code::ResourceExhausted),
            "{end:?}"
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_watcher_that_keeps_up_sees_only_its_job() {
        let (bus, events) = tokio::sync::broadcast::channel(16);
        let mut stream = watch_stream(events, "a".into(), 8, false);
        for job in ["a", "b", "", "a"] {
            bus.send(crate::server::encode_event(&event(job)))
                .expect("a receiver");
        }
        drop(bus);
        let mut seen = Vec::new();
        while let Some(item) = stream.next().await {
            seen.push(item.expect("no error").job_id);
        }
        assert_eq!(seen, ["a", "", "a"]);
    }

    #[tokio::test]
    async fn a_viewer_watching_sees_no_environment_values() {
        let (bus, events) = tokio::sync::broadcast::channel(16);
        let mut stream = watch_stream(events, String::new(), 8, true);
        let mut with_job = event("a");
        with_job.job = Some(pb::Job {
            spec: Some(pb::JobSpec {
                env: [("API_KEY".to_string(), "s3cr3t".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        bus.send(crate::server::encode_event(&with_job))
            .expect("a receiver");
        drop(bus);
        let seen = stream.next().await.expect("one event").expect("no error");
        let env = &seen.job.expect("the job").spec.expect("its spec").env;
        assert_eq!(env["API_KEY"], crate::view::HIDDEN_FROM_VIEWERS);
    }
}
