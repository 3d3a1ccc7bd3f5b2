//! Runs the health monitors beside the session, never on its path:
//! - each probe (GPU state, host) polls on a thread of its own, bounded by a timeout; a probe
//!   that does not answer turns its checks Unknown with the reason, and is waited for before it
//!   is polled again (a wedged driver holds one thread, not the agent);
//! - each event source (NVML events, the kernel log, injected faults) blocks on a thread of its
//!   own and sends [`GpuEvent`]s to one handler, which classifies them with the XID policy;
//! - non-fatal results count only after `debounce` consecutive observations; fatal ones and
//!   recoveries count at once, so health clears when the condition clears.
//!
//! Fatal events (an XID that asks for replacement, a double-bit ECC error, a lost GPU) hold
//! until the agent restarts: the node is fenced and comes back only after repair.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::{HealthAction as A, HealthState as S};
use tokio::sync::{mpsc, oneshot};

use super::xid::{XidClass, XidPolicy};
use super::{check, EventKind, EventSource, GpuBackend, GpuEvent, HealthBoard};
use crate::config::AgentConfig;
use crate::Outbox;

/// How long a worker-fault XID stays on the board: long enough to be seen by operators and by
/// the coordinator's next heartbeats, short enough not to stick to a healthy node.
const WORKER_XID_HOLD: Duration = Duration::from_secs(60);

/// Something polled periodically that may hang.
pub struct Probe {
    pub name: &'static str,
    pub poll: Box<dyn FnMut() -> Vec<pb::HealthCheck> + Send>,
}

/// Counts consecutive observations of a non-fatal, non-healthy result per check.
#[derive(Debug, Default)]
pub struct Debounce {
    need: u32,
    streaks: BTreeMap<String, (i32, i32, u32)>,
}

impl Debounce {
    pub fn new(need: u32) -> Self {
        Debounce {
            need: need.max(1),
            streaks: BTreeMap::new(),
        }
    }

    /// Whether this observation goes on the board now.
    pub fn admit(&mut self, c: &pb::HealthCheck) -> bool {
        let immediate = c.state == S::Healthy as i32
            || c.state == S::NotApplicable as i32
            || (c.state == S::Unhealthy as i32 && c.action == A::ReplaceNode as i32);
        if immediate {
            self.streaks.remove(&c.check);
            return true;
        }
        let streak = self
            .streaks
            .entry(c.check.clone())
            .or_insert((c.state, c.action, 0));
        if (streak.0, streak.1) != (c.state, c.action) {
            *streak = (c.state, c.action, 0);
        }
        streak.2 = streak.2.saturating_add(1);
        streak.2 >= self.need
    }
}

/// Polls `probe` every `interval` until the runtime stops. Each poll runs on its own thread and
/// is given `timeout` to answer.
pub async fn run_probe(
    mut probe: Probe,
    board: HealthBoard,
    outbox: Outbox,
    interval: Duration,
    timeout: Duration,
    mut debounce: Debounce,
) {
    let name = probe.name;
    let mut last_checks: Vec<String> = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (tx, mut rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || {
                let checks = (probe.poll)();
                let _ = tx.send((probe, checks));
            });
        if let Err(e) = spawned {
            board.set(check(
                name,
                S::Unknown,
                &format!("cannot start the probe thread: {e}"),
                A::None,
            ));
            return;
        }
        let answer = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(answer) => answer,
            Err(_) => {
                let reason = format!("{name} probe did not answer within {timeout:?}");
                tracing::warn!("{reason}");
                let names = if last_checks.is_empty() {
                    vec![name.to_string()]
                } else {
                    last_checks.clone()
                };
                for c in names {
                    board.set(check(&c, S::Unknown, &reason, A::None));
                }
                // A wedged probe is not polled again until it comes back.
                rx.await
            }
        };
        let Ok((returned, checks)) = answer else {
            board.set(check(
                name,
                S::Unknown,
                &format!("{name} probe failed (panicked)"),
                A::None,
            ));
            return;
        };
        probe = returned;
        if last_checks.is_empty() || last_checks.iter().any(|c| c == name) {
            // The probe's first answer (or one after a stall before its first answer): drop
            // the placeholder named after the probe if its checks are named otherwise.
            if !checks.iter().any(|c| c.check == name) {
                board.remove(name);
            }
        }
        last_checks = checks.iter().map(|c| c.check.clone()).collect();
        for c in checks {
            if debounce.admit(&c) {
                board.set_and_report(c, &outbox);
            }
        }
    }
}

/// Turns GPU events into checks, with the XID policy.
pub struct EventHandler {
    policy: XidPolicy,
    board: HealthBoard,
    outbox: Outbox,
    /// The most severe XID class seen so far (events only escalate the `xid` check).
    worst_xid: Option<XidClass>,
}

impl EventHandler {
    pub fn new(policy: XidPolicy, board: HealthBoard, outbox: Outbox) -> Self {
        EventHandler {
            policy,
            board,
            outbox,
            worst_xid: None,
        }
    }

    /// Applies one event; returns true when it put a worker fault on the board (which the
    /// caller clears after [`WORKER_XID_HOLD`]).
    pub fn handle(&mut self, e: &GpuEvent) -> bool {
        let mut place = String::new();
        if let Some(i) = e.gpu {
            place.push_str(&format!(" on gpu {i}"));
        }
        if let Some(pci) = &e.pci {
            place.push_str(&format!(" on GPU {pci}"));
        }
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", e.detail)
        };
        let (name, state, action, reason) = match e.kind {
            EventKind::Xid(code) => {
                let verdict = self.policy.classify(code);
                let Some((state, action)) = verdict.health() else {
                    tracing::info!(
                        "ignored Xid {code}{place} ({}, on the ignore list)",
                        e.source
                    );
                    return false;
                };
                let reason = format!(
                    "Xid {code} ({}){place} via {}{detail}",
                    verdict.meaning, e.source
                );
                if verdict.class == XidClass::Worker {
                    ("xid-worker", state, action, reason)
                } else {
                    if self.worst_xid.is_some_and(|w| w > verdict.class) {
                        tracing::warn!("{reason} (a more severe XID is already reported)");
                        return false;
                    }
                    self.worst_xid = Some(verdict.class);
                    ("xid", state, action, reason)
                }
            }
            EventKind::EccDbe => (
                "ecc-dbe",
                S::Unhealthy,
                A::ReplaceNode,
                format!("double-bit ECC error{place} via {}{detail}", e.source),
            ),
            EventKind::GpuLost => (
                "gpu-lost-event",
                S::Unhealthy,
                A::ReplaceNode,
                format!("GPU lost{place} via {}{detail}", e.source),
            ),
        };
        tracing::warn!(check = name, "health event: {reason}");
        self.board
            .set_and_report(check(name, state, &reason, action), &self.outbox);
        name == "xid-worker"
    }

    /// Runs until every source is gone.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<GpuEvent>) {
        let mut clear_worker_at: Option<tokio::time::Instant> = None;
        loop {
            let clear = async {
                match clear_worker_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = events.recv() => {
                    let Some(e) = e else { return };
                    if self.handle(&e) {
                        clear_worker_at = Some(tokio::time::Instant::now() + WORKER_XID_HOLD);
                    }
                }
                _ = clear => {
                    clear_worker_at = None;
                    self.board.set(check("xid-worker", S::Healthy, "", A::None));
                }
            }
        }
    }
}

/// Runs `source` on a thread of its own, sending what it sees to `events`; its failure is put
/// on the board under `events:<name>`.
pub fn spawn_source(
    mut source: Box<dyn EventSource>,
    events: mpsc::UnboundedSender<GpuEvent>,
    board: HealthBoard,
) {
    let name = source.name();
    let spawned = std::thread::Builder::new()
        .name(format!("events-{name}"))
        .spawn({
            let board = board.clone();
            move || loop {
                match source.wait() {
                    Ok(seen) => {
                        for e in seen {
                            if events.send(e).is_err() {
                                return;
                            }
                        }
                        if events.is_closed() {
                            return;
                        }
                    }
                    Err(why) => {
                        tracing::warn!("event source {name} stopped: {why}");
                        board.set(check(&format!("events:{name}"), S::Unknown, &why, A::None));
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        board.set(check(
            &format!("events:{name}"),
            S::Unknown,
            &format!("cannot start: {e}"),
            A::None,
        ));
    }
}

/// Starts every monitor the config asks for; returns the host's GPUs for the hello. Must be
/// called inside the tokio runtime.
pub fn start(config: &AgentConfig, board: HealthBoard, outbox: Outbox) -> Vec<pb::Gpu> {
    let expected_file = config.state_dir.join("expected_gpus");
    let mut expected = config.expected_gpus;
    if expected == 0 {
        expected = std::fs::read_to_string(&expected_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
    }
    let mut backend: Box<dyn GpuBackend> = if config.gpu_monitoring {
        super::nvml::open(expected)
    } else {
        Box::new(super::nvml::NoGpus {
            expected: 0,
            reason: "GPU monitoring disabled by the config".into(),
        })
    };
    if config.fault_injection {
        tracing::warn!(
            "fault injection is ENABLED: faults written to {} are treated as real",
            config.state_dir.join(super::inject::INJECT_FILE).display()
        );
        backend = Box::new(super::inject::FaultInjection::new(
            backend,
            &config.state_dir,
        ));
    }
    let gpus = backend.inventory();
    if expected == 0 && !gpus.is_empty() {
        // Learned at first start: from now on fewer GPUs is a fault.
        if let Err(e) = std::fs::write(&expected_file, format!("{}\n", gpus.len())) {
            tracing::warn!(
                "cannot record the GPU count in {}: {e}",
                expected_file.display()
            );
        }
        backend.expect(gpus.len() as u32);
    }

    let mut policy = config.xid_policy();
    policy.set_row_remap_watched(backend.watches_row_remap());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    for source in backend.event_sources() {
        spawn_source(source, events_tx.clone(), board.clone());
    }
    if let Some(path) = &config.kmsg_path {
        match super::kmsg::KmsgSource::open(path, Duration::from_secs(config.kmsg_lookback_s)) {
            Ok(source) => {
                board.set(check(
                    "kmsg",
                    S::Healthy,
                    &format!("reading {}", path.display()),
                    A::None,
                ));
                spawn_source(Box::new(source), events_tx.clone(), board.clone());
            }
            Err(e) => {
                // Containers and unprivileged agents cannot read the kernel log; on a host
                // without GPUs nothing is lost.
                let state = if gpus.is_empty() {
                    S::NotApplicable
                } else {
                    S::Unknown
                };
                board.set(check(
                    "kmsg",
                    state,
                    &format!("cannot read {}: {e}", path.display()),
                    A::None,
                ));
            }
        }
    }
    drop(events_tx);
    tokio::spawn(EventHandler::new(policy, board.clone(), outbox.clone()).run(events_rx));

    let interval = Duration::from_millis(config.health_poll_interval_ms);
    let timeout = Duration::from_millis(config.probe_timeout_ms);
    let gpu_probe = Probe {
        name: "gpu",
        poll: Box::new(move || backend.poll()),
    };
    tokio::spawn(run_probe(
        gpu_probe,
        board.clone(),
        outbox.clone(),
        interval,
        timeout,
        Debounce::new(config.debounce_count),
    ));
    let mut disk_paths: Vec<PathBuf> = vec![config.state_dir.clone()];
    disk_paths.extend(config.disk_paths.iter().cloned());
    let host = super::host::HostProbe {
        disk_paths,
        min_free_disk_mb: config.min_free_disk_mb,
        mounts: config.mounts.clone(),
        min_available_memory_mb: config.min_available_memory_mb,
        agent_max_rss_mb: config.agent_max_rss_mb,
    };
    let host_probe = Probe {
        name: "host",
        poll: Box::new(move || host.poll()),
    };
    tokio::spawn(run_probe(
        host_probe,
        board,
        outbox,
        interval,
        timeout,
        Debounce::new(config.debounce_count),
    ));
    gpus
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    fn state_of(board: &HealthBoard, name: &str) -> Option<(i32, String)> {
        board
            .summary()
            .checks
            .into_iter()
            .find(|c| c.check == name)
            .map(|c| (c.state, c.reason))
    }

    #[test]
    fn debounce_needs_repeats_but_fatal_and_recovery_are_immediate() {
        let mut d = Debounce::new(3);
        let hot = check("temperature", S::Degraded, "90 °C", A::None);
        assert!(!d.admit(&hot));
        assert!(!d.admit(&hot));
        assert!(d.admit(&hot), "third observation counts");
        assert!(
            d.admit(&check("temperature", S::Healthy, "", A::None)),
            "clears at once"
        );
        assert!(!d.admit(&hot), "a new streak starts after clearing");
        assert!(
            !d.admit(&check("temperature", S::Unhealthy, "99 °C", A::Reboot)),
            "a different finding restarts the streak"
        );
        assert!(
            d.admit(&check("gpu-count", S::Unhealthy, "7 of 8", A::ReplaceNode)),
            "fatal counts at once"
        );
    }

    /// A probe that hangs turns Unknown within its timeout while the runtime (where heartbeats
    /// run) keeps going; when it answers again its result replaces the Unknown.
    #[tokio::test(flavor = "current_thread")]
    async fn hung_probe_is_unknown_within_its_timeout_and_clears_when_it_answers() {
        let board = HealthBoard::default();
        let (outbox, _rx) = mpsc::unbounded_channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let polls = Arc::new(AtomicU32::new(0));
        let counted = polls.clone();
        let probe = Probe {
            name: "gpu",
            poll: Box::new(move || {
                // The second poll hangs until released, like a wedged driver call.
                if counted.fetch_add(1, Ordering::SeqCst) == 1 {
                    let _ = release_rx.recv();
                }
                vec![check("temperature", S::Healthy, "40 °C", A::None)]
            }),
        };
        let timeout = Duration::from_millis(300);
        tokio::spawn(run_probe(
            probe,
            board.clone(),
            outbox,
            Duration::from_millis(50),
            timeout,
            Debounce::new(1),
        ));
        let ticks = Arc::new(AtomicU32::new(0));
        let t = ticks.clone();
        tokio::spawn(async move {
            let mut i = tokio::time::interval(Duration::from_millis(20));
            loop {
                i.tick().await;
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while polls.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "second poll never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let hung_at = tokio::time::Instant::now();
        let ticks_before = ticks.load(Ordering::SeqCst);
        loop {
            if let Some((state, reason)) = state_of(&board, "temperature") {
                if state == S::Unknown as i32 {
                    assert!(reason.contains("did not answer within"), "{reason}");
                    break;
                }
            }
            assert!(
                hung_at.elapsed() < timeout + Duration::from_millis(400),
                "not Unknown within the timeout"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            ticks.load(Ordering::SeqCst) > ticks_before + 5,
            "the runtime kept running while the probe hung"
        );
        release_tx.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while state_of(&board, "temperature").map(|s| s.0) != Some(S::Healthy as i32) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "did not clear after the probe answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            state_of(&board, "gpu"),
            None,
            "the placeholder named after the probe is gone"
        );
    }

    #[test]
    fn events_take_the_classification_path() {
        let board = HealthBoard::default();
        let (outbox, mut rx) = mpsc::unbounded_channel();
        let mut h = EventHandler::new(XidPolicy::default(), board.clone(), outbox);
        let ev = |kind| GpuEvent {
            gpu: Some(0),
            pci: None,
            kind,
            source: "injected",
            detail: String::new(),
        };
        assert!(h.handle(&ev(EventKind::Xid(13))), "worker fault");
        assert!(
            rx.try_recv().is_err(),
            "a worker fault is not a fatal report"
        );
        h.handle(&ev(EventKind::Xid(79)));
        let report = rx.try_recv().expect("fatal XID reported at once");
        let Some(pb::agent_message::Body::HealthReport(r)) = report.body else {
            panic!("{report:?}")
        };
        assert!(r.fatal);
        let (state, reason) = state_of(&board, "xid").unwrap();
        assert_eq!(state, S::Unhealthy as i32);
        assert!(
            reason.starts_with("Xid 79 (GPU has fallen off the bus) on gpu 0 via injected"),
            "{reason}"
        );
        h.handle(&ev(EventKind::Xid(999)));
        assert!(
            state_of(&board, "xid").unwrap().1.starts_with("Xid 79"),
            "a lesser XID does not overwrite a fatal one"
        );
        h.handle(&ev(EventKind::GpuLost));
        assert_eq!(
            state_of(&board, "gpu-lost-event").unwrap().0,
            S::Unhealthy as i32
        );
    }
}
