//! End-to-end tier, the fault matrix: `examples/train_ddp.py` through real torchrun (gloo, CPU)
//! on network-namespace hosts, checkpoints in a real S3 server, one real fault per test. Each
//! asserts the job resumes from the latest complete checkpoint and reaches its final step.
//! The in-process restart test runs `examples/train_inprocess.py` once without a fault and then
//! once per fault (worker killed, worker hung, fatal XID, host cut off) in one cluster, each
//! checked against the fault-free run's weights.
//!
//! Needs root, `scripts/setup/40-torch.sh` and `41-s3.sh` (skipped without them unless
//! HOLDFAST_TEST_STRICT=1). The cases run one at a time: torch on 2 cores leaves no room for two.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use holdfast_testkit::e2e::{
    E2eFault, E2eLauncher, FaultRun, Injection, JobOptions, NetnsCluster, Tools,
};
use holdfast_testkit::{self as kit, holdfast_exe, Rig, Scratch};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A whole run should take about a minute; this bounds a stuck one.
const JOB_DEADLINE: Duration = Duration::from_secs(300);

struct Case {
    /// Names the test's directory and checkpoint prefix.
    name: &'static str,
    fault: E2eFault,
    spares: u32,
    agent_args: &'static [&'static str],
    coordinator_args: Vec<String>,
    /// Extra agent flags per node (given the test's directory).
    node_args: fn(&Path, &str) -> Vec<String>,
    launcher: E2eLauncher,
}

impl Case {
    fn new(name: &'static str, fault: E2eFault, spares: u32) -> Case {
        Case {
            name,
            fault,
            spares,
            agent_args: &[],
            coordinator_args: Vec::new(),
            node_args: |_, _| Vec::new(),
            launcher: E2eLauncher::Torchrun,
        }
    }
}

/// The lab of `case` in `dir`: a coordinator, S3, and agents on node-1, node-2 and the spares.
fn start_cluster(tools: Tools, case: &Case, dir: &Path) -> NetnsCluster {
    let coordinator_args: Vec<&str> = case.coordinator_args.iter().map(String::as_str).collect();
    let mut cluster =
        NetnsCluster::start(tools, dir, &coordinator_args).expect("starting the cluster");
    let nodes = ["node-1", "node-2"].map(|n| (n.to_string(), "worker"));
    let spares = (1..=case.spares).map(|i| (format!("spare-{i}"), "spare"));
    for (node, role) in nodes.into_iter().chain(spares) {
        let mut args: Vec<String> = case.agent_args.iter().map(|a| a.to_string()).collect();
        args.extend((case.node_args)(dir, &node));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.start_agent(&node, role, &args).unwrap();
    }
    cluster
}

/// The lab of `case` in its own scratch directory (`e2e-<name>`), and the options of its
/// fault-free reference run: 30 steps under `launcher`, checkpoints under `<name>-reference`.
fn lab_with_reference(
    tools: Tools,
    case: &Case,
    launcher: E2eLauncher,
) -> (Scratch, NetnsCluster, JobOptions) {
    let dir = Scratch::new(&format!("e2e-{}", case.name));
    let cluster = start_cluster(tools, case, &dir);
    let reference = JobOptions {
        steps: 30,
        prefix: format!("{}-reference", case.name),
        launcher,
        ..Default::default()
    };
    (dir, cluster, reference)
}

/// Runs the job on node-1 and node-2 (plus spares) with `case.fault` injected on node-2 after
/// the second checkpoint; `on_message` sees each new job message.
fn run_case(
    case: Case,
    on_message: impl FnMut(&mut NetnsCluster, &pb::Job),
) -> Option<(FaultRun, JobOptions, Vec<String>)> {
    let tools = Tools::for_tests(holdfast_exe!())?;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new(&format!("e2e-{}", case.name));
    let mut cluster = start_cluster(tools, &case, &dir);
    let options = JobOptions {
        steps: 30,
        prefix: case.name.to_string(),
        launcher: case.launcher,
        ..Default::default()
    };
    let spec = cluster.job_spec(&options);
    let injection = Injection {
        fault: case.fault,
        after_step: options.ckpt_every * 2 + 1,
        node: Some("node-2".into()),
    };
    let ready = 2 + case.spares as usize;
    let run = cluster
        .control(async |cluster| {
            cluster
                .wait_ready(ready, Duration::from_secs(30))
                .await
                .unwrap();
            cluster
                .run_job(spec, Some(injection), JOB_DEADLINE, on_message)
                .await
                .unwrap()
        })
        .unwrap();
    println!(
        "{} → {} (incidents: {:?}; messages: {:?})",
        case.fault.name(),
        run.json(),
        run.incidents
            .iter()
            .map(|i| (&i.cause, &i.node_id, i.resumed_from_step, &i.detail))
            .collect::<Vec<_>>(),
        run.messages
    );
    if run.job.state != "succeeded" {
        cluster.print_log_tails(&["coordinator", "node-1", "node-2"]);
    }
    // Once the job is over no training process may be left behind (a hung worker in a session
    // of its own included) — except on a host that was cut off, which nothing could reach.
    let cut_off = [E2eFault::HostPartition, E2eFault::HostLostPeersExit];
    if run.job.state == "succeeded" && !cut_off.contains(&case.fault) {
        let hosts: Vec<String> = cluster.lab.hosts().map(|h| h.name.clone()).collect();
        kit::wait_for_blocking(Duration::from_secs(5), || {
            let left: Vec<(&String, Vec<i32>)> = hosts
                .iter()
                .map(|host| (host, cluster.training_processes(host).unwrap()))
                .filter(|(_, pids)| !pids.is_empty())
                .collect();
            kit::check(left.is_empty(), || {
                format!("training processes left: {left:?}")
            })
        });
    }
    let agent_logs = ["node-1", "node-2"]
        .map(|node| std::fs::read_to_string(cluster.log_path(node)).unwrap_or_default())
        .to_vec();
    drop(cluster);
    Some((run, options, agent_logs))
}

/// The job succeeded at its last step, and the fault's incident has `cause`, resumed from the
/// newest complete checkpoint at the fault (or one written while the fault was being handled,
/// never one past the fault's step), and saw progress past it.
fn assert_recovered(run: &FaultRun, options: &JobOptions, causes: &[&str]) -> pb::Incident {
    assert!(
        run.fault_at > 0,
        "the fault was never injected: {:?}",
        run.job
    );
    assert_eq!(
        run.job.state,
        "succeeded",
        "{}: {}",
        run.fault.name(),
        run.job.message
    );
    assert_eq!(
        run.job.step, options.steps,
        "the job did not reach its last step"
    );
    let incident = run.incident().cloned().expect("an incident for the fault");
    assert!(
        causes.contains(&incident.cause.as_str()),
        "cause {} not in {causes:?}",
        incident.cause
    );
    let at_fault = run
        .checkpoint_at_fault
        .expect("a checkpoint existed at the fault");
    let from = incident.resumed_from_step;
    assert!(
        from >= at_fault
            && from <= run.fault_step
            && (from % options.ckpt_every == 0 || incident.state_tier == "memory"),
        "resumed from step {from}; the latest complete checkpoint at the fault was {at_fault} (fault at step {})",
        run.fault_step
    );
    assert!(
        incident.resumed_unix_ms > 0,
        "no progress past the checkpoint was recorded"
    );
    assert!(incident.detected_unix_ms >= incident.fault_unix_ms.min(run.fault_at));
    incident
}

/// `case`'s fault fenced node-2 with an incident of one of `causes`, and spare-1 took its rank
/// (`None`: the tier is skipped).
fn assert_replaced_by_the_spare(case: Case, causes: &[&str]) -> Option<pb::Incident> {
    let (run, options, _) = run_case(case, |_, _| {})?;
    let incident = assert_recovered(&run, &options, causes);
    assert_eq!(incident.node_id, "node-2");
    assert_eq!(incident.replacement_node_id, "spare-1");
    Some(incident)
}

#[test]
fn host_killed_is_replaced_by_a_spare() {
    let case = Case::new("host-kill", E2eFault::HostKill, 1);
    assert_replaced_by_the_spare(case, &["agent_lost", "heartbeat_timeout"]);
}

/// The native launcher with warm standbys (no torchrun) on the faults that replace a host: a
/// killed host and a fatal XID; the spare's standby takes the rank and the job resumes.
#[test]
fn the_native_launcher_replaces_a_killed_host_and_a_fatal_xid_host_with_the_spare() {
    let case = Case {
        launcher: E2eLauncher::NativeWarm,
        ..Case::new("native-host-kill", E2eFault::HostKill, 1)
    };
    if assert_replaced_by_the_spare(case, &["agent_lost", "heartbeat_timeout"]).is_none() {
        return;
    }
    let case = Case {
        launcher: E2eLauncher::NativeWarm,
        agent_args: &["--enable-fault-injection"],
        ..Case::new("native-xid", E2eFault::Xid, 1)
    };
    let incident = assert_replaced_by_the_spare(case, &["health_fatal"]).expect("the tier ran");
    assert!(incident.detail.contains("79"), "{}", incident.detail);
}

/// A host lost in silence while its peer's training process dies with it: the peer's exit
/// reaches the coordinator first and the host's loss only at its heartbeat timeout. One
/// incident, on the lost host (the exit is its consequence), and a spare takes its rank.
#[test]
fn a_peer_exit_that_beats_a_silent_host_loss_is_blamed_on_the_lost_host() {
    let case = Case {
        launcher: E2eLauncher::NativeWarm,
        ..Case::new("host-lost-peers-exit", E2eFault::HostLostPeersExit, 1)
    };
    let Some((run, options, _)) = run_case(case, |_, _| {}) else {
        return;
    };
    let incident = assert_recovered(&run, &options, &["heartbeat_timeout"]);
    assert_eq!(
        (
            incident.node_id.as_str(),
            incident.replacement_node_id.as_str()
        ),
        ("node-2", "spare-1")
    );
    assert!(
        incident.detail.contains("on node-1 followed from it"),
        "{}",
        incident.detail
    );
    let after: Vec<_> = (run.incidents.iter())
        .filter(|i| i.detected_unix_ms >= run.fault_at - 1000)
        .map(|i| (&i.cause, &i.node_id))
        .collect();
    assert_eq!(after.len(), 1, "one incident for one fault: {after:?}");
}

#[test]
fn host_partitioned_is_fenced_and_replaced() {
    let Some((run, options, _)) = run_case(
        Case::new("host-partition", E2eFault::HostPartition, 1),
        |_, _| {},
    ) else {
        return;
    };
    let incident = assert_recovered(&run, &options, &["heartbeat_timeout", "agent_lost"]);
    assert_eq!(incident.node_id, "node-2");
    assert_eq!(incident.replacement_node_id, "spare-1");
    assert!(
        !run.job.nodes.contains(&"node-2".to_string()),
        "the cut-off host still runs ranks"
    );
}

/// A worker fault on a healthy host: the job recovered with an incident of `cause`, restarted
/// in place on the same hosts.
fn assert_restarted_in_place(name: &'static str, fault: E2eFault, cause: &str) {
    assert_restarted_in_place_under(E2eLauncher::Torchrun, name, fault, cause);
}

/// [`assert_restarted_in_place`] with the ranks started by `launcher`; gives the agents' logs
/// of node-1 and node-2 (`None`: the tier is skipped).
fn assert_restarted_in_place_under(
    launcher: E2eLauncher,
    name: &'static str,
    fault: E2eFault,
    cause: &str,
) -> Option<Vec<String>> {
    let case = Case {
        launcher,
        ..Case::new(name, fault, 1)
    };
    let (run, options, agent_logs) = run_case(case, |_, _| {})?;
    let incident = assert_recovered(&run, &options, &[cause]);
    assert_eq!(incident.action, "restart_in_place");
    assert!(
        run.job.nodes.contains(&"node-2".to_string()),
        "a healthy host was replaced"
    );
    Some(agent_logs)
}

#[test]
fn worker_killed_restarts_in_place() {
    assert_restarted_in_place("worker-kill", E2eFault::WorkerKill, "worker_exited");
}

/// The same job as `python train_ddp.py` under holdfast's native launcher (no torchrun), with
/// warm standby interpreters: the killed rank's exit is the fault, every rank restarts in place
/// on a standby that had torch imported, and the job resumes.
#[test]
fn worker_killed_under_the_native_launcher_restarts_in_place_on_warm_standbys() {
    let Some(agent_logs) = assert_restarted_in_place_under(
        E2eLauncher::NativeWarm,
        "native-worker-kill",
        E2eFault::WorkerKill,
        "worker_exited",
    ) else {
        return;
    };
    assert!(
        agent_logs
            .iter()
            .all(|log| log.contains("ranks start on warm standby interpreters")),
        "a relaunch did not use the standbys"
    );
}

#[test]
fn worker_hung_is_detected_by_its_stalled_progress() {
    // The hung rank's peers block in the collective and fall silent with it: progress alone
    // cannot tell which of them hangs, so the incident may name either; all restart in place.
    assert_restarted_in_place("worker-hang", E2eFault::WorkerHang, "progress_stalled");
}

/// The same hang under the native launcher with warm standbys: found by its stalled progress,
/// every rank restarted in place.
#[test]
fn worker_hung_under_the_native_launcher_is_detected_and_restarted_in_place() {
    assert_restarted_in_place_under(
        E2eLauncher::NativeWarm,
        "native-worker-hang",
        E2eFault::WorkerHang,
        "progress_stalled",
    );
}

#[test]
fn no_spare_left_waits_and_says_so_then_resumes_when_one_registers() {
    let mut spare_added = false;
    let Some((run, options, _)) = run_case(
        Case::new("no-spare", E2eFault::HostKill, 0),
        |cluster, job| {
            if !spare_added && job.message.starts_with("waiting") {
                cluster.start_agent("spare-late", "spare", &[]).unwrap();
                spare_added = true;
            }
        },
    ) else {
        return;
    };
    assert!(
        run.messages
            .iter()
            .any(|m| m.starts_with("waiting for a replacement node")),
        "the job never said it waits: {:?}",
        run.messages
    );
    let incident = assert_recovered(&run, &options, &["agent_lost", "heartbeat_timeout"]);
    assert_eq!(incident.replacement_node_id, "spare-late");
}

#[test]
fn fatal_xid_fences_the_host_and_a_spare_takes_over() {
    let case = Case {
        agent_args: &["--enable-fault-injection"],
        ..Case::new("xid", E2eFault::Xid, 1)
    };
    let Some(incident) = assert_replaced_by_the_spare(case, &["health_fatal"]) else {
        return;
    };
    assert!(incident.detail.contains("79"), "{}", incident.detail);
}

/// The lifecycle scripts of the bad-spare case: spare-1's deep check passes when it joins and
/// fails when it is about to replace a node (as when memory errors appear while it idles).
fn lifecycle_scripts(dir: &Path, node: &str) -> Vec<String> {
    let scripts = dir.join("scripts").join(node);
    kit::write_script(&scripts, "on-create", "echo ok");
    let runs: PathBuf = scripts.join("runs");
    let check = if node == "spare-1" {
        format!(
            "n=$(cat {runs} 2>/dev/null || echo 0); echo $((n + 1)) > {runs}\n\
             if [ \"$n\" -gt 0 ]; then echo 'failed: uncorrectable ECC errors on GPU 0'; exit 1; fi\n\
             echo 'ok: host healthy'",
            runs = runs.display()
        )
    } else {
        "echo 'ok: host healthy'".into()
    };
    kit::write_script(&scripts, "health/host", &check);
    vec!["--script-dir".into(), scripts.display().to_string()]
}

#[test]
fn a_replacement_failing_its_deep_check_is_fenced_and_the_next_spare_is_used() {
    let config = std::env::temp_dir().join(format!(
        "holdfast-e2e-bad-spare-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &config,
        "bootstrap_script = \"on-create\"\ncheck_scripts = [\"health/host\"]\nscript_timeout_ms = 10000\n",
    )
    .unwrap();
    let case = Case {
        coordinator_args: vec!["--config".into(), config.display().to_string()],
        node_args: lifecycle_scripts,
        ..Case::new("bad-spare", E2eFault::HostKill, 2)
    };
    let result = run_case(case, |_, _| {});
    let _ = std::fs::remove_file(&config);
    let Some((run, options, _)) = result else {
        return;
    };
    let incident = assert_recovered(&run, &options, &["agent_lost", "heartbeat_timeout"]);
    assert_eq!(
        incident.replacement_node_id, "spare-2",
        "the spare that failed its check was used"
    );
    assert!(!run.job.nodes.contains(&"spare-1".to_string()));
    assert!(
        incident
            .rejected_candidates
            .iter()
            .any(|c| c.contains("spare-1") && c.contains("ECC")),
        "spare-1's failed check is not on the incident: {:?}",
        incident.rejected_candidates
    );
}

/// What `train_inprocess.py` wrote for one rank at its end (`final/rank-R.json`).
fn final_report(cluster: &NetnsCluster, prefix: &str, rank: u32) -> serde_json::Value {
    let path = (cluster.s3_root().join(kit::e2e::BUCKET).join(prefix))
        .join(format!("final/rank-{rank}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// An in-process fault case: the fault, the incident's causes and whether the victim's host
/// is replaced (a node fault) or its rank restarted on it (a worker fault).
struct InProcessCase {
    fault: E2eFault,
    causes: &'static [&'static str],
    replaced: bool,
}

/// In-process restart (`restart: in_process`, `holdfast.run`) after each fault on the job's
/// rank 1 — its training process SIGKILLed, SIGSTOPped (hung: the coordinator stops and
/// relaunches it alone), a fatal XID (its host fenced, a spare takes over) and its host's cable
/// cut (the survivor, blocked in a collective on a peer that stays silent, leaves it at the
/// agent's re-form notice instead of the group's timeout). Rank 0's process is never stopped
/// (same pid, started in generation 1, ends in generation 2): it re-forms the group in place,
/// rank 1's replacement takes model, optimizer state and step from it, and no step is lost or
/// done twice: the final weights are bit-identical to those of the same job run once without a
/// fault (deterministic data per step and rank; a skipped or doubled SGD-with-momentum step
/// would change them). One cluster and one fault-free run serve every case.
#[test]
fn in_process_restart_keeps_the_survivor_loses_no_step_and_ends_with_the_fault_free_weights() {
    let Some(tools) = Tools::for_tests(holdfast_exe!()) else {
        return;
    };
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Two spares: the XID's host is fenced, the cut-off host is lost.
    let case = Case {
        agent_args: &["--enable-fault-injection"],
        ..Case::new("inprocess", E2eFault::WorkerKill, 2)
    };
    let (_dir, mut cluster, reference) = lab_with_reference(tools, &case, E2eLauncher::InProcess);
    let clean = cluster
        .control(async |cluster| {
            cluster
                .wait_ready(4, Duration::from_secs(30))
                .await
                .unwrap();
            let spec = cluster.job_spec(&reference);
            cluster.run_job(spec, None, JOB_DEADLINE, |_, _| {}).await
        })
        .unwrap()
        .unwrap();
    if clean.job.state != "succeeded" {
        cluster.print_log_tails(&["coordinator", "node-1", "node-2"]);
    }
    assert_eq!(clean.job.state, "succeeded", "{}", clean.job.message);
    let expected = final_report(&cluster, &reference.prefix, 0)["weights_sha256"].clone();
    assert!(expected.is_string());
    let cases = [
        InProcessCase {
            fault: E2eFault::WorkerKill,
            causes: &["worker_exited"],
            replaced: false,
        },
        InProcessCase {
            fault: E2eFault::WorkerHang,
            causes: &["progress_stalled"],
            replaced: false,
        },
        InProcessCase {
            fault: E2eFault::Xid,
            causes: &["health_fatal"],
            replaced: true,
        },
        // Last: the cut-off host stays cut off.
        InProcessCase {
            fault: E2eFault::HostPartition,
            causes: &["heartbeat_timeout", "agent_lost"],
            replaced: true,
        },
    ];
    for case in cases {
        let faulted = JobOptions {
            prefix: format!("inprocess-{}", case.fault.name()),
            ..reference.clone()
        };
        let injection = Injection {
            fault: case.fault,
            after_step: reference.ckpt_every * 2 + 1,
            node: None,
        };
        let run = cluster
            .control(async |cluster| {
                let spec = cluster.job_spec(&faulted);
                (cluster.run_job(spec, Some(injection), JOB_DEADLINE, |_, _| {})).await
            })
            .unwrap()
            .unwrap();
        println!("in-process → {} (messages: {:?})", run.json(), run.messages);
        if run.job.state != "succeeded" {
            cluster.print_log_tails(&["coordinator", "node-1", "node-2"]);
        }
        assert_exact_in_place_recovery(&cluster, &run, &faulted, &case, &expected);
    }
}

/// The job recovered from `case`'s fault in place: the survivor (rank 0) kept its process and
/// state, rank 1's new process took them from it, no step was lost or done twice, and both end
/// with the `expected` weights.
fn assert_exact_in_place_recovery(
    cluster: &NetnsCluster,
    run: &FaultRun,
    options: &JobOptions,
    case: &InProcessCase,
    expected: &serde_json::Value,
) {
    let fault = case.fault.name();
    let incident = assert_recovered_in_place(run, options, case);
    let survivor = final_report(cluster, &options.prefix, 0);
    let replacement = final_report(cluster, &options.prefix, 1);
    println!("{fault}: survivor {survivor}\nreplacement {replacement}");
    // The survivor's process spanned both generations: never stopped, re-formed once.
    assert_eq!(survivor["started_generation"], 1, "{fault}: {survivor}");
    assert_eq!(survivor["generation"], 2, "{fault}: {survivor}");
    assert_eq!(survivor["reforms"], 1, "{fault}: {survivor}");
    let first_log = (cluster
        .dir
        .join("nodes")
        .join(&run.job.nodes[0])
        .join("logs"))
    .join(format!("{}-g1-r0.log", run.job.job_id));
    let first_log = std::fs::read_to_string(&first_log).unwrap_or_default();
    let pid = format!("pid {})", survivor["pid"]);
    assert!(
        first_log.contains(&pid),
        "{fault}: rank 0's generation-1 process was not the one that finished ({pid})"
    );
    // Every step done exactly once on the survivor; the replacement took the state from it
    // and went on from the step it had reached — at or past the step the fault hit.
    assert_eq!(survivor["steps_run"], options.steps, "{fault}: {survivor}");
    assert_eq!(survivor["steps_run_twice"], 0, "{fault}: {survivor}");
    assert_eq!(
        replacement["started_generation"], 2,
        "{fault}: {replacement}"
    );
    assert_eq!(
        replacement["restored_from"], "rank 0",
        "{fault}: {replacement}"
    );
    let first = replacement["first_step_run"]
        .as_u64()
        .expect("the replacement stepped");
    assert!(
        first > run.fault_step,
        "{fault}: the replacement redid step {first}; the fault hit at {}",
        run.fault_step
    );
    assert_eq!(
        incident.resumed_from_step + 1,
        first,
        "{fault}: {incident:?}"
    );
    assert_eq!(run.lost_steps(), Some(0), "{fault}");
    // Exact recovery: the same weights as the run without a fault, on both ranks.
    assert_eq!(&survivor["weights_sha256"], expected, "{fault}");
    assert_eq!(&replacement["weights_sha256"], expected, "{fault}");
}

/// The job succeeded at its last step after `case`'s fault handled as an in-process restart,
/// relaunched once, resumed from the survivors' step (not a checkpoint): rank 1 restarted on
/// its host for a worker fault, its host replaced by a spare for a node fault.
fn assert_recovered_in_place(
    run: &FaultRun,
    options: &JobOptions,
    case: &InProcessCase,
) -> pb::Incident {
    let fault = case.fault.name();
    assert!(
        run.fault_at > 0,
        "{fault}: the fault was never injected: {:?}",
        run.job
    );
    assert_eq!(run.job.state, "succeeded", "{fault}: {}", run.job.message);
    assert_eq!(run.job.step, options.steps, "{fault}");
    let incident = run.incident().cloned().expect("an incident for the fault");
    assert!(
        case.causes.contains(&incident.cause.as_str()),
        "{fault}: {incident:?}"
    );
    assert_eq!(incident.node_id, run.victim, "{fault}: {incident:?}");
    let action = if case.replaced {
        "replace_node"
    } else {
        "restart_in_place"
    };
    assert_eq!(incident.action, action, "{fault}");
    assert_eq!(
        run.job.nodes.contains(&run.victim),
        !case.replaced,
        "{fault}: {:?}",
        run.job.nodes
    );
    assert!(
        incident.resumed_unix_ms > 0,
        "{fault}: no progress past the survivors' step"
    );
    assert_eq!(
        run.job.generation, 2,
        "{fault}: the job was relaunched more than once"
    );
    incident
}

/// The memory state tier under `restart: relaunch` (`train_memtier.py` through the native
/// launcher with warm standbys): every step each rank keeps its state in its host's memory tier
/// and on the peer host. node-2 is killed with its memory; the relaunch on node-1 and spare-1
/// resumes from the memory tier, newer than the last S3 checkpoint — spare-1 had nothing and
/// took rank 1's state from node-1's copy over the new group — at the step the fault hit: no
/// step lost, none applied twice, the weights of the same job run without a fault. Then the
/// same job with nothing in memory, resumed from S3: the replayed steps end with those weights too.
#[test]
fn a_killed_host_resumes_from_the_memory_tier_with_no_step_lost_and_the_fault_free_weights() {
    let Some(tools) = Tools::for_tests(holdfast_exe!()) else {
        return;
    };
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Two spares: the S3-only run after the memory-tier one loses a host too.
    let case = Case::new("memtier", E2eFault::HostKill, 2);
    let (_dir, mut cluster, reference) = lab_with_reference(tools, &case, E2eLauncher::Memtier);
    let faulted = JobOptions {
        prefix: "memtier".into(),
        ..reference.clone()
    };
    // Two steps past a checkpoint: S3 is behind the memory tier at the fault.
    let injection = host_kill_past_a_checkpoint(&reference, Some("node-2"));
    let (clean, run) = cluster
        .control(async |cluster| {
            cluster
                .wait_ready(4, Duration::from_secs(30))
                .await
                .unwrap();
            let spec = cluster.job_spec(&reference);
            let clean = cluster.run_job(spec, None, JOB_DEADLINE, |_, _| {}).await;
            let spec = cluster.job_spec(&faulted);
            let run = (cluster.run_job(spec, Some(injection), JOB_DEADLINE, |_, _| {})).await;
            (clean.unwrap(), run.unwrap())
        })
        .unwrap();
    println!("memtier → {} (messages: {:?})", run.json(), run.messages);
    if run.job.state != "succeeded" || clean.job.state != "succeeded" {
        cluster.print_log_tails(&["coordinator", "node-1", "spare-1"]);
    }
    assert_eq!(clean.job.state, "succeeded", "{}", clean.job.message);
    let incident = assert_recovered(&run, &faulted, &["agent_lost", "heartbeat_timeout"]);
    assert_eq!(incident.replacement_node_id, "spare-1");
    assert_eq!(incident.state_tier, "memory", "{}", incident.state_note);
    // What `holdfast incidents` prints, and its JSON.
    let table = holdfast_cli::tables::incidents(std::slice::from_ref(&incident));
    assert!(table.contains("state from the memory tier: "), "{table}");
    let json = holdfast_cli::tables::incident_json(&incident, incident.fault_unix_ms);
    assert_eq!(json["state_tier"], "memory", "{json}");
    let at_fault = run.checkpoint_at_fault.unwrap_or(0);
    assert!(
        incident.resumed_from_step > at_fault,
        "resumed from step {}, no newer than S3's {at_fault}",
        incident.resumed_from_step
    );
    assert_eq!(run.lost_steps(), Some(0), "{incident:?}");
    let expected = &final_report(&cluster, &reference.prefix, 0)["weights_sha256"];
    assert!(expected.is_string());
    for rank in [0, 1] {
        let report = final_report(&cluster, &faulted.prefix, rank);
        assert_eq!(report["generation"], 2, "{report}");
        assert_eq!(report["restored_from"], "memory", "{report}");
        assert_eq!(report["first_step_run"], incident.resumed_from_step + 1);
        assert_eq!(&report["weights_sha256"], expected, "{report}");
    }
    // The job's copies are gone with it from the hosts that ran it to the end.
    for node in ["node-1", "spare-1"] {
        let left = std::fs::read_dir(cluster.memory_tier_dir(node))
            .map(|d| d.flatten().count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{node} still holds memory-tier copies");
    }
    assert_exact_replay_from_s3(&mut cluster, &reference, expected);
}

/// `node`'s host (default: the job's last) killed two steps past the second checkpoint.
fn host_kill_past_a_checkpoint(options: &JobOptions, node: Option<&str>) -> Injection {
    Injection {
        fault: E2eFault::HostKill,
        after_step: options.ckpt_every * 2 + 2,
        node: node.map(String::from),
    }
}

/// The same job keeping nothing in memory (`--memory-every` past its last step), its rank-1
/// host killed two steps past a checkpoint: the relaunch resumes from S3, replays the steps
/// since, and ends with the `expected` weights of the fault-free run (each step's data is a
/// function of the step and rank, and the checkpoint holds the optimizer's momentum): an S3-only
/// recovery is exact too, only slower by the replayed steps.
fn assert_exact_replay_from_s3(
    cluster: &mut NetnsCluster,
    reference: &JobOptions,
    expected: &serde_json::Value,
) {
    let options = JobOptions {
        prefix: "memtier-s3-only".into(),
        ..reference.clone()
    };
    let injection = host_kill_past_a_checkpoint(&options, None);
    let run = cluster
        .control(async |cluster| {
            let mut spec = cluster.job_spec(&options);
            spec.command
                .push(format!("--memory-every={}", options.steps + 1));
            (cluster.run_job(spec, Some(injection), JOB_DEADLINE, |_, _| {})).await
        })
        .unwrap()
        .unwrap();
    println!("s3-only → {} (messages: {:?})", run.json(), run.messages);
    if run.job.state != "succeeded" {
        cluster.print_log_tails(&["coordinator", "node-1", "spare-1", "spare-2"]);
    }
    let incident = assert_recovered(&run, &options, &["agent_lost", "heartbeat_timeout"]);
    // Nothing held in memory: the tier is not considered at all (no tier named) or passed over.
    assert_ne!(incident.state_tier, "memory", "{}", incident.state_note);
    assert_eq!(Some(incident.resumed_from_step), run.checkpoint_at_fault);
    assert!(run.lost_steps() > Some(0), "{incident:?}");
    for rank in [0, 1] {
        let report = final_report(cluster, &options.prefix, rank);
        assert_eq!(
            report["restored_from"]
                .as_str()
                .map(|s| s.starts_with("s3://")),
            Some(true),
            "{report}"
        );
        assert_eq!(report["first_step_run"], incident.resumed_from_step + 1);
        assert_eq!(&report["weights_sha256"], expected, "{report}");
    }
}
