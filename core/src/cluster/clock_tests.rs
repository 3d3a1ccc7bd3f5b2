//! Honest detection times: the clock offset measured from round trips (and estimated one way
//! for agents that do not echo), and every incident's fault time estimated from its evidence.

use super::testing::*;
use super::*;
use crate::incident::FaultTimeSource;
use crate::protocol::{HealthAction, HealthState};

/// A heartbeat from `node` sent at `sent_at` (agent clock), arriving at `now`, echoing the
/// coordinator stamp `t1` received at `t2` (agent clock).
fn echoed(c: &mut Cluster, node: &str, (t1, t2): (i64, i64), sent_at: i64, now: i64) {
    let echo = Some(ClockEcho {
        coordinator_sent_at: t1,
        agent_received_at: t2,
    });
    heartbeat_with(c, node, sent_at, (None, echo), now);
}

/// A heartbeat without an echo (an older agent), sent at `sent_at` (agent clock).
fn one_way(c: &mut Cluster, node: &str, sent_at: i64, now: i64) {
    heartbeat_with(c, node, sent_at, (None, None), now);
}

/// The coordinator stamps `t1`; the stamp takes `out` ms to the agent (whose clock is `skew`
/// ahead), which answers `wait` ms later; the heartbeat takes `back` ms to return.
fn round_trip(c: &mut Cluster, node: &str, t1: i64, skew: i64, out: i64, wait: i64, back: i64) {
    let t2 = t1 + out + skew;
    let t3 = t2 + wait;
    let t4 = t1 + out + wait + back;
    echoed(c, node, (t1, t2), t3, t4);
}

/// `node`'s measured clock offset and the round trip it was measured over.
fn clock(c: &Cluster, node: &str) -> (i64, Option<i64>) {
    let n = &c.nodes[node];
    (n.clock_offset_ms, n.clock_round_trip_ms)
}

#[test]
fn the_offset_of_a_round_trip_with_equal_delays_is_exact() {
    let mut c = three_nodes();
    round_trip(&mut c, "a", 1_000, 30_000, 5, 200, 5);
    assert_eq!(clock(&c, "a"), (30_000, Some(10)));
    round_trip(&mut c, "b", 100_000, -7_250, 40, 0, 40);
    assert_eq!(c.nodes["b"].clock_offset_ms, -7_250);
}

#[test]
fn asymmetric_delays_err_by_at_most_half_the_round_trip_and_the_shortest_round_trip_wins() {
    let mut c = three_nodes();
    // 5 ms out, 45 ms back: off by (45 − 5) / 2 = 20 ms, within half the 50 ms round trip.
    round_trip(&mut c, "a", 1_000, 30_000, 5, 100, 45);
    assert_eq!(clock(&c, "a"), (29_980, Some(50)));
    // A shorter round trip replaces it...
    round_trip(&mut c, "a", 6_000, 30_000, 3, 100, 5);
    assert_eq!(clock(&c, "a"), (29_999, Some(8)));
    // ...and a longer, more lopsided one (a congested link) does not.
    round_trip(&mut c, "a", 11_000, 30_000, 1, 100, 400);
    assert_eq!(c.nodes["a"].clock_offset_ms, 29_999);
    // Heartbeats without an echo between pings change nothing.
    one_way(&mut c, "a", 12_000 + 30_000 - 1_000, 12_000);
    assert_eq!(c.nodes["a"].clock_offset_ms, 29_999);
}

#[test]
fn only_recent_round_trips_count() {
    let mut c = three_nodes();
    round_trip(&mut c, "a", 1_000, 100, 1, 0, 1);
    // The agent's clock is stepped by 2 s; eight newer samples push the old best out.
    for i in 1..=8 {
        round_trip(&mut c, "a", 1_000 + i * 5_000, 2_100, 10, 0, 10);
    }
    assert_eq!(c.nodes["a"].clock_offset_ms, 2_100);
}

#[test]
fn a_negative_round_trip_is_no_measurement() {
    let mut c = three_nodes();
    round_trip(&mut c, "a", 1_000, 500, 5, 100, 5);
    // The agent's clock stepped back between receiving the stamp and sending the heartbeat.
    echoed(&mut c, "a", (2_000, 2_500), 1_000, 2_010);
    assert_eq!(c.nodes["a"].clock_offset_ms, 500);
}

#[test]
fn an_agent_that_does_not_echo_keeps_the_one_way_estimate() {
    let mut c = three_nodes();
    // Agent clock 30 s ahead, one-way delays 20 and 3 ms: the smallest delay is the estimate.
    one_way(&mut c, "a", 1_000 + 30_000 - 20, 1_000);
    one_way(&mut c, "a", 2_000 + 30_000 - 3, 2_000);
    assert_eq!(clock(&c, "a"), (29_997, None));
    // A zero echo (what an old agent's field reads as) is no echo.
    echoed(&mut c, "a", (0, 0), 3_000 + 30_000 - 10, 3_000);
    assert_eq!(c.nodes["a"].clock_offset_ms, 29_997);
}

#[test]
fn a_reconnect_relearns_the_offset() {
    let mut c = three_nodes();
    round_trip(&mut c, "a", 1_000, 500, 5, 100, 5);
    disconnect(&mut c, "a", 2_000);
    hello(&mut c, "a", Role::Worker, 7, 3_000);
    assert_eq!(c.nodes["a"].clock_round_trip_ms, None);
    round_trip(&mut c, "a", 3_000, -40, 5, 100, 5);
    assert_eq!(c.nodes["a"].clock_offset_ms, -40);
}

#[test]
fn connected_agents_are_pinged_every_ten_heartbeat_intervals() {
    let mut c = three_nodes();
    // Joined (and welcomed, a stamp of its own) at t=0; the interval is 500 ms.
    let pings = |fx: &[Command]| -> Vec<(String, i64)> {
        sends(fx)
            .into_iter()
            .filter_map(|(n, cmd)| match cmd {
                AgentCommand::Ping {
                    coordinator_unix_ms,
                } => Some((n.to_string(), *coordinator_unix_ms)),
                _ => None,
            })
            .collect()
    };
    let fx = tick_alive(&mut c, &["a", "b", "s"], 4_900);
    assert!(pings(&fx).is_empty(), "{fx:?}");
    disconnect(&mut c, "s", 4_950);
    let fx = tick_alive(&mut c, &["a", "b"], 5_000);
    assert_eq!(
        pings(&fx),
        [("a".to_string(), 5_000), ("b".to_string(), 5_000)]
    );
    let fx = tick_alive(&mut c, &["a", "b"], 9_900);
    assert!(pings(&fx).is_empty(), "{fx:?}");
}

fn xid_79(observed_at: UnixMillis) -> HealthSummary {
    let reason = "Xid 79: GPU has fallen off the bus";
    let (state, action) = (HealthState::Unhealthy, HealthAction::ReplaceNode);
    one_check("xid", state, reason, action, observed_at)
}

/// The first incident, checked to be `cause`, its fault dated at `fault_at` from `source` and
/// detected at `detected_at`.
fn first_incident(
    c: &Cluster,
    cause: &str,
    (fault_at, detected_at): (UnixMillis, UnixMillis),
    source: FaultTimeSource,
) -> Incident {
    let i = c.incidents.first().expect("an incident").clone();
    assert_eq!(i.cause, cause);
    assert_eq!((i.fault_at, i.detected_at), (fault_at, detected_at));
    assert_eq!(i.fault_time_source, source);
    i
}

#[test]
fn a_gpu_fault_is_dated_by_the_agents_observation_corrected_for_its_clock() {
    let mut c = running_job();
    // b's clock is 30 s ahead; measured by a round trip.
    round_trip(&mut c, "b", 1_000, 30_000, 4, 100, 4);
    // NVML saw it at 2,000 (coordinator time); the report arrives 350 ms later.
    c.step(health_report("b", xid_79(2_000 + 30_000)), 2_350);
    let i = first_incident(
        &c,
        "health_fatal",
        (2_000, 2_350),
        FaultTimeSource::AgentEvent,
    );
    assert!(i.fault_time_source.is_estimate());
}

#[test]
fn a_gpu_fault_in_a_heartbeat_is_dated_the_same_way() {
    let mut c = running_job();
    round_trip(&mut c, "b", 10_000, -5_000, 4, 100, 4);
    let health = Some(xid_79(12_000 - 5_000));
    heartbeat_with(&mut c, "b", 12_400 - 5_000, (health, None), 12_400);
    first_incident(
        &c,
        "health_fatal",
        (12_000, 12_400),
        FaultTimeSource::AgentEvent,
    );
}

#[test]
fn a_gpu_fault_without_an_observation_time_is_dated_at_detection() {
    let mut c = running_job();
    c.step(health_report("b", xid_79(0)), 2_350);
    let i = first_incident(
        &c,
        "health_fatal",
        (2_350, 2_350),
        FaultTimeSource::Detection,
    );
    assert!(!i.fault_time_source.is_estimate());
}

#[test]
fn a_lost_agent_is_dated_by_its_last_heartbeat() {
    let mut c = running_job();
    heartbeat(&mut c, "b", 1_500);
    disconnect(&mut c, "b", 1_800);
    let source = FaultTimeSource::LastHeartbeat;
    first_incident(&c, "agent_lost", (1_500, 1_800), source);
}

#[test]
fn a_silent_agent_is_dated_by_the_heartbeat_that_did_not_come() {
    let mut c = running_job();
    tick_alive(&mut c, &["a", "b", "s"], 1_000);
    tick_alive(&mut c, &["a", "s"], 3_000);
    tick(&mut c, 3_001);
    let source = FaultTimeSource::LastHeartbeat;
    first_incident(&c, "heartbeat_timeout", (1_500, 3_001), source);
}

#[test]
fn a_worker_exit_is_dated_by_the_agents_exit_time() {
    let mut c = running_job();
    // The exit happened at 1,000 agent time; the agent's clock is 200 ms behind.
    round_trip(&mut c, "b", 500, -200, 2, 10, 2);
    let event = WorkerEvent {
        job_id: JOB.into(),
        generation: Generation(1),
        at: 1_000 - 200,
        kind: WorkerEventKind::Exited {
            code: Some(1),
            signal: None,
            stopped_by_agent: false,
        },
    };
    let node = "b".into();
    c.step(Input::Worker { node, event }, 1_040);
    let source = FaultTimeSource::AgentEvent;
    first_incident(&c, "worker_exited", (1_000, 1_040), source);
}

#[test]
fn a_stall_is_dated_by_the_last_progress() {
    let mut c = running_job();
    worker(&mut c, "a", 1, Step(5), 1_000);
    worker(&mut c, "b", 1, Step(5), 1_000);
    for t in (1_500..=4_500).step_by(500) {
        worker(&mut c, "a", 1, Step(5 + t as u64 / 500), t);
        tick_alive(&mut c, &["a", "b", "s"], t);
    }
    let i = c.incidents.first().expect("the stall opened an incident");
    assert_eq!(i.cause, "progress_stalled");
    assert_eq!(i.fault_time_source, FaultTimeSource::LastProgress);
    assert_eq!(i.fault_at, 1_000);
}
