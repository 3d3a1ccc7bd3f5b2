//! How nodes, jobs and incidents are printed for operators.

use holdfast_proto::v1 as pb;

/// `HH:MM:SS.mmm` (UTC) of a unix-ms time.
pub fn clock(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn health_name(h: Option<&pb::HealthSummary>) -> &'static str {
    match h.and_then(|h| pb::HealthState::try_from(h.state).ok()) {
        Some(pb::HealthState::Healthy) => "healthy",
        Some(pb::HealthState::Degraded) => "degraded",
        Some(pb::HealthState::Unhealthy) => "unhealthy",
        Some(pb::HealthState::Unknown) => "unknown",
        Some(pb::HealthState::NotApplicable) => "n/a",
        _ => "-",
    }
}

pub fn nodes(nodes: &[pb::Node]) -> String {
    let mut out = format!(
        "{:<14} {:<7} {:<11} {:<5} {:<10} {:<10} {:>4} {:>6}  {}\n",
        "NODE", "ROLE", "STATE", "CONN", "HEALTH", "JOB", "GEN", "STEP", "REASON"
    );
    for n in nodes {
        let role = if n.role == pb::NodeRole::Spare as i32 {
            "spare"
        } else {
            "worker"
        };
        let mut reason = n.fence_reason.clone();
        if let Some(h) = &n.health {
            for c in h.checks.iter().filter(|c| {
                c.state != pb::HealthState::Healthy as i32
                    && c.state != pb::HealthState::NotApplicable as i32
            }) {
                if !reason.is_empty() {
                    reason.push_str("; ");
                }
                reason.push_str(&format!("{}: {}", c.check, c.reason));
            }
        }
        out.push_str(&format!(
            "{:<14} {:<7} {:<11} {:<5} {:<10} {:<10} {:>4} {:>6}  {}\n",
            n.node_id,
            role,
            n.state,
            if n.connected { "yes" } else { "no" },
            health_name(n.health.as_ref()),
            if n.job_id.is_empty() { "-" } else { &n.job_id },
            n.generation,
            n.last_step,
            reason
        ));
    }
    out
}

pub fn jobs(jobs: &[pb::Job]) -> String {
    let mut out = format!(
        "{:<10} {:<11} {:<12} {:>4} {:>7} {:>8}  {:<24} {}\n",
        "JOB", "STATE", "PHASE", "GEN", "STEP", "RESTARTS", "NODES", "MESSAGE"
    );
    for j in jobs {
        out.push_str(&format!(
            "{:<10} {:<11} {:<12} {:>4} {:>7} {:>8}  {:<24} {}\n",
            j.job_id,
            j.state,
            if j.phase.is_empty() { "-" } else { &j.phase },
            j.generation,
            j.step,
            j.restarts,
            j.nodes.join(","),
            j.message
        ));
        let allowed = j.spec.as_ref().map_or(&[][..], |s| &s.allowed_nodes[..]);
        if !allowed.is_empty() {
            const SHOWN: usize = 16;
            let more = allowed.len().saturating_sub(SHOWN);
            out.push_str(&format!(
                "  only on {} nodes: {}{}\n",
                allowed.len(),
                allowed[..allowed.len().min(SHOWN)].join(","),
                if more > 0 {
                    format!(" … {more} more")
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}

/// Seconds from `from` to `to`, or None when `to` was not reached.
pub fn secs(from: i64, to: i64) -> Option<f64> {
    (to > 0).then(|| (to - from) as f64 / 1000.0)
}

fn fmt_secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2}"))
}

pub fn incidents(incidents: &[pb::Incident]) -> String {
    let mut out = format!(
        "{:>3} {:<10} {:<10} {:<18} {:<17} {:<15} {:>8} {:>8} {:>8} {:>9} {:>8}  {}\n",
        "ID",
        "JOB",
        "NODE",
        "CAUSE",
        "ACTION",
        "FAULT TIME FROM",
        "DETECT",
        "FENCE",
        "REPLACE",
        "RELAUNCH",
        "RESUME",
        "DETAIL"
    );
    for i in incidents {
        let t0 = i.fault_unix_ms;
        out.push_str(&format!(
            "{:>3} {:<10} {:<10} {:<18} {:<17} {:<15} {:>8} {:>8} {:>8} {:>9} {:>8}  {}{}\n",
            i.id,
            i.job_id,
            i.node_id,
            i.cause,
            i.action,
            if i.fault_time_source.is_empty() {
                "detection"
            } else {
                &i.fault_time_source
            },
            fmt_secs(secs(t0, i.detected_unix_ms)),
            fmt_secs(secs(t0, i.fenced_unix_ms)),
            fmt_secs(secs(t0, i.replaced_unix_ms)),
            fmt_secs(secs(t0, i.relaunched_unix_ms)),
            fmt_secs(secs(t0, i.resumed_unix_ms)),
            i.detail,
            if i.replacement_node_id.is_empty() {
                String::new()
            } else {
                format!(" → {}", i.replacement_node_id)
            }
        ));
        for rejected in &i.rejected_candidates {
            out.push_str(&format!("      rejected candidate {rejected}\n"));
        }
        for skipped in &i.skipped_checkpoints {
            out.push_str(&format!("      checkpoint passed over: {skipped}\n"));
        }
        if !i.state_tier.is_empty() {
            out.push_str(&format!(
                "      state from the {} tier: {}\n",
                i.state_tier, i.state_note
            ));
        }
    }
    out.push_str(
        "(seconds from the fault; the fault time is estimated from the evidence named under \
         FAULT TIME FROM, in coordinator time corrected for the node's clock offset; \
         \"detection\" means nothing earlier was known)\n",
    );
    out
}

/// One incident as JSON, phases in seconds from `t0` (unix ms).
pub fn incident_json(i: &pb::Incident, t0: i64) -> serde_json::Value {
    serde_json::json!({
        "id": i.id,
        "job_id": i.job_id,
        "cause": i.cause,
        "detail": i.detail,
        "node": i.node_id,
        "action": i.action,
        "replacement": if i.replacement_node_id.is_empty() { serde_json::Value::Null } else { i.replacement_node_id.clone().into() },
        "detect_s": secs(t0, i.detected_unix_ms),
        "fence_s": secs(t0, i.fenced_unix_ms),
        "replace_s": secs(t0, i.replaced_unix_ms),
        "relaunch_s": secs(t0, i.relaunched_unix_ms),
        "resume_s": secs(t0, i.resumed_unix_ms),
        "resumed_from_step": i.resumed_from_step,
        "from_generation": i.from_generation,
        "to_generation": i.to_generation,
        "open": i.open,
        "rejected_candidates": i.rejected_candidates,
        "skipped_checkpoints": i.skipped_checkpoints,
        "state_tier": if i.state_tier.is_empty() { serde_json::Value::Null } else { i.state_tier.clone().into() },
        "state_note": i.state_note,
        "fault_unix_ms": i.fault_unix_ms,
        "detected_unix_ms": i.detected_unix_ms,
        "fault_time_source": if i.fault_time_source.is_empty() { "detection" } else { i.fault_time_source.as_str() },
        "fault_time_estimated": !i.fault_time_source.is_empty() && i.fault_time_source != "detection",
    })
}

/// A node's check report: one line per script (result, exit code, time), then the output
/// tail of the scripts that failed.
pub fn check_report(r: &pb::CheckReport) -> String {
    let mut out = format!(
        "node {} {} check {} in {:.2} s (started {})\n{:<24} {:<6} {:>5} {:>9}  {}\n",
        r.node_id,
        r.purpose,
        if r.ok { "PASSED" } else { "FAILED" },
        r.duration_ms as f64 / 1000.0,
        clock(r.started_unix_ms),
        "SCRIPT",
        "RESULT",
        "EXIT",
        "SECONDS",
        "MESSAGE"
    );
    for s in &r.scripts {
        out.push_str(&format!(
            "{:<24} {:<6} {:>5} {:>9.2}  {}\n",
            s.script,
            if s.ok { "ok" } else { "FAIL" },
            s.exit_code.map_or("-".to_string(), |c| c.to_string()),
            s.duration_ms as f64 / 1000.0,
            s.message
        ));
    }
    for s in r
        .scripts
        .iter()
        .filter(|s| !s.ok && !s.output.trim().is_empty())
    {
        out.push_str(&format!(
            "--- output of {} (tail) ---\n{}\n",
            s.script,
            s.output.trim_end()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_utc_time_of_day() {
        assert_eq!(clock(3_723_004), "01:02:03.004");
    }

    #[test]
    fn secs_is_none_for_unreached_phases() {
        assert_eq!(secs(1000, 0), None);
        assert_eq!(secs(1000, 2500), Some(1.5));
    }

    #[test]
    fn a_job_kept_to_allowed_nodes_shows_them_under_its_row() {
        let job = |allowed: Vec<String>| pb::Job {
            job_id: "j".into(),
            spec: Some(pb::JobSpec {
                allowed_nodes: allowed,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!jobs(&[job(Vec::new())]).contains("only on"));
        let three = jobs(&[job(vec!["a".into(), "b".into(), "c".into()])]);
        assert!(three.ends_with("  only on 3 nodes: a,b,c\n"), "{three}");
        let many = jobs(&[job((0..20).map(|i| format!("n{i}")).collect())]);
        assert!(many.contains("only on 20 nodes: n0,n1,"), "{many}");
        assert!(many.contains(",n15 … 4 more\n"), "{many}");
    }
}
