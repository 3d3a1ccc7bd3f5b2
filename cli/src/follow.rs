//! Submitting a job and following it to its end: phase changes and incidents are printed as
//! they happen, and the job's final state decides the exit code.

use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::operator_service_client::OperatorServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Final job states.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "stopped")
}

/// Exit code for a finished job: 0 succeeded, 1 failed, 3 stopped.
pub fn exit_code(state: &str) -> i32 {
    match state {
        "succeeded" => 0,
        "stopped" => 3,
        _ => 1,
    }
}

/// Submits `spec` and returns the accepted job, or the coordinator's reason for refusing it.
pub async fn submit(
    client: &mut OperatorServiceClient<Channel>,
    spec: pb::JobSpec,
) -> anyhow::Result<pb::Job> {
    let job = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    Ok(job)
}

/// Prints the job's events until it reaches a final state, and returns that job.
/// `on_event` sees every event first (the demo uses it to inject its fault).
pub async fn follow(
    client: &mut OperatorServiceClient<Channel>,
    job_id: &str,
    deadline: Duration,
    mut on_event: impl FnMut(&pb::Event),
    print: bool,
) -> anyhow::Result<pb::Job> {
    let started = tokio::time::Instant::now();
    let mut events = client
        .watch_events(pb::WatchEventsRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("cannot watch events: {}", s.message()))?
        .into_inner();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        if started.elapsed() > deadline {
            anyhow::bail!("job {job_id} did not finish within {deadline:?}");
        }
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    on_event(&event);
                    if print && event.kind != "progress" {
                        println!("{}  {}", crate::tables::clock(event.at_unix_ms), event.message);
                    }
                    if let Some(job) = &event.job {
                        if job.job_id == job_id && is_terminal(&job.state) {
                            return Ok(job.clone());
                        }
                    }
                }
                Some(Err(status)) => anyhow::bail!("event stream broke: {}", status.message()),
                None => anyhow::bail!("the coordinator closed the event stream"),
            },
            _ = poll.tick() => {
                // The event stream can drop events under load; the job's own state is the truth.
                let job = client
                    .get_job(pb::GetJobRequest { job_id: job_id.to_string() })
                    .await
                    .map_err(|s| anyhow::anyhow!("cannot read job {job_id}: {}", s.message()))?
                    .into_inner();
                on_event(&pb::Event { kind: "poll".into(), job: Some(job.clone()), ..Default::default() });
                if is_terminal(&job.state) {
                    return Ok(job);
                }
            }
        }
    }
}
