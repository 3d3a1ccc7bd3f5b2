//! Submitting a job and following it to its end: phase changes and incidents are printed as
//! they happen, and the job's final state decides the exit code. On a terminal a status line
//! (step, steps/s, generation, node health) is redrawn in place below the events; when stdout is
//! not a terminal the same status is printed as a plain line every few seconds.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use holdfast_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Streaming;

/// Final job states, given the job's state string (`pb::Job::state`). Prefer
/// `job.job_state().is_terminal()` where the whole job is at hand: it also reads a coordinator
/// that sends only the typed state.
pub fn is_terminal(state: &str) -> bool {
    pb::JobState::from_name(state).is_terminal()
}

/// Exit code for a finished job, given its state string: 0 succeeded, 1 failed, 3 stopped.
/// Prefer [`job_exit_code`] where the whole job is at hand.
pub fn exit_code(state: &str) -> i32 {
    state_exit_code(pb::JobState::from_name(state))
}

/// Exit code for a finished job: 0 succeeded, 1 failed, 3 stopped.
pub fn job_exit_code(job: &pb::Job) -> i32 {
    state_exit_code(job.job_state())
}

fn state_exit_code(state: pb::JobState) -> i32 {
    match state {
        pb::JobState::Succeeded => 0,
        pb::JobState::Stopped => 3,
        _ => 1,
    }
}

/// Submits `spec` and returns the accepted job, or the coordinator's reason for refusing it.
pub async fn submit(
    client: &mut crate::client::Client,
    spec: pb::JobSpec,
) -> anyhow::Result<pb::Job> {
    let job = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    Ok(job)
}

/// Steps per second from successive progress reports of one generation, smoothed.
#[derive(Debug, Default, Clone)]
pub struct RateMeter {
    last: Option<(u64, u64, i64)>,
    rate: Option<f64>,
}

impl RateMeter {
    /// Takes the job's step at `at_ms`; a new generation restarts the measurement (its steps
    /// repeat work from the checkpoint and its start-up time is not training speed).
    pub fn observe(&mut self, generation: u64, step: u64, at_ms: i64) {
        if let Some((g, s, t)) = self.last {
            if g != generation {
                self.last = Some((generation, step, at_ms));
                return;
            }
            if step <= s || at_ms <= t {
                return;
            }
            let r = (step - s) as f64 * 1000.0 / (at_ms - t) as f64;
            self.rate = Some(self.rate.map_or(r, |old| 0.7 * old + 0.3 * r));
        }
        self.last = Some((generation, step, at_ms));
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }
}

/// One line of live status: state, generation, step, steps/s, last checkpoint, node health.
pub fn status_line(job: &pb::Job, nodes: &[pb::Node], rate: Option<f64>) -> String {
    let total = job.spec.as_ref().map_or(0, |s| s.total_steps);
    let step = if total > 0 {
        format!("{}/{total}", job.step)
    } else {
        job.step.to_string()
    };
    let phase = if job.phase.is_empty() {
        String::new()
    } else {
        format!(" ({})", job.phase)
    };
    let rate = rate.map_or("-".to_string(), |r| format!("{r:.1}"));
    let mut healthy = 0;
    let mut trouble = Vec::new();
    for id in &job.nodes {
        match nodes.iter().find(|n| &n.node_id == id) {
            Some(n) => {
                let unhealthy = n.health.as_ref().is_some_and(|h| {
                    h.state == pb::HealthState::Unhealthy as i32
                        || h.state == pb::HealthState::Degraded as i32
                });
                if n.connected && !unhealthy && n.node_state() == pb::NodeState::Allocated {
                    healthy += 1;
                } else {
                    let why = if !n.connected {
                        "offline"
                    } else if unhealthy {
                        "unhealthy"
                    } else {
                        n.state.as_str()
                    };
                    trouble.push(format!("{id} {why}"));
                }
            }
            None => trouble.push(format!("{id} unknown")),
        }
    }
    let mut line = format!(
        "{} {}{phase} · gen {} · step {step} · {rate} steps/s · ckpt {} · nodes {healthy}/{} healthy",
        job.job_id,
        job.state,
        job.generation,
        job.last_checkpoint_step,
        job.nodes.len()
    );
    if !trouble.is_empty() {
        line.push_str(&format!(" ({})", trouble.join(", ")));
    }
    line
}

/// Where follow's output goes: a redrawn line on a terminal, plain lines otherwise.
struct Display {
    enabled: bool,
    terminal: bool,
    /// A status line is on screen and must be cleared before the next event line.
    drawn: bool,
    last_plain: Option<tokio::time::Instant>,
}

impl Display {
    const PLAIN_EVERY: Duration = Duration::from_secs(5);

    /// Writes to stdout through `draw` (its write errors are ignored: output is best effort),
    /// unless output is off.
    fn print(
        &mut self,
        draw: impl FnOnce(&mut Self, &mut std::io::StdoutLock) -> std::io::Result<()>,
    ) {
        if self.enabled {
            let mut out = std::io::stdout().lock();
            let _ = draw(self, &mut out).and_then(|()| out.flush());
        }
    }

    fn event(&mut self, line: &str) {
        self.print(|display, out| {
            if std::mem::take(&mut display.drawn) {
                write!(out, "\r\x1b[2K")?;
            }
            writeln!(out, "{line}")
        });
    }

    fn status(&mut self, line: &str) {
        self.print(|display, out| {
            if display.terminal {
                display.drawn = true;
                write!(out, "\r\x1b[2K{line}")
            } else if display
                .last_plain
                .is_none_or(|t| t.elapsed() >= Self::PLAIN_EVERY)
            {
                display.last_plain = Some(tokio::time::Instant::now());
                let now = crate::tables::clock(holdfast_coordinator::now_ms());
                writeln!(out, "{now}  {line}")
            } else {
                Ok(())
            }
        });
    }

    fn finish(&mut self) {
        if self.drawn {
            self.print(|display, out| {
                display.drawn = false;
                writeln!(out)
            });
        }
    }
}

type Events = Streaming<pb::Event>;

/// Every event of the coordinator from now on. Open it before submitting a job, so the job's
/// first transitions are not missed.
pub async fn watch(client: &mut crate::client::Client) -> anyhow::Result<Events> {
    watch_or_outage(client)
        .await?
        .ok_or_else(|| anyhow::anyhow!("cannot watch events: the coordinator is unreachable"))
}

/// Opens the event stream; `None` while the coordinator is unreachable.
async fn watch_or_outage(client: &mut crate::client::Client) -> anyhow::Result<Option<Events>> {
    match client
        .watch_events(pb::WatchEventsRequest {
            job_id: String::new(),
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

/// Prints the job's events until it reaches a final state, and returns that job.
/// `on_event` sees every event first (the demo uses it to inject its fault).
pub async fn follow(
    client: &mut crate::client::Client,
    job_id: &str,
    deadline: Duration,
    on_event: impl FnMut(&pb::Event),
    print: bool,
) -> anyhow::Result<pb::Job> {
    let events = watch(client).await?;
    follow_events(client, None, events, job_id, deadline, on_event, print).await
}

/// [`follow`] on an event stream opened earlier with [`watch`]. A coordinator that goes away
/// (restart, failover) does not end the following: the training goes on meanwhile, so the
/// follower retries until `deadline`, connecting again through `reconnect` (comma-separated
/// coordinator addresses, see [`follow_at`]) when it is given. On a terminal the status line
/// is redrawn in place and cleared at the end.
pub async fn follow_events(
    client: &mut crate::client::Client,
    reconnect: Option<&str>,
    events: Events,
    job_id: &str,
    deadline: Duration,
    mut on_event: impl FnMut(&pb::Event),
    print: bool,
) -> anyhow::Result<pb::Job> {
    let mut display = Display {
        enabled: print,
        terminal: std::io::stdout().is_terminal(),
        drawn: false,
        last_plain: None,
    };
    let result = follow_inner(
        client,
        reconnect,
        events,
        job_id,
        deadline,
        &mut on_event,
        &mut display,
    )
    .await;
    display.finish();
    result
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
    let events = watch(&mut client).await?;
    let reconnect = Some(addrs);
    follow_events(
        &mut client,
        reconnect,
        events,
        job_id,
        deadline,
        on_event,
        print,
    )
    .await
}

async fn follow_inner(
    client: &mut crate::client::Client,
    reconnect: Option<&str>,
    events: Events,
    job_id: &str,
    deadline: Duration,
    on_event: &mut impl FnMut(&pb::Event),
    display: &mut Display,
) -> anyhow::Result<pb::Job> {
    let mut events = Some(events);
    let mut rate = RateMeter::default();
    let mut nodes: Vec<pb::Node> = Vec::new();
    let started = tokio::time::Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    // Set while the coordinator cannot be reached.
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
                Some(Ok(event)) if !event.job_id.is_empty() && event.job_id != job_id => {}
                Some(Ok(event)) => {
                    on_event(&event);
                    let progress = event.event_kind() == pb::EventKind::Progress;
                    if !progress {
                        display.event(&format!("{}  {}", crate::tables::clock(event.at_unix_ms), event.message));
                    }
                    if let Some(job) = &event.job {
                        if job.job_id == job_id {
                            if progress {
                                rate.observe(job.generation, job.step, event.at_unix_ms);
                            }
                            display.status(&status_line(job, &nodes, rate.rate()));
                        }
                        if job.job_id == job_id && job.job_state().is_terminal() {
                            return Ok(job.clone());
                        }
                    }
                }
                Some(Err(status)) => {
                    lost(&mut unreachable_since, display, status.message());
                    events = None;
                }
                None => {
                    lost(&mut unreachable_since, display, "the coordinator closed the event stream");
                    events = None;
                }
            },
            _ = poll.tick() => {
                // The event stream can drop events under load; the job's own state is the truth.
                let job = match client.get_job(pb::GetJobRequest { job_id: job_id.to_string() }).await {
                    Ok(job) => job.into_inner(),
                    Err(status) if is_outage(&status) => {
                        lost(&mut unreachable_since, display, status.message());
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
                    display.event(&format!(
                        "coordinator reachable again after {:.1} s",
                        since.elapsed().as_secs_f64()
                    ));
                }
                if events.is_none() {
                    events = watch_or_outage(client).await.ok().flatten();
                }
                // Made here, not by the coordinator: "poll" has no typed kind (UNSPECIFIED).
                on_event(&pb::Event { kind: "poll".into(), job: Some(job.clone()), ..Default::default() });
                if display.enabled {
                    // Node health for the status line; a failed read keeps the last one.
                    if let Ok(r) = client.list_nodes(pb::ListNodesRequest::default()).await {
                        nodes = r.into_inner().nodes;
                    }
                    display.status(&status_line(&job, &nodes, rate.rate()));
                }
                if job.job_state().is_terminal() {
                    return Ok(job);
                }
            }
        }
    }
}

fn lost(since: &mut Option<tokio::time::Instant>, display: &mut Display, why: &str) {
    if since.is_none() {
        *since = Some(tokio::time::Instant::now());
        display.event(&format!(
            "coordinator unreachable ({why}); training goes on, retrying"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_meter_smooths_and_restarts_per_generation() {
        let mut m = RateMeter::default();
        m.observe(1, 0, 0);
        assert_eq!(m.rate(), None);
        m.observe(1, 10, 1000);
        assert_eq!(m.rate(), Some(10.0));
        m.observe(1, 30, 2000);
        assert!((m.rate().unwrap() - 13.0).abs() < 1e-9);
        // A relaunch resumes from an older step: not a negative rate.
        m.observe(2, 20, 3000);
        m.observe(2, 21, 4000);
        assert!((m.rate().unwrap() - (0.7 * 13.0 + 0.3)).abs() < 1e-9);
    }

    /// A node as the coordinator lists it, with its state by name.
    fn node(id: &str, state: &str, connected: bool) -> pb::Node {
        pb::Node {
            node_id: id.into(),
            state: state.into(),
            connected,
            ..Default::default()
        }
    }

    #[test]
    fn status_line_shows_progress_and_node_health() {
        let job = pb::Job {
            job_id: "job-1".into(),
            state: "recovering".into(),
            phase: "replacing".into(),
            generation: 2,
            step: 45,
            last_checkpoint_step: 40,
            nodes: vec!["a".into(), "b".into()],
            spec: Some(pb::JobSpec {
                total_steps: 80,
                ..Default::default()
            }),
            ..Default::default()
        };
        let nodes = [node("a", "allocated", true), node("b", "fenced", false)];
        let line = status_line(&job, &nodes, Some(9.84));
        assert_eq!(
            line,
            "job-1 recovering (replacing) · gen 2 · step 45/80 · 9.8 steps/s · ckpt 40 · nodes 1/2 healthy (b offline)"
        );
    }

    #[test]
    fn final_states_and_exit_codes_read_either_field() {
        let old = |state: &str| pb::Job {
            state: state.into(),
            ..Default::default()
        };
        let new = |state: pb::JobState| pb::Job {
            state_enum: state as i32,
            ..Default::default()
        };
        for (name, typed, code) in [
            ("succeeded", pb::JobState::Succeeded, 0),
            ("failed", pb::JobState::Failed, 1),
            ("stopped", pb::JobState::Stopped, 3),
        ] {
            assert!(is_terminal(name), "{name}");
            assert_eq!(exit_code(name), code, "{name}");
            assert_eq!(job_exit_code(&old(name)), code, "{name}");
            assert_eq!(job_exit_code(&new(typed)), code, "{name}");
            assert!(new(typed).job_state().is_terminal(), "{name}");
        }
        for name in [
            "pending",
            "launching",
            "running",
            "recovering",
            "",
            "paused",
        ] {
            assert!(!is_terminal(name), "{name}");
            assert!(!old(name).job_state().is_terminal(), "{name}");
        }
        assert!(!new(pb::JobState::Running).job_state().is_terminal());
        // A state this build does not know is not a success.
        assert_eq!(exit_code("paused"), 1);
    }

    #[test]
    fn status_line_counts_healthy_nodes_from_the_typed_state() {
        let job = pb::Job {
            job_id: "job-1".into(),
            state: "running".into(),
            nodes: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        // A coordinator that sends only the typed state.
        let typed = pb::Node {
            state_enum: pb::NodeState::Allocated as i32,
            ..node("a", "", true)
        };
        let nodes = [typed, node("b", "allocated", true)];
        assert!(status_line(&job, &nodes, None).ends_with("nodes 2/2 healthy"));
    }
}
