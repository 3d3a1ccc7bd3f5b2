//! What the coordinator's event stream (and, where the stream broke, its node and job lists)
//! showed: nodes lost, jobs running per generation, incidents. The watcher task fills it; the
//! phases read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_proto::v1 as pb;
use tokio::sync::watch;

use super::agent::stopped;
use super::{connect, SwarmError};

/// What the event stream showed, recorded by the watcher task.
#[derive(Default)]
pub(super) struct Observed {
    /// Record node losses only once the swarm is up and until it is taken down.
    pub(super) recording: bool,
    /// First time each node was shown offline, fenced or disconnected (event time, unix ms).
    pub(super) down: HashMap<String, i64>,
    /// First time each (job, generation) was shown running.
    pub(super) running: HashMap<(String, u64), i64>,
    /// Every incident, its latest copy.
    pub(super) incidents: BTreeMap<u64, pb::Incident>,
    /// What the polls during the silence phase showed first (for events the stream missed).
    pub(super) polled_down: HashMap<String, i64>,
    pub(super) polled_running: HashMap<(String, u64), i64>,
    pub(super) watch_breaks: u32,
}

impl Observed {
    pub(super) fn record(&mut self, event: pb::Event, prefix: &str) {
        if let Some(node) = &event.node {
            let lost = is_shown_lost(node);
            if self.recording && lost && node.node_id.starts_with(prefix) {
                self.down
                    .entry(node.node_id.clone())
                    .or_insert(event.at_unix_ms);
            }
        }
        if let Some(job) = &event.job {
            if job.state_enum == pb::JobState::Running as i32 {
                self.running
                    .entry((job.job_id.clone(), job.generation))
                    .or_insert(event.at_unix_ms);
            }
        }
        if let Some(incident) = event.incident {
            self.incidents.insert(incident.id, incident);
        }
    }
}

/// Follows the coordinator's events into `observed` until `stop`; opens the stream again when
/// it breaks (a watcher too slow is cut off by the coordinator), counting the breaks.
pub(super) async fn watch_events(
    addr: String,
    prefix: String,
    observed: Arc<Mutex<Observed>>,
    mut stop: watch::Receiver<bool>,
    opened: tokio::sync::oneshot::Sender<Result<(), SwarmError>>,
) {
    let mut opened = Some(opened);
    loop {
        let stream = match connect(&addr).await {
            Ok(mut c) => c
                .watch_events(pb::WatchEventsRequest {
                    job_id: String::new(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| SwarmError::Refused {
                    what: "WatchEvents".into(),
                    message: status.message().to_string(),
                }),
            Err(e) => Err(e),
        };
        let mut stream = match stream {
            Ok(s) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Ok(()));
                }
                s
            }
            Err(e) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::warn!("event stream: {e}");
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                event = stream.message() => match event {
                    Ok(Some(event)) => {
                        if let Ok(mut o) = observed.lock() {
                            o.record(event, &prefix);
                        }
                    }
                    Ok(None) | Err(_) => {
                        if let Ok(mut o) = observed.lock() {
                            o.watch_breaks += 1;
                        }
                        break;
                    }
                },
            }
        }
    }
}

/// When the coordinator first showed `job` running at `generation`: its event, else a poll.
pub(super) fn running_at(o: &Observed, job: &str, generation: u64) -> Option<i64> {
    let key = (job.to_string(), generation);
    o.running
        .get(&key)
        .or_else(|| o.polled_running.get(&key))
        .copied()
}

/// When the coordinator first showed `node` lost: its first offline/fenced/disconnected event
/// or the detection of an incident on it, whichever came first; else the first poll showing it.
pub(super) fn detection_at(o: &Observed, node: &str) -> Option<i64> {
    let event = o
        .down
        .get(node)
        .or_else(|| o.polled_down.get(node))
        .copied();
    let incident = o
        .incidents
        .values()
        .filter(|i| i.node_id == node && i.detected_unix_ms > 0)
        .map(|i| i.detected_unix_ms)
        .min();
    match (event, incident) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a node list shows the node lost: away, offline or fenced.
pub(super) fn is_shown_lost(node: &pb::Node) -> bool {
    !node.connected
        || matches!(
            pb::NodeState::try_from(node.state_enum),
            Ok(pb::NodeState::Offline | pb::NodeState::Fenced)
        )
}
