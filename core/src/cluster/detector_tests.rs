//! The detector and the coordinator's own stalls: time the core could not observe (a stopped
//! or unscheduled process, a clock jump) is never a node's fault, while a node that really
//! went silent is still found.

use super::testing::*;
use super::*;

const JOB: &str = "job-1";

/// job-1 on a and b (stall timeout 3 s), spare s, every node heard at t=1,000 and ticked there.
fn observed_job() -> Cluster {
    let mut c = three_nodes();
    run_job(
        &mut c,
        JobRequest {
            stall_timeout_s: 3.0,
            ..job(2)
        },
        10,
    );
    for node in ["a", "b"] {
        worker(&mut c, node, 1, Step(5), 900);
    }
    tick_alive(&mut c, &["a", "b", "s"], 1_000);
    c
}

fn assert_untouched(c: &Cluster, fx: &[Command], why: &str) {
    assert!(disconnects(fx).is_empty(), "{why}: {fx:?}");
    assert!(fences(fx).is_empty(), "{why}: {fx:?}");
    assert!(stops(fx).is_empty(), "{why}: {fx:?}");
    assert!(c.incidents.is_empty(), "{why}: {:?}", c.incidents);
    let job = &c.jobs[JOB];
    assert_eq!(
        (&job.state, job.generation),
        (&JobState::Running, 1),
        "{why}"
    );
    for node in ["a", "b", "s"] {
        assert!(
            c.nodes[node].conn.is_some(),
            "{why}: {node} stays connected"
        );
        assert!(
            !matches!(c.nodes[node].state, NodeState::Fenced { .. }),
            "{why}: {node} is not fenced"
        );
    }
}

#[test]
fn a_coordinator_pause_of_any_length_fences_nobody() {
    // From just over the heartbeat timeout (2 s) to well past every timeout (stall 3 s,
    // startup grace, reconnect grace).
    for pause in [
        2_100, 2_500, 3_500, 5_000, 10_000, 60_000, 600_000, 3_600_000,
    ] {
        let mut c = observed_job();
        let resumed = 1_000 + pause;
        let fx = tick_after_pause(&mut c, resumed);
        assert_untouched(&c, &fx, &format!("first tick after a {pause} ms pause"));
        assert_eq!(
            events(&fx, EventKind::Log).len(),
            1,
            "the gap is told once: {fx:?}"
        );
        // What queued up during the pause arrives, then the clock goes on as usual.
        for node in ["a", "b"] {
            worker(&mut c, node, 1, Step(6), resumed + 10);
        }
        let fx = tick_alive(&mut c, &["a", "b", "s"], resumed + 100);
        assert_untouched(&c, &fx, &format!("after a {pause} ms pause"));
    }
}

#[test]
fn a_node_that_died_before_the_pause_is_still_found_on_the_silence_around_it() {
    let mut c = observed_job();
    // b's last heartbeat was at 1,000; the coordinator stops at 1,100 for 10 s. b is judged on
    // 100 ms of silence before the pause and what follows it: not yet at the first tick.
    tick_alive(&mut c, &["a", "s"], 1_100);
    let fx = tick_after_pause(&mut c, 11_100);
    assert!(disconnects(&fx).is_empty(), "{fx:?}");
    // a and s are heard again; b stays silent past the 2 s timeout: fenced.
    tick_alive(&mut c, &["a", "s"], 12_000);
    let fx = tick_alive(&mut c, &["a", "s"], 13_050);
    assert_eq!(disconnects(&fx), ["b"]);
    assert!(matches!(c.nodes["b"].state, NodeState::Fenced { .. }));
    assert_eq!(c.incidents.len(), 1);
    assert_eq!(c.incidents[0].node_id, "b");
}

#[test]
fn a_clock_that_jumps_back_suspects_nobody_and_still_finds_a_dead_node() {
    let mut c = observed_job();
    // The wall clock goes back an hour.
    let back = 1_000 - 3_600_000;
    let fx = tick_after_pause(&mut c, back);
    assert_untouched(&c, &fx, "after the clock jumped back");
    // Without the correction b's last heartbeat would lie an hour in the future and it could
    // never time out; it does, on the new clock.
    let fx = tick_alive(&mut c, &["a", "s"], back + 1_000);
    assert!(disconnects(&fx).is_empty(), "{fx:?}");
    let fx = tick_alive(&mut c, &["a", "s"], back + 2_200);
    assert_eq!(disconnects(&fx), ["b"]);
}

#[test]
fn short_scheduling_hiccups_change_nothing() {
    let mut c = observed_job();
    let before = c.nodes["b"].last_heartbeat_at;
    // Two tick periods late: within what a loaded box does.
    let fx = tick_after_pause(&mut c, 1_200);
    assert!(events(&fx, EventKind::Log).is_empty(), "{fx:?}");
    assert_eq!(c.nodes["b"].last_heartbeat_at, before);
}
