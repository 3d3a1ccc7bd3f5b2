//! Integration tier: the built `holdfast` binary as real processes on loopback — coordinator,
//! agents, Python workers — with real faults (SIGKILL, SIGSTOP) and bounded waits.

use std::path::Path;
use std::time::Duration;

use holdfast_cli::demo::{self, DemoOptions, Fault};
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, local_cluster, KillOnDrop, Scratch, Train};

fn exe() -> &'static Path {
    holdfast_exe!()
}

fn options(fault: Fault) -> DemoOptions {
    DemoOptions {
        fault,
        steps: 60,
        fault_at_step: 25,
        json: true,
        ..Default::default()
    }
}

/// The demo's one incident, which must have `cause` and `action`.
fn only_incident<'a>(report: &'a demo::DemoReport, cause: &str, action: &str) -> &'a pb::Incident {
    assert_eq!(
        report.incidents.len(),
        1,
        "incidents: {:#?}",
        report.incidents
    );
    let i = &report.incidents[0];
    assert_eq!((i.cause.as_str(), i.action.as_str()), (cause, action));
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_host_resumes_on_the_spare_from_the_latest_complete_checkpoint() {
    let report = demo::run(exe(), &options(Fault::KillAgent)).await.unwrap();
    assert_eq!(report.job.state, "succeeded", "{}", report.job.message);
    assert_eq!(report.job.step, 60);
    assert_eq!(report.job.generation, 2);
    let i = only_incident(&report, "agent_lost", "replace_node");
    // The coordinator sends the typed fields itself; readers need not fall back to the strings.
    assert_eq!(report.job.state_enum, pb::JobState::Succeeded as i32);
    assert_eq!(i.cause_enum, pb::IncidentCause::AgentLost as i32);
    assert_eq!(i.node_id, report.victim);
    assert_eq!(i.replacement_node_id, "spare-1");
    // Every phase was reached, in order.
    let phases = [
        i.detected_unix_ms,
        i.fenced_unix_ms,
        i.replaced_unix_ms,
        i.relaunched_unix_ms,
        i.resumed_unix_ms,
    ];
    assert!(phases.iter().all(|&t| t > 0), "{i:?}");
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{i:?}");
    // The fault comes once any rank passed step 25; rank 0 writes a checkpoint every 10 steps
    // and may lag the others by a few steps on a loaded host, so the latest complete checkpoint
    // is step 10 or later — never a fresh start, never a step that was not checkpointed.
    assert!(
        i.resumed_from_step >= 10 && i.resumed_from_step.is_multiple_of(10),
        "{i:?}"
    );
    // Never older than the newest checkpoint complete when the fault hit (rank 0 may finish one
    // more before it is stopped).
    let newest = report
        .checkpoints_at_fault
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    assert!(newest >= 10, "{:?}", report.checkpoints_at_fault);
    assert!(i.resumed_from_step >= newest, "{i:?} vs {newest}");
    assert!(!report.job.nodes.contains(&report.victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_restarts_in_place_without_a_replacement() {
    let report = demo::run(exe(), &options(Fault::KillWorker)).await.unwrap();
    assert_eq!(report.job.state, "succeeded", "{}", report.job.message);
    let i = only_incident(&report, "worker_exited", "restart_in_place");
    assert!(i.detail.contains("signal 9"), "{}", i.detail);
    assert_eq!(i.replacement_node_id, "");
    assert_eq!(
        report.job.nodes,
        vec!["node-1", "node-2"],
        "same nodes after the restart"
    );
    assert_eq!(report.job.restarts, 1);
    assert!(i.resumed_unix_ms > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_worker_is_detected_as_stalled_and_restarted() {
    let report = demo::run(exe(), &options(Fault::Hang)).await.unwrap();
    assert_eq!(report.job.state, "succeeded", "{}", report.job.message);
    let i = only_incident(&report, "progress_stalled", "restart_in_place");
    assert_eq!(i.node_id, report.victim, "the stuck rank's node is named");
    // Detected after the 3 s stall timeout, not before, and not much later.
    let detect_ms = i.detected_unix_ms - report.fault_at;
    assert!(
        (2_500..8_000).contains(&detect_ms),
        "detected after {detect_ms} ms"
    );
    assert!(i.resumed_unix_ms > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_without_its_marker_is_skipped_for_the_previous_complete_one() {
    let dir = Scratch::new("it-partial");
    let ckpt = kit::checkpoint_dir(&dir);
    for step in [10, 20] {
        std::fs::create_dir_all(ckpt.join(format!("step-{step}"))).unwrap();
        std::fs::write(
            ckpt.join(format!("step-{step}/state.json")),
            format!("{{\"step\": {step}}}"),
        )
        .unwrap();
    }
    std::fs::write(
        ckpt.join("step-10/COMPLETE"),
        "{\"step\": 10, \"generation\": 1}",
    )
    .unwrap();
    // step-20 has no marker: it was cut off mid-write.
    let cluster = local_cluster(exe(), &dir, &[], 1, 0).await;
    let spec = Train::paced(1, 14, 0.01).spec(&dir);
    let job = kit::submit(&cluster, spec).await;
    let (done, _) = kit::finish(&cluster, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(done.state, "succeeded", "{}", done.message);
    assert_eq!(
        done.last_checkpoint_step, 10,
        "resumed from step-10, not the partial step-20"
    );
    assert!(
        done.message.contains("resumes from step 10") || done.message.contains("exited 0"),
        "{}",
        done.message
    );
    let log = std::fs::read_to_string(dir.join("node-1.log")).unwrap();
    let resumed = (log.lines()).any(|l| l.contains("resumed from") && l.ends_with("at step 10"));
    assert!(resumed, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_specs_are_refused_with_the_problem_named_and_nothing_launched() {
    let dir = Scratch::new("it-badspec");
    let cluster = local_cluster(exe(), &dir, &[], 1, 0).await;
    let mut client = cluster.client().await.unwrap();
    let spec = |command: &[&str], nodes| pb::JobSpec {
        command: command.iter().map(|a| a.to_string()).collect(),
        nodes,
        ..Default::default()
    };
    let cases = [
        (spec(&[], 1), "command"),
        (spec(&["true"], 0), "nodes must be at least 1"),
        (
            spec(&["true"], 2),
            "the job needs 2 nodes but only 1 are ready",
        ),
    ];
    for (spec, expected) in cases {
        let status = client
            .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains(expected),
            "{expected:?} not in {:?}",
            status.message()
        );
    }
    let status = client
        .submit_job(pb::SubmitJobRequest { spec: None })
        .await
        .unwrap_err();
    assert!(status.message().contains("spec is missing"));
    let jobs = client.list_jobs(pb::ListJobsRequest {}).await.unwrap();
    let jobs = jobs.into_inner().jobs;
    assert!(jobs.is_empty(), "{jobs:?}");
    let nodes = kit::nodes(&cluster).await;
    assert_eq!(nodes[0].state, "ready");
    assert_eq!(nodes[0].state_enum, pb::NodeState::Ready as i32);
    assert!(cluster.worker("node-1").is_none(), "nothing was launched");
    // The CLI says the same, and exits non-zero.
    let out = kit::run(std::process::Command::new(exe()).args([
        "launch",
        "--nodes",
        "0",
        "--coordinator",
        &cluster.addr,
        "--",
        "true",
    ]));
    assert!(!out.ok());
    assert!(out.stderr.contains("nodes must be at least 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_follows_a_job_to_its_end_and_reads_the_progress_file() {
    let dir = Scratch::new("it-launch");
    let cluster = local_cluster(exe(), &dir, &[], 2, 0).await;
    // Progress through the progress file only: the output never says "step".
    let script = "for i in 1 2 3 4 5; do echo $i > \"$HOLDFAST_PROGRESS_FILE\"; echo rank {node_rank} of {nnodes} at $HOLDFAST_RDZV_ENDPOINT; sleep 0.3; done";
    let out = kit::run_async(tokio::process::Command::new(exe()).args([
        "launch",
        "--nodes",
        "2",
        "--coordinator",
        &cluster.addr,
        "--job-id",
        "pf",
        "--",
        "sh",
        "-c",
        script,
    ]))
    .await;
    let stdout = &out.stdout;
    assert!(out.ok(), "{stdout}\n{}", out.stderr);
    assert!(
        stdout.contains("job pf accepted on node-1, node-2"),
        "{stdout}"
    );
    assert!(stdout.contains("job pf succeeded at step 5"), "{stdout}");
    let log = std::fs::read_to_string(dir.join("node-2.log")).unwrap();
    assert!(
        log.contains("rank 1 of 2 at 127.0.0.1:"),
        "placeholders and env substituted: {log}"
    );
    // The incidents list is empty and machine-readable.
    let cli = |args: &[&str]| {
        kit::run(
            std::process::Command::new(exe())
                .args(args)
                .args(["--coordinator", &cluster.addr]),
        )
    };
    assert_eq!(cli(&["incidents", "--json"]).stdout.trim(), "[]");
    let table = cli(&["nodes"]).stdout;
    assert!(
        table.contains("node-1") && table.contains("ready"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_bad_agents_says_why_and_keeps_running() {
    let dir = Scratch::new("it-badagents");
    let config = kit::write_file(&dir, "coordinator.toml", "hello_timeout_ms = 1000\n");
    let cluster = local_cluster(exe(), &dir, &["--config", &config], 1, 0).await;

    // 1. A second agent claiming node-1 (its own state dir, same id).
    let dup_state = dir.join("dup-state");
    let dup = std::process::Command::new(exe())
        .args([
            "agent",
            "--coordinator",
            &cluster.addr,
            "--node-id",
            "node-1",
            "--state-dir",
        ])
        .arg(&dup_state)
        .stderr(std::fs::File::create(dir.join("dup.log")).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut dup = KillOnDrop(dup);
    kit::wait_for(Duration::from_secs(20), || async {
        let log = std::fs::read_to_string(dir.join("dup.log")).unwrap_or_default();
        kit::check(log.contains("node id node-1 is already connected"), || {
            format!("duplicate agent was not refused: {log}")
        })
    })
    .await;
    let _ = dup.0.kill();

    let channel = tonic::transport::Endpoint::from_shared(cluster.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // 2. A malformed message: bytes that are not a protobuf AgentMessage.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/holdfast.v1.AgentService/Session");
    let garbage = tokio_stream::iter(vec![tonic::codegen::Bytes::from_static(
        b"\x0a\xff\xff\xff\xff\xff",
    )]);
    let status = grpc
        .streaming(
            tonic::Request::new(garbage),
            path.clone(),
            holdfast_testkit::raw_grpc::RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed agent message"),
        "{status:?}"
    );

    // 3. A first message that is not hello.
    let mut agent = pb::agent_service_client::AgentServiceClient::new(channel.clone());
    let not_hello = tokio_stream::iter(vec![pb::AgentMessage {
        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat::default())),
    }]);
    let status = agent.session(not_hello).await.unwrap_err();
    assert!(
        status
            .message()
            .contains("first message of a session must be hello"),
        "{status:?}"
    );

    // 4. An agent that connects and sends nothing is closed after the hello timeout.
    let started = tokio::time::Instant::now();
    let silent = futures::stream::pending::<pb::AgentMessage>();
    let status = tokio::time::timeout(Duration::from_secs(10), agent.session(silent))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(
        status.message().contains("no hello within 1000 ms"),
        "{status:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The coordinator kept running, node-1 is still the original and healthy, and the log says why.
    let nodes = kit::nodes(&cluster).await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].state.as_str(), nodes[0].connected),
        ("ready", true)
    );
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap();
    for why in [
        "already connected",
        "malformed agent message",
        "must be hello",
        "no hello within",
    ] {
        assert!(log.contains(why), "coordinator log lacks {why:?}");
    }
}

#[test]
fn launch_refuses_a_slurm_allocation_it_cannot_use_before_submitting() {
    // Nothing listens on the coordinator address: each refusal comes before any connection.
    let cases = [
        (
            "gpu-[1-2]",
            "3",
            "the Slurm allocation (job 77) has 2 nodes (gpu-[1-2]) but --nodes is 3",
        ),
        (
            "gpu-[1-",
            "1",
            "SLURM_JOB_NODELIST: hostlist \"gpu-[1-\": a '[' without its ']'",
        ),
        ("gpu-[2-1]", "1", "the range \"2-1\" runs backwards"),
        ("gpu;reboot", "1", "\"gpu;reboot\" is not a node name"),
    ];
    for (nodelist, nodes, why) in cases {
        let out = kit::run(
            std::process::Command::new(exe())
                .args(["launch", "--coordinator", "127.0.0.1:9", "--nodes", nodes])
                .args(["--", "true"])
                .env("SLURM_JOB_NODELIST", nodelist)
                .env("SLURM_JOB_ID", "77"),
        );
        assert!(!out.ok(), "{nodelist}: {}", out.stdout);
        assert!(out.stderr.contains(why), "{nodelist}: {}", out.stderr);
    }
    // --no-slurm-allocation ignores the allocation: the launch gets as far as the connection.
    let out = kit::run(
        std::process::Command::new(exe())
            .args(["launch", "--coordinator", "127.0.0.1:9", "--nodes", "3"])
            .args(["--no-slurm-allocation", "--", "true"])
            .env("SLURM_JOB_NODELIST", "gpu-[1-"),
    );
    assert!(!out.ok());
    assert!(!out.stderr.contains("SLURM"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_checkpoint_is_passed_over_with_the_reason_in_the_incident() {
    let dir = Scratch::new("it-truncated");
    let cluster = local_cluster(exe(), &dir, &[], 1, 0).await;
    let ckpt = kit::checkpoint_dir(&dir);
    // step-10 is whole; step-20's state lost its end after its marker was written (its
    // manifest says 100 bytes).
    for (step, listed) in [(10, None), (20, Some(100))] {
        let state = format!("{{\"step\": {step}}}");
        let listed = listed.unwrap_or(state.len());
        let marker = format!(
            "{{\"step\": {step}, \"generation\": 1, \"files\": {{\"state.json\": {{\"size\": {listed}}}}}}}"
        );
        let at = ckpt.join(format!("step-{step}"));
        std::fs::create_dir_all(&at).unwrap();
        kit::write_file(&at, "state.json", &state);
        kit::write_file(&at, "COMPLETE", &marker);
    }
    // No checkpoints of its own: every resolution sees the two above.
    let spec = Train {
        ckpt_every: 1000,
        ..Train::paced(1, 40, 0.1)
    }
    .spec(&dir);
    let job = kit::submit(&cluster, spec).await;
    kit::wait_job(&cluster, &job.job_id, Duration::from_secs(30), |j| {
        j.step >= 14
    })
    .await;
    cluster
        .signal_worker("node-1", nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let (done, incidents) = kit::finish(&cluster, &job.job_id, Duration::from_secs(60)).await;

    assert_eq!(done.state, "succeeded", "{}", done.message);
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let i = &incidents[0];
    assert_eq!(i.resumed_from_step, 10, "{i:#?}");
    assert_eq!(
        i.skipped_checkpoints,
        ["step-20: state.json is 12 bytes, its manifest says 100"],
        "{i:#?}"
    );
    let table = kit::run(std::process::Command::new(exe()).args([
        "incidents",
        "--coordinator",
        &cluster.addr,
    ]))
    .stdout;
    assert!(
        table.contains("checkpoint passed over: step-20: state.json is 12 bytes"),
        "{table}"
    );
}
