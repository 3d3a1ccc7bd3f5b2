//! Recovery policy in the job lifecycle: restart backoff, escalation from restart-in-place to
//! replacement (quarantine), and what happens when no replacement comes (shrink or fail).

use super::*;

const LIMITS: JobLimits = JobLimits {
    stop_deadline_ms: 5_000,
    replacement_timeout_ms: 60_000,
    resolve_retry_ms: 1_000,
    resolve_attempts: 3,
    restart_backoff_ms: 2_000,
    restart_backoff_max_ms: 5_000,
    quarantine_after: 3,
    quarantine_window_ms: 100_000,
    startup_grace_ms: 0,
};

fn running(nodes: &[&str], min_nodes: u32, budget: u32) -> Job {
    let spec = JobSpec {
        command: vec!["train".into()],
        nodes: nodes.len() as u32,
        checkpoint_uri: String::new(),
        stall_timeout_ms: 0,
        restart_budget: budget,
        progress_regex: crate::DEFAULT_PROGRESS_REGEX.into(),
        env: BTreeMap::new(),
        total_steps: 0,
        min_nodes,
    };
    let mut job = Job::new(
        "j".into(),
        spec,
        nodes.iter().map(|n| n.to_string()).collect(),
        0,
    );
    step(&mut job, JobEvent::CheckpointResolved(Ok(None)), 1, &LIMITS);
    relaunched(&mut job, 2);
    job
}

/// Every rank of the current generation started.
fn relaunched(job: &mut Job, now: UnixMillis) {
    for node in job.nodes() {
        let started = JobEvent::WorkerStarted {
            node,
            generation: job.generation,
        };
        step(job, started, now, &LIMITS);
    }
    assert_eq!(job.state, JobState::Running);
}

fn crash(job: &mut Job, node: &str, now: UnixMillis) -> Vec<JobEffect> {
    let event = JobEvent::WorkerExited {
        at: None,
        node: node.into(),
        generation: job.generation,
        code: Some(1),
        signal: None,
        stopped_by_agent: false,
    };
    let mut fx = step(job, event, now, &LIMITS);
    // The survivors confirm their stop.
    for other in job.nodes().into_iter().filter(|n| n != node) {
        let stopped = JobEvent::WorkerExited {
            at: None,
            node: other,
            generation: job.generation,
            code: None,
            signal: Some(15),
            stopped_by_agent: true,
        };
        fx.extend(step(job, stopped, now, &LIMITS));
    }
    fx
}

fn resolves(fx: &[JobEffect]) -> bool {
    fx.iter().any(|e| matches!(e, JobEffect::ResolveCheckpoint))
}

#[test]
fn backoff_is_zero_first_then_doubles_to_the_cap() {
    let delays: Vec<u64> = (1..=5).map(|n| LIMITS.restart_backoff(n)).collect();
    assert_eq!(delays, [0, 2_000, 4_000, 5_000, 5_000]);
}

#[test]
fn the_first_restart_is_immediate_and_the_second_waits_its_backoff() {
    let mut job = running(&["a", "b"], 0, 5);
    let fx = crash(&mut job, "a", 1_000);
    assert!(resolves(&fx), "first restart at once");
    step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        1_010,
        &LIMITS,
    );
    relaunched(&mut job, 1_020);

    let fx = crash(&mut job, "b", 5_000);
    assert!(!resolves(&fx), "second restart waits");
    assert!(job.message.contains("backoff"), "{}", job.message);
    assert!(!resolves(&step(&mut job, JobEvent::Tick, 6_999, &LIMITS)));
    assert!(resolves(&step(&mut job, JobEvent::Tick, 7_000, &LIMITS)));
}

#[test]
fn repeated_worker_faults_on_one_node_escalate_to_replacing_and_quarantining_it() {
    let mut job = running(&["a", "b"], 0, 10);
    for (i, t) in [1_000, 20_000].into_iter().enumerate() {
        let fx = crash(&mut job, "a", t);
        assert!(
            fx.iter().any(|e| matches!(
                e,
                JobEffect::OpenIncident {
                    action: RecoveryAction::RestartInPlace,
                    ..
                }
            )),
            "fault {i} restarts in place"
        );
        step(&mut job, JobEvent::Tick, t + 10_000, &LIMITS);
        step(
            &mut job,
            JobEvent::CheckpointResolved(Ok(None)),
            t + 10_001,
            &LIMITS,
        );
        relaunched(&mut job, t + 10_002);
    }
    // A fault on another node does not count against a.
    let fx = crash(&mut job, "a", 40_000);
    let escalated = fx.iter().any(|e| {
        matches!(e, JobEffect::OpenIncident { action: RecoveryAction::ReplaceNode, cause: FaultCause::RepeatedFaults { faults: 3, .. }, node, .. } if node == "a")
    });
    assert!(escalated, "{fx:?}");
    assert!(fx.iter().any(|e| matches!(
        e,
        JobEffect::FenceNode { node, cause: FenceCause::RepeatedWorkerFaults } if node == "a"
    )));
    assert_eq!(job.phase(), "replacing");
    assert_eq!(job.restarts, 2, "a replacement uses no restart budget");
}

#[test]
fn faults_outside_the_window_do_not_add_up() {
    let mut job = running(&["a", "b"], 0, 10);
    for t in [1_000, 120_000, 240_000] {
        let fx = crash(&mut job, "a", t);
        assert!(fx.iter().any(|e| matches!(
            e,
            JobEffect::OpenIncident {
                action: RecoveryAction::RestartInPlace,
                ..
            }
        )));
        step(&mut job, JobEvent::Tick, t + 60_000, &LIMITS);
        step(
            &mut job,
            JobEvent::CheckpointResolved(Ok(None)),
            t + 60_001,
            &LIMITS,
        );
        relaunched(&mut job, t + 60_002);
    }
}

fn lose_node(job: &mut Job, node: &str, now: UnixMillis) {
    let fault = JobEvent::Fault {
        node: node.into(),
        cause: FaultCause::AgentLost,
    };
    step(job, fault, now, &LIMITS);
    for other in job.nodes().into_iter().filter(|n| n != node) {
        let stopped = JobEvent::WorkerExited {
            at: None,
            node: other,
            generation: job.generation,
            code: None,
            signal: Some(15),
            stopped_by_agent: true,
        };
        step(job, stopped, now, &LIMITS);
    }
    assert_eq!(job.phase(), "replacing");
}

#[test]
fn without_a_replacement_a_job_that_allows_it_shrinks_to_its_survivors() {
    let mut job = running(&["a", "b", "c"], 2, 3);
    lose_node(&mut job, "c", 1_000);
    assert!(!resolves(&step(&mut job, JobEvent::Tick, 60_999, &LIMITS)));
    let fx = step(&mut job, JobEvent::Tick, 61_000, &LIMITS);
    assert!(resolves(&fx), "{fx:?}");
    assert_eq!(job.nodes(), ["a", "b"]);
    assert!(
        job.message.contains("shrunk from 3 to 2"),
        "{}",
        job.message
    );
    let fx = step(
        &mut job,
        JobEvent::CheckpointResolved(Ok(None)),
        61_010,
        &LIMITS,
    );
    assert!(matches!(
        fx.iter().find(|e| matches!(e, JobEffect::Launch { .. })),
        Some(JobEffect::Launch { generation: 2, .. })
    ));
    relaunched(&mut job, 61_020);
}

#[test]
fn without_a_replacement_a_job_below_its_minimum_fails_with_the_reason() {
    let mut job = running(&["a", "b"], 2, 3);
    lose_node(&mut job, "b", 1_000);
    step(&mut job, JobEvent::Tick, 61_000, &LIMITS);
    let JobState::Failed { reason } = &job.state else {
        panic!("{:?}", job.state)
    };
    assert!(
        reason.contains("no replacement node within 60 s"),
        "{reason}"
    );
}
