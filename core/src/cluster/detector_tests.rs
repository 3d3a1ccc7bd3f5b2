//! The detector and the coordinator's own stalls: time the core could not observe (a stopped
//! or unscheduled process, a clock jump) is never a node's fault, while a node that really
//! went silent is still found.

use super::testing::*;
use super::*;

const JOB: &str = "job-1";

/// job-1 on a and b (stall timeout 3 s), spare s, every node heard at t=1,000 and ticked there.
fn observed_job() -> Cluster {
    let mut c = running_job();
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
        (&JobState::Running, Generation(1)),
        "{why}"
    );
    for node in ["a", "b", "s"] {
        assert!(
            c.nodes[node].link.is_connected(),
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

fn alerts(fx: &[Command]) -> Vec<&str> {
    events(fx, EventKind::Alert)
        .into_iter()
        .map(|e| e.message.as_str())
        .collect()
}

/// Ticks every 100 ms from `from` to `to`, with heartbeats from `alive` at each tick and, from
/// those that run job-1's ranks, a step every second (the training itself goes on: only the
/// control network is in question); returns every command.
fn run(c: &mut Cluster, alive: &[&str], from: UnixMillis, to: UnixMillis) -> Vec<Command> {
    let mut fx = Vec::new();
    let mut t = from;
    while t <= to {
        if t % 1_000 == 0 {
            for node in alive {
                if c.jobs.get(JOB).is_some_and(|j| j.rank_of(node).is_some()) {
                    fx.extend(worker(c, node, 1, Step(t as u64 / 100), t));
                }
            }
        }
        fx.extend(tick_alive(c, alive, t));
        t += 100;
    }
    fx
}

#[test]
fn a_control_network_blip_that_silences_every_node_is_one_alert_and_no_fence() {
    let mut c = observed_job();
    // Nobody is heard for 10 s while the coordinator keeps ticking.
    let fx = run(&mut c, &[], 1_100, 11_000);
    assert_eq!(
        alerts(&fx).len(),
        1,
        "one alert for the shared cause: {fx:?}"
    );
    assert!(alerts(&fx)[0].contains("3 of 3 nodes went silent at once"));
    assert_untouched(&c, &fx, "during the blip");
    // Everyone is heard again.
    let fx = run(&mut c, &["a", "b", "s"], 11_100, 12_000);
    assert_untouched(&c, &fx, "after the blip");
    assert!(events(&fx, EventKind::Log)
        .iter()
        .any(|e| e.message.contains("silence storm over")));
}

#[test]
fn a_blip_that_silences_most_nodes_holds_until_the_rest_are_heard() {
    let mut c = observed_job();
    // a and s go quiet (2 of 3: a shared cause), b is heard all along.
    let fx = run(&mut c, &["b"], 1_100, 8_000);
    assert_eq!(alerts(&fx).len(), 1, "{fx:?}");
    assert_untouched(&c, &fx, "while a and s are silent");
    let fx = run(&mut c, &["a", "b", "s"], 8_100, 9_000);
    assert_untouched(&c, &fx, "after a and s are heard again");
}

#[test]
fn only_the_nodes_still_silent_once_the_rest_are_heard_are_faults() {
    let mut c = observed_job();
    let fx = run(&mut c, &[], 1_100, 6_000);
    assert!(fences(&fx).is_empty(), "{fx:?}");
    // b and s come back; a stays silent: a is a node fault now, judged on its whole silence.
    let fx = run(&mut c, &["b", "s"], 6_100, 6_100);
    assert_eq!(disconnects(&fx), ["a"]);
    assert!(matches!(c.nodes["a"].state, NodeState::Fenced { .. }));
    assert_eq!(c.incidents.len(), 1);
    assert_eq!(c.incidents[0].node_id, "a");
    assert!(c.nodes["b"].link.is_connected() && c.nodes["s"].link.is_connected());
}

#[test]
fn a_storm_that_outlasts_its_hold_while_others_are_heard_becomes_node_faults() {
    let config = CoordinatorConfig {
        silence_storm_hold_ms: 10_000,
        ..Default::default()
    };
    let mut c = cluster_of(
        config,
        &[
            ("a", Role::Worker),
            ("b", Role::Worker),
            ("c", Role::Worker),
            ("s", Role::Spare),
        ],
    );
    run_job(&mut c, job(2), 10);
    tick_alive(&mut c, &["a", "b", "c", "s"], 1_000);
    // c and s (2 of 4, neither of the job's) go silent; a and b are heard. Held for 10 s.
    let fx = run(&mut c, &["a", "b"], 1_100, 12_900);
    assert!(disconnects(&fx).is_empty(), "{fx:?}");
    assert_eq!(alerts(&fx).len(), 1);
    let fx = run(&mut c, &["a", "b"], 13_000, 13_200);
    let mut gone = disconnects(&fx);
    gone.sort_unstable();
    assert_eq!(
        gone,
        ["c", "s"],
        "after the hold they are node faults: {fx:?}"
    );
    assert!(c.incidents.is_empty(), "idle nodes: offline, no incident");
    assert_eq!(c.nodes["c"].state, NodeState::Offline);
}

#[test]
fn no_fault_fences_every_node_of_a_job_and_it_recovers_when_they_come_back() {
    let mut c = observed_job();
    // Both of the job's hosts drop off (their streams close), one after the other.
    disconnect(&mut c, "a", 1_100);
    assert!(matches!(c.nodes["a"].state, NodeState::Fenced { .. }));
    let fx = disconnect(&mut c, "b", 1_200);
    assert!(
        alerts(&fx)
            .iter()
            .any(|m| m.contains("every other node of job job-1")),
        "{fx:?}"
    );
    assert!(
        !matches!(c.nodes["b"].state, NodeState::Fenced { .. }),
        "the job's last node is released, not fenced"
    );
    // The spare takes one rank; the other waits, saying so.
    let job = &c.jobs[JOB];
    assert!(
        job.message.contains("waiting") || job.phase() == "fencing" || job.phase() == "replacing",
        "{job:?}"
    );
    // b comes back on its own: it rejoins and takes its rank again, with no operator.
    hello(&mut c, "b", Role::Worker, 20, 3_000);
    let job = &c.jobs[JOB];
    assert!(
        matches!(job.state, JobState::Recovering(_) | JobState::Launching),
        "{:?}",
        job.state
    );
    let mut nodes = job.nodes();
    nodes.sort_unstable();
    assert_eq!(nodes, ["b", "s"], "b and the spare run the job now");
}

// ----- progress vouches for liveness ------------------------------------------------------------

/// job-1 on a and b stepping every 100 ms until t=2,000 (its step time is learned), spare s;
/// `vouches` says whether the job lets progress vouch for a silent node.
fn stepping_job(vouches: bool) -> Cluster {
    let mut c = three_nodes();
    run_job(
        &mut c,
        JobRequest {
            stall_timeout_s: 3.0,
            progress_vouches: Some(vouches),
            ..job(2)
        },
        10,
    );
    steps(&mut c, &["a", "b", "s"], &["a", "b"], 100, 2_000);
    assert_eq!(c.jobs[JOB].step_time_ms, 100);
    c
}

/// Ticks every 100 ms from `from` to `to`: heartbeats from `heard`, one step per tick from the
/// ranks on `stepping` (reported only while their agent is heard).
fn steps(
    c: &mut Cluster,
    heard: &[&str],
    stepping: &[&str],
    from: UnixMillis,
    to: UnixMillis,
) -> Vec<Command> {
    let mut fx = Vec::new();
    let mut t = from;
    while t <= to {
        for node in stepping.iter().filter(|n| heard.contains(n)) {
            fx.extend(worker(c, node, 1, Step(t as u64 / 100), t));
        }
        fx.extend(tick_alive(c, heard, t));
        t += 100;
    }
    fx
}

#[test]
fn a_silent_agent_whose_job_keeps_stepping_keeps_its_ranks() {
    let mut c = stepping_job(true);
    // a's agent dies (or loses its link); its worker keeps training: b keeps stepping.
    let fx = steps(&mut c, &["b", "s"], &["a", "b"], 2_100, 6_000);
    assert!(fences(&fx).is_empty(), "{fx:?}");
    assert!(c.incidents.is_empty(), "{:?}", c.incidents);
    assert!(alerts(&fx)
        .iter()
        .any(|m| m.contains("keeps stepping") && m.contains("a")));
    assert_eq!(disconnects(&fx), ["a"], "the lost agent's stream is closed");
    let job = &c.jobs[JOB];
    assert_eq!(
        (&job.state, job.generation),
        (&JobState::Running, Generation(1))
    );
    assert_eq!(job.nodes(), ["a", "b"], "a keeps its rank");
    assert!(matches!(c.nodes["a"].link, Link::Vouched { .. }));
    // Its agent comes back with the same worker: nothing to do.
    let fx = hello_running(&mut c, "a", 30, 1, 6_100);
    assert!(fences(&fx).is_empty() && stops(&fx).is_empty(), "{fx:?}");
    assert!(!matches!(c.nodes["a"].link, Link::Vouched { .. }));
    assert!(c.incidents.is_empty());
}

#[test]
fn a_dead_host_stops_the_others_and_is_replaced_at_the_heartbeat_timeout() {
    let mut c = stepping_job(true);
    // a dies at 2,000: b blocks in its next exchange, so it stops stepping too.
    let fx = steps(&mut c, &["b", "s"], &[], 2_100, 4_100);
    assert_eq!(disconnects(&fx), ["a"]);
    assert!(matches!(c.nodes["a"].state, NodeState::Fenced { .. }));
    assert_eq!(c.incidents.len(), 1);
    assert_eq!(c.incidents[0].node_id, "a");
    assert!(
        c.incidents[0].detected_at <= 4_100,
        "detected at the heartbeat timeout, not the stall timeout: {:?}",
        c.incidents[0]
    );
}

#[test]
fn a_vouched_node_is_fenced_at_the_jobs_next_fault() {
    let mut c = stepping_job(true);
    steps(&mut c, &["b", "s"], &["a", "b"], 2_100, 6_000);
    assert!(matches!(c.nodes["a"].link, Link::Vouched { .. }));
    // b's worker crashes: the job recovers, and a (unreachable) cannot be part of it.
    let fx = worker(&mut c, "b", 1, Crashed, 6_100);
    assert!(
        matches!(c.nodes["a"].state, NodeState::Fenced { .. }),
        "{:?}",
        c.nodes["a"].state
    );
    assert!(
        c.incidents.iter().any(|i| i.node_id == "a"),
        "{:?}",
        c.incidents
    );
    assert!(
        launch_to(&fx, "a").is_none(),
        "nothing is launched on a: {fx:?}"
    );
    // The spare takes a's rank; the new generation runs on s and b.
    let mut nodes = c.jobs[JOB].nodes();
    nodes.sort_unstable();
    assert_eq!(nodes, ["b", "s"], "{:?}", c.jobs[JOB]);
}

#[test]
fn a_vouched_node_whose_agent_returns_without_its_worker_is_a_fault() {
    let mut c = stepping_job(true);
    steps(&mut c, &["b", "s"], &["a", "b"], 2_100, 6_000);
    hello(&mut c, "a", Role::Worker, 30, 6_100);
    assert!(matches!(c.nodes["a"].state, NodeState::Fenced { .. }));
    assert_eq!(c.incidents[0].node_id, "a");
}

#[test]
fn a_vouched_node_is_blamed_when_the_rest_of_its_job_stalls() {
    let mut c = stepping_job(true);
    steps(&mut c, &["b", "s"], &["a", "b"], 2_100, 6_000);
    // b stops stepping (waiting on a's ranks) while its agent is heard.
    let fx = steps(&mut c, &["b", "s"], &[], 6_100, 9_500);
    assert!(c.incidents.iter().any(|i| i.node_id == "a"), "{fx:?}");
    assert!(
        !c.incidents.iter().any(|i| i.node_id == "b"),
        "the heard rank that waited is not blamed: {:?}",
        c.incidents
    );
}

#[test]
fn a_job_that_opts_out_is_not_vouched_for() {
    let mut c = stepping_job(false);
    let fx = steps(&mut c, &["b", "s"], &["a", "b"], 2_100, 4_200);
    assert_eq!(disconnects(&fx), ["a"]);
    assert!(matches!(c.nodes["a"].state, NodeState::Fenced { .. }));
}

#[test]
fn a_crashed_agent_whose_job_keeps_stepping_is_no_fault_and_readopts_its_worker() {
    let mut c = stepping_job(true);
    // a's agent process dies (its stream closes); its worker trains on.
    let fx = disconnect(&mut c, "a", 2_050);
    assert!(fences(&fx).is_empty() && c.incidents.is_empty(), "{fx:?}");
    let fx = steps(&mut c, &["b", "s"], &["a", "b"], 2_100, 4_000);
    assert!(fences(&fx).is_empty(), "{fx:?}");
    assert!(c.incidents.is_empty());
    assert!(matches!(c.nodes["a"].link, Link::Vouched { .. }));
    // systemd restarts it; it re-adopts the same worker.
    hello_running(&mut c, "a", 31, 1, 4_100);
    assert!(c.incidents.is_empty());
    assert_eq!(c.jobs[JOB].generation, 1);
}

#[test]
fn a_killed_host_is_a_fault_within_a_few_steps_of_its_stream_closing() {
    let mut c = stepping_job(true);
    disconnect(&mut c, "a", 2_050);
    // b blocks at once: nothing vouches for a.
    steps(&mut c, &["b", "s"], &[], 2_100, 3_200);
    assert!(matches!(c.nodes["a"].state, NodeState::Fenced { .. }));
    let incident = &c.incidents[0];
    assert_eq!(incident.node_id, "a");
    assert!(
        incident.detected_at - 2_050 <= 1_000,
        "decided within a few steps of 100 ms: {incident:?}"
    );
}

#[test]
fn stacks_are_cut_to_the_bound_at_a_character_boundary() {
    assert_eq!(super::bounded("short".into(), 16), "short");
    let cut = super::bounded("é".repeat(20_000), crate::incident::STACKS_MAX_BYTES);
    assert!(
        cut.len() <= crate::incident::STACKS_MAX_BYTES,
        "{}",
        cut.len()
    );
    assert!(cut.ends_with("(cut)"));
}

#[test]
fn streams_its_agents_closed_during_a_coordinator_pause_get_the_reconnect_grace() {
    // The agents' keepalive gave up on the stopped coordinator; their closes are handled just
    // after it resumes — after the tick that finds the gap, or before it.
    for tick_first in [true, false] {
        let mut c = observed_job();
        let resumed = 1_000 + 8_000;
        if tick_first {
            tick_after_pause(&mut c, resumed);
        }
        let mut fx = disconnect(&mut c, "a", resumed + 1);
        fx.extend(disconnect(&mut c, "b", resumed + 2));
        let why = format!("tick first: {tick_first}");
        assert!(
            fences(&fx).is_empty() && stops(&fx).is_empty(),
            "{why}: {fx:?}"
        );
        assert!(c.incidents.is_empty(), "{why}: {:?}", c.incidents);
        assert!(matches!(c.nodes["a"].link, Link::Away { .. }), "{why}");
        // They come back with their workers running: nothing happened.
        hello_running(&mut c, "a", 21, 1, resumed + 400);
        hello_running(&mut c, "b", 22, 1, resumed + 500);
        let fx = tick_alive(&mut c, &["a", "b", "s"], resumed + 3_000);
        assert_untouched(&c, &fx, &why);
    }
    // One that does not come back is lost once the grace is over.
    let mut c = observed_job();
    tick_after_pause(&mut c, 9_000);
    disconnect(&mut c, "b", 9_001);
    tick_alive(&mut c, &["a", "s"], 12_000);
    assert!(c.incidents.is_empty());
    let grace = c.config.reconnect_grace_ms as i64;
    tick_alive(&mut c, &["a", "s"], 9_001 + grace + 200);
    assert_eq!(c.incidents.len(), 1, "{:?}", c.incidents);
    assert_eq!(c.incidents[0].node_id, "b");
}

#[test]
fn a_stream_closed_while_the_coordinator_observes_is_judged_at_once() {
    let mut c = observed_job();
    tick_alive(&mut c, &["a", "b", "s"], 1_100);
    disconnect(&mut c, "b", 1_150);
    assert!(!matches!(c.nodes["b"].link, Link::Away { .. }));
}
