//! A job restricted to a set of nodes (`allowed_nodes`, a Slurm allocation's nodes): placed only
//! on them, repaired only from them, and never given a node outside the set, even the only free
//! one.

use super::testing::*;
use super::*;

/// A job of `nodes` nodes that may use only `allowed`.
fn within(nodes: u32, allowed: &[&str]) -> JobRequest {
    JobRequest {
        allowed_nodes: allowed.iter().map(|n| n.to_string()).collect(),
        ..job(nodes)
    }
}

/// Worker `a` outside the set (it would be picked first), `b`, `c`, `d` inside, spare `s`
/// outside (it would be the first replacement).
fn allocation_and_outsiders() -> Cluster {
    cluster_of(
        CoordinatorConfig::default(),
        &[
            ("a", Role::Worker),
            ("b", Role::Worker),
            ("c", Role::Worker),
            ("d", Role::Worker),
            ("s", Role::Spare),
        ],
    )
}

fn waiting_for_replacement(c: &Cluster) -> bool {
    matches!(
        c.jobs[JOB].state,
        JobState::Recovering(job::RecoveryPhase::Replacing { .. })
    )
}

#[test]
fn a_job_is_placed_only_on_its_allowed_nodes() {
    let mut c = allocation_and_outsiders();
    let job = run_job(&mut c, within(2, &["b", "c", "d"]), 10);
    assert_eq!(job.nodes(), vec!["b", "c"]);
    assert_eq!(job.spec.allowed_nodes.len(), 3);
    for outsider in ["a", "s"] {
        assert!(c.nodes[outsider].allocatable(), "{outsider} stays free");
    }
}

#[test]
fn too_few_ready_nodes_in_the_set_refuse_the_job_and_say_so() {
    let mut c = allocation_and_outsiders();
    // Five nodes are ready, but only b and c of the set are: x has no agent.
    let err = submit(&mut c, within(3, &["b", "c", "x"]), 10).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, CoreError::InvalidJob { field: "nodes", .. }),
        "{err}"
    );
    assert!(
        text.contains("only 2 are ready of the 3 it may use (b, c)"),
        "{text}"
    );
    assert!(c.jobs.is_empty());
    assert!(["a", "b", "c", "d", "s"]
        .iter()
        .all(|n| c.nodes[*n].allocatable()));
}

#[test]
fn a_lost_node_is_replaced_from_the_set_not_by_the_spare_outside_it() {
    let mut c = allocation_and_outsiders();
    run_job(&mut c, within(2, &["b", "c", "d"]), 10);
    worker(&mut c, "b", 1, Step(35), 40);
    disconnect(&mut c, "c", 1_000);
    worker(&mut c, "b", 1, Stopped, 1_050);
    // Unrestricted, spare s (spares first) would take rank 1; the set's free node d does.
    assert_eq!(c.jobs[JOB].nodes(), vec!["b", "d"]);
    let fx = resolved(&mut c, JOB, Ok(None), 1_060);
    assert_eq!(launch_to(&fx, "d").map(|l| l.node_rank), Some(1));
    assert!(launch_to(&fx, "s").is_none() && launch_to(&fx, "a").is_none());
    assert_eq!(c.incidents[0].replacement_node_id.as_deref(), Some("d"));
}

#[test]
fn a_node_outside_the_set_is_never_taken_even_as_the_only_free_one() {
    let mut c = allocation_and_outsiders();
    // Every node of the set is in use: no spare left inside it.
    run_job(&mut c, within(3, &["b", "c", "d"]), 10);
    disconnect(&mut c, "d", 1_000);
    worker(&mut c, "b", 1, Stopped, 1_050);
    worker(&mut c, "c", 1, Stopped, 1_050);
    assert!(waiting_for_replacement(&c));
    // a and s are free and ready, and new agents outside the set keep arriving: the job waits.
    for (t, outsider, conn) in [(1_500, "e", 20), (2_000, "s2", 21)] {
        let role = if outsider == "e" {
            Role::Worker
        } else {
            Role::Spare
        };
        hello(&mut c, outsider, role, conn, t);
        tick_alive(&mut c, &["b", "c", "a", "s", "e", "s2"], t + 100);
        assert!(waiting_for_replacement(&c), "{:?}", c.jobs[JOB].state);
        assert!(c.jobs[JOB].message.contains("waiting for a replacement"));
    }
    for outsider in ["a", "s", "e", "s2"] {
        assert!(c.nodes[outsider].allocatable(), "{outsider} was taken");
    }
    // The repaired node of the set comes back under its fully qualified name: it is the set's
    // node d by its first label, and takes the rank.
    let fx = hello(&mut c, "d.cluster.example", Role::Worker, 30, 3_000);
    assert_eq!(resolves(&fx).len(), 1, "{fx:?}");
    assert_eq!(c.jobs[JOB].nodes(), vec!["b", "c", "d.cluster.example"]);
}

#[test]
fn allowed_nodes_are_checked_naming_the_field() {
    let mut c = allocation_and_outsiders();
    let too_many: Vec<String> = (0..=crate::limits::MAX_ALLOWED_NODES)
        .map(|i| format!("n{i}"))
        .collect();
    let cases = [
        (within(3, &["b", "c"]), "names 2 nodes but the job needs 3"),
        (
            within(1, &["b", "c;reboot"]),
            "\"c;reboot\" is not a node id",
        ),
        (within(1, &["b", ""]), "\"\" is not a node id"),
        (
            JobRequest {
                allowed_nodes: too_many,
                ..job(1)
            },
            "names 10001 nodes; at most 10000 are allowed",
        ),
    ];
    for (request, why) in cases {
        let err = submit(&mut c, request, 10).unwrap_err();
        assert!(
            matches!(
                err,
                CoreError::InvalidJob {
                    field: "allowed_nodes",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(why), "{err}");
    }
    assert!(c.jobs.is_empty());
}

#[test]
fn the_set_is_kept_with_the_job_and_older_records_mean_any_node() {
    let mut c = allocation_and_outsiders();
    let job = run_job(&mut c, within(2, &["b", "c", "d"]), 10);
    let saved = serde_json::to_value(&job.spec).unwrap();
    let back: JobSpec = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(back, job.spec);
    assert!(!back.allows("a") && back.allows("d") && back.allows("d.cluster"));
    let mut older = saved;
    older.as_object_mut().unwrap().remove("allowed_nodes");
    let older: JobSpec = serde_json::from_value(older).unwrap();
    assert!(older.allowed_nodes.is_empty() && older.allows("a"));
}
