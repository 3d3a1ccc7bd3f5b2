//! The core's restart behaviour, driven with a fake clock: save, restore, reconcile.

use super::testing::*;
use super::*;

/// Two workers and a spare, a job running generation 1.
fn running_cluster() -> Cluster {
    let mut c = three_nodes();
    run_job(&mut c, job(2), 0);
    c
}

fn restart(c: &Cluster, now: UnixMillis) -> (Cluster, Vec<Command>) {
    let records = c.to_records().unwrap();
    Cluster::restore(CoordinatorConfig::default(), &records, now)
        .unwrap()
        .unwrap()
}

/// The running cluster restarted at 1 s; at 1.1 s its rank `a` (still running its worker) and
/// the spare `s` are back, `b` is not.
fn restarted_with_a_and_the_spare_back() -> Cluster {
    let (mut r, _) = restart(&running_cluster(), 1_000);
    hello_running(&mut r, "a", 10, 1, 1_100);
    hello(&mut r, "s", Role::Spare, 12, 1_100);
    r
}

/// Nothing was launched and nothing stopped.
fn quiet(fx: &[Command]) -> bool {
    launches(fx).is_empty() && stops(fx).is_empty()
}

#[test]
fn heartbeats_and_progress_change_nothing_durable_but_transitions_do() {
    let mut c = running_cluster();
    let v = c.durable_version();
    heartbeat(&mut c, "a", 100);
    worker(&mut c, "a", 1, Step(5), 100);
    assert_eq!(c.durable_version(), v);
    disconnect(&mut c, "b", 200);
    assert!(c.durable_version() > v);
}

#[test]
fn a_restart_bumps_the_term_and_keeps_a_running_generation_running() {
    let c = running_cluster();
    let (mut r, fx) = restart(&c, 1_000);
    assert_eq!(r.term, c.term.next());
    assert!(quiet(&fx), "{fx:?}");
    assert!(r
        .nodes
        .values()
        .all(|n| n.link == Link::Away { until: 11_000 }));
    // Agents come back reporting generation 1: nothing is stopped or launched again.
    let fx = hello_running(&mut r, "a", 10, 1, 1_100);
    assert!(quiet(&fx), "{fx:?}");
    let fx = hello_running(&mut r, "b", 11, 1, 1_100);
    assert!(quiet(&fx), "{fx:?}");
    hello(&mut r, "s", Role::Spare, 12, 1_100);
    // Past the grace nobody is lost: every node came back.
    tick_alive(&mut r, &["a", "b", "s"], 20_000);
    let job = &r.jobs[JOB];
    assert_eq!(
        (job.state.clone(), job.generation),
        (JobState::Running, Generation(1))
    );
    assert!(r.incidents.is_empty());
}

#[test]
fn a_node_that_does_not_come_back_within_the_grace_is_a_fault_after_the_restart() {
    let mut r = restarted_with_a_and_the_spare_back();
    tick_alive(&mut r, &["a", "s"], 5_000);
    assert!(r.incidents.is_empty());
    let fx = tick_alive(&mut r, &["a", "s"], 11_000);
    assert_eq!(r.incidents.len(), 1);
    assert_eq!(r.incidents[0].node_id, "b");
    assert_eq!(stops(&fx), [("a", 1)]);
}

#[test]
fn a_stale_generation_is_stopped_and_a_lost_launch_is_sent_again_once() {
    let mut c = running_cluster();
    // b's worker crashes: restart in place, generation 2 resolved and launched…
    worker(&mut c, "b", 1, Crashed, 30);
    worker(&mut c, "a", 1, Stopped, 40);
    let fx = resolved(&mut c, JOB, Ok(None), 50);
    assert_eq!(launches(&fx).len(), 2);
    assert_eq!(c.jobs[JOB].generation, 2);
    // …and the coordinator dies before either agent heard of it.
    let (mut r, fx) = restart(&c, 1_000);
    assert!(launches(&fx).is_empty());
    // a still runs generation 1 (it never got the stop): stopped. Then generation 2 again.
    let fx = hello_running(&mut r, "a", 10, 1, 1_100);
    assert_eq!(stops(&fx), [("a", 1)]);
    let relaunched: Vec<(&str, Generation, Term)> = launches(&fx)
        .into_iter()
        .map(|(node, l)| (node, l.generation, l.term))
        .collect();
    assert_eq!(relaunched, [("a", Generation(2), r.term)]);
    // b runs generation 2 already: kept, no second launch.
    let fx = hello_running(&mut r, "b", 11, 2, 1_100);
    assert!(quiet(&fx), "{fx:?}");
    assert_eq!(r.jobs[JOB].generation, 2);
    assert_eq!(r.incidents.len(), 1);
}

#[test]
fn a_checkpoint_resolution_in_flight_is_asked_for_again_and_applied_once() {
    let mut c = running_cluster();
    disconnect(&mut c, "b", 100);
    // b was fenced, a stopped (unreachable counts once a's stop is confirmed).
    worker(&mut c, "a", 1, Stopped, 110);
    assert_eq!(c.jobs[JOB].phase(), "relaunching");
    let (mut r, fx) = restart(&c, 1_000);
    assert_eq!(resolves(&fx).len(), 1, "{fx:?}");
    assert!(r.is_fenced("b"));
    resolved(&mut r, JOB, Ok(None), 1_100);
    resolved(&mut r, JOB, Ok(None), 1_200);
    assert_eq!(r.jobs[JOB].generation, 2);
    assert_eq!(r.incidents.len(), 1);
    // The fenced node comes back running its old worker: stopped and kept fenced.
    let fx = hello_running(&mut r, "b", 20, 1, 1_300);
    assert_eq!(stops(&fx), [("b", 1)]);
    assert!(launches(&fx).is_empty());
    assert!(r.is_fenced("b"));
}

/// Ids, generations and terms are stored as the bare strings and numbers they always were, so
/// state saved before they had their own types still loads.
#[test]
fn records_hold_ids_and_counters_as_plain_json() {
    let c = running_cluster();
    let records = c.to_records().unwrap();
    let json = |key: &str| serde_json::from_slice::<serde_json::Value>(&records[key]).unwrap();
    assert_eq!(json("meta")["term"], 1);
    let job = json(&format!("job/{JOB}"));
    assert_eq!(job["id"], JOB);
    assert_eq!(job["generation"], 1);
    assert_eq!(job["ranks"][0]["node"], "a");
    let node = json("node/a");
    assert_eq!(node["id"], "a");
    assert_eq!(
        node["state"],
        serde_json::json!({ "Allocated": { "job_id": JOB } })
    );
    let (restored, _) = Cluster::restore(CoordinatorConfig::default(), &records, 5_000)
        .unwrap()
        .unwrap();
    assert_eq!(restored.jobs[JOB].generation, Generation(1));
    assert_eq!(restored.nodes["a"].id, "a");
}

#[test]
fn a_node_waiting_for_admission_is_not_lost_while_it_waits_but_is_after() {
    let mut r = restarted_with_a_and_the_spare_back();
    // b reached the coordinator during a connect storm and was told to come back later.
    r.step(
        Input::AdmissionWait {
            nodes: vec!["b".into(), "unknown".into()],
            until: 30_000,
        },
        9_000,
    );
    let fx = tick_alive(&mut r, &["a", "s"], 20_000);
    assert!(r.incidents.is_empty(), "lost while waiting its turn");
    assert!(quiet(&fx), "{fx:?}");
    assert!(!r.nodes.contains_key("unknown"));
    // It comes back in time: nothing happened.
    let fx = hello_running(&mut r, "b", 11, 1, 25_000);
    assert!(quiet(&fx), "{fx:?}");
    tick_alive(&mut r, &["a", "b", "s"], 40_000);
    assert!(r.incidents.is_empty());

    // One that never comes back is lost once the wait it was given is over.
    let mut r = restarted_with_a_and_the_spare_back();
    r.step(
        Input::AdmissionWait {
            nodes: vec!["b".into()],
            until: 30_000,
        },
        9_000,
    );
    tick_alive(&mut r, &["a", "s"], 20_000);
    assert!(r.incidents.is_empty());
    tick_alive(&mut r, &["a", "s"], 31_000);
    assert_eq!(r.incidents.len(), 1);
    assert_eq!(r.incidents[0].node_id, "b");
}

#[test]
fn the_changes_taken_after_each_step_add_up_to_the_whole_state() {
    let mut c = Cluster::new(CoordinatorConfig::default());
    let mut stored = crate::records::Records::new();
    let take = |c: &mut Cluster, stored: &mut crate::records::Records| {
        let changes = c.take_changes().unwrap();
        if changes.complete {
            stored.clear();
        }
        let n = changes.records.len();
        for (key, value) in changes.records {
            match value {
                Some(v) => stored.insert(key, v),
                None => stored.remove(&key),
            };
        }
        n
    };
    hello(&mut c, "a", Role::Worker, 1, 0);
    assert_eq!(
        take(&mut c, &mut stored),
        1,
        "a hello changes its node only"
    );
    hello(&mut c, "b", Role::Worker, 2, 0);
    hello(&mut c, "s", Role::Spare, 3, 0);
    run_job(&mut c, job(2), 10);
    take(&mut c, &mut stored);
    heartbeat(&mut c, "a", 100);
    assert!(!c.has_changes(), "a heartbeat changes nothing durable");
    disconnect(&mut c, "b", 200);
    tick_alive(&mut c, &["a", "s"], 5_000);
    take(&mut c, &mut stored);
    let (restored, _) = restart(&c, 6_000);
    let from_changes = Cluster::restore(CoordinatorConfig::default(), &stored, 6_000)
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(
        from_changes.to_records().unwrap(),
        restored.to_records().unwrap(),
        "restoring what the changes wrote is restoring the whole state"
    );
}
