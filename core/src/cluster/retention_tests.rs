//! Retention: finished jobs and closed incidents are exported, then forgotten; running jobs and
//! open incidents stay; incident ids are never reused, across an archive and a restart.

use super::testing::*;
use super::*;
use crate::incident::RecoveryAction;

/// A finished copy of the running job under another id, ended at `at`.
fn finished(c: &Cluster, id: &str, at: UnixMillis) -> Job {
    let mut job = c.jobs[JOB].clone();
    job.id = id.into();
    job.state = JobState::Succeeded;
    job.finished_at = Some(at);
    job
}

/// An incident `id` of `job` on node a, closed (resumed) at `closed` or open.
fn incident(id: u64, job: &str, closed: Option<UnixMillis>) -> Incident {
    let mut i = Incident::open(
        id,
        job,
        "a",
        "worker_exited",
        "exit 1",
        RecoveryAction::RestartInPlace,
        Generation(1),
        None,
        100,
    );
    i.resumed_at = closed;
    i
}

/// The archive command of `fx`: (job ids, incident ids).
fn archive(fx: &[Command]) -> Option<(Vec<String>, Vec<u64>)> {
    fx.iter().find_map(|c| match c {
        Command::Archive { jobs, incidents } => Some((
            jobs.iter().map(|j| j.id.to_string()).collect(),
            incidents.iter().map(|i| i.id).collect(),
        )),
        _ => None,
    })
}

/// [`running_job`] with 1 s retention, a job finished at t=100 and incidents 1, 2 (closed) and
/// 3 (open, on the running job).
fn with_history() -> Cluster {
    let mut c = running_job();
    c.config.finished_retention_ms = 1_000;
    let old = finished(&c, "old", 100);
    c.jobs.insert(old.id.clone(), old);
    c.incidents = vec![
        incident(1, "old", Some(200)),
        incident(2, "old", Some(300)),
        incident(3, JOB, None),
    ];
    c.next_incident = 4;
    c
}

fn restart(c: &Cluster, now: UnixMillis) -> Cluster {
    let records = c.to_records().unwrap();
    Cluster::restore(c.config.clone(), &records, now)
        .unwrap()
        .unwrap()
        .0
}

#[test]
fn expired_records_are_exported_then_forgotten_and_live_ones_stay() {
    let mut c = with_history();
    // Inside the retention nothing goes.
    assert_eq!(archive(&tick_alive(&mut c, &["a", "b"], 1_000)), None);
    let fx = tick_alive(&mut c, &["a", "b"], 5_000);
    assert_eq!(archive(&fx), Some((vec!["old".into()], vec![1, 2])));
    // Kept until the shell says they are written.
    assert!(c.jobs.contains_key("old"));
    assert_eq!(c.incidents.len(), 3);
    // No second export while one is in flight.
    assert_eq!(archive(&tick_alive(&mut c, &["a", "b"], 7_000)), None);
    let v = c.durable_version();
    c.step(Input::Archived { result: Ok(()) }, 7_100);
    assert!(c.durable_version() > v, "forgetting is saved");
    assert_eq!(c.jobs.keys().collect::<Vec<_>>(), [JOB]);
    let ids: Vec<u64> = c.incidents.iter().map(|i| i.id).collect();
    assert_eq!(ids, [3], "the open incident stays");
    // The running job and the open incident never go, however long.
    assert_eq!(archive(&tick_alive(&mut c, &["a", "b"], 9_000_000)), None);
}

#[test]
fn a_failed_export_keeps_the_records_and_is_tried_again_later() {
    let mut c = with_history();
    assert!(archive(&tick_alive(&mut c, &["a", "b"], 5_000)).is_some());
    let fx = c.step(
        Input::Archived {
            result: Err("No space left on device".into()),
        },
        5_100,
    );
    let alerts = events(&fx, EventKind::Alert);
    assert!(alerts[0].message.contains("No space left"), "{alerts:?}");
    assert!(c.jobs.contains_key("old"));
    assert_eq!(c.incidents.len(), 3);
    assert_eq!(archive(&tick_alive(&mut c, &["a", "b"], 6_200)), None);
    let fx = tick_alive(&mut c, &["a", "b"], 35_200);
    assert_eq!(archive(&fx), Some((vec!["old".into()], vec![1, 2])));
}

#[test]
fn counts_beyond_the_caps_go_oldest_first_even_inside_the_retention() {
    let mut c = running_job();
    c.config.max_finished_jobs = 1;
    c.config.max_closed_incidents = 1;
    for (id, at) in [("x", 300), ("y", 100), ("z", 200)] {
        let job = finished(&c, id, at);
        c.jobs.insert(job.id.clone(), job);
    }
    c.incidents = (1..=3).map(|id| incident(id, JOB, Some(500))).collect();
    c.next_incident = 4;
    let fx = tick_alive(&mut c, &["a", "b"], 1_000);
    assert_eq!(
        archive(&fx),
        Some((vec!["y".into(), "z".into()], vec![1, 2]))
    );
}

#[test]
fn incident_ids_are_never_reused_after_an_archive_and_a_restart() {
    let mut c = with_history();
    tick_alive(&mut c, &["a", "b"], 5_000);
    c.step(Input::Archived { result: Ok(()) }, 5_100);
    let mut r = restart(&c, 6_000);
    hello_running(&mut r, "a", 11, 1, 6_000);
    hello_running(&mut r, "b", 12, 1, 6_000);
    worker(&mut r, "a", 1, Crashed, 6_100);
    let ids: Vec<u64> = r.incidents.iter().map(|i| i.id).collect();
    assert_eq!(
        ids,
        [3, 4],
        "the next id follows the highest ever given, not the count"
    );
}

#[test]
fn state_saved_before_retention_restores_its_next_incident_id() {
    let c = with_history();
    let mut records = c.to_records().unwrap();
    // The previous version's header: no incident counter.
    let meta = format!(r#"{{"term":{},"next_job":{}}}"#, c.term.get(), c.next_job);
    records.insert("meta".into(), meta.into_bytes());
    let r = Cluster::restore(c.config.clone(), &records, 6_000)
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(r.next_incident, 4);
}

#[test]
fn an_archived_job_id_used_again_launches_above_every_archived_generation() {
    let mut c = with_history();
    c.jobs.get_mut("old").unwrap().generation = Generation(5);
    tick_alive(&mut c, &["a", "b"], 5_000);
    c.step(Input::Archived { result: Ok(()) }, 5_100);
    assert!(!c.jobs.contains_key("old"));
    let mut r = restart(&c, 6_000);
    hello(&mut r, "s", Role::Spare, 13, 6_000);
    let request = JobRequest {
        job_id: "old".into(),
        ..job(1)
    };
    let (again, _) = submit(&mut r, request, 6_100).unwrap();
    assert_eq!(again.generation, Generation(5));
    let fx = resolved(&mut r, "old", Ok(None), 6_200);
    let launched = launches(&fx);
    assert_eq!(launched[0].1.generation, Generation(6), "{fx:?}");
}
