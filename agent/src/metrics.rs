//! The agent's own Prometheus metrics: heartbeats sent, sessions and reconnects, the worker it
//! runs, its health checks. Served as text exposition on `metrics_listen` when that is set (off
//! by default; the documented port is 9101).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use holdfast_proto::v1 as pb;

use crate::health::HealthBoard;
use crate::worker::WorkerSnapshot;

/// The port `deploy/` and the docs use for `metrics_listen`.
pub const DEFAULT_METRICS_PORT: u16 = 9101;

/// Counters the session updates; cheap to clone and share.
#[derive(Clone, Default)]
pub struct AgentMetrics {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    heartbeats_sent: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_lost: AtomicU64,
    connected: AtomicU64,
}

impl AgentMetrics {
    pub fn heartbeat_sent(&self) {
        self.inner.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A session was welcomed by the coordinator.
    pub fn session_opened(&self) {
        self.inner.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.inner.connected.store(1, Ordering::Relaxed);
    }

    /// A session ended (or a connection attempt failed): the agent will reconnect.
    pub fn session_lost(&self) {
        self.inner.sessions_lost.fetch_add(1, Ordering::Relaxed);
        self.inner.connected.store(0, Ordering::Relaxed);
    }

    /// Renders every agent metric, labelled with `node`.
    pub fn render(
        &self,
        node: &str,
        health: &pb::HealthSummary,
        worker: &WorkerSnapshot,
    ) -> String {
        let node = node.replace('\\', "\\\\").replace('"', "\\\"");
        let c = &self.inner;
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {value}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v.to_string())];
        for (name, kind, help, value) in [
            (
                "holdfast_agent_heartbeats_sent_total",
                "counter",
                "Heartbeats sent to the coordinator.",
                &c.heartbeats_sent,
            ),
            (
                "holdfast_agent_sessions_total",
                "counter",
                "Sessions the coordinator welcomed.",
                &c.sessions_opened,
            ),
            (
                "holdfast_agent_reconnects_total",
                "counter",
                "Sessions lost or connection attempts failed (each is followed by a reconnect).",
                &c.sessions_lost,
            ),
            (
                "holdfast_agent_connected",
                "gauge",
                "1 while a session with the coordinator is open.",
                &c.connected,
            ),
        ] {
            family(name, kind, help, plain(value.load(Ordering::Relaxed)));
        }
        let running = worker.record.as_ref();
        family(
            "holdfast_agent_worker_running",
            "gauge",
            "1 while a worker process runs, labelled with its job and generation.",
            vec![(
                running.map_or(String::new(), |r| {
                    format!(
                        ",job=\"{}\",generation=\"{}\"",
                        r.job_id.replace('"', "\\\""),
                        r.generation
                    )
                }),
                u8::from(running.is_some()).to_string(),
            )],
        );
        family(
            "holdfast_agent_worker_step",
            "gauge",
            "The worker's latest reported step.",
            plain(worker.last_step),
        );
        let checks = health
            .checks
            .iter()
            .map(|c| {
                let state =
                    pb::HealthState::try_from(c.state).map_or("unspecified", |s| s.as_str_name());
                (
                    format!(
                        ",check=\"{}\",state=\"{}\"",
                        c.check.replace('"', "\\\""),
                        state.trim_start_matches("HEALTH_STATE_").to_lowercase()
                    ),
                    "1".to_string(),
                )
            })
            .collect();
        family(
            "holdfast_agent_health_check",
            "gauge",
            "1 for each health check in its current state.",
            checks,
        );
        out
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: String,
    metrics: AgentMetrics,
    health: HealthBoard,
    worker: Arc<Mutex<WorkerSnapshot>>,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let snapshot = worker.lock().map(|s| s.clone()).unwrap_or_default();
            let text = metrics.render(&node, &health.summary(), &snapshot);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("agent metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_heartbeats_sessions_and_shows_worker_and_checks() {
        let m = AgentMetrics::default();
        m.session_opened();
        m.heartbeat_sent();
        m.heartbeat_sent();
        m.session_lost();
        let health = pb::HealthSummary {
            state: pb::HealthState::Unhealthy as i32,
            checks: vec![pb::HealthCheck {
                check: "xid".into(),
                state: pb::HealthState::Unhealthy as i32,
                ..Default::default()
            }],
        };
        let worker = WorkerSnapshot {
            record: Some(crate::worker::WorkerRecord::for_test(1)),
            last_step: 42,
            last_output_at: None,
        };
        let text = m.render("gpu-1", &health, &worker);
        for want in [
            "holdfast_agent_heartbeats_sent_total{node=\"gpu-1\"} 2",
            "holdfast_agent_sessions_total{node=\"gpu-1\"} 1",
            "holdfast_agent_reconnects_total{node=\"gpu-1\"} 1",
            "holdfast_agent_connected{node=\"gpu-1\"} 0",
            "holdfast_agent_worker_running{node=\"gpu-1\",job=\"j\",generation=\"3\"} 1",
            "holdfast_agent_worker_step{node=\"gpu-1\"} 42",
            "holdfast_agent_health_check{node=\"gpu-1\",check=\"xid\",state=\"unhealthy\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn the_shipped_scrape_config_uses_the_documented_port() {
        let scrape = include_str!("../../deploy/prometheus/holdfast.yml");
        assert!(
            scrape.contains(&format!(":{DEFAULT_METRICS_PORT}\"")),
            "{scrape}"
        );
        assert!(scrape.contains("metrics_path: /metrics"));
    }
}
