//! # The swarm benchmark (`holdfast bench swarm`)
//!
//! Many simulated agents in this one process against a coordinator started elsewhere, so that
//! the coordinator's CPU and memory are its own. Each agent ([`agent`]) has its own HTTP/2
//! connection and speaks `holdfast.v1` as a real agent does; the engine here drives the
//! phases and measures through the operator API only, as an operator would see it:
//!
//! 1. **register**: every agent connects and says hello; done when `ListNodes` shows them all
//!    ready.
//! 2. **jobs** (`--jobs J --nodes-per-job M`): each job is submitted and timed until the
//!    coordinator shows it running (every rank's worker-started event processed).
//! 3. **steady** (`--duration S`): heartbeats only. The coordinator's CPU (`/proc/<pid>/stat`)
//!    and RSS are read at both ends; once a second a `ListNodes` is timed and each node's
//!    `last_heartbeat_unix_ms` (the coordinator's clock when it processed the node's latest
//!    heartbeat) is matched with the send time of that heartbeat: the heartbeat lag.
//! 4. **silence** (`--silence K`): K agents stop sending (their connections stay open, as a
//!    hung or cut-off host's does); one rank of each job is among them. Detection is the time
//!    from the silencing to the coordinator's first event showing the node offline or fenced
//!    (or its incident's detection time, if earlier); the relaunch is the time from the
//!    incident's detection to the job shown running at the next generation.
//!
//! Throughout, any node the coordinator shows offline, fenced or disconnected that the
//! generator never silenced is a false timeout. Every agent's heartbeat tick lateness is kept:
//! when the generator itself falls behind, its numbers say more about it than about the
//! coordinator, and the report says so (`generator_behind`).
//!
//! This module must not reach into the coordinator: only the wire protocol and `/proc`.

pub mod agent;
pub mod procfs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_proto::v1 as pb;
use tokio::sync::watch;

use agent::{stopped, AgentProbe, AgentSpec, SwarmCounters};

/// Unix milliseconds, the clock both the coordinator's stamps and the agents' use.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// The coordinator (host:port or http:// URL; plain HTTP only).
    pub coordinator: String,
    /// Simulated agents, spares included.
    pub agents: usize,
    /// Of them, registered as spares.
    pub spares: usize,
    /// Jobs submitted once the swarm is ready.
    pub jobs: usize,
    /// Nodes per job.
    pub nodes_per_job: usize,
    /// Agents silenced after the steady phase (one rank of each job first).
    pub silence: usize,
    /// Length of the steady phase.
    pub duration: Duration,
    /// The coordinator's process; found by its listening port when `None`.
    pub coordinator_pid: Option<u32>,
    /// A pretend worker reports a step this often.
    pub step: Duration,
    /// Agents connecting at the same time while the swarm starts.
    pub connect_concurrency: usize,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            coordinator: crate::client::DEFAULT_COORDINATOR.into(),
            agents: 100,
            spares: 0,
            jobs: 0,
            nodes_per_job: 4,
            silence: 0,
            duration: Duration::from_secs(10),
            coordinator_pid: None,
            step: Duration::from_secs(1),
            connect_concurrency: 64,
        }
    }
}

/// Why the swarm could not run or measure.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("--{flag}: {reason}")]
    Options { flag: &'static str, reason: String },
    #[error("coordinator at {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "{agents} agents need about {needed} open files but this process may open {limit}; \
         raise it (ulimit -n) or run fewer agents"
    )]
    FileLimit {
        agents: usize,
        needed: u64,
        limit: u64,
    },
    #[error("only {ready} of {agents} agents were ready within {within:?}: {detail}")]
    NotReady {
        ready: usize,
        agents: usize,
        within: Duration,
        detail: String,
    },
    #[error("the coordinator refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("{0}")]
    Timeout(String),
}

impl SwarmOptions {
    /// Checks the options fit together; the error names the flag.
    pub fn validate(&self) -> Result<(), SwarmError> {
        let bad = |flag, reason: &str| {
            Err(SwarmError::Options {
                flag,
                reason: reason.to_string(),
            })
        };
        if self.agents == 0 {
            return bad("agents", "at least 1");
        }
        if self.spares > self.agents {
            return bad("spares", "more spares than agents");
        }
        if self.jobs > 0 && self.nodes_per_job < 2 {
            return bad(
                "nodes-per-job",
                "at least 2 (a fault never fences every node of a job)",
            );
        }
        let workers = self.agents - self.spares;
        let free_victims = self.silence.saturating_sub(self.jobs);
        if self.jobs * self.nodes_per_job + free_victims > workers {
            return bad(
                "jobs",
                &format!(
                    "{} jobs of {} nodes and {free_victims} silenced free nodes need more than \
                     the {workers} worker agents",
                    self.jobs, self.nodes_per_job
                ),
            );
        }
        // More silent at once than the coordinator's silence_storm_share (default one half) is
        // a shared cause to it, not node faults.
        if self.silence * 2 >= self.agents {
            return bad(
                "silence",
                "must be under half of --agents (the coordinator holds fencing when that many \
                 go silent at once: silence_storm_share)",
            );
        }
        if self.connect_concurrency == 0 {
            return bad("connect-concurrency", "at least 1");
        }
        if self.coordinator.contains("https://") {
            return bad(
                "coordinator",
                "the swarm speaks plain HTTP; start the coordinator without tls_* on loopback",
            );
        }
        Ok(())
    }
}

/// P50 and P99 (nearest rank) and the largest of some samples, in the samples' unit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Spread {
    pub fn of(samples: &mut [f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = (p * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Some(Spread {
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
            count: samples.len(),
        })
    }
}

/// What one run measured. Times are seconds.
#[derive(Debug, Clone, Default)]
pub struct SwarmReport {
    pub agents: usize,
    pub spares: usize,
    pub jobs: usize,
    pub nodes_per_job: usize,
    pub silenced: usize,
    pub duration_s: f64,
    /// Heartbeat interval the coordinator's welcome asked for.
    pub heartbeat_interval_ms: u64,
    /// First connect → every agent shown ready.
    pub registration_s: f64,
    pub coordinator_pid: Option<u32>,
    /// Coordinator CPU over the steady phase, in cores.
    pub coordinator_cpu_cores: Option<f64>,
    /// Coordinator resident memory, the most seen.
    pub coordinator_rss_mb: Option<f64>,
    /// This process's CPU over the steady phase, in cores.
    pub generator_cpu_cores: Option<f64>,
    pub generator_rss_mb: Option<f64>,
    pub heartbeats_per_s: f64,
    pub heartbeat_lag: Option<Spread>,
    /// Node lists the heartbeat lag was read from, and those left out because the coordinator
    /// had moved its heartbeat stamps (its tick ran late).
    pub lag_lists_used: u32,
    pub lag_lists_discarded: u32,
    /// Coordinator → agent: a ping's stamp to its arrival (ms resolution).
    pub ping_delay: Option<Spread>,
    pub list_nodes: Option<Spread>,
    /// Nodes shown offline, fenced or disconnected that were never silenced.
    pub false_timeouts: Vec<String>,
    /// Sessions of never-silenced agents that ended without the generator ending them.
    pub sessions_lost: u64,
    pub lost_reasons: Vec<String>,
    pub detect: Option<Spread>,
    /// Silenced agents the coordinator never showed as lost.
    pub undetected: Vec<String>,
    /// Submit → shown running, per job.
    pub job_start: Option<Spread>,
    /// Incident detected → shown running at the next generation, per job hit.
    pub relaunch: Option<Spread>,
    /// Jobs that did not start or relaunch in time.
    pub jobs_stuck: Vec<String>,
    /// Heartbeat tick lateness of the generator.
    pub lateness: Option<Spread>,
    pub send_queue_full: u64,
    pub generator_behind: bool,
    /// The event stream broke and was opened again this many times.
    pub watch_breaks: u32,
}

impl SwarmReport {
    /// Every invariant held: no false timeout, every silenced agent detected, every job
    /// started and relaunched.
    pub fn passed(&self) -> bool {
        self.false_timeouts.is_empty() && self.undetected.is_empty() && self.jobs_stuck.is_empty()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let p = |s: &Option<Spread>, f: fn(&Spread) -> f64| s.as_ref().map(f);
        let r3 = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
        serde_json::json!({
            "agents": self.agents,
            "spares": self.spares,
            "jobs": self.jobs,
            "nodes_per_job": self.nodes_per_job,
            "silenced": self.silenced,
            "duration_s": self.duration_s,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "registration_s": r3(Some(self.registration_s)),
            "coordinator_pid": self.coordinator_pid,
            "coordinator_cpu_cores": r3(self.coordinator_cpu_cores),
            "coordinator_rss_mb": r3(self.coordinator_rss_mb),
            "generator_cpu_cores": r3(self.generator_cpu_cores),
            "generator_rss_mb": r3(self.generator_rss_mb),
            "heartbeats_per_s": r3(Some(self.heartbeats_per_s)),
            "heartbeat_lag_p50_s": r3(p(&self.heartbeat_lag, |s| s.p50)),
            "heartbeat_lag_p99_s": r3(p(&self.heartbeat_lag, |s| s.p99)),
            "heartbeat_lag_max_s": r3(p(&self.heartbeat_lag, |s| s.max)),
            "lag_lists_used": self.lag_lists_used,
            "lag_lists_discarded": self.lag_lists_discarded,
            "ping_delay_p50_s": r3(p(&self.ping_delay, |s| s.p50)),
            "ping_delay_p99_s": r3(p(&self.ping_delay, |s| s.p99)),
            "list_nodes_p50_s": r3(p(&self.list_nodes, |s| s.p50)),
            "list_nodes_p99_s": r3(p(&self.list_nodes, |s| s.p99)),
            "false_timeouts": self.false_timeouts.len(),
            "false_timeout_nodes": self.false_timeouts.iter().take(10).collect::<Vec<_>>(),
            "sessions_lost": self.sessions_lost,
            "detect_p50_s": r3(p(&self.detect, |s| s.p50)),
            "detect_p99_s": r3(p(&self.detect, |s| s.p99)),
            "undetected": self.undetected.len(),
            "job_start_s": r3(p(&self.job_start, |s| s.p50)),
            "job_start_max_s": r3(p(&self.job_start, |s| s.max)),
            "relaunch_s": r3(p(&self.relaunch, |s| s.p50)),
            "relaunch_max_s": r3(p(&self.relaunch, |s| s.max)),
            "jobs_stuck": self.jobs_stuck,
            "generator_lateness_p50_s": r3(p(&self.lateness, |s| s.p50)),
            "generator_lateness_p99_s": r3(p(&self.lateness, |s| s.p99)),
            "generator_behind": self.generator_behind,
            "send_queue_full": self.send_queue_full,
            "watch_breaks": self.watch_breaks,
            "passed": self.passed(),
        })
    }

    /// The report for a reader.
    pub fn text(&self) -> String {
        let secs = |s: &Option<Spread>| match s {
            Some(s) => format!(
                "P50 {:.3} s · P99 {:.3} s · max {:.3} s ({} samples)",
                s.p50, s.p99, s.max, s.count
            ),
            None => "—".into(),
        };
        let opt = |v: Option<f64>, unit: &str| v.map_or("—".into(), |v| format!("{v:.3}{unit}"));
        let mut out = format!(
            "swarm: {} agents ({} spares), {} jobs × {} nodes, {} silenced, {:.0} s steady, \
             heartbeats every {} ms\n",
            self.agents,
            self.spares,
            self.jobs,
            self.nodes_per_job,
            self.silenced,
            self.duration_s,
            self.heartbeat_interval_ms
        );
        out += &format!("registration        {:.3} s\n", self.registration_s);
        out += &format!(
            "coordinator         {} cores · RSS {} (pid {})\n",
            opt(self.coordinator_cpu_cores, ""),
            opt(self.coordinator_rss_mb, " MB"),
            self.coordinator_pid
                .map_or("not found: pass --coordinator-pid".into(), |p| p
                    .to_string())
        );
        out += &format!(
            "generator           {} cores · RSS {} · {:.0} heartbeats/s\n",
            opt(self.generator_cpu_cores, ""),
            opt(self.generator_rss_mb, " MB"),
            self.heartbeats_per_s
        );
        out += &format!(
            "heartbeat lag       {} from {} node lists ({} left out: the coordinator's tick ran late)\n",
            secs(&self.heartbeat_lag),
            self.lag_lists_used,
            self.lag_lists_discarded
        );
        out += &format!("ping delay          {}\n", secs(&self.ping_delay));
        out += &format!("ListNodes           {}\n", secs(&self.list_nodes));
        out += &format!("job start           {}\n", secs(&self.job_start));
        out += &format!("detection           {}\n", secs(&self.detect));
        out += &format!("relaunch            {}\n", secs(&self.relaunch));
        out += &format!(
            "false timeouts      {}{}\n",
            self.false_timeouts.len(),
            if self.false_timeouts.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.false_timeouts.join(", "))
            }
        );
        if !self.undetected.is_empty() {
            out += &format!("NOT DETECTED        {}\n", self.undetected.join(", "));
        }
        if !self.jobs_stuck.is_empty() {
            out += &format!("jobs stuck          {}\n", self.jobs_stuck.join("; "));
        }
        if self.sessions_lost > 0 {
            out += &format!(
                "sessions lost       {} ({})\n",
                self.sessions_lost,
                self.lost_reasons.join("; ")
            );
        }
        out += &format!(
            "generator lateness  {}{}\n",
            secs(&self.lateness),
            if self.generator_behind {
                " — THE GENERATOR FELL BEHIND: lag and detection include its own delay"
            } else {
                ""
            }
        );
        out
    }
}

/// What the event stream showed, recorded by the watcher task.
#[derive(Default)]
struct Observed {
    /// Record node losses only once the swarm is up and until it is taken down.
    recording: bool,
    /// First time each node was shown offline, fenced or disconnected (event time, unix ms).
    down: HashMap<String, i64>,
    /// First time each (job, generation) was shown running.
    running: HashMap<(String, u64), i64>,
    /// Every incident, its latest copy.
    incidents: BTreeMap<u64, pb::Incident>,
    /// What the polls during the silence phase showed first (for events the stream missed).
    polled_down: HashMap<String, i64>,
    polled_running: HashMap<(String, u64), i64>,
    watch_breaks: u32,
}

impl Observed {
    fn record(&mut self, event: pb::Event, prefix: &str) {
        if let Some(node) = &event.node {
            let lost = matches!(
                pb::NodeState::try_from(node.state_enum),
                Ok(pb::NodeState::Offline | pb::NodeState::Fenced)
            ) || !node.connected;
            if self.recording && lost && node.node_id.starts_with(prefix) {
                self.down
                    .entry(node.node_id.clone())
                    .or_insert(event.at_unix_ms);
            }
        }
        if let Some(job) = &event.job {
            if job.state_enum == pb::JobState::Running as i32 {
                self.running
                    .entry((job.job_id.clone(), job.generation))
                    .or_insert(event.at_unix_ms);
            }
        }
        if let Some(incident) = event.incident {
            self.incidents.insert(incident.id, incident);
        }
    }
}

type Client = crate::client::Client;

async fn connect(addr: &str) -> Result<Client, SwarmError> {
    let client = crate::client::connect(addr)
        .await
        .map_err(|e| SwarmError::Unreachable {
            addr: addr.to_string(),
            reason: format!("{e:#}"),
        })?;
    // A node list of thousands of nodes is larger than tonic's default 4 MB limit.
    Ok(client.max_decoding_message_size(256 << 20))
}

async fn list_nodes(client: &mut Client, addr: &str) -> Result<Vec<pb::Node>, SwarmError> {
    client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map(|r| r.into_inner().nodes)
        .map_err(|status| SwarmError::Unreachable {
            addr: addr.to_string(),
            reason: format!("ListNodes: {}", status.message()),
        })
}

/// Follows the coordinator's events into `observed` until `stop`; opens the stream again when
/// it breaks (a watcher too slow is cut off by the coordinator), counting the breaks.
async fn watch_events(
    addr: String,
    prefix: String,
    observed: Arc<Mutex<Observed>>,
    mut stop: watch::Receiver<bool>,
    opened: tokio::sync::oneshot::Sender<Result<(), SwarmError>>,
) {
    let mut opened = Some(opened);
    loop {
        let stream = match connect(&addr).await {
            Ok(mut c) => c
                .watch_events(pb::WatchEventsRequest {
                    job_id: String::new(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| SwarmError::Refused {
                    what: "WatchEvents".into(),
                    message: status.message().to_string(),
                }),
            Err(e) => Err(e),
        };
        let mut stream = match stream {
            Ok(s) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Ok(()));
                }
                s
            }
            Err(e) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::warn!("event stream: {e}");
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                event = stream.message() => match event {
                    Ok(Some(event)) => {
                        if let Ok(mut o) = observed.lock() {
                            o.record(event, &prefix);
                        }
                    }
                    Ok(None) | Err(_) => {
                        if let Ok(mut o) = observed.lock() {
                            o.watch_breaks += 1;
                        }
                        break;
                    }
                },
            }
        }
    }
}

/// Lets this process open a descriptor per agent connection (and some for itself).
fn ensure_file_limit(agents: usize) -> Result<(), SwarmError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = agents as u64 + 256;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    let raised = needed.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_err() || raised < needed {
        return Err(SwarmError::FileLimit {
            agents,
            needed,
            limit: raised.max(soft),
        });
    }
    Ok(())
}

/// The coordinator's pid: the one given, else the process listening on the address's port.
fn find_coordinator(options: &SwarmOptions, addr: &str) -> Option<u32> {
    if options.coordinator_pid.is_some() {
        return options.coordinator_pid;
    }
    let hostport = addr
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let port: u16 = hostport.rsplit_once(':')?.1.parse().ok()?;
    procfs::listener_pid(port)
}

/// Runs the swarm and measures; see the module's docs for the phases.
pub async fn run(options: &SwarmOptions) -> Result<SwarmReport, SwarmError> {
    options.validate()?;
    ensure_file_limit(options.agents)?;
    let addr = crate::client::normalize(&options.coordinator);
    let mut client = connect(&addr).await?;
    list_nodes(&mut client, &addr).await?;
    let coordinator_pid = find_coordinator(options, &addr);
    // Node ids unique to this run, so runs against one coordinator do not meet.
    let prefix = format!("swarm{}", now_ms() % 1_000_000);
    let observed = Arc::new(Mutex::new(Observed::default()));
    let (stop_tx, stop) = watch::channel(false);
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(watch_events(
        addr.clone(),
        prefix.clone(),
        observed.clone(),
        stop.clone(),
        opened_tx,
    ));
    match opened.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(SwarmError::Refused {
                what: "WatchEvents".into(),
                message: "the watcher ended".into(),
            })
        }
    }
    let result = drive(
        options,
        &addr,
        &mut client,
        &prefix,
        coordinator_pid,
        &observed,
        stop.clone(),
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
    result
}

/// The phases, with the watcher running.
async fn drive(
    options: &SwarmOptions,
    addr: &str,
    client: &mut Client,
    prefix: &str,
    coordinator_pid: Option<u32>,
    observed: &Arc<Mutex<Observed>>,
    stop: watch::Receiver<bool>,
) -> Result<SwarmReport, SwarmError> {
    let mut report = SwarmReport {
        agents: options.agents,
        spares: options.spares,
        jobs: options.jobs,
        nodes_per_job: options.nodes_per_job,
        coordinator_pid,
        duration_s: options.duration.as_secs_f64(),
        ..Default::default()
    };
    // 1. Register.
    let counters = Arc::new(SwarmCounters::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(options.connect_concurrency));
    let (agents_stop_tx, agents_stop) = watch::channel(false);
    let mut probes: Vec<Arc<AgentProbe>> = Vec::with_capacity(options.agents);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..options.agents {
        let spare = i >= options.agents - options.spares;
        let probe = Arc::new(AgentProbe::new(format!("{prefix}-{i:05}"), spare));
        probes.push(probe.clone());
        let spec = AgentSpec {
            address: addr.to_string(),
            probe,
            counters: counters.clone(),
            pid: 100_000 + i as u32,
            step: options.step,
            connect_gate: gate.clone(),
        };
        tasks.spawn(agent::run(spec, agents_stop.clone()));
    }
    let measured = measure(
        options,
        addr,
        client,
        prefix,
        coordinator_pid,
        observed,
        &probes,
        &counters,
        started,
        &mut report,
    )
    .await;
    // Take the swarm down whatever happened: jobs stopped, agents say goodbye.
    if let Ok(mut o) = observed.lock() {
        o.recording = false;
    }
    for j in 0..options.jobs {
        let _ = client
            .stop_job(pb::StopJobRequest {
                job_id: format!("{prefix}-job{j}"),
            })
            .await;
    }
    let _ = agents_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    drop(stop);
    measured?;
    report.sessions_lost = counters.sessions_lost.load(Ordering::Relaxed);
    report.lost_reasons = counters
        .lost_reasons
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    report.send_queue_full = counters.send_queue_full.load(Ordering::Relaxed);
    let mut lateness: Vec<f64> = counters
        .lateness_us
        .lock()
        .map(|l| l.iter().map(|&us| f64::from(us) / 1e6).collect())
        .unwrap_or_default();
    report.lateness = Spread::of(&mut lateness);
    let mut pings: Vec<f64> = counters
        .ping_delay_us
        .lock()
        .map(|l| l.iter().map(|&us| f64::from(us) / 1e6).collect())
        .unwrap_or_default();
    report.ping_delay = Spread::of(&mut pings);
    // Behind: a tick later than a tenth of the heartbeat interval at P99, or a stream whose
    // queue filled up.
    let allowed = report.heartbeat_interval_ms.max(1) as f64 / 10_000.0;
    report.generator_behind =
        report.lateness.is_some_and(|l| l.p99 > allowed) || report.send_queue_full > 0;
    if let Ok(o) = observed.lock() {
        report.watch_breaks = o.watch_breaks;
    }
    Ok(report)
}

/// The nodes of this run in a node list.
fn ours<'a>(nodes: &'a [pb::Node], prefix: &str) -> impl Iterator<Item = &'a pb::Node> {
    let prefix = format!("{prefix}-");
    nodes.iter().filter(move |n| n.node_id.starts_with(&prefix))
}

fn is_shown_lost(node: &pb::Node) -> bool {
    !node.connected
        || matches!(
            pb::NodeState::try_from(node.state_enum),
            Ok(pb::NodeState::Offline | pb::NodeState::Fenced)
        )
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    options: &SwarmOptions,
    addr: &str,
    client: &mut Client,
    prefix: &str,
    coordinator_pid: Option<u32>,
    observed: &Arc<Mutex<Observed>>,
    probes: &[Arc<AgentProbe>],
    counters: &Arc<SwarmCounters>,
    started: Instant,
    report: &mut SwarmReport,
) -> Result<(), SwarmError> {
    let within = Duration::from_secs(30) + Duration::from_millis(20 * options.agents as u64);
    let deadline = started + within;
    loop {
        let nodes = list_nodes(client, addr).await?;
        let ready = ours(&nodes, prefix)
            .filter(|n| {
                n.connected
                    && matches!(
                        pb::NodeState::try_from(n.state_enum),
                        Ok(pb::NodeState::Ready)
                    )
            })
            .count();
        if ready == options.agents {
            break;
        }
        if Instant::now() > deadline {
            let welcomed = probes
                .iter()
                .filter(|p| p.welcomed.load(Ordering::SeqCst))
                .count();
            return Err(SwarmError::NotReady {
                ready,
                agents: options.agents,
                within,
                detail: format!(
                    "{welcomed} sessions welcomed; {}",
                    counters
                        .lost_reasons
                        .lock()
                        .map(|r| r.join("; "))
                        .unwrap_or_default()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.registration_s = started.elapsed().as_secs_f64();
    if let Ok(mut o) = observed.lock() {
        o.recording = true;
    }
    report.heartbeat_interval_ms = counters.interval_ms.load(Ordering::Relaxed);

    // 2. Jobs.
    let mut job_nodes: Vec<(String, Vec<String>)> = Vec::new();
    let mut starts = Vec::new();
    for j in 0..options.jobs {
        let job_id = format!("{prefix}-job{j}");
        let submitted = now_ms();
        let job = client
            .submit_job(pb::SubmitJobRequest {
                spec: Some(pb::JobSpec {
                    job_id: job_id.clone(),
                    command: vec!["swarm-worker".into(), "{node_rank}".into()],
                    nodes: options.nodes_per_job as u32,
                    // A silenced rank is a fault at once: the other ranks of a pretend job keep
                    // stepping and would otherwise vouch for it.
                    progress_vouches: Some(false),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|status| SwarmError::Refused {
                what: format!("job {job_id}"),
                message: status.message().to_string(),
            })?
            .into_inner();
        let at = wait_running(observed, client, &job_id, Duration::from_secs(60)).await;
        match at {
            Some(at) => starts.push((at - submitted) as f64 / 1000.0),
            None => report
                .jobs_stuck
                .push(format!("{job_id} not running within 60 s")),
        }
        job_nodes.push((job_id, job.nodes));
    }
    report.job_start = Spread::of(&mut starts);

    // 3. Steady, after a settle of two heartbeat intervals (the last hellos' and launches'
    // work done).
    let settle = Duration::from_millis(2 * report.heartbeat_interval_ms.max(100));
    tokio::time::sleep(settle).await;
    let cpu_before = coordinator_pid.and_then(procfs::cpu_seconds);
    let own = std::process::id();
    let own_before = procfs::cpu_seconds(own);
    let sent_before = counters.heartbeats_sent.load(Ordering::Relaxed);
    let steady = Instant::now();
    let mut lags = Vec::new();
    let mut listings = Vec::new();
    let mut rss: Option<f64> = None;
    while steady.elapsed() < options.duration {
        let tick = Instant::now();
        let asked = now_ms();
        let nodes = list_nodes(client, addr).await?;
        let answered = now_ms();
        listings.push(tick.elapsed().as_secs_f64());
        let by_id: HashMap<&str, &pb::Node> = ours(&nodes, prefix)
            .map(|n| (n.node_id.as_str(), n))
            .collect();
        // A coordinator whose own tick ran late moves every node's last heartbeat forward by
        // the time it could not observe (so that no node is blamed for it): such a list has
        // stamps after its own answer, and its stamps are not processing times.
        if by_id.values().any(|n| n.last_heartbeat_unix_ms > answered) {
            report.lag_lists_discarded += 1;
        } else {
            report.lag_lists_used += 1;
            for probe in probes {
                if let Some(lag) = by_id
                    .get(probe.node_id.as_str())
                    .and_then(|n| probe.lag_ms(n.last_heartbeat_unix_ms, asked))
                {
                    lags.push(lag as f64 / 1000.0);
                }
            }
        }
        if let Some(mb) = coordinator_pid.and_then(procfs::rss_mb) {
            rss = Some(rss.map_or(mb, |r: f64| r.max(mb)));
        }
        let rest = Duration::from_secs(1).saturating_sub(tick.elapsed());
        tokio::time::sleep(rest.min(options.duration.saturating_sub(steady.elapsed()))).await;
    }
    let wall = steady.elapsed().as_secs_f64();
    let cores = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / wall);
    report.coordinator_cpu_cores = cores(cpu_before, coordinator_pid.and_then(procfs::cpu_seconds));
    report.generator_cpu_cores = cores(own_before, procfs::cpu_seconds(own));
    report.coordinator_rss_mb = rss;
    report.generator_rss_mb = procfs::rss_mb(own);
    report.heartbeats_per_s =
        (counters.heartbeats_sent.load(Ordering::Relaxed) - sent_before) as f64 / wall;
    report.heartbeat_lag = Spread::of(&mut lags);
    report.list_nodes = Spread::of(&mut listings);

    // 4. Silence: one rank of each job first (its last), then free workers from the end.
    let in_jobs: HashSet<&str> = job_nodes
        .iter()
        .flat_map(|(_, nodes)| nodes.iter().map(String::as_str))
        .collect();
    let mut victims: Vec<(Arc<AgentProbe>, Option<String>)> = Vec::new();
    for (job_id, nodes) in job_nodes.iter().take(options.silence) {
        if let Some(probe) = nodes
            .last()
            .and_then(|last| probes.iter().find(|p| &p.node_id == last))
        {
            victims.push((probe.clone(), Some(job_id.clone())));
        }
    }
    for probe in probes.iter().rev() {
        if victims.len() >= options.silence {
            break;
        }
        if !probe.spare && !in_jobs.contains(probe.node_id.as_str()) {
            victims.push((probe.clone(), None));
        }
    }
    report.silenced = victims.len();
    let silenced: Vec<(String, i64, Option<String>)> = victims
        .iter()
        .map(|(p, job)| (p.node_id.clone(), p.silence(), job.clone()))
        .collect();
    let silenced_ids: HashSet<&str> = silenced.iter().map(|(n, _, _)| n.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The node list too, in case the event stream broke (a watcher the coordinator found
        // too slow is cut off): a loss seen only here is dated by this poll, an upper bound.
        let asked = now_ms();
        let nodes = list_nodes(client, addr).await?;
        let jobs = client
            .list_jobs(pb::ListJobsRequest {})
            .await
            .map(|r| r.into_inner().jobs)
            .unwrap_or_default();
        let (detected, relaunched) = {
            let mut o = observed
                .lock()
                .map_err(|_| SwarmError::Timeout("event recorder poisoned".into()))?;
            for node in ours(&nodes, prefix).filter(|n| is_shown_lost(n)) {
                o.polled_down.entry(node.node_id.clone()).or_insert(asked);
            }
            for job in jobs
                .iter()
                .filter(|j| j.state_enum == pb::JobState::Running as i32)
            {
                o.polled_running
                    .entry((job.job_id.clone(), job.generation))
                    .or_insert(asked);
            }
            let detected = silenced
                .iter()
                .filter(|(node, _, _)| detection_at(&o, node).is_some())
                .count();
            let relaunched = silenced
                .iter()
                .filter(|(_, _, job)| job.as_ref().is_some_and(|j| running_at(&o, j, 2).is_some()))
                .count();
            (detected, relaunched)
        };
        let hit = silenced.iter().filter(|(_, _, j)| j.is_some()).count();
        if (detected == silenced.len() && relaunched == hit) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut detections = Vec::new();
    let mut relaunches = Vec::new();
    if let Ok(o) = observed.lock() {
        for (node, at, job) in &silenced {
            match detection_at(&o, node) {
                Some(seen) => detections.push((seen - at) as f64 / 1000.0),
                None => report.undetected.push(node.clone()),
            }
            let Some(job) = job else { continue };
            let incident = o
                .incidents
                .values()
                .find(|i| &i.job_id == job && &i.node_id == node && i.detected_unix_ms > 0);
            match (incident, running_at(&o, job, 2)) {
                (Some(i), Some(running)) => {
                    relaunches.push((running - i.detected_unix_ms) as f64 / 1000.0)
                }
                _ => report
                    .jobs_stuck
                    .push(format!("{job} not running at generation 2 within 60 s")),
            }
        }
    }
    report.detect = Spread::of(&mut detections);
    report.relaunch = Spread::of(&mut relaunches);

    // False timeouts: what the events showed, and what the node list shows now.
    let nodes = list_nodes(client, addr).await?;
    let mut false_timeouts: Vec<String> = ours(&nodes, prefix)
        .filter(|n| !silenced_ids.contains(n.node_id.as_str()) && is_shown_lost(n))
        .map(|n| n.node_id.clone())
        .collect();
    if let Ok(o) = observed.lock() {
        false_timeouts.extend(
            o.down
                .keys()
                .filter(|n| !silenced_ids.contains(n.as_str()))
                .cloned(),
        );
    }
    false_timeouts.sort();
    false_timeouts.dedup();
    report.false_timeouts = false_timeouts;
    Ok(())
}

/// When the coordinator first showed `job` running at `generation`: its event, else a poll.
fn running_at(o: &Observed, job: &str, generation: u64) -> Option<i64> {
    let key = (job.to_string(), generation);
    o.running
        .get(&key)
        .or_else(|| o.polled_running.get(&key))
        .copied()
}

/// When the coordinator first showed `node` lost: its first offline/fenced/disconnected event
/// or the detection of an incident on it, whichever came first; else the first poll showing it.
fn detection_at(o: &Observed, node: &str) -> Option<i64> {
    let event = o
        .down
        .get(node)
        .or_else(|| o.polled_down.get(node))
        .copied();
    let incident = o
        .incidents
        .values()
        .filter(|i| i.node_id == node && i.detected_unix_ms > 0)
        .map(|i| i.detected_unix_ms)
        .min();
    match (event, incident) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Waits (bounded) until the job is shown running at generation 1: the event's time, else
/// (the event stream broke) the time of a `GetJob` that shows it.
async fn wait_running(
    observed: &Arc<Mutex<Observed>>,
    client: &mut Client,
    job_id: &str,
    within: Duration,
) -> Option<i64> {
    let deadline = Instant::now() + within;
    let mut polled = Instant::now();
    loop {
        let at = observed.lock().ok().and_then(|o| running_at(&o, job_id, 1));
        if at.is_some() || Instant::now() > deadline {
            return at;
        }
        if polled.elapsed() > Duration::from_millis(500) {
            polled = Instant::now();
            let asked = now_ms();
            let job = client
                .get_job(pb::GetJobRequest {
                    job_id: job_id.to_string(),
                })
                .await
                .map(tonic::Response::into_inner);
            if let Ok(job) = job {
                if job.state_enum == pb::JobState::Running as i32 || job.generation > 1 {
                    if let Ok(mut o) = observed.lock() {
                        o.polled_running
                            .entry((job_id.to_string(), 1))
                            .or_insert(asked);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Spread::of(&mut samples).expect("samples");
        assert_eq!((s.p50, s.p99, s.max, s.count), (50.0, 99.0, 100.0, 100));
        assert_eq!(Spread::of(&mut []), None);
        let one = Spread::of(&mut [3.0]).expect("one");
        assert_eq!((one.p50, one.p99), (3.0, 3.0));
    }

    #[test]
    fn bad_options_name_the_flag() {
        let base = SwarmOptions::default();
        let cases = [
            (
                SwarmOptions {
                    agents: 0,
                    ..base.clone()
                },
                "--agents",
            ),
            (
                SwarmOptions {
                    silence: 50,
                    ..base.clone()
                },
                "--silence",
            ),
            (
                SwarmOptions {
                    jobs: 1,
                    nodes_per_job: 1,
                    ..base.clone()
                },
                "--nodes-per-job",
            ),
            (
                SwarmOptions {
                    jobs: 30,
                    nodes_per_job: 4,
                    ..base.clone()
                },
                "--jobs",
            ),
        ];
        for (options, flag) in cases {
            let e = options.validate().expect_err(flag).to_string();
            assert!(e.starts_with(flag), "{e}");
        }
        assert!(base.validate().is_ok());
    }
}
