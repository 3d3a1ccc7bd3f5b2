//! Every health action acts: restart in place, drain (reset GPU, reboot), replace; a node with
//! an Unhealthy check is never allocated; repeated findings escalate.

use super::testing::*;
use super::*;
use crate::incident::{FaultTimeSource, RecoveryAction};
use crate::protocol::HealthState;

/// One check's finding: its name, its state and the action it asks for.
type Finding = (&'static str, HealthState, HealthAction);

const ROW_REMAP: Finding = ("row-remap", HealthState::Unhealthy, HealthAction::ResetGpu);
const PCIE: Finding = ("pcie", HealthState::Unhealthy, HealthAction::Reboot);
const XID_WORKER: Finding = (
    "xid-worker",
    HealthState::Degraded,
    HealthAction::RestartWorker,
);
const ALL_HEALTHY: Finding = ("xid", HealthState::Healthy, HealthAction::None);

/// `node` reports one check, `finding`, observed at `now`.
fn report(
    c: &mut Cluster,
    node: &str,
    (name, state, action): Finding,
    now: UnixMillis,
) -> Vec<Command> {
    let reason = format!("{name} finding");
    let health = one_check(name, state, &reason, action, now);
    c.step(health_report(node, health), now)
}

/// `node`'s checks are all healthy again.
fn healthy(c: &mut Cluster, node: &str, now: UnixMillis) {
    report(c, node, ALL_HEALTHY, now);
}

fn is_fenced(c: &Cluster, node: &str) -> bool {
    matches!(c.nodes[node].state, NodeState::Fenced { .. })
}

#[test]
fn a_node_with_an_unhealthy_check_is_never_allocated() {
    let mut c = three_nodes();
    report(&mut c, "b", ROW_REMAP, 5);
    assert!(!c.nodes["b"].allocatable());
    let job = run_job(&mut c, job(2), 10);
    assert_eq!(
        job.nodes(),
        ["a", "s"],
        "the spare before an unhealthy worker"
    );
}

#[test]
fn degraded_and_unknown_checks_do_not_bar_a_node() {
    let mut c = three_nodes();
    report(
        &mut c,
        "a",
        ("clocks", HealthState::Degraded, HealthAction::None),
        5,
    );
    report(
        &mut c,
        "b",
        ("ecc", HealthState::Unknown, HealthAction::None),
        5,
    );
    assert!(c.nodes["a"].allocatable() && c.nodes["b"].allocatable());
    let job = run_job(&mut c, job(2), 10);
    assert_eq!(job.nodes(), ["a", "b"]);
}

#[test]
fn an_unhealthy_node_is_no_replacement_until_its_check_clears() {
    let mut c = three_nodes();
    run_job(&mut c, job(2), 10);
    report(&mut c, "s", PCIE, 20);
    disconnect(&mut c, "b", 100);
    let job = &c.jobs[JOB];
    assert!(
        matches!(job.state, JobState::Recovering(_)),
        "waits for a node: {:?}",
        job.state
    );
    assert!(!matches!(c.nodes["s"].state, NodeState::Allocated { .. }));
}

#[test]
fn restart_worker_restarts_the_job_in_place_counted_against_the_node() {
    let mut c = three_nodes();
    run_job(&mut c, job(2), 10);
    let fx = report(&mut c, "b", XID_WORKER, 100);
    let i = &c.incidents[0];
    assert_eq!(
        (i.cause.as_str(), i.action),
        ("health_restart", RecoveryAction::RestartInPlace)
    );
    assert_eq!(i.fault_time_source, FaultTimeSource::AgentEvent);
    assert_eq!(stops(&fx).len(), 2, "{fx:?}");
    assert!(!is_fenced(&c, "b"));
    assert_eq!(c.jobs[JOB].worker_faults["b"].len(), 1);
}

#[test]
fn reset_gpu_drains_the_node_and_its_jobs_next_recovery_replaces_it() {
    let mut c = three_nodes();
    run_job(&mut c, job(2), 10);
    report(&mut c, "b", ROW_REMAP, 100);
    assert!(c.nodes["b"].drained.is_some());
    assert!(!is_fenced(&c, "b"), "kept until the job's next recovery");
    assert_eq!(c.jobs[JOB].state, JobState::Running);
    // Even with its check cleared, a drained node gets no new work.
    healthy(&mut c, "b", 150);
    assert!(!c.nodes["b"].allocatable());
    // Another fault: the recovery replaces the drained node too.
    let fx = worker(&mut c, "a", 1, Crashed, 200);
    assert!(is_fenced(&c, "b"), "{:?}", c.nodes["b"].state);
    assert!(c
        .incidents
        .iter()
        .any(|i| i.node_id == "b" && i.cause == "health_fatal"));
    // Within the same recovery: nothing is launched on b, the spare takes its rank.
    assert!(launch_to(&fx, "b").is_none(), "{fx:?}");
    let mut nodes = c.jobs[JOB].nodes();
    nodes.sort_unstable();
    assert_eq!(nodes, ["a", "s"], "{:?}", c.jobs[JOB]);
}

#[test]
fn drain_replace_now_replaces_at_once() {
    let config = CoordinatorConfig {
        drain_replace: "now".into(),
        ..Default::default()
    };
    let mut c = cluster_of(
        config,
        &[("a", Role::Worker), ("b", Role::Worker), ("s", Role::Spare)],
    );
    run_job(&mut c, job(2), 10);
    report(&mut c, "b", PCIE, 100);
    assert!(is_fenced(&c, "b"));
    let i = &c.incidents[0];
    assert_eq!(
        (i.node_id.as_str(), i.action),
        ("b", RecoveryAction::ReplaceNode)
    );
    assert!(i.detail.contains("drained for reboot"), "{}", i.detail);
}

#[test]
fn an_idle_drained_node_rejoins_when_its_host_comes_back_rebooted() {
    let mut c = three_nodes();
    report(&mut c, "s", PCIE, 5);
    assert!(c.nodes["s"].drained.is_some() && !is_fenced(&c, "s"));
    disconnect(&mut c, "s", 10);
    // Same boot: still drained.
    hello(&mut c, "s", Role::Spare, 8, 20);
    assert!(c.nodes["s"].drained.is_some());
    disconnect(&mut c, "s", 30);
    let rebooted = Hello {
        boot_id: "boot-2".into(),
        ..agent("s", Role::Spare, 40)
    };
    connect(&mut c, 9, rebooted, 40).unwrap();
    healthy(&mut c, "s", 50);
    assert!(c.nodes["s"].drained.is_none());
    assert!(c.nodes["s"].allocatable());
}

#[test]
fn repeated_findings_escalate_restart_reset_reboot_replace() {
    let mut c = three_nodes();
    run_job(&mut c, job(2), 10);
    let repeat = |c: &mut Cluster, at| {
        report(c, "s", XID_WORKER, at);
        healthy(c, "s", at + 1);
    };
    // The spare runs nothing: a restart finding has nothing to restart.
    repeat(&mut c, 100);
    assert!(c.nodes["s"].drained.is_none());
    repeat(&mut c, 200);
    let drained = c.nodes["s"].drained.clone().unwrap_or_default();
    assert!(
        drained.contains("reset_gpu") && drained.contains("escalated"),
        "{drained}"
    );
    repeat(&mut c, 300);
    assert!(c.nodes["s"].drained.is_some());
    assert_eq!(
        c.nodes["s"]
            .findings
            .iter()
            .map(|(_, a)| *a)
            .collect::<Vec<_>>(),
        [
            HealthAction::RestartWorker,
            HealthAction::ResetGpu,
            HealthAction::Reboot
        ]
    );
    repeat(&mut c, 400);
    assert!(
        is_fenced(&c, "s"),
        "the fourth finding replaces: {:?}",
        c.nodes["s"].state
    );
}

#[test]
fn findings_outside_the_window_do_not_escalate() {
    let config = CoordinatorConfig {
        health_escalation_window_ms: 1_000,
        ..Default::default()
    };
    let mut c = cluster_of(config, &[("a", Role::Worker)]);
    report(&mut c, "a", XID_WORKER, 100);
    healthy(&mut c, "a", 101);
    report(&mut c, "a", XID_WORKER, 1_200);
    assert!(c.nodes["a"].drained.is_none());
    // A finding that persists is one finding, however many reports repeat it.
    for t in [1_300, 1_400, 1_500] {
        report(&mut c, "a", XID_WORKER, t);
    }
    assert_eq!(c.nodes["a"].findings.len(), 1);
    assert!(c.nodes["a"].drained.is_none());
}

#[test]
fn escalation_never_lowers_an_action() {
    use super::health::escalated;
    assert_eq!(
        escalated(HealthAction::RestartWorker),
        HealthAction::ResetGpu
    );
    assert_eq!(escalated(HealthAction::ResetGpu), HealthAction::Reboot);
    assert_eq!(escalated(HealthAction::Reboot), HealthAction::ReplaceNode);
    assert_eq!(
        escalated(HealthAction::ReplaceNode),
        HealthAction::ReplaceNode
    );
    let mut c = three_nodes();
    report(&mut c, "s", PCIE, 100);
    healthy(&mut c, "s", 101);
    // A restart finding after a reboot one asks for the action after reboot: replace.
    report(&mut c, "s", XID_WORKER, 200);
    assert!(is_fenced(&c, "s"));
}

/// Spare s drained for a GPU reset with `remediation_script = "remediate"` and one deep check;
/// returns the command ids of what the next tick sent s.
fn remediating() -> (Cluster, Vec<(String, String)>) {
    let config = CoordinatorConfig {
        remediation_script: "remediate".into(),
        check_scripts: vec!["health/host".into()],
        ..Default::default()
    };
    let mut c = Cluster::new(config);
    join(&mut c, "a", Role::Worker, 1, 0);
    join(&mut c, "s", Role::Spare, 2, 0);
    report(&mut c, "s", ROW_REMAP, 100);
    let fx = tick(&mut c, 200);
    let sent = scripts_sent(&fx, "s");
    (c, sent)
}

#[test]
fn no_remediation_runs_unless_configured() {
    let mut c = three_nodes();
    report(&mut c, "s", ROW_REMAP, 100);
    let fx = tick(&mut c, 200);
    assert!(scripts_sent(&fx, "s").is_empty(), "{fx:?}");
}

#[test]
fn an_idle_drained_node_is_remediated_then_checked_and_returns_to_service() {
    let (mut c, sent) = remediating();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1, "remediate");
    assert!(!c.nodes["s"].allocatable(), "not while it runs");
    let fx = answer(&mut c, "s", &sent[0].0, true, "gpu reset", 300);
    let next = scripts_sent(&fx, "s");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1, "health/host", "the deep check follows");
    healthy(&mut c, "s", 350);
    answer(&mut c, "s", &next[0].0, true, "ok", 400);
    assert!(c.nodes["s"].drained.is_none());
    assert!(c.nodes["s"].allocatable());
    // Nothing more to remediate.
    assert!(scripts_sent(&tick(&mut c, 500), "s").is_empty());
}

#[test]
fn a_failed_remediation_fences_the_node() {
    let (mut c, sent) = remediating();
    answer(&mut c, "s", &sent[0].0, false, "reset refused", 300);
    assert!(is_fenced(&c, "s"), "{:?}", c.nodes["s"].state);
}
