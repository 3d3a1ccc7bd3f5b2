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
//! ## Layout
//! - [`agent`] — one simulated agent and what it shares with the engine (send times, silence).
//! - `phases` — registration, jobs, steady, silence: what each waits for and measures.
//! - `events` — what the coordinator's event stream (or, where it broke, its lists) showed.
//! - [`report`](SwarmReport) — the report as text and JSON; [`procfs`] — CPU, RSS, pid by port.
//!
//! This module must not reach into the coordinator: only the wire protocol and `/proc`.

pub mod agent;
mod events;
mod phases;
pub mod procfs;
mod report;

pub use report::{Spread, SwarmReport, Usage};

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_proto::v1 as pb;
use tokio::sync::watch;

use agent::{AgentProbe, AgentSpec, SwarmCounters};
use events::{watch_events, Observed};

/// Unix milliseconds, the clock both the coordinator's stamps and the agents' use.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// The coordinator (host:port or URL; https:// with `pki_dir`).
    pub coordinator: String,
    /// The coordinator's PKI directory: each agent gets a client certificate of its own node id
    /// minted from it and speaks mutual TLS, as joined agents do. `None`: plain HTTP.
    pub pki_dir: Option<std::path::PathBuf>,
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
            pki_dir: None,
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
    #[error("{ready} of {agents} agents ready within {within:?}: {detail}")]
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
        if self.coordinator.contains("https://") != self.pki_dir.is_some() {
            return bad(
                "coordinator",
                "an https:// coordinator needs --pki-dir (the agents' certificates come from it), \
                 and --pki-dir an https:// coordinator",
            );
        }
        Ok(())
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

/// Nodes per `ListNodes` page the generator reads: the dashboard's page of the fleet map.
pub const LIST_PAGE: u32 = 5000;

/// Every node, read the way the dashboard reads the fleet: brief pages of [`LIST_PAGE`] (the
/// node's state and heartbeat stamp without its health checks and GPUs). Read once a second,
/// a full listing of 10,000 nodes in one answer would be the coordinator's largest transient
/// allocation — an operator load of the generator's own making, not the agents'.
async fn list_nodes(client: &mut Client, addr: &str) -> Result<Vec<pb::Node>, SwarmError> {
    let mut nodes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_nodes(pb::ListNodesRequest {
                brief: true,
                page_size: LIST_PAGE,
                page_token,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|status| SwarmError::Unreachable {
                addr: addr.to_string(),
                reason: format!("ListNodes: {}", status.message()),
            })?;
        nodes.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Ok(nodes);
        }
        page_token = page.next_page_token;
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
        .trim_start_matches("https://")
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
    let names: Vec<String> = (0..options.agents)
        .map(|i| format!("{prefix}-{i:05}"))
        .collect();
    let mut identities = identities(options, &names)?.into_iter();
    for (i, name) in names.into_iter().enumerate() {
        let spare = i >= options.agents - options.spares;
        let probe = Arc::new(AgentProbe::new(name, spare));
        probes.push(probe.clone());
        let spec = AgentSpec {
            address: addr.to_string(),
            probe,
            counters: counters.clone(),
            pid: 100_000 + i as u32,
            step: options.step,
            connect_gate: gate.clone(),
            tls: identities.next().flatten(),
        };
        tasks.spawn(agent::run(spec, agents_stop.clone()));
    }
    let swarm = phases::Swarm {
        options,
        addr,
        prefix,
        coordinator_pid,
        observed,
        probes: &probes,
        counters: &counters,
    };
    let measured = async {
        swarm.registered(client, started, &mut report).await?;
        let job_nodes = swarm.jobs(client, &mut report).await?;
        swarm.steady(client, &mut report).await?;
        swarm.silence(client, &job_nodes, &mut report).await
    }
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
    report.admission_refusals = counters.refusals.load(Ordering::Relaxed);
    report.lateness = spread_of_micros(&counters.lateness_us);
    report.ping_delay = spread_of_micros(&counters.ping_delay_us);
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

/// The spread, in seconds, of samples kept in microseconds.
fn spread_of_micros(samples: &std::sync::Mutex<Vec<u32>>) -> Option<Spread> {
    let mut seconds: Vec<f64> = samples
        .lock()
        .map(|l| l.iter().map(|&us| f64::from(us) / 1e6).collect())
        .unwrap_or_default();
    Spread::of(&mut seconds)
}

/// One client identity per agent, minted from the coordinator's PKI when the swarm speaks
/// mutual TLS (`None` each otherwise).
fn identities(
    options: &SwarmOptions,
    names: &[String],
) -> Result<Vec<Option<Arc<agent::AgentTls>>>, SwarmError> {
    let Some(dir) = &options.pki_dir else {
        return Ok(names.iter().map(|_| None).collect());
    };
    let bad = |reason: String| SwarmError::Options {
        flag: "pki-dir",
        reason,
    };
    let ca = std::fs::read(dir.join("ca.pem"))
        .map_err(|e| bad(format!("{}: {e}", dir.join("ca.pem").display())))?;
    let ca = Arc::new(ca);
    let pki = holdfast_coordinator::pki::Pki::new(dir);
    let issued = pki
        .issue_here(names, now_ms())
        .map_err(|e| bad(e.to_string()))?;
    Ok(issued
        .into_iter()
        .map(|(cert, key)| {
            Some(Arc::new(agent::AgentTls {
                ca: ca.clone(),
                cert: cert.into_bytes(),
                key: key.into_bytes(),
            }))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
