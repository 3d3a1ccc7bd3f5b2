//! The core's recovery behaviours as simulation scenarios: each one builds a small cluster, trains
//! a job, injects one fault and checks what the core did about it. Every invariant of the sim is
//! checked after every core step (see `holdfast_core::sim`).

use holdfast_core::cluster::Role;
use holdfast_core::incident::{Incident, RecoveryAction};
use holdfast_core::job::{JobState, RecoveryPhase};
use holdfast_core::node::{FaultCause, Link, NodeState};
use holdfast_core::protocol::JobRequest;
use holdfast_core::sim::{Exit, JobParams, NodeOptions, Sim, WorkerStatus};
use holdfast_core::{CoordinatorConfig, Generation, NodeId};

/// `workers` nodes `w0…` and `spares` nodes `s0…`, all ready.
fn cluster_with(config: CoordinatorConfig, workers: usize, spares: usize) -> Sim {
    let mut sim = Sim::new(config);
    sim.add_nodes("w", workers, Role::Worker);
    sim.add_nodes("s", spares, Role::Spare);
    let all = workers + spares;
    assert!(
        sim.run_until(|s| s.nodes_in("ready").len() == all, 2_000),
        "the nodes did not all become ready"
    );
    sim
}

fn cluster(workers: usize, spares: usize) -> Sim {
    cluster_with(CoordinatorConfig::default(), workers, spares)
}

/// Submits `job` on `nodes` nodes and trains it to at least `step`.
fn train(sim: &mut Sim, job: &str, nodes: u32, step: u64) {
    sim.submit_job(job, nodes);
    assert!(
        sim.run_until(|s| s.job(job).step >= step, 30_000),
        "job {job} did not reach step {step}"
    );
    assert_eq!(sim.job(job).state, JobState::Running);
}

fn only_incident(sim: &Sim) -> Incident {
    match sim.incidents() {
        [one] => one.clone(),
        all => panic!("expected one incident, got {all:#?}"),
    }
}

/// The one incident, checked to be `cause` on `node`.
fn only_incident_of(sim: &Sim, cause: &str, node: &str) -> Incident {
    let i = only_incident(sim);
    assert_eq!((i.cause.as_str(), i.node_id.as_str()), (cause, node));
    i
}

/// No incident was opened.
fn assert_no_incident(sim: &Sim) {
    assert!(sim.incidents().is_empty(), "{:#?}", sim.incidents());
}

/// "job" still runs its first generation.
fn assert_first_generation_runs(sim: &Sim) {
    let job = sim.job("job");
    assert_eq!(
        (job.state.clone(), job.generation),
        (JobState::Running, Generation(1))
    );
}

/// "job" runs generation `generation` on `nodes`, in rank order.
fn assert_runs_on(sim: &Sim, generation: u64, nodes: &[&str]) {
    let job = sim.job("job");
    assert_eq!(
        (job.generation, job.nodes()),
        (Generation(generation), ids(nodes))
    );
}

fn ids(items: &[&str]) -> Vec<NodeId> {
    items.iter().copied().map(NodeId::from).collect()
}

/// `node`'s worker was restarted in place: it runs generation 2.
fn assert_restarted_in_place(sim: &Sim, node: &str) {
    assert_eq!(
        sim.worker_of(node).map(|w| (w.generation, w.status)),
        Some((Generation(2), WorkerStatus::Running))
    );
}

/// Submits "job" on 3 nodes with a 2 s stall timeout (and `restart_budget`, if given).
fn submit_stalling(sim: &mut Sim, restart_budget: Option<u32>) {
    let mut request = JobRequest {
        stall_timeout_s: 2.0,
        ..Sim::job_request("job", 3)
    };
    if let Some(budget) = restart_budget {
        request.restart_budget = budget;
    }
    sim.submit(request, JobParams::default()).expect("accepted");
}

/// Waits until "job" runs and steps with no incident open, then for 500 ms more.
fn settle(sim: &mut Sim) {
    assert!(sim.run_until(
        |s| s.job("job").state == JobState::Running
            && s.open_incidents().is_empty()
            && s.job("job").step > 0,
        30_000
    ));
    sim.run_for(500);
}

/// Why `node` was fenced (it must be).
fn fence_cause<'a>(sim: &'a Sim, node: &str) -> &'a FaultCause {
    match sim.node_state(node) {
        NodeState::Fenced { cause } => cause,
        other => panic!("{node} is not fenced: {other:?}"),
    }
}

/// Injects `fault` now and runs until the incidents close: returns when the fault came.
fn until_closed_after(sim: &mut Sim, fault: impl FnOnce(&mut Sim)) -> i64 {
    let at = sim.now();
    fault(sim);
    assert!(sim.run_until(closed, 10_000), "the incident did not close");
    at
}

/// `workers` workers and no spare train "job" on them all until w1 is killed; `wait` ms later,
/// the job waits in recovery for a replacement node.
fn waiting_for_a_replacement(workers: usize, wait: i64) -> Sim {
    let mut sim = cluster(workers, 0);
    train(&mut sim, "job", workers as u32, 15);
    sim.kill("w1");
    sim.run_for(wait);
    let state = &sim.job("job").state;
    assert!(
        matches!(state, JobState::Recovering(RecoveryPhase::Replacing { .. })),
        "{state:?}"
    );
    sim
}

fn closed(sim: &Sim) -> bool {
    !sim.incidents().is_empty() && sim.open_incidents().is_empty()
}

/// Every phase is stamped, in order, no earlier than `fault`.
fn assert_phases_in_order(i: &Incident, fault: i64) {
    let stamps = [
        Some(i.detected_at),
        i.fenced_at,
        i.replaced_at,
        i.relaunched_at,
        i.resumed_at,
    ];
    assert!(
        stamps.iter().all(Option::is_some),
        "a phase is missing: {i:#?}"
    );
    let stamps: Vec<i64> = stamps.into_iter().flatten().collect();
    assert!(stamps[0] >= fault, "detected before the fault: {i:#?}");
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "phases out of order: {i:#?}"
    );
}

#[test]
fn a_killed_host_is_fenced_and_a_spare_takes_its_rank_from_the_newest_checkpoint() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 25);
    assert_eq!(sim.job("job").nodes(), ["w0", "w1", "w2"]);
    let newest = sim
        .newest_checkpoint("job")
        .expect("a checkpoint by step 25");
    assert_eq!(newest.step, 20);
    let killed_at = until_closed_after(&mut sim, |s| s.kill("w1"));

    assert_runs_on(&sim, 2, &["w0", "s0", "w2"]);
    let job = sim.job("job");
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.resumed_from.as_ref().map(|c| c.step), Some(20));
    assert_eq!(fence_cause(&sim, "w1"), &FaultCause::AgentLost);
    assert_eq!(sim.nodes_in("allocated"), ["s0", "w0", "w2"]);
    let i = only_incident_of(&sim, "agent_lost", "w1");
    assert_eq!(i.action, RecoveryAction::ReplaceNode);
    assert_eq!(i.replacement_node_id.as_deref(), Some("s0"));
    assert_eq!(
        (i.from_generation, i.to_generation),
        (Generation(1), Some(Generation(2)))
    );
    assert_eq!(i.resumed_from_step, Some(20));
    assert_phases_in_order(&i, killed_at);
    // The stream closed at once; the job's progress is given a few steps to vouch for w1 (its
    // agent alone might have died), and the other ranks stopped: detected within that window,
    // not after a timeout.
    let step = sim.job("job").step_time_ms as i64;
    let window = 3 * step + sim.config().heartbeat_interval_ms as i64 + sim.config().tick_ms as i64;
    assert!(
        i.detected_at - killed_at <= window,
        "{i:#?} (window {window} ms)"
    );
}

#[test]
fn a_damaged_newest_checkpoint_is_passed_over_for_the_previous_one_with_the_reason_recorded() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 35);
    assert_eq!(sim.newest_checkpoint("job").map(|c| c.step), Some(30));
    assert!(sim.damage_checkpoint("job", 30, "model.pt: 512 bytes, the manifest says 4096"));
    until_closed_after(&mut sim, |s| s.kill("w1"));

    assert_runs_on(&sim, 2, &["w0", "s0", "w2"]);
    assert_eq!(
        sim.job("job").resumed_from.as_ref().map(|c| c.step),
        Some(20)
    );
    let i = only_incident_of(&sim, "agent_lost", "w1");
    assert_eq!(i.resumed_from_step, Some(20));
    assert_eq!(
        i.skipped_checkpoints,
        ["step-30: model.pt: 512 bytes, the manifest says 4096"]
    );
}

#[test]
fn a_killed_worker_restarts_in_place_on_the_same_nodes() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 15);
    let killed_at = until_closed_after(&mut sim, |s| s.kill_worker("w1", Exit::Code(1)));

    assert_runs_on(&sim, 2, &["w0", "w1", "w2"]);
    let job = sim.job("job");
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.restarts, 1);
    assert_eq!(job.resumed_from.as_ref().map(|c| c.step), Some(10));
    assert!(sim.nodes_in("fenced").is_empty());
    assert_eq!(sim.nodes_in("ready"), ["s0"]);
    let i = only_incident_of(&sim, "worker_exited", "w1");
    assert_eq!(i.action, RecoveryAction::RestartInPlace);
    assert_eq!(i.replacement_node_id, None);
    assert_phases_in_order(&i, killed_at);
    assert_restarted_in_place(&sim, "w1");
}

#[test]
fn a_hung_worker_is_caught_after_the_stall_timeout_and_restarted() {
    let mut sim = cluster(3, 0);
    submit_stalling(&mut sim, None);
    assert!(sim.run_until(|s| s.job("job").step >= 15, 10_000));
    let hung_at = sim.now();
    sim.hang_worker("w1");
    assert!(sim.run_until(|s| !s.incidents().is_empty(), 5_000));

    let i = only_incident(&sim);
    assert_eq!(i.cause, "progress_stalled");
    assert_eq!(i.action, RecoveryAction::RestartInPlace);
    // The last step came at most one step (100 ms) before the hang; the tick sees the stall
    // within one tick of the timeout.
    let waited = i.detected_at - hung_at;
    assert!(
        (1_900..=2_100).contains(&waited),
        "detected after {waited} ms"
    );
    // Synchronous ranks stall together and the hang looks like the waiting peers: the incident
    // names a node but says nothing singled it out (see
    // repeated_stalls_do_not_quarantine_a_node_progress_cannot_single_out).
    assert!(["w0", "w1", "w2"].contains(&i.node_id.as_str()));
    assert!(
        i.detail.contains("could not single out a rank"),
        "{}",
        i.detail
    );
    assert!(sim.run_until(closed, 10_000));
    assert_runs_on(&sim, 2, &["w0", "w1", "w2"]);
    assert_eq!(sim.job("job").restarts, 1);
    assert_restarted_in_place(&sim, "w1");
}

#[test]
fn a_node_cut_off_from_the_coordinator_only_keeps_its_ranks_while_the_job_steps() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 15);
    let step = sim.job("job").step;
    // w1's control link is cut; the training's own network is not: the gang keeps stepping.
    sim.cut("w1");
    sim.run_for(5_000);
    assert_no_incident(&sim);
    assert!(sim.nodes_in("fenced").is_empty());
    assert!(
        matches!(sim.node("w1").link, Link::Vouched { .. }),
        "w1's agent counts as lost"
    );
    assert_first_generation_runs(&sim);
    assert_runs_on(&sim, 1, &["w0", "w1", "w2"]);
    assert!(sim.job("job").step > step + 20, "training went on");
    // The link heals: the agent comes back with the same worker, nothing else happens.
    sim.heal("w1");
    assert!(sim.run_until(|s| s.node("w1").link.is_connected(), 5_000));
    sim.run_for(1_000);
    assert_no_incident(&sim);
    assert!(!matches!(sim.node("w1").link, Link::Vouched { .. }));
    assert_eq!(sim.job("job").generation, 1);
}

#[test]
fn a_cut_node_is_fenced_after_the_heartbeat_timeout_and_stays_fenced_when_it_returns() {
    let mut sim = cluster(3, 1);
    // A job that does not let progress vouch for a silent node (see the next test for one
    // that does).
    let request = JobRequest {
        progress_vouches: Some(false),
        ..Sim::job_request("job", 3)
    };
    sim.submit(request, JobParams::default()).unwrap();
    assert!(sim.run_until(|s| s.job("job").step >= 15, 30_000));
    let last_heartbeat = sim.node("w1").last_heartbeat_at;
    let cut_at = sim.now();
    sim.cut("w1");
    assert!(sim.run_until(|s| s.node_state("w1").name() == "fenced", 5_000));
    let fenced_at = sim.entered("w1", "fenced").expect("a node event");
    let silent = fenced_at - last_heartbeat;
    let timeout = sim.config().heartbeat_timeout_ms as i64;
    let tick = sim.config().tick_ms as i64;
    assert!(
        silent > timeout && silent <= timeout + tick,
        "fenced after {silent} ms of silence"
    );
    assert!(fenced_at - cut_at <= timeout + tick);
    assert_eq!(fence_cause(&sim, "w1"), &FaultCause::HeartbeatTimeout);
    assert!(sim.run_until(closed, 10_000));
    let i = only_incident_of(&sim, "heartbeat_timeout", "w1");
    assert_eq!(i.replacement_node_id.as_deref(), Some("s0"));
    assert_phases_in_order(&i, cut_at);
    assert_eq!(sim.job("job").nodes(), ["w0", "s0", "w2"]);
    // The cut worker trained on alone, stuck without its peers.
    assert_eq!(
        sim.worker_of("w1").map(|w| w.generation),
        Some(Generation(1))
    );

    sim.heal("w1");
    assert!(sim.run_until(|s| s.node("w1").link.is_connected(), 2_000));
    sim.run_for(500);
    assert_eq!(sim.node_state("w1").name(), "fenced");
    assert_eq!(sim.worker_of("w1"), None, "the stale worker was stopped");
    assert_eq!(sim.job("job").generation, 2);
}

#[test]
fn a_fatal_health_report_fences_the_node_and_a_spare_replaces_it() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 15);
    let at = until_closed_after(&mut sim, |s| s.inject_fatal_health("w2"));
    assert!(matches!(
        fence_cause(&sim, "w2"),
        FaultCause::HealthFatal(reason) if reason.contains("Xid 79")
    ));
    let i = only_incident_of(&sim, "health_fatal", "w2");
    assert_eq!(i.replacement_node_id.as_deref(), Some("s0"));
    assert_phases_in_order(&i, at);
    assert!(i.detected_at - at <= 10);
    assert_runs_on(&sim, 2, &["w0", "w1", "s0"]);
}

#[test]
fn with_no_spare_left_the_job_waits_and_resumes_when_a_spare_joins() {
    let mut sim = waiting_for_a_replacement(2, 5_000);
    let job = sim.job("job");
    assert!(
        job.message.contains("waiting for a replacement"),
        "{}",
        job.message
    );
    assert_eq!(sim.open_incidents().len(), 1);
    assert_eq!(sim.incidents()[0].phase().name(), "fenced");

    let joined_at = sim.now();
    sim.add_node("late", Role::Spare);
    assert!(sim.run_until(closed, 5_000));
    assert_runs_on(&sim, 2, &["w0", "late"]);
    let i = only_incident(&sim);
    assert_eq!(i.replacement_node_id.as_deref(), Some("late"));
    assert!(i.replaced_at.is_some_and(|t| t >= joined_at));
}

#[test]
fn a_coordinator_restart_mid_training_opens_no_incident_and_keeps_the_generation() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 15);
    let term = sim.cluster().term;
    let step = sim.job("job").step;
    sim.restart_coordinator();
    assert_eq!(sim.cluster().term, term.next());
    assert!(sim.run_until(
        |s| s.cluster().nodes.values().all(|n| n.link.is_connected())
            && s.job("job").step > step + 20,
        10_000
    ));
    sim.run_for(15_000);
    assert_no_incident(&sim);
    assert_first_generation_runs(&sim);
    assert_eq!(sim.nodes_in("allocated"), ["w0", "w1", "w2"]);
    assert_eq!(sim.nodes_in("ready"), ["s0"]);
    assert!(sim.nodes_in("fenced").is_empty());
}

#[test]
fn a_replacement_that_fails_its_deep_check_is_fenced_and_the_next_spare_is_used() {
    let config = CoordinatorConfig {
        check_scripts: vec!["health/gpu".into()],
        ..Default::default()
    };
    let mut sim = cluster_with(config, 2, 2);
    sim.set_check_fails("s0", true);
    train(&mut sim, "job", 2, 15);
    let killed_at = until_closed_after(&mut sim, |s| s.kill("w1"));
    assert!(matches!(
        fence_cause(&sim, "s0"),
        FaultCause::CheckFailed(_)
    ));
    assert_runs_on(&sim, 2, &["w0", "s1"]);
    let i = only_incident(&sim);
    assert_eq!(i.replacement_node_id.as_deref(), Some("s1"));
    assert_eq!(i.rejected_candidates.len(), 1, "{i:#?}");
    assert!(i.rejected_candidates[0].starts_with("s0: "), "{i:#?}");
    assert_phases_in_order(&i, killed_at);
}

#[test]
fn a_job_runs_to_its_last_step_and_gives_its_nodes_back() {
    let mut sim = cluster(2, 0);
    let request = JobRequest {
        total_steps: 30,
        ..Sim::job_request("job", 2)
    };
    sim.submit(request, JobParams::default()).expect("accepted");
    assert!(sim.run_until(|s| s.job("job").state == JobState::Succeeded, 10_000));
    assert_eq!(sim.job("job").step, 30);
    assert_eq!(sim.nodes_in("ready"), ["w0", "w1"]);
    assert!(sim.incidents().is_empty());
    assert_eq!(
        sim.checkpoints("job")
            .iter()
            .map(|c| c.step)
            .collect::<Vec<_>>(),
        [10, 20, 30]
    );
}

#[test]
fn a_short_pause_is_ridden_out_and_a_long_one_fences_the_node() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 15);
    sim.pause("w1", 1_000);
    sim.run_for(3_000);
    assert!(sim.incidents().is_empty());
    assert_eq!(sim.job("job").generation, 1);

    sim.pause("w1", 4_000);
    assert!(sim.run_until(closed, 15_000));
    assert_eq!(sim.job("job").nodes(), ["w0", "s0", "w2"]);
    assert_eq!(only_incident(&sim).cause, "heartbeat_timeout");
    // It wakes, learns its stream was closed, says hello again and is told to stop.
    assert!(sim.run_until(|s| s.node("w1").link.is_connected(), 5_000));
    sim.run_for(200);
    assert_eq!(sim.node_state("w1").name(), "fenced");
    assert_eq!(sim.worker_of("w1"), None);
}

#[test]
fn an_agent_restarted_in_place_keeps_its_worker_and_the_job_keeps_training() {
    let mut sim = cluster(2, 0);
    train(&mut sim, "job", 2, 15);
    let pid = sim.worker_of("w1").map(|w| w.pid);
    sim.restart_agent("w1").expect("accepted");
    let step = sim.job("job").step;
    assert!(sim.run_until(
        |s| s.node("w1").link.is_connected() && s.job("job").step > step + 20,
        5_000
    ));
    assert!(sim.incidents().is_empty());
    assert_eq!(sim.job("job").generation, 1);
    assert_eq!(sim.worker_of("w1").map(|w| w.pid), pid);
}

#[test]
fn a_cut_nodes_zombie_checkpoints_are_never_resumed_from() {
    // One rank, no spare: the cut node's worker keeps training alone and writes checkpoints
    // after the coordinator fenced its generation, while the job waits for a replacement.
    let mut sim = cluster(1, 0);
    train(&mut sim, "job", 1, 15);
    sim.cut("w0");
    assert!(sim.run_until(|s| !s.job("job").fenced_generations.is_empty(), 5_000));
    let fence = sim.job("job").fenced_generations[0];
    assert_eq!(fence.generation, 1);
    sim.run_for(3_000);
    let zombie: Vec<u64> = sim
        .checkpoints("job")
        .iter()
        .filter(|c| c.generation == 1 && c.written_at > fence.fenced_at)
        .map(|c| c.step)
        .collect();
    assert!(zombie.len() >= 2, "the zombie wrote {zombie:?}");
    let before_fence = sim
        .checkpoints("job")
        .into_iter()
        .filter(|c| c.written_at <= fence.fenced_at)
        .map(|c| c.step)
        .max();
    assert!(before_fence < zombie.first().copied());

    sim.add_node("late", Role::Spare);
    assert!(sim.run_until(closed, 5_000));
    assert_runs_on(&sim, 2, &["late"]);
    let resumed_from = sim.job("job").resumed_from.as_ref().map(|c| c.step);
    assert_eq!(resumed_from, before_fence);
}

#[test]
fn a_skewed_agent_clock_does_not_skew_the_incident() {
    let mut sim = Sim::new(CoordinatorConfig::default());
    sim.add_node("w0", Role::Worker);
    sim.add_node_with(
        "w1",
        Role::Worker,
        NodeOptions {
            clock_offset_ms: 300_000,
            ..Default::default()
        },
    );
    assert!(sim.run_until(|s| s.nodes_in("ready").len() == 2, 2_000));
    train(&mut sim, "job", 2, 15);
    assert!((299_000..=300_000).contains(&sim.node("w1").clock_offset_ms));
    let at = until_closed_after(&mut sim, |s| s.kill_worker("w1", Exit::Signal(9)));
    let i = only_incident(&sim);
    assert!(
        (at - 5..=i.detected_at).contains(&i.fault_at),
        "fault at {} for a kill at {at}",
        i.fault_at
    );
}

#[test]
fn the_same_inputs_give_the_same_run() {
    fn run() -> Vec<(i64, String)> {
        let mut sim = cluster(4, 2);
        train(&mut sim, "a", 2, 5);
        train(&mut sim, "b", 2, 5);
        sim.kill("w0");
        sim.cut("w3");
        sim.run_for(10_000);
        sim.events()
            .iter()
            .map(|e| (e.at, e.message.clone()))
            .collect()
    }
    assert_eq!(run(), run());
}

#[test]
fn a_coordinator_pause_shorter_than_the_heartbeat_timeout_changes_nothing() {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 15);
    sim.pause_coordinator(1_000);
    sim.run_for(5_000);
    assert!(sim.stats().ticks_missed >= 9);
    assert!(sim.incidents().is_empty());
    assert!(sim.nodes_in("fenced").is_empty());
    assert_eq!(sim.job("job").generation, 1);
}

/// The coordinator's own stall (a GC-like pause, a slow disk under the state store, a stopped
/// VM) is not the nodes' fault: when it wakes, the silence it measured is its own.
///
/// Without the detector's discount of unobserved time, the missed tick that fires first on
/// waking would see every node silent past the heartbeat timeout and fence them all.
#[test]
fn a_coordinator_pause_longer_than_the_heartbeat_timeout_fences_no_one() {
    for pause in [2_100, 3_000, 5_000, 20_000, 120_000] {
        a_coordinator_pause_of(pause);
    }
}

fn a_coordinator_pause_of(pause: i64) {
    let mut sim = cluster(3, 1);
    train(&mut sim, "job", 3, 15);
    let step = sim.job("job").step;
    sim.pause_coordinator(pause);
    sim.run_for(pause + 10_000);
    assert!(
        sim.nodes_in("fenced").is_empty(),
        "fenced: {:?}",
        sim.nodes_in("fenced")
    );
    assert_no_incident(&sim);
    assert_first_generation_runs(&sim);
    let job = sim.job("job");
    assert!(
        job.step > step + 50,
        "pause {pause}: step {} from {step}",
        job.step
    );
    assert_eq!(sim.nodes_in("allocated"), ["w0", "w1", "w2"]);
}

#[test]
fn a_second_node_fault_while_the_job_waits_for_a_replacement_gets_its_incident_closed() {
    let mut sim = waiting_for_a_replacement(3, 3_000);
    let second_at = sim.now();
    sim.kill("w2");
    sim.run_for(1_000);
    assert_eq!(sim.incidents().len(), 2);
    assert_eq!(
        sim.incidents()[1].fenced_at,
        Some(second_at + 1),
        "the second node is fenced at once: the job's workers are already stopped"
    );
    sim.add_node("late0", Role::Spare);
    sim.add_node("late1", Role::Spare);
    assert!(sim.run_until(closed, 5_000), "{:#?}", sim.incidents());
    assert_runs_on(&sim, 2, &["w0", "late0", "late1"]);
    for i in sim.incidents() {
        assert_phases_in_order(i, second_at - 3_000);
        assert_eq!(i.to_generation, Some(Generation(2)));
    }
}

#[test]
fn an_incident_whose_relaunch_fails_before_any_progress_closes_with_the_next_generation() {
    let mut sim = cluster(3, 1);
    let params = JobParams {
        step_ms: 1_000,
        checkpoint_every: 2,
    };
    sim.submit(Sim::job_request("job", 3), params)
        .expect("accepted");
    assert!(sim.run_until(|s| s.job("job").step >= 5, 10_000));
    sim.kill("w1");
    assert!(sim.run_until(
        |s| s
            .incidents()
            .first()
            .is_some_and(|i| i.relaunched_at.is_some()),
        5_000
    ));
    // Generation 2 runs but has made no step yet when one of its workers dies.
    assert_eq!(sim.job("job").generation, 2);
    assert_eq!(
        sim.gang_step_of("job", 2),
        Some(4),
        "resumed from step 4, no step since"
    );
    sim.kill_worker("s0", Exit::Signal(11));
    // Both incidents close with the first step of generation 3.
    assert!(sim.run_until(closed, 10_000), "{:#?}", sim.incidents());
    assert_eq!(sim.job("job").generation, 3);
    let [first, second] = sim.incidents() else {
        panic!("{:#?}", sim.incidents())
    };
    assert_eq!(first.cause, "agent_lost");
    assert_eq!(second.cause, "worker_exited");
    assert_eq!(
        first.to_generation,
        Some(Generation(3)),
        "it followed the job to generation 3"
    );
    assert_eq!(second.to_generation, Some(Generation(3)));
}

/// An operator cordons a node that runs a job (the job keeps running on it), then uncordons
/// it: the node must stay the job's.
///
/// Today `uncordon` sends a connected node through the hello path, Cordoned → Joining → Ready,
/// while the job still runs on it: the next job submitted takes it, and the node holds ranks
/// in two jobs (the sim's invariant fails at the uncordon: a rank on a node that is ready).
#[test]
fn an_uncordoned_node_that_still_runs_a_job_stays_allocated_to_it() {
    use holdfast_core::cluster::Input;
    let mut sim = cluster(3, 0);
    train(&mut sim, "a", 2, 5);
    sim.request(|request| Input::Cordon {
        request,
        node: "w1".into(),
        reason: "maintenance".into(),
    })
    .expect("cordoned");
    sim.run_for(1_000);
    assert_eq!(sim.node_state("w1").name(), "cordoned");
    assert_eq!(sim.job("a").state, JobState::Running);
    sim.request(|request| Input::Uncordon {
        request,
        node: "w1".into(),
    })
    .expect("uncordoned");
    sim.run_for(1_000);
    assert_eq!(
        sim.node_state("w1"),
        &NodeState::Allocated { job_id: "a".into() }
    );
    let refused = sim.submit(Sim::job_request("b", 2), JobParams::default());
    assert!(refused.is_err(), "only w2 is free");
}

/// A worker that hangs stalls its whole synchronous gang: every rank stops reporting at the
/// same step, so progress cannot tell which rank hung. When nothing else singles it out either
/// (every rank's process waits alike), repeated stalls must not quarantine a node: the stall is
/// restarted in place and counted against no node.
#[test]
fn repeated_stalls_do_not_quarantine_a_node_progress_cannot_single_out() {
    let mut sim = cluster(3, 1);
    submit_stalling(&mut sim, Some(10));
    for _ in 0..3 {
        settle(&mut sim);
        sim.hang_worker("w1");
        sim.run_for(3_000);
    }
    sim.run_for(10_000);
    assert_eq!(
        sim.nodes_in("fenced"),
        Vec::<String>::new(),
        "{:?}",
        sim.incidents()
            .iter()
            .map(|i| (&i.node_id, &i.cause))
            .collect::<Vec<_>>()
    );
}

/// A SIGSTOPped or spinning worker stalls its gang too, but its agent's evidence singles it
/// out: whatever its position, the incident names its node, and repeated stalls quarantine
/// that node only.
#[test]
fn a_stopped_or_spinning_rank_is_named_and_only_its_node_is_quarantined() {
    for stuck in ["w0", "w1", "w2"] {
        for spin in [false, true] {
            let mut sim = cluster(3, 1);
            submit_stalling(&mut sim, Some(10));
            let quarantine_after = sim.config().quarantine_after as usize;
            for round in 0..quarantine_after {
                settle(&mut sim);
                if spin {
                    sim.spin_worker(stuck);
                } else {
                    sim.stop_worker(stuck);
                }
                assert!(sim.run_until(|s| s.incidents().len() > round, 5_000));
                let i = sim.incidents()[round].clone();
                assert_eq!(i.node_id, stuck, "spin {spin}, round {round}: {}", i.detail);
                let why = if spin { "spins" } else { "stopped" };
                assert!(i.detail.contains(why), "{}", i.detail);
                assert_eq!(i.ranks.len(), 3);
            }
            sim.run_for(10_000);
            // Every rank's agent answered the stack dump (the sim's workers have no Python).
            for i in sim.incidents() {
                assert!(
                    i.ranks.iter().all(|r| r.stacks.contains("not available")),
                    "{:?}",
                    i.ranks
                );
            }
            assert_eq!(sim.nodes_in("fenced"), vec![stuck.to_string()]);
            assert!(!sim.job("job").nodes().contains(&NodeId::from(stuck)));
        }
    }
}

#[test]
fn a_host_dying_during_the_reconnect_grace_is_blamed_not_the_ranks_waiting_on_it() {
    // The stall timeout (2 s) is shorter than the reconnect grace (10 s): the ranks that come
    // back stall waiting on the one that never does, and must not be blamed for it.
    let mut sim = cluster(3, 1);
    submit_stalling(&mut sim, None);
    assert!(sim.run_until(|s| s.job("job").step >= 15, 30_000));
    sim.restart_coordinator();
    sim.kill("w1");
    assert!(sim.run_until(
        |s| s.job("job").generation == Generation(2) && s.job("job").state == JobState::Running,
        30_000
    ));
    sim.run_for(5_000);
    let i = only_incident_of(&sim, "agent_lost", "w1");
    assert_eq!(i.replacement_node_id, Some(NodeId::from("s0")));
    assert_runs_on(&sim, 2, &["w0", "s0", "w2"]);
}

/// A host dies and its peers' collectives fail with it: a survivor's exit can reach the core
/// before the host's loss does, or after. Either way round, and whether the loss shows as a
/// closed stream or only as silence, there is one incident, on the lost host, and the survivor
/// is charged nothing.
#[test]
fn a_survivors_exit_that_comes_with_its_peers_loss_is_blamed_on_the_lost_host() {
    // (the survivor's exit is seen first, the host's stream is cut first, ms between them)
    for (exit_first, silent, gap_ms) in [
        (true, false, 0),
        (false, false, 0),
        (false, false, 50),
        (false, true, 0),
        (false, true, 300),
        (false, true, 1_500),
    ] {
        let mut sim = cluster(3, 1);
        train(&mut sim, "job", 3, 25);
        let host_dies = |s: &mut Sim| {
            if silent {
                s.cut("w1");
            }
            s.kill("w1");
        };
        until_closed_after(&mut sim, |s| {
            if exit_first {
                s.kill_worker("w0", Exit::Code(1));
                host_dies(s);
            } else {
                host_dies(s);
                s.run_for(gap_ms);
                s.kill_worker("w0", Exit::Code(1));
            }
        });
        let case = format!("exit first {exit_first}, silent {silent}, gap {gap_ms} ms");
        let cause = if silent {
            "heartbeat_timeout"
        } else {
            "agent_lost"
        };
        let i = only_incident(&sim);
        assert_eq!(
            (i.cause.as_str(), i.node_id.as_str()),
            (cause, "w1"),
            "{case}"
        );
        assert_eq!(i.action, RecoveryAction::ReplaceNode, "{case}");
        assert!(
            i.detail.contains("worker_exited on w0 followed from it"),
            "{case}: {}",
            i.detail
        );
        assert_eq!(i.replacement_node_id.as_deref(), Some("s0"), "{case}");
        assert_runs_on(&sim, 2, &["w0", "s0", "w2"]);
        assert_eq!(sim.job("job").restarts, 0, "{case}: no restart spent on w0");
        assert!(sim.job("job").worker_faults.is_empty(), "{case}");
        assert_eq!(fence_cause(&sim, "w1").code(), cause, "{case}");
        assert_eq!(sim.nodes_in("fenced"), ["w1"], "{case}");
    }
}

/// With its restart budget spent, a job still outlives a host loss whose survivor's exit came
/// first: the exit waits for the other ranks to stop, the loss takes it over, and a spare takes
/// the lost rank. A plain crash with the budget spent still fails the job.
#[test]
fn a_job_with_its_restart_budget_spent_outlives_a_host_loss_but_not_a_crash() {
    for host_lost in [true, false] {
        let mut sim = cluster(3, 1);
        let request = JobRequest {
            restart_budget: 1,
            ..Sim::job_request("job", 3)
        };
        sim.submit(request, JobParams::default()).expect("accepted");
        settle(&mut sim);
        // The one restart goes on a crash of w2.
        until_closed_after(&mut sim, |s| s.kill_worker("w2", Exit::Code(1)));
        settle(&mut sim);
        assert_eq!(sim.job("job").restarts, 1);

        sim.kill_worker("w0", Exit::Code(1));
        if host_lost {
            sim.kill("w1");
            let relaunched = |s: &Sim| s.job("job").generation == Generation(3) && closed(s);
            assert!(
                sim.run_until(relaunched, 10_000),
                "no recovery: {:?}",
                sim.job("job").state
            );
            assert_runs_on(&sim, 3, &["w0", "s0", "w2"]);
            let last = sim.incidents().last().cloned().expect("an incident");
            assert_eq!(
                (last.cause.as_str(), last.node_id.as_str()),
                ("agent_lost", "w1")
            );
            assert_eq!(last.action, RecoveryAction::ReplaceNode);
        } else {
            assert!(sim.run_until(|s| s.job("job").state.is_terminal(), 10_000));
            match &sim.job("job").state {
                JobState::Failed { reason } => {
                    assert!(reason.contains("restart budget of 1 exhausted"), "{reason}")
                }
                other => panic!("expected failed, got {other:?}"),
            }
            assert_eq!(sim.nodes_in("fenced"), Vec::<NodeId>::new());
        }
    }
}

/// With a grace for lost agents (a crashed agent may come back to its running workers), a dead
/// host is declared lost only when the grace ends, long after its peer's exit: the exit is still
/// the lost host's incident, because the host had been silent since before it.
#[test]
fn a_survivors_exit_is_blamed_on_a_host_declared_lost_only_after_a_grace() {
    let config = CoordinatorConfig {
        agent_lost_grace_ms: 10_000,
        ..CoordinatorConfig::default()
    };
    let mut sim = cluster_with(config, 3, 1);
    train(&mut sim, "job", 3, 25);
    sim.kill("w1");
    sim.run_for(20);
    sim.kill_worker("w0", Exit::Code(1));
    let replaced = |s: &Sim| s.job("job").nodes() == ["w0", "s0", "w2"] && closed(s);
    assert!(sim.run_until(replaced, 30_000), "{:?}", sim.job("job"));
    let i = only_incident_of(&sim, "agent_lost", "w1");
    assert!(
        i.detail.contains("worker_exited on w0 followed from it"),
        "{}",
        i.detail
    );
    assert_eq!(i.replacement_node_id.as_deref(), Some("s0"));
    assert_eq!(sim.job("job").restarts, 0);
}
