//! The harness itself: its invariants catch what they claim to, and its faults behave as the
//! module docs say.

use super::*;
use crate::job::JobState;

fn ready(workers: usize, spares: usize) -> Sim {
    let mut sim = Sim::new(CoordinatorConfig::default());
    sim.add_nodes("w", workers, Role::Worker);
    sim.add_nodes("s", spares, Role::Spare);
    assert!(sim.run_until(|s| s.nodes_in("ready").len() == workers + spares, 1_000));
    sim
}

fn training(workers: usize, spares: usize, nodes: u32) -> Sim {
    let mut sim = ready(workers, spares);
    sim.submit_job("job", nodes);
    assert!(sim.run_until(|s| s.job("job").step >= 5, 5_000));
    sim
}

/// Cuts `node` off and lets `ms` pass; the stream it had before.
fn cut_for(sim: &mut Sim, node: &str, ms: i64) -> Option<u64> {
    let conn = sim.node(node).link.conn();
    sim.cut(node);
    sim.run_for(ms);
    conn
}

fn has(violations: &[String], text: &str) -> bool {
    violations.iter().any(|v| v.contains(text))
}

#[test]
fn a_healthy_run_violates_nothing() {
    let mut sim = training(3, 1, 3);
    assert_eq!(sim.violations(), Vec::<String>::new());
    assert!(sim.stats().inputs > 0 && sim.stats().records_checks > 0);
}

#[test]
fn a_node_in_two_jobs_and_an_allocation_outside_the_ranks_are_caught() {
    let mut sim = training(4, 0, 2);
    sim.submit_job("other", 2);
    sim.cluster.jobs.get_mut("other").expect("submitted").ranks[0].node = "w0".into();
    let v = sim.violations();
    assert!(has(&v, "node w0 holds ranks in job and other"), "{v:?}");
    assert!(
        has(&v, "node w2 is allocated to other but holds none"),
        "{v:?}"
    );
}

#[test]
fn a_rank_on_a_node_not_allocated_to_its_job_is_caught() {
    let mut sim = training(3, 0, 2);
    sim.cluster.nodes.get_mut("w1").expect("known").state = NodeState::Ready;
    let v = sim.violations();
    assert!(has(&v, "node w1 holds a rank of job but is ready"), "{v:?}");
}

#[test]
fn a_generation_that_goes_back_is_caught() {
    let mut sim = training(2, 0, 2);
    assert_eq!(sim.job("job").generation, 1);
    sim.cluster
        .jobs
        .get_mut("job")
        .expect("submitted")
        .generation = Generation(0);
    let v = sim.violations();
    assert!(has(&v, "went back from generation 1 to 0"), "{v:?}");
}

#[test]
fn an_incident_left_open_by_a_running_job_is_caught() {
    let mut sim = training(2, 1, 2);
    sim.kill("w1");
    assert!(sim.run_until(
        |s| !s.incidents().is_empty() && s.open_incidents().is_empty(),
        5_000
    ));
    let incident = &mut sim.cluster.incidents[0];
    incident.resumed_at = None;
    incident.to_generation = Some(Generation(7));
    let v = sim.violations();
    assert!(has(&v, "incident 1 (agent_lost on w1"), "{v:?}");
    sim.cluster.incidents[0].fenced_at = None;
    let v = sim.violations();
    assert!(has(&v, "stamped replaced but not fenced"), "{v:?}");
}

#[test]
#[should_panic(expected = "sim invariant violated")]
fn a_violation_stops_the_run() {
    let mut sim = training(2, 0, 2);
    sim.cluster.jobs.get_mut("job").expect("submitted").ranks[1].node = NodeId::default();
    sim.run_for(200);
}

#[test]
fn a_paused_node_stops_its_whole_gang_and_the_gang_goes_on_after() {
    let mut sim = training(3, 0, 3);
    sim.pause("w2", 1_000);
    let step = sim.gang_step_of("job", 1).expect("training");
    sim.run_for(900);
    assert_eq!(sim.gang_step_of("job", 1), Some(step));
    sim.run_for(600);
    assert!(sim.gang_step_of("job", 1).is_some_and(|s| s > step));
    assert!(sim.incidents().is_empty());
}

#[test]
fn a_slowed_node_slows_its_gang() {
    let mut sim = training(2, 0, 2);
    let step = sim.gang_step_of("job", 1).expect("training");
    sim.slow("w1", 4.0);
    sim.run_for(2_000);
    let slowed = sim.gang_step_of("job", 1).expect("training") - step;
    assert!(
        (4..=6).contains(&slowed),
        "{slowed} steps in 2 s at 400 ms a step"
    );
}

#[test]
fn a_cut_node_is_silent_both_ways_and_returns_on_a_new_stream_once_closed() {
    let mut sim = training(2, 1, 2);
    let conn = cut_for(&mut sim, "w1", 1_500);
    assert_eq!(sim.node("w1").link.conn(), conn, "a cut is no disconnect");
    assert!(sim.is_reachable("w0") && !sim.is_reachable("w1"));
    sim.run_for(1_000);
    assert_eq!(
        sim.node("w1").link.conn(),
        None,
        "closed by the heartbeat timeout"
    );
    sim.heal("w1");
    sim.run_for(100);
    let back = sim.node("w1").link.conn();
    assert!(back.is_some() && back != conn, "{back:?} after {conn:?}");
}

#[test]
fn a_short_cut_keeps_the_stream() {
    let mut sim = training(2, 0, 2);
    let conn = cut_for(&mut sim, "w1", 1_000);
    sim.heal("w1");
    sim.run_for(1_000);
    assert_eq!(sim.node("w1").link.conn(), conn);
    assert!(sim.incidents().is_empty());
}

#[test]
fn a_paused_coordinator_misses_its_ticks_and_gets_what_was_sent_meanwhile() {
    let mut sim = training(2, 0, 2);
    let step = sim.job("job").step;
    let ticks = sim.stats().ticks;
    sim.pause_coordinator(1_000);
    sim.run_for(999);
    assert_eq!(sim.stats().ticks, ticks);
    assert_eq!(sim.job("job").step, step, "nothing was read");
    sim.run_for(1);
    assert_eq!(
        sim.stats().ticks,
        ticks + 1,
        "the missed tick fires on waking"
    );
    assert!(sim.job("job").step >= step + 9, "the held progress arrived");
    assert_eq!(sim.node("w0").last_heartbeat_at, sim.now());
}

#[test]
fn heartbeats_carry_the_agents_clock() {
    let mut sim = Sim::new(CoordinatorConfig::default());
    sim.add_node_with(
        "ahead",
        Role::Worker,
        NodeOptions {
            clock_offset_ms: 5_000,
            ..Default::default()
        },
    );
    sim.run_for(2_000);
    let offset = sim.node("ahead").clock_offset_ms;
    assert!((4_999..=5_000).contains(&offset), "{offset}");
}

#[test]
fn a_restarted_coordinator_gets_every_agent_back() {
    let mut sim = training(3, 1, 3);
    sim.restart_coordinator();
    assert!(sim.cluster().nodes.values().all(|n| !n.link.is_connected()));
    assert!(sim.run_until(
        |s| s.cluster().nodes.values().all(|n| n.link.is_connected()),
        2_000
    ));
    assert_eq!(sim.job("job").state, JobState::Running);
}

#[test]
fn an_unreadable_checkpoint_store_fails_the_relaunch_after_its_attempts() {
    let mut sim = training(2, 1, 2);
    sim.set_checkpoint_store_down(true);
    sim.kill("w1");
    assert!(sim.run_until(|s| s.job("job").state.is_terminal(), 10_000));
    assert!(matches!(
        &sim.job("job").state,
        JobState::Failed { reason } if reason.contains("unreachable")
    ));
    assert!(sim.incidents()[0].abandoned.is_some());
}

#[test]
fn a_slow_start_keeps_the_job_launching_until_every_worker_started() {
    let mut sim = Sim::new(CoordinatorConfig::default());
    sim.add_node("fast", Role::Worker);
    let slow = NodeOptions {
        start_delay_ms: 3_000,
        ..Default::default()
    };
    sim.add_node_with("slow", Role::Worker, slow);
    sim.run_for(200);
    sim.submit_job("job", 2);
    sim.run_for(2_500);
    assert_eq!(sim.job("job").state, JobState::Launching);
    assert_eq!(
        sim.gang_step_of("job", 1),
        Some(0),
        "no step without every rank"
    );
    sim.run_for(1_000);
    assert_eq!(sim.job("job").state, JobState::Running);
    assert!(sim.run_until(|s| s.job("job").step > 0, 1_000));
}

#[test]
fn an_operators_check_is_answered_when_its_scripts_end() {
    let config = CoordinatorConfig {
        check_scripts: vec!["health/gpu".into()],
        ..Default::default()
    };
    let mut sim = Sim::new(config);
    sim.add_node("w0", Role::Worker);
    assert!(sim.run_until(|s| s.nodes_in("ready").len() == 1, 1_000));
    sim.set_check_fails("w0", true);
    let request = sim.send_request(|request| Input::CheckNode {
        request,
        node: "w0".into(),
    });
    assert!(sim.take_reply(request).is_none());
    sim.run_for(100);
    match sim.take_reply(request) {
        Some(Ok(Reply::Check { node_id, report })) => {
            assert_eq!(node_id, "w0");
            assert!(!report.ok);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sim.node_state("w0").name(),
        "ready",
        "an operator's check changes nothing"
    );
}

#[test]
fn retention_archives_finished_jobs_and_closed_incidents_and_never_reuses_an_incident_id() {
    let config = CoordinatorConfig {
        finished_retention_ms: 1_000,
        max_closed_incidents: 1,
        ..CoordinatorConfig::default()
    };
    let mut sim = Sim::new(config);
    sim.add_nodes("w", 2, Role::Worker);
    let ready = |s: &Sim| {
        s.cluster()
            .nodes
            .values()
            .filter(|n| n.allocatable())
            .count()
            == 2
    };
    for round in 0..3 {
        assert!(sim.run_until(ready, 5_000));
        let id = format!("job-{round}");
        sim.submit_job(&id, 2);
        assert!(sim.run_until(|s| s.job(&id).step >= 5, 5_000));
        sim.kill_worker("w0", faults::Exit::Code(1));
        assert!(sim.run_until(
            |s| {
                let incidents = s.incidents_of(&id);
                !incidents.is_empty() && incidents.iter().all(|i| !i.is_open())
            },
            20_000
        ));
        sim.stop_job(&id).unwrap();
        assert!(sim.run_until(|s| s.job(&id).state.is_terminal(), 20_000));
        if round == 1 {
            // The archive so far and the counter survive a restart.
            sim.restart_coordinator();
        }
    }
    assert!(sim.run_until(ready, 5_000));
    sim.submit_job("live", 2);
    assert!(sim.run_until(
        |s| s.archived().0.len() == 3 && s.archived().1.len() == 3,
        10_000
    ));
    assert_eq!(sim.archived().0, ["job-0", "job-1", "job-2"]);
    assert_eq!(sim.archived().1, [1, 2, 3], "each id once, in order");
    assert!(sim.cluster().jobs.contains_key("live"));
    assert_eq!(sim.violations(), Vec::<String>::new());
}
