//! The phases of a swarm run after the agents were started: registration, jobs, the steady
//! phase and the silence (see the module docs of [`super`]). Each reads the coordinator only
//! through its operator API and writes what it measured into the report.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_proto::v1 as pb;

use super::agent::{AgentProbe, SwarmCounters};
use super::events::{detection_at, is_shown_lost, running_at, Observed};
use super::report::{Spread, SwarmReport, Usage};
use super::{list_nodes, now_ms, ours, procfs, Client, SwarmError, SwarmOptions};

/// One run's settings and what its phases share.
pub(super) struct Swarm<'a> {
    pub options: &'a SwarmOptions,
    /// The coordinator's URL.
    pub addr: &'a str,
    /// Node ids of this run start with it.
    pub prefix: &'a str,
    pub coordinator_pid: Option<u32>,
    pub observed: &'a Arc<Mutex<Observed>>,
    pub probes: &'a [Arc<AgentProbe>],
    pub counters: &'a Arc<SwarmCounters>,
}

impl Swarm<'_> {
    /// Waits (bounded by 30 s plus 20 ms per agent) until every agent is shown connected and
    /// ready; from then on, node losses count.
    pub async fn registered(
        &self,
        client: &mut Client,
        started: Instant,
        report: &mut SwarmReport,
    ) -> Result<(), SwarmError> {
        let within =
            Duration::from_secs(30) + Duration::from_millis(20 * self.options.agents as u64);
        let deadline = started + within;
        // The agents' own count first: a node list of thousands of nodes costs the coordinator
        // more than a heartbeat round, so it is asked at most once a second.
        let mut listed: Option<Instant> = None;
        let mut ready = 0;
        loop {
            let welcomed = self
                .probes
                .iter()
                .filter(|p| p.welcomed.load(Ordering::SeqCst))
                .count();
            let due = listed.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if welcomed == self.options.agents && due {
                listed = Some(Instant::now());
                let nodes = list_nodes(client, self.addr).await?;
                ready = ours(&nodes, self.prefix)
                    .filter(|n| {
                        n.connected
                            && matches!(
                                pb::NodeState::try_from(n.state_enum),
                                Ok(pb::NodeState::Ready)
                            )
                    })
                    .count();
                if ready == self.options.agents {
                    break;
                }
            }
            if Instant::now() > deadline {
                // What the coordinator shows now, if it answers soon (it may be the one stuck).
                let last =
                    tokio::time::timeout(Duration::from_secs(10), list_nodes(client, self.addr))
                        .await;
                let shown = match last {
                    Ok(Ok(nodes)) => {
                        ready = ours(&nodes, self.prefix)
                            .filter(|n| n.connected && !is_shown_lost(n))
                            .count();
                        format!("{ready} shown connected")
                    }
                    Ok(Err(e)) => format!("no node list: {e}"),
                    Err(_) => "the coordinator did not answer ListNodes within 10 s".into(),
                };
                return Err(SwarmError::NotReady {
                    ready,
                    agents: self.options.agents,
                    within,
                    detail: format!(
                        "{welcomed} sessions welcomed now, {shown}; {} sessions lost: {}",
                        self.counters.sessions_lost.load(Ordering::Relaxed),
                        self.counters
                            .lost_reasons
                            .lock()
                            .map(|r| r.join("; "))
                            .unwrap_or_default()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.registration_s = started.elapsed().as_secs_f64();
        if let Ok(mut o) = self.observed.lock() {
            o.recording = true;
        }
        report.heartbeat_interval_ms = self.counters.interval_ms.load(Ordering::Relaxed);
        Ok(())
    }

    /// Submits each job and times it until it is shown running (every rank started); the
    /// jobs' nodes in rank order.
    pub async fn jobs(
        &self,
        client: &mut Client,
        report: &mut SwarmReport,
    ) -> Result<Vec<(String, Vec<String>)>, SwarmError> {
        let mut job_nodes: Vec<(String, Vec<String>)> = Vec::new();
        let mut starts = Vec::new();
        for j in 0..self.options.jobs {
            let job_id = format!("{}-job{j}", self.prefix);
            let submitted = now_ms();
            let job = client
                .submit_job(pb::SubmitJobRequest {
                    spec: Some(pb::JobSpec {
                        job_id: job_id.clone(),
                        command: vec!["swarm-worker".into(), "{node_rank}".into()],
                        nodes: self.options.nodes_per_job as u32,
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
            let at = self
                .wait_running(client, &job_id, Duration::from_secs(60))
                .await;
            match at {
                Some(at) => starts.push((at - submitted) as f64 / 1000.0),
                None => report
                    .jobs_stuck
                    .push(format!("{job_id} not running within 60 s")),
            }
            job_nodes.push((job_id, job.nodes));
        }
        report.job_start = Spread::of(&mut starts);
        Ok(job_nodes)
    }

    /// Heartbeats only, after a settle of two heartbeat intervals (the last hellos' and
    /// launches' work done): CPU, memory, heartbeat lag and `ListNodes` latency.
    pub async fn steady(
        &self,
        client: &mut Client,
        report: &mut SwarmReport,
    ) -> Result<(), SwarmError> {
        let settle = Duration::from_millis(2 * report.heartbeat_interval_ms.max(100));
        tokio::time::sleep(settle).await;
        let cpu_before = self.coordinator_pid.and_then(procfs::cpu_seconds);
        let own = std::process::id();
        let own_before = procfs::cpu_seconds(own);
        let sent_before = self.counters.heartbeats_sent.load(Ordering::Relaxed);
        // The generator's lateness and the ping delays count from here on: registration is a
        // connect storm of its own, measured by its duration.
        for samples in [&self.counters.lateness_us, &self.counters.ping_delay_us] {
            if let Ok(mut samples) = samples.lock() {
                samples.clear();
            }
        }
        let steady = Instant::now();
        let mut lags = Vec::new();
        let mut listings = Vec::new();
        let mut rss: Option<f64> = None;
        while steady.elapsed() < self.options.duration {
            let tick = Instant::now();
            let asked = now_ms();
            let nodes = list_nodes(client, self.addr).await?;
            let answered = now_ms();
            listings.push(tick.elapsed().as_secs_f64());
            let by_id: HashMap<&str, &pb::Node> = ours(&nodes, self.prefix)
                .map(|n| (n.node_id.as_str(), n))
                .collect();
            // A coordinator whose own tick ran late moves every node's last heartbeat forward by
            // the time it could not observe (so that no node is blamed for it): such a list has
            // stamps after its own answer, and its stamps are not processing times.
            if by_id.values().any(|n| n.last_heartbeat_unix_ms > answered) {
                report.lag_lists_discarded += 1;
            } else {
                report.lag_lists_used += 1;
                for probe in self.probes {
                    if let Some(lag) = by_id
                        .get(probe.node_id.as_str())
                        .and_then(|n| probe.lag_ms(n.last_heartbeat_unix_ms, asked))
                    {
                        lags.push(lag as f64 / 1000.0);
                    }
                }
            }
            if let Some(mb) = self.coordinator_pid.and_then(procfs::rss_mb) {
                rss = Some(rss.map_or(mb, |r: f64| r.max(mb)));
            }
            let rest = Duration::from_secs(1).saturating_sub(tick.elapsed());
            tokio::time::sleep(rest.min(self.options.duration.saturating_sub(steady.elapsed())))
                .await;
        }
        let wall = steady.elapsed().as_secs_f64();
        let cores = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / wall);
        report.coordinator = Usage {
            cpu_cores: cores(
                cpu_before,
                self.coordinator_pid.and_then(procfs::cpu_seconds),
            ),
            rss_mb: rss,
        };
        report.generator = Usage {
            cpu_cores: cores(own_before, procfs::cpu_seconds(own)),
            rss_mb: procfs::rss_mb(own),
        };
        report.heartbeats_per_s =
            (self.counters.heartbeats_sent.load(Ordering::Relaxed) - sent_before) as f64 / wall;
        report.heartbeat_lag = Spread::of(&mut lags);
        report.list_nodes = Spread::of(&mut listings);
        Ok(())
    }

    /// Silences agents — one rank of each job first (its last), then free workers from the
    /// end — and waits (bounded, 60 s) until each is shown lost and each job hit runs again;
    /// then counts false timeouts.
    pub async fn silence(
        &self,
        client: &mut Client,
        job_nodes: &[(String, Vec<String>)],
        report: &mut SwarmReport,
    ) -> Result<(), SwarmError> {
        let in_jobs: HashSet<&str> = job_nodes
            .iter()
            .flat_map(|(_, nodes)| nodes.iter().map(String::as_str))
            .collect();
        let mut victims: Vec<(Arc<AgentProbe>, Option<String>)> = Vec::new();
        for (job_id, nodes) in job_nodes.iter().take(self.options.silence) {
            if let Some(probe) = nodes
                .last()
                .and_then(|last| self.probes.iter().find(|p| &p.node_id == last))
            {
                victims.push((probe.clone(), Some(job_id.clone())));
            }
        }
        for probe in self.probes.iter().rev() {
            if victims.len() >= self.options.silence {
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
            let nodes = list_nodes(client, self.addr).await?;
            let jobs = client
                .list_jobs(pb::ListJobsRequest {})
                .await
                .map(|r| r.into_inner().jobs)
                .unwrap_or_default();
            let (detected, relaunched) = {
                let mut o = self
                    .observed
                    .lock()
                    .map_err(|_| SwarmError::Timeout("event recorder poisoned".into()))?;
                for node in ours(&nodes, self.prefix).filter(|n| is_shown_lost(n)) {
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
                    .filter(|(_, _, job)| {
                        job.as_ref().is_some_and(|j| running_at(&o, j, 2).is_some())
                    })
                    .count();
                (detected, relaunched)
            };
            let hit = silenced.iter().filter(|(_, _, j)| j.is_some()).count();
            if (detected == silenced.len() && relaunched == hit) || Instant::now() > deadline {
                break;
            }
            // Events date the losses; these lists only stand in for events a broken stream
            // lost, so they need not be frequent (each costs the coordinator a node list).
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut detections = Vec::new();
        let mut relaunches = Vec::new();
        if let Ok(o) = self.observed.lock() {
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
        let nodes = list_nodes(client, self.addr).await?;
        let mut false_timeouts: Vec<String> = ours(&nodes, self.prefix)
            .filter(|n| !silenced_ids.contains(n.node_id.as_str()) && is_shown_lost(n))
            .map(|n| n.node_id.clone())
            .collect();
        if let Ok(o) = self.observed.lock() {
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

    /// Waits (bounded) until the job is shown running at generation 1: the event's time, else
    /// (the event stream broke) the time of a `GetJob` that shows it.
    async fn wait_running(
        &self,
        client: &mut Client,
        job_id: &str,
        within: Duration,
    ) -> Option<i64> {
        let deadline = Instant::now() + within;
        let mut polled = Instant::now();
        loop {
            let at = self
                .observed
                .lock()
                .ok()
                .and_then(|o| running_at(&o, job_id, 1));
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
                        if let Ok(mut o) = self.observed.lock() {
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
}
