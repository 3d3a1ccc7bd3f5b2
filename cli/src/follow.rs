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
    on_event: impl FnMut(&pb::Event),
    print: bool,
) -> anyhow::Result<pb::Job> {
    follow_with(client, None, job_id, deadline, on_event, print).await
}

/// [`follow`] given the coordinator addresses (comma-separated for several coordinators):
/// while the one it talks to is unreachable it connects again through the list, so it follows
/// the job across a leader failover.
pub async fn follow_at(
    addrs: &str,
    job_id: &str,
    deadline: Duration,
    on_event: impl FnMut(&pb::Event),
    print: bool,
) -> anyhow::Result<pb::Job> {
    let mut client = crate::client::connect(addrs).await?;
    follow_with(&mut client, Some(addrs), job_id, deadline, on_event, print).await
}

async fn follow_with(
    client: &mut OperatorServiceClient<Channel>,
    reconnect: Option<&str>,
    job_id: &str,
    deadline: Duration,
    mut on_event: impl FnMut(&pb::Event),
    print: bool,
) -> anyhow::Result<pb::Job> {
    let started = tokio::time::Instant::now();
    let mut events = watch(client, job_id).await?;
    anyhow::ensure!(
        events.is_some(),
        "cannot watch events: the coordinator is unreachable"
    );
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    // Set while the coordinator cannot be reached (restarting, failing over): the training
    // goes on meanwhile, so following goes on too, until `deadline`.
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        if started.elapsed() > deadline {
            anyhow::bail!("job {job_id} did not finish within {deadline:?}");
        }
        tokio::select! {
            event = async {
                match events.as_mut() {
                    Some(e) => e.next().await,
                    None => std::future::pending().await,
                }
            } => match event {
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
                Some(Err(status)) => {
                    lost(&mut unreachable_since, print, status.message());
                    events = None;
                }
                None => {
                    lost(&mut unreachable_since, print, "the coordinator closed the event stream");
                    events = None;
                }
            },
            _ = poll.tick() => {
                // The event stream can drop events under load; the job's own state is the truth.
                let job = match client.get_job(pb::GetJobRequest { job_id: job_id.to_string() }).await {
                    Ok(job) => job.into_inner(),
                    Err(status) if is_outage(&status) => {
                        lost(&mut unreachable_since, print, status.message());
                        if let Some(addrs) = reconnect {
                            // Another coordinator may lead now.
                            if let Ok(c) = crate::client::connect(addrs).await {
                                *client = c;
                                events = None;
                            }
                        }
                        continue;
                    }
                    Err(status) => anyhow::bail!("cannot read job {job_id}: {}", status.message()),
                };
                if let Some(since) = unreachable_since.take() {
                    if print {
                        println!("coordinator reachable again after {:.1} s", since.elapsed().as_secs_f64());
                    }
                }
                if events.is_none() {
                    events = watch(client, job_id).await.ok().flatten();
                }
                on_event(&pb::Event { kind: "poll".into(), job: Some(job.clone()), ..Default::default() });
                if is_terminal(&job.state) {
                    return Ok(job);
                }
            }
        }
    }
}

type Events = tonic::Streaming<pb::Event>;

/// Opens the event stream; `None` while the coordinator is unreachable.
async fn watch(
    client: &mut OperatorServiceClient<Channel>,
    job_id: &str,
) -> anyhow::Result<Option<Events>> {
    match client
        .watch_events(pb::WatchEventsRequest {
            job_id: job_id.to_string(),
        })
        .await
    {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(status) if is_outage(&status) => Ok(None),
        Err(status) => anyhow::bail!("cannot watch events: {}", status.message()),
    }
}

/// Errors that mean "the coordinator is away for now", not "the request is wrong".
fn is_outage(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

fn lost(since: &mut Option<tokio::time::Instant>, print: bool, why: &str) {
    if since.is_none() {
        *since = Some(tokio::time::Instant::now());
        if print {
            println!("coordinator unreachable ({why}); training goes on, retrying");
        }
    }
}
