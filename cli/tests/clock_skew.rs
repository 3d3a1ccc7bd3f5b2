//! Integration tier for honest detection times: an agent whose wall clock is 30 s ahead
//! (libfaketime preloaded into its process only), a fatal XID injected through its
//! fault-injection seam, and the incident's fault time and detection latency checked against
//! the host's clock — the truth.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast_testkit::{self as kit, holdfast_exe, Scratch, Train};

/// The agent's clock is this far ahead of the coordinator's.
const SKEW_MS: i64 = 30_000;

/// How far the incident's figures may be from the truth.
const TOLERANCE_MS: i64 = 500;
/// How long the agents get to connect and pass their checks.
const AGENTS_READY: Duration = Duration::from_secs(30);

fn host_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The skewed agent's clock offset is measured from heartbeat round trips; a fatal XID it
/// observes is dated by its observation corrected for the offset, so the incident's fault time
/// and detection latency stay within 0.5 s of the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_xid_on_an_agent_30_s_ahead_is_dated_within_half_a_second() {
    let Some(lib) = kit::require(kit::libfaketime()) else {
        return;
    };
    let dir = Scratch::new("it-clock-skew");
    let agent_config = "fault_injection = true\nhealth_poll_interval_ms = 100\n";
    let (mut cluster, config) =
        kit::coordinator_with_agent_config(holdfast_exe!(), &dir, agent_config).await;
    // The agent (and the workers it starts) read a wall clock 30 s ahead. Monotonic time is
    // shifted by the same constant (libfaketime's default), which timers do not notice; leaving
    // it alone (FAKETIME_DONT_FAKE_MONOTONIC) breaks Python's absolute-deadline sleeps.
    let skew = format!("+{}s", SKEW_MS / 1000);
    cluster
        .start_agent_env(
            "skewed",
            "worker",
            &["--config", &config],
            &[
                ("LD_PRELOAD", lib.as_str()),
                ("FAKETIME", skew.as_str()),
                ("FAKETIME_NO_CACHE", "1"),
            ],
        )
        .unwrap();
    let more = [("plain", "worker"), ("spare-1", "spare")];
    cluster.start_agents(&more, AGENTS_READY).await.unwrap();

    // The offset is measured (the welcome's stamp is echoed in the first heartbeat).
    let skewed = kit::wait_node(
        &cluster,
        "skewed",
        Duration::from_secs(10),
        "a clock offset of +30 s",
        |n| (n.clock_offset_ms - SKEW_MS).abs() < 200,
    )
    .await;
    let plain = kit::node(&cluster, "plain").await;
    assert!(plain.clock_offset_ms.abs() < 200, "{plain:#?}");

    let spec = Train::paced(2, 2_000, 0.05).spec(&dir);
    let job = kit::submit(&cluster, spec).await;
    kit::wait_job(&cluster, &job.job_id, Duration::from_secs(60), |j| {
        j.state == "running" && j.step >= 5
    })
    .await;
    let running = kit::job(&cluster, &job.job_id).await;
    assert!(
        running.nodes.iter().any(|n| n == "skewed"),
        "workers are picked before the spare: {running:#?}"
    );

    let truth = host_now_ms();
    cluster.inject("skewed", "xid 79 gpu 0").unwrap();
    let incident = kit::wait_for(Duration::from_secs(15), || async {
        let all = kit::incidents(&cluster, &job.job_id).await;
        match all.first() {
            Some(i) => Ok(i.clone()),
            None => Err("no incident yet".to_string()),
        }
    })
    .await;
    assert_eq!(incident.cause, "health_fatal", "{incident:#?}");
    assert_eq!(incident.node_id, "skewed");
    assert_eq!(incident.fault_time_source, "agent_event", "{incident:#?}");

    let fault_error = incident.fault_unix_ms - truth;
    let detect_reported = incident.detected_unix_ms - incident.fault_unix_ms;
    let detect_true = incident.detected_unix_ms - truth;
    eprintln!(
        "clock skew +{SKEW_MS} ms (measured {} ms): fault time error {fault_error} ms; \
         detection {detect_reported} ms reported, {detect_true} ms true",
        skewed.clock_offset_ms
    );
    assert!(
        fault_error.abs() <= TOLERANCE_MS,
        "fault time {fault_error} ms from the truth: {incident:#?}"
    );
    assert!(
        (detect_reported - detect_true).abs() <= TOLERANCE_MS,
        "detection {detect_reported} ms reported, {detect_true} ms true"
    );
    assert!(detect_reported >= 0 && detect_true < 5_000, "{incident:#?}");
}
