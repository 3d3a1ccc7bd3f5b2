//! What a swarm run measured ([`SwarmReport`]), as text for a reader and as JSON for scripts,
//! and the percentiles it is made of ([`Spread`]).

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

/// What a process used: CPU in cores (over the steady phase) and resident memory in MB;
/// `None` when `/proc` could not tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_cores: Option<f64>,
    pub rss_mb: Option<f64>,
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
    /// The coordinator's CPU over the steady phase and its resident memory (the most seen).
    pub coordinator: Usage,
    /// This process's, the same way.
    pub generator: Usage,
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
    /// Hellos the coordinator refused for admission (each agent retried after the
    /// retry-after it was given).
    pub admission_refusals: u64,
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
            "coordinator_cpu_cores": r3(self.coordinator.cpu_cores),
            "coordinator_rss_mb": r3(self.coordinator.rss_mb),
            "generator_cpu_cores": r3(self.generator.cpu_cores),
            "generator_rss_mb": r3(self.generator.rss_mb),
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
            "admission_refusals": self.admission_refusals,
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
            opt(self.coordinator.cpu_cores, ""),
            opt(self.coordinator.rss_mb, " MB"),
            self.coordinator_pid
                .map_or("not found: pass --coordinator-pid".into(), |p| p
                    .to_string())
        );
        out += &format!(
            "generator           {} cores · RSS {} · {:.0} heartbeats/s\n",
            opt(self.generator.cpu_cores, ""),
            opt(self.generator.rss_mb, " MB"),
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
}
