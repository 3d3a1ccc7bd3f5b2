//! In-process restarts (`restart: in_process`): the survivors' workers are kept and re-form
//! the group in place, only the failed rank is launched, no step is lost; a fault or a timeout
//! while the group re-forms falls back to relaunching every rank. A hung rank is stopped and
//! launched anew while the others re-form; a node fault (lost host, cut-off host, fatal XID)
//! gets a spare while the survivor keeps its process.

use super::*;
use crate::incident::RecoveryAction;
use crate::job::JobState;

/// Checkpoints far apart: a relaunch from one would go back many steps, a re-form none.
const PARAMS: JobParams = JobParams {
    step_ms: 100,
    checkpoint_every: 1000,
};

/// A 2-node in-process job (`w0`, `w1`, spare `s0`) past step 25.
fn training() -> Sim {
    let mut sim = Sim::new(CoordinatorConfig::default());
    sim.add_nodes("w", 2, Role::Worker);
    sim.add_nodes("s", 1, Role::Spare);
    assert!(sim.run_until(|s| s.nodes_in("ready").len() == 3, 1_000));
    let request = JobRequest {
        nproc_per_node: Some(1),
        restart: "in_process".into(),
        stall_timeout_s: 2.0,
        ..Sim::job_request("job", 2)
    };
    sim.submit(request, PARAMS).expect("accepted");
    assert!(sim.run_until(|s| s.job("job").step >= 25, 10_000));
    sim
}

fn pid(sim: &Sim, node: &str) -> Option<u32> {
    sim.agents.get(node)?.worker.as_ref().map(|w| w.pid)
}

/// Every rank stepped in `generation` (the re-form, if any, is over).
fn stepped_in(sim: &Sim, generation: u64) -> bool {
    let job = sim.job("job");
    job.generation.get() == generation
        && job.state == JobState::Running
        && job.ranks.iter().all(|r| r.progressed)
}

#[test]
fn a_killed_worker_is_relaunched_alone_and_the_survivor_re_forms_with_no_step_lost() {
    let mut sim = training();
    let survivor = pid(&sim, "w0").expect("w0 trains");
    let victim = pid(&sim, "w1").expect("w1 trains");
    let at_fault = sim.job("job").step;
    sim.kill_worker("w1", Exit::Signal(9));
    assert!(sim.run_until(|s| stepped_in(s, 2), 10_000));
    // The survivor's process joined generation 2; only the failed rank got a new one.
    assert_eq!(pid(&sim, "w0"), Some(survivor));
    assert!(pid(&sim, "w1").is_some_and(|p| p != victim));
    let job = sim.job("job");
    assert!(!job.reforming && job.ranks.iter().all(|r| !r.kept));
    // No step lost: the new generation goes on past the fault's step, not from a checkpoint.
    assert!(
        job.ranks.iter().all(|r| r.last_step > at_fault),
        "{:?} vs {at_fault}",
        job.ranks
    );
    // The incident says the recovery resumed where the survivor was, not at a checkpoint.
    let incident = sim.incidents_of("job")[0];
    assert!(incident.resumed_from_step >= Some(at_fault), "{incident:?}");
    assert!(incident.resumed_at.is_some());
    assert_eq!(sim.violations(), Vec::<String>::new());
}

/// A node fault on w1 (`inject`): s0 replaces it in generation 2 and w0 keeps its process, no
/// step lost.
fn assert_replaced_with_the_survivor_kept(inject: fn(&mut Sim), cause: &[&str]) {
    let mut sim = training();
    let survivor = pid(&sim, "w0").expect("w0 trains");
    let at_fault = sim.job("job").step;
    inject(&mut sim);
    let done = sim.run_until(|s| stepped_in(s, 2), 120_000);
    assert!(done, "{:?} {:?}", sim.job("job"), sim.incidents_of("job"));
    let job = sim.job("job");
    assert_eq!(job.ranks[1].node, "s0");
    assert_eq!(pid(&sim, "w0"), Some(survivor));
    assert!(pid(&sim, "s0").is_some());
    assert!(job.ranks.iter().all(|r| r.last_step > at_fault));
    let incident = sim.incidents_of("job")[0];
    assert!(cause.contains(&incident.cause.as_str()), "{incident:?}");
    assert!(incident.resumed_from_step >= Some(at_fault), "{incident:?}");
    assert_eq!(sim.violations(), Vec::<String>::new());
}

#[test]
fn a_killed_host_is_replaced_and_the_survivor_keeps_its_process() {
    let lost = ["agent_lost", "heartbeat_timeout"];
    assert_replaced_with_the_survivor_kept(|sim| sim.kill("w1"), &lost);
}

#[test]
fn a_cut_off_host_is_replaced_and_the_survivor_keeps_its_process() {
    let lost = ["agent_lost", "heartbeat_timeout"];
    // Cut off from everything: from the coordinator, and from its peers, whose collective
    // then waits on it as on a hung rank.
    let cut_off = |sim: &mut Sim| {
        sim.cut("w1");
        sim.hang_worker("w1");
    };
    assert_replaced_with_the_survivor_kept(cut_off, &lost);
}

#[test]
fn a_fatal_xid_replaces_the_host_and_the_survivor_keeps_its_process() {
    let fatal = |sim: &mut Sim| sim.inject_fatal_health("w1");
    assert_replaced_with_the_survivor_kept(fatal, &["health_fatal"]);
}

/// A SIGSTOPped rank (its agent reports the process stopped, so the stall is blamed on it) is
/// stopped and launched anew in generation 2 — it could never take the re-form notice — while
/// the survivor keeps its process and the job goes on from the survivor's step.
#[test]
fn a_hung_rank_is_stopped_and_relaunched_alone_while_the_survivor_re_forms() {
    let mut sim = training();
    let survivor = pid(&sim, "w0").expect("w0 trains");
    let hung = pid(&sim, "w1").expect("w1 trains");
    let at_fault = sim.job("job").step;
    sim.stop_worker("w1");
    assert!(sim.run_until(|s| stepped_in(s, 2), 30_000));
    assert_eq!(pid(&sim, "w0"), Some(survivor));
    assert!(pid(&sim, "w1").is_some_and(|p| p != hung));
    let incident = sim.incidents_of("job")[0];
    assert_eq!(incident.cause, "progress_stalled", "{incident:?}");
    assert_eq!(incident.node_id, "w1", "{incident:?}");
    assert_eq!(incident.action, RecoveryAction::RestartInPlace);
    assert!(incident.resumed_from_step >= Some(at_fault), "{incident:?}");
    let job = sim.job("job");
    assert!(job.ranks.iter().all(|r| r.last_step > at_fault));
    assert_eq!(sim.violations(), Vec::<String>::new());
}

/// A stall nothing pins on a rank (every process looks alike, waiting): no process is trusted
/// to re-form, every rank is relaunched from the checkpoint in generation 2.
#[test]
fn a_stall_blamed_on_no_rank_relaunches_every_rank() {
    let mut sim = training();
    let survivor = pid(&sim, "w0").expect("w0 trains");
    sim.hang_worker("w1");
    assert!(sim.run_until(|s| stepped_in(s, 2), 30_000));
    let incident = sim.incidents_of("job")[0];
    assert_eq!(incident.cause, "progress_stalled", "{incident:?}");
    assert!(pid(&sim, "w0").is_some_and(|p| p != survivor));
    assert!(sim.job("job").ranks.iter().all(|r| r.last_step < 25));
    assert_eq!(sim.violations(), Vec::<String>::new());
}

#[test]
fn a_second_fault_while_the_group_re_forms_falls_back_to_relaunching_every_rank() {
    let mut sim = training();
    let survivor = pid(&sim, "w0").expect("w0 trains");
    sim.kill_worker("w1", Exit::Signal(9));
    assert!(sim.run_until(|s| s.job("job").reforming, 5_000));
    // The kept survivor fails before the group stepped in the new generation.
    sim.kill_worker("w0", Exit::Code(1));
    assert!(sim.run_until(|s| stepped_in(s, 3), 10_000));
    let job = sim.job("job");
    assert!(!job.reforming);
    assert!(pid(&sim, "w0").is_some_and(|p| p != survivor));
    // A relaunch resumes from the (only) checkpoint: the fresh start.
    assert!(
        job.ranks.iter().all(|r| r.last_step < 25),
        "{:?}",
        job.ranks
    );
    assert_eq!(sim.violations(), Vec::<String>::new());
}

#[test]
fn a_re_form_that_never_steps_falls_back_to_a_relaunch_after_the_start_up_grace() {
    let mut sim = training();
    let survivor = pid(&sim, "w0").expect("w0 trains");
    // The replacement never starts: the group cannot re-form.
    if let Some(agent) = sim.agents.get_mut("w1") {
        agent.options.start_delay_ms = 3_600_000;
    }
    sim.kill_worker("w1", Exit::Signal(9));
    assert!(sim.run_until(|s| s.job("job").reforming, 5_000));
    let grace = sim.config().startup_grace_ms as i64;
    assert!(sim.run_until(|s| s.job("job").generation.get() == 3, grace + 5_000));
    let job = sim.job("job");
    assert!(!job.reforming && job.ranks.iter().all(|r| !r.kept));
    assert!(job.message.contains("did not re-form in place") || job.state != JobState::Running);
    // The survivor was stopped for the relaunch.
    assert!(pid(&sim, "w0").is_some_and(|p| p != survivor));
}

#[test]
fn a_relaunch_job_still_stops_the_survivors() {
    let mut sim = Sim::new(CoordinatorConfig::default());
    sim.add_nodes("w", 2, Role::Worker);
    assert!(sim.run_until(|s| s.nodes_in("ready").len() == 2, 1_000));
    sim.submit(Sim::job_request("job", 2), PARAMS)
        .expect("accepted");
    assert!(sim.run_until(|s| s.job("job").step >= 25, 10_000));
    let survivor = pid(&sim, "w0").expect("w0 trains");
    sim.kill_worker("w1", Exit::Signal(9));
    assert!(sim.run_until(|s| stepped_in(s, 2), 10_000));
    assert!(pid(&sim, "w0").is_some_and(|p| p != survivor));
    assert!(sim.job("job").ranks.iter().all(|r| r.last_step < 25));
}

/// A host dies and its peer's worker exits with it (its collective failed on the dead peer),
/// the exit seen first: the survivor's exit is the lost host's fault — one incident, on the
/// lost host, and a spare takes its rank — whether the loss shows at once (a closed stream) or
/// only at the heartbeat timeout, after the re-form already began.
#[test]
fn a_survivors_exit_that_comes_with_a_host_loss_is_charged_to_the_lost_host() {
    for silent in [false, true] {
        let mut sim = training();
        sim.kill_worker("w0", Exit::Code(1));
        if silent {
            sim.cut("w1");
        }
        sim.kill("w1");
        let replaced = |s: &Sim| {
            s.job("job").nodes() == ["w0", "s0"] && stepped_in(s, s.job("job").generation.get())
        };
        assert!(
            sim.run_until(replaced, 20_000),
            "silent {silent}: {:?}",
            sim.job("job")
        );
        let incidents: Vec<_> = (sim.incidents().iter())
            .map(|i| (i.cause.as_str(), i.node_id.as_str(), i.action))
            .collect();
        let cause = if silent {
            "heartbeat_timeout"
        } else {
            "agent_lost"
        };
        assert_eq!(
            incidents,
            [(cause, "w1", RecoveryAction::ReplaceNode)],
            "silent {silent}"
        );
        assert_eq!(sim.job("job").restarts, 0, "silent {silent}");
    }
}
