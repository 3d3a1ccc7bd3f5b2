//! The circuit breaker on fencing, and a job shrinking when no replacement comes, driven
//! through the cluster core with a fake clock.

use super::testing::*;
use super::*;

/// `nodes` workers, one job on all of them (min_nodes as given), running in generation 1.
fn running(config: CoordinatorConfig, nodes: &[&str], min_nodes: u32) -> Cluster {
    let mut c = workers(config, nodes);
    let request = JobRequest {
        min_nodes,
        ..job(nodes.len() as u32)
    };
    run_job(&mut c, request, 10);
    c
}

fn alerts(fx: &[Command]) -> Vec<&str> {
    events(fx, EventKind::Alert)
        .into_iter()
        .map(|e| e.message.as_str())
        .collect()
}

#[test]
fn the_circuit_breaker_stops_fencing_past_the_share_and_alerts_once() {
    let config = CoordinatorConfig {
        circuit_breaker_share: 0.5,
        circuit_breaker_window_ms: 60_000,
        ..Default::default()
    };
    let mut c = running(config, &["a", "b", "c", "d"], 0);
    // Half of four nodes may be fenced within the window.
    for (node, t) in [("a", 1_000), ("b", 1_100)] {
        let fx = disconnect(&mut c, node, t);
        assert!(alerts(&fx).is_empty());
        assert!(
            matches!(c.nodes[node].state, NodeState::Fenced { .. }),
            "{node}"
        );
    }
    assert!(!c.fence_breaker_open());
    let fx = disconnect(&mut c, "c", 1_200);
    let raised = alerts(&fx);
    assert_eq!(raised.len(), 1, "{fx:?}");
    assert!(
        raised[0].contains("circuit breaker open: 2 of 4 nodes"),
        "{}",
        raised[0]
    );
    assert_eq!(
        c.nodes["c"].state,
        NodeState::Offline,
        "released, not fenced"
    );
    assert!(c.fence_breaker_open());
    // Still open: no second alert, still no fence.
    let fx = disconnect(&mut c, "d", 1_300);
    assert!(alerts(&fx).is_empty());
    assert_eq!(c.nodes["d"].state, NodeState::Offline);

    // Once the window has passed the share allows fencing again, and the breaker says it closed.
    let mut fx = Vec::new();
    assert!(c.share_allows("c", 70_000, &mut fx));
    assert!(alerts(&fx)[0].contains("circuit breaker closed"), "{fx:?}");
    // But c is the job's last node not lost: no fault fences every node of a job.
    let mut fx = Vec::new();
    assert!(!c.fence_allowed("c", 70_000, &mut fx));
    assert!(alerts(&fx)[0].contains("every other node of job"), "{fx:?}");
}

#[test]
fn a_job_that_allows_it_shrinks_when_no_replacement_comes_in_time() {
    let config = CoordinatorConfig {
        replacement_timeout_ms: 5_000,
        ..Default::default()
    };
    let mut c = running(config, &["a", "b", "c"], 2);
    disconnect(&mut c, "c", 1_000);
    for node in ["a", "b"] {
        worker(&mut c, node, 1, Stopped, 1_100);
    }
    assert_eq!(c.jobs[JOB].phase(), "replacing");
    let fx = tick_alive(&mut c, &["a", "b"], 6_099);
    assert!(resolves(&fx).is_empty(), "{fx:?}");
    let fx = tick(&mut c, 6_100);
    assert_eq!(resolves(&fx).len(), 1, "{fx:?}");
    let fx = resolved(&mut c, JOB, Ok(None), 6_010);
    let launched = launches(&fx);
    assert_eq!(launched.len(), 2);
    assert!(launched
        .iter()
        .all(|(_, l)| l.nnodes == 2 && l.generation == 2));
    assert_eq!(c.jobs[JOB].nodes(), ["a", "b"]);
    let job = &c.jobs[JOB];
    assert!(!matches!(job.state, JobState::Failed { .. }));
    assert!(
        job.message.contains("on 2 of 3 nodes (shrunk"),
        "{}",
        job.message
    );
}

#[test]
fn an_exec_provider_is_asked_once_per_missing_host_and_fences_the_lost_one() {
    let config = CoordinatorConfig {
        provider: "exec".into(),
        provider_dir: "/etc/holdfast/providers".into(),
        ..Default::default()
    };
    let mut c = running(config, &["a", "b"], 0);
    let fx = disconnect(&mut c, "b", 1_000);
    assert_eq!(fenced_hosts(&fx), ["b"]);
    let fx = worker(&mut c, "a", 1, Stopped, 1_100);
    assert_eq!(provisions(&fx), [(JOB, 1)]);
    // Ticks while the host is on its way ask for nothing more.
    let fx = tick_alive(&mut c, &["a"], 1_500);
    assert!(provisions(&fx).is_empty(), "{fx:?}");
    // A failed provision is told to the operator, and the next search asks again.
    let failed = Input::ProvisionResult {
        job_id: JOB.into(),
        count: 1,
        result: Err("capacity".into()),
    };
    c.step(failed, 1_600);
    assert!(c.jobs[JOB].message.contains("capacity"));
    // The new host registers and takes the rank.
    hello(&mut c, "new-1", Role::Worker, 9, 2_000);
    assert_eq!(c.jobs[JOB].nodes(), ["a", "new-1"]);
}
