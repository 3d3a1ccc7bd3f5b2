//! Lifecycle scripts: join checks, failures, deadlines, replacement checks, operator checks.

use super::super::testing::*;
use super::*;
use crate::cluster::Role;
use crate::config::CoordinatorConfig;
use crate::protocol::EventKind;

fn cluster() -> Cluster {
    Cluster::new(CoordinatorConfig {
        bootstrap_script: "on-create".into(),
        check_scripts: vec!["health/host".into(), "health/gpu".into()],
        script_timeout_ms: 1000,
        ..Default::default()
    })
}

fn state(c: &Cluster, id: &str) -> &'static str {
    c.nodes[id].state.name()
}

#[test]
fn a_joining_node_bootstraps_then_runs_each_check_then_is_ready() {
    let mut c = cluster();
    let fx = hello(&mut c, "n1", Role::Worker, 1, 0);
    assert_eq!(state(&c, "n1"), "bootstrapping");
    let sent = scripts_sent(&fx, "n1");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, "on-create");
    // A stale or unknown command id changes nothing.
    assert!(answer(&mut c, "n1", "other", false, "x", 10).is_empty());
    let fx = answer(&mut c, "n1", &sent[0].0, true, "bootstrapped", 10);
    assert_eq!(state(&c, "n1"), "checking");
    let sent = scripts_sent(&fx, "n1");
    assert_eq!(sent[0].1, "health/host");
    let fx = answer(&mut c, "n1", &sent[0].0, true, "ok", 20);
    let sent = scripts_sent(&fx, "n1");
    assert_eq!(sent[0].1, "health/gpu");
    answer(&mut c, "n1", &sent[0].0, true, "ok", 30);
    assert_eq!(state(&c, "n1"), "ready");
    let report = c.nodes["n1"].last_check.clone().unwrap();
    assert!(report.ok);
    assert_eq!(report.duration_ms, 30);
    assert_eq!(report.scripts.len(), 3);
}

#[test]
fn a_failed_check_fences_with_its_output_and_stops_the_run() {
    let mut c = cluster();
    let fx = hello(&mut c, "n1", Role::Worker, 1, 0);
    let (cmd, _) = scripts_sent(&fx, "n1").remove(0);
    let fx = answer(&mut c, "n1", &cmd, true, "ok", 5);
    let (cmd, _) = scripts_sent(&fx, "n1").remove(0);
    let fx = answer(
        &mut c,
        "n1",
        &cmd,
        false,
        "disk_free_mb=3\nunhealthy: only 3 MiB free",
        9,
    );
    assert!(
        scripts_sent(&fx, "n1").is_empty(),
        "no script after a failure"
    );
    let NodeState::Fenced { cause } = &c.nodes["n1"].state else {
        panic!("not fenced: {:?}", c.nodes["n1"].state)
    };
    let reason = cause.to_string();
    assert!(
        reason.contains("only 3 MiB free") && reason.contains("disk_free_mb=3"),
        "{reason}"
    );
    assert_eq!(fences(&fx), ["n1"]);
}

#[test]
fn hosts_failing_their_checks_are_fenced_at_the_provider_only_within_the_breakers_share() {
    let mut c = Cluster::new(CoordinatorConfig {
        bootstrap_script: "on-create".into(),
        provider: "exec".into(),
        ..Default::default()
    });
    let mut host_fences = 0;
    let mut alerts = 0;
    // Ten fresh node ids, each failing its bootstrap (a rogue client, or a bad image).
    for i in 0..10u64 {
        let node = format!("rogue-{i}");
        let fx = hello(&mut c, &node, Role::Worker, i + 1, 10 * i as i64);
        let (cmd, _) = scripts_sent(&fx, &node).remove(0);
        let fx = answer(&mut c, &node, &cmd, false, "bad", 10 * i as i64 + 5);
        assert_eq!(
            state(&c, &node),
            "fenced",
            "the node itself is always kept out"
        );
        host_fences += fenced_hosts(&fx).len();
        alerts += events(&fx, EventKind::Alert).len();
    }
    assert_eq!(
        host_fences, 1,
        "past the share, no host is fenced at the provider"
    );
    assert_eq!(alerts, 1, "the breaker's opening is announced once");
}

#[test]
fn a_script_without_a_result_fails_at_its_deadline() {
    let mut c = cluster();
    hello(&mut c, "n1", Role::Worker, 1, 0);
    // The agent is alive (heartbeats) but the result never comes.
    heartbeat(&mut c, "n1", 5000);
    tick(&mut c, 1000 + RESULT_SLACK_MS - 1);
    assert_eq!(state(&c, "n1"), "bootstrapping");
    tick(&mut c, 1000 + RESULT_SLACK_MS);
    let NodeState::Fenced { cause } = &c.nodes["n1"].state else {
        panic!("not fenced")
    };
    assert!(
        cause.to_string().contains("no result from the agent"),
        "{cause}"
    );
}

#[test]
fn a_replacement_that_fails_its_check_is_fenced_and_the_next_spare_takes_over() {
    let mut c = cluster();
    join(&mut c, "w1", Role::Worker, 1, 0);
    join(&mut c, "s1", Role::Spare, 2, 0);
    join(&mut c, "s2", Role::Spare, 3, 0);
    run_job(&mut c, job(1), 100);
    // The worker's host dies: s1 (first spare) is checked again before it takes over.
    let fx = disconnect(&mut c, "w1", 200);
    assert_eq!(state(&c, "s1"), "checking");
    assert_eq!(
        state(&c, "s2"),
        "ready",
        "only one candidate per rank at a time"
    );
    let (cmd, script) = scripts_sent(&fx, "s1").remove(0);
    assert_eq!(script, "health/host");
    let fx = answer(&mut c, "s1", &cmd, false, "unhealthy: ECC errors", 300);
    assert_eq!(state(&c, "s1"), "fenced");
    assert_eq!(state(&c, "s2"), "checking");
    let (cmd, _) = scripts_sent(&fx, "s2").remove(0);
    let fx = answer(&mut c, "s2", &cmd, true, "ok", 310);
    let (cmd, _) = scripts_sent(&fx, "s2").remove(0);
    answer(&mut c, "s2", &cmd, true, "ok", 320);
    assert_eq!(state(&c, "s2"), "allocated");
    let job = &c.jobs[JOB];
    assert_eq!(job.nodes(), ["s2"]);
    assert_eq!(job.phase(), "relaunching");
    let incident = &c.incidents[0];
    assert_eq!(incident.replacement_node_id.as_deref(), Some("s2"));
    assert_eq!(incident.rejected_candidates.len(), 1);
    assert!(
        incident.rejected_candidates[0].starts_with("s1: ")
            && incident.rejected_candidates[0].contains("ECC errors")
    );
}

#[test]
fn an_operator_check_reports_without_changing_the_node() {
    let mut c = cluster();
    join(&mut c, "n1", Role::Worker, 1, 0);
    let fx = check_node(&mut c, "nope", 1, 5);
    assert!(matches!(
        replies(&fx, 1)[..],
        [Err(CoreError::NoSuchNode(_))]
    ));
    let fx = check_node(&mut c, "n1", 7, 10);
    assert!(
        replies(&fx, 7).is_empty(),
        "the report comes when the check ends"
    );
    let busy = check_node(&mut c, "n1", 8, 11);
    assert!(matches!(
        replies(&busy, 8)[..],
        [Err(CoreError::NodeBusy(_))]
    ));
    let (cmd, _) = scripts_sent(&fx, "n1").remove(0);
    let fx = answer(&mut c, "n1", &cmd, false, "unhealthy: fan", 20);
    let [Ok(Reply::Check { node_id, report })] = replies(&fx, 7)[..] else {
        panic!("the operator gets the report: {fx:?}")
    };
    assert_eq!(node_id, "n1");
    assert!(!report.ok && report.purpose == "operator" && report.scripts.len() == 1);
    assert_eq!(state(&c, "n1"), "ready");
    assert!(!c.nodes["n1"].last_check.as_ref().unwrap().ok);
}

#[test]
fn an_on_fence_result_counts_only_from_a_fenced_node_and_is_logged_cut() {
    let mut c = cluster();
    let fx = hello(&mut c, "n1", Role::Worker, 1, 0);
    let huge = "x".repeat(1 << 20);
    // Not fenced: nothing is logged, whatever it says.
    assert!(answer(&mut c, "n1", "on-fence", true, &huge, 5).is_empty());
    let (cmd, _) = scripts_sent(&fx, "n1").remove(0);
    answer(&mut c, "n1", &cmd, false, "broken", 9);
    assert_eq!(state(&c, "n1"), "fenced");
    let fx = answer(&mut c, "n1", "on-fence", true, &huge, 10);
    let logged = events(&fx, crate::protocol::EventKind::Log);
    assert_eq!(logged.len(), 1);
    assert!(logged[0].message.contains("bytes cut"), "cut");
    assert!(logged[0].message.len() < 2 * crate::limits::MAX_LOGGED + 200);
}

#[test]
fn extreme_agent_clocks_do_not_overflow() {
    let mut c = cluster();
    hello(&mut c, "n1", Role::Worker, 1, 0);
    for sent_at in [i64::MIN, i64::MAX] {
        c.step(
            crate::cluster::Input::Heartbeat {
                node: "n1".into(),
                sent_at,
                echo: None,
                health: None,
            },
            i64::MAX,
        );
        c.step(
            crate::cluster::Input::HealthReport {
                node: "n1".into(),
                health: Default::default(),
            },
            i64::MIN,
        );
    }
}
