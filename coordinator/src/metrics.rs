//! The coordinator's Prometheus metrics, in the text exposition format (version 0.0.4).
//!
//! Rendered on each scrape from the same views the operator API returns, so a metric can never
//! disagree with `holdfast status`. Pure: the caller passes the views and `now`.

use std::collections::BTreeMap;
use std::fmt::Write;

use holdfast_proto::v1 as pb;

use crate::report;

/// Upper bounds (seconds) of the phase-duration histogram buckets: from sub-second control-plane
/// phases up to the hour a slow manual replacement takes.
pub const PHASE_BUCKETS_S: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Every node state a gauge is emitted for (zero included, so dashboards see the whole set).
const NODE_STATES: [&str; 9] = [
    "joining",
    "bootstrapping",
    "checking",
    "ready",
    "allocated",
    "fenced",
    "cordoned",
    "repaired",
    "retired",
];

/// Escapes a label value (backslash, quote, newline).
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The coordinator's own counters: hellos admitted, held and refused (admission control), and the
/// group commit's batches, the steps they carried and the records they wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellCounters {
    pub hellos_admitted: u64,
    pub hellos_held: u64,
    pub hellos_refused: u64,
    pub save_batches: u64,
    pub saved_steps: u64,
    pub saved_records: u64,
}

/// Renders [`ShellCounters`] as counters.
pub fn render_shell(counters: &ShellCounters) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "holdfast_hellos_admitted_total",
            "Agent sessions admitted.",
            counters.hellos_admitted,
        ),
        (
            "holdfast_hellos_held_total",
            "Agent sessions admitted after waiting their turn on their stream (admission control).",
            counters.hellos_held,
        ),
        (
            "holdfast_hellos_refused_total",
            "Agent hellos refused for admission (told to retry after a while).",
            counters.hellos_refused,
        ),
        (
            "holdfast_state_save_batches_total",
            "Writes of the coordinator state (one transaction each).",
            counters.save_batches,
        ),
        (
            "holdfast_state_saved_steps_total",
            "Steps whose changes those writes carried (group commit).",
            counters.saved_steps,
        ),
        (
            "holdfast_state_saved_records_total",
            "Records those writes wrote or deleted.",
            counters.saved_records,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// Name of a health state as shown in metrics.
pub fn health_state_name(state: i32) -> &'static str {
    match pb::HealthState::try_from(state) {
        Ok(pb::HealthState::Healthy) => "healthy",
        Ok(pb::HealthState::Degraded) => "degraded",
        Ok(pb::HealthState::Unhealthy) => "unhealthy",
        Ok(pb::HealthState::Unknown) => "unknown",
        Ok(pb::HealthState::NotApplicable) => "not_applicable",
        _ => "unspecified",
    }
}

/// A histogram with fixed buckets, rendered cumulatively.
fn histogram(out: &mut String, name: &str, series: &BTreeMap<&str, Vec<f64>>, label_name: &str) {
    for (key, values) in series {
        for bound in PHASE_BUCKETS_S {
            let count = values.iter().filter(|v| **v <= bound).count();
            let _ = writeln!(
                out,
                "{name}_bucket{{{label_name}=\"{key}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label_name}=\"{key}\",le=\"+Inf\"}} {}",
            values.len()
        );
        let _ = writeln!(
            out,
            "{name}_sum{{{label_name}=\"{key}\"}} {}",
            values.iter().sum::<f64>()
        );
        let _ = writeln!(
            out,
            "{name}_count{{{label_name}=\"{key}\"}} {}",
            values.len()
        );
    }
}

/// One labelled sample: label names and values (escaped when written), and the value.
type Sample = (Vec<(&'static str, String)>, String);

/// One metric family: its header, then a line per sample.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<Sample>) {
    header(out, name, kind, help);
    for (labels, value) in samples {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// A sample per job, labelled with its id.
fn per_job(jobs: &[pb::Job], value: impl Fn(&pb::Job) -> String) -> Vec<Sample> {
    jobs.iter()
        .map(|j| (vec![("job", j.job_id.clone())], value(j)))
        .collect()
}

/// Renders every coordinator metric.
pub fn render(
    nodes: &[pb::Node],
    jobs: &[pb::Job],
    incidents: &[pb::Incident],
    now_unix_ms: i64,
) -> String {
    let mut out = String::new();
    let mut by_state: BTreeMap<String, usize> =
        NODE_STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for n in nodes {
        *by_state.entry(n.state.clone()).or_default() += 1;
    }
    let node_samples = |value: &dyn Fn(&pb::Node) -> String| -> Vec<Sample> {
        nodes
            .iter()
            .map(|n| (vec![("node", n.node_id.clone())], value(n)))
            .collect()
    };
    family(
        &mut out,
        "holdfast_nodes",
        "gauge",
        "Nodes by lifecycle state.",
        by_state
            .into_iter()
            .map(|(state, count)| (vec![("state", state)], count.to_string()))
            .collect(),
    );
    family(
        &mut out,
        "holdfast_node_up",
        "gauge",
        "1 when the node's agent stream is connected.",
        nodes
            .iter()
            .map(|n| {
                let labels = vec![("node", n.node_id.clone()), ("state", n.state.clone())];
                (labels, u8::from(n.connected).to_string())
            })
            .collect(),
    );
    family(
        &mut out,
        "holdfast_node_heartbeat_lag_seconds",
        "gauge",
        "Seconds since the node's last heartbeat.",
        nodes
            .iter()
            .filter(|n| n.last_heartbeat_unix_ms > 0)
            .map(|n| {
                let lag = (now_unix_ms - n.last_heartbeat_unix_ms).max(0) as f64 / 1000.0;
                (vec![("node", n.node_id.clone())], lag.to_string())
            })
            .collect(),
    );
    family(
        &mut out,
        "holdfast_node_clock_offset_seconds",
        "gauge",
        "Agent clock minus coordinator clock, from heartbeat round trips.",
        node_samples(&|n| (n.clock_offset_ms as f64 / 1000.0).to_string()),
    );
    family(
        &mut out,
        "holdfast_health_check",
        "gauge",
        "1 for each node's health check in its current state.",
        nodes
            .iter()
            .flat_map(|n| {
                n.health.iter().flat_map(|h| &h.checks).map(|c| {
                    let labels = vec![
                        ("node", n.node_id.clone()),
                        ("check", c.check.clone()),
                        ("state", health_state_name(c.state).to_string()),
                    ];
                    (labels, "1".to_string())
                })
            })
            .collect(),
    );
    let mut by_cause: BTreeMap<(String, String), usize> = BTreeMap::new();
    for i in incidents {
        *by_cause
            .entry((i.cause.clone(), i.action.clone()))
            .or_default() += 1;
    }
    family(
        &mut out,
        "holdfast_incidents_total",
        "counter",
        "Incidents recorded, by cause and action.",
        by_cause
            .into_iter()
            .map(|((cause, action), count)| {
                (
                    vec![("cause", cause), ("action", action)],
                    count.to_string(),
                )
            })
            .collect(),
    );
    family(
        &mut out,
        "holdfast_incidents_open",
        "gauge",
        "Incidents not yet resumed or abandoned.",
        vec![(
            Vec::new(),
            incidents.iter().filter(|i| i.open).count().to_string(),
        )],
    );

    header(
        &mut out,
        "holdfast_incident_phase_seconds",
        "histogram",
        "Duration of each recovery phase of recovered incidents.",
    );
    let phases: Vec<report::PhaseDurations> = incidents.iter().filter_map(report::phases).collect();
    let mut series: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for p in &phases {
        for (name, v) in [
            ("detect", p.detect_s),
            ("fence", p.fence_s),
            ("replace", p.replace_s),
            ("bootstrap", p.bootstrap_s),
            ("resume", p.resume_s),
            ("total", p.total_s),
        ] {
            series.entry(name).or_default().push(v);
        }
    }
    histogram(
        &mut out,
        "holdfast_incident_phase_seconds",
        &series,
        "phase",
    );

    family(
        &mut out,
        "holdfast_job_info",
        "gauge",
        "1 for each job in its current state and phase.",
        jobs.iter()
            .map(|j| {
                let labels = vec![
                    ("job", j.job_id.clone()),
                    ("state", j.state.clone()),
                    ("phase", j.phase.clone()),
                ];
                (labels, "1".to_string())
            })
            .collect(),
    );
    family(
        &mut out,
        "holdfast_job_generation",
        "gauge",
        "The job's current generation (one per launch).",
        per_job(jobs, |j| j.generation.to_string()),
    );
    family(
        &mut out,
        "holdfast_job_step",
        "gauge",
        "The job's latest reported training step.",
        per_job(jobs, |j| j.step.to_string()),
    );
    family(
        &mut out,
        "holdfast_job_restarts_total",
        "counter",
        "Relaunches of the job after faults.",
        per_job(jobs, |j| j.restarts.to_string()),
    );
    family(
        &mut out,
        "holdfast_job_goodput_ratio",
        "gauge",
        "ETTR: productive time over wall time, redone work counted as lost.",
        per_job(jobs, |j| {
            report::ettr(j, incidents, now_unix_ms).ettr.to_string()
        }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_family_with_labels() {
        let nodes = vec![pb::Node {
            node_id: "n\"1".into(),
            state: "ready".into(),
            connected: true,
            last_heartbeat_unix_ms: 9_000,
            health: Some(pb::HealthSummary {
                state: pb::HealthState::Unhealthy as i32,
                checks: vec![pb::HealthCheck {
                    check: "xid".into(),
                    state: pb::HealthState::Unhealthy as i32,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }];
        let jobs = vec![pb::Job {
            job_id: "j".into(),
            state: "running".into(),
            generation: 2,
            step: 10,
            restarts: 1,
            submitted_unix_ms: 0,
            ..Default::default()
        }];
        let incidents = vec![pb::Incident {
            job_id: "j".into(),
            cause: "agent_lost".into(),
            action: "replace_node".into(),
            fault_unix_ms: 1_000,
            detected_unix_ms: 1_200,
            fenced_unix_ms: 1_300,
            replaced_unix_ms: 1_400,
            relaunched_unix_ms: 2_000,
            resumed_unix_ms: 4_000,
            ..Default::default()
        }];
        let text = render(&nodes, &jobs, &incidents, 10_000);
        for want in [
            "holdfast_nodes{state=\"ready\"} 1",
            "holdfast_nodes{state=\"fenced\"} 0",
            "holdfast_node_up{node=\"n\\\"1\",state=\"ready\"} 1",
            "holdfast_node_heartbeat_lag_seconds{node=\"n\\\"1\"} 1",
            "holdfast_health_check{node=\"n\\\"1\",check=\"xid\",state=\"unhealthy\"} 1",
            "holdfast_incidents_total{cause=\"agent_lost\",action=\"replace_node\"} 1",
            "holdfast_incident_phase_seconds_bucket{phase=\"detect\",le=\"0.25\"} 1",
            "holdfast_incident_phase_seconds_bucket{phase=\"total\",le=\"2.5\"} 0",
            "holdfast_incident_phase_seconds_bucket{phase=\"total\",le=\"5\"} 1",
            "holdfast_incident_phase_seconds_count{phase=\"resume\"} 1",
            "holdfast_job_generation{job=\"j\"} 2",
            "holdfast_job_restarts_total{job=\"j\"} 1",
            "holdfast_job_goodput_ratio{job=\"j\"} 0.7",
            "# TYPE holdfast_incident_phase_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
