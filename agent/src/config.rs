//! The agent's configuration: a struct with `Default`, a doc per field and `validate()`, loaded
//! from TOML (`holdfast agent --config FILE`) with CLI overrides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::health::xid::{XidClass, XidPolicy};

/// Whether this node runs ranks from the start or waits as a spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    #[default]
    Worker,
    Spare,
}

/// Agent settings. Every field has a default; a TOML file sets only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The coordinator's gRPC address, e.g. `http://10.0.0.1:7070`; with several coordinators
    /// (HA) all of them, comma-separated: the agent finds the leader.
    pub coordinator: String,
    /// Stable node id; empty = the hostname.
    pub node_id: String,
    pub role: NodeRole,
    /// Address other hosts reach this one at (used as the master address when this node has
    /// rank 0); empty = 127.0.0.1.
    pub advertise_address: String,
    /// Where the agent keeps its state (the running worker's record, progress files, logs).
    pub state_dir: PathBuf,
    /// Heartbeat interval until the coordinator's welcome says otherwise.
    pub heartbeat_interval_ms: u64,
    /// Cap of the reconnect backoff (it starts at 100 ms and doubles).
    pub reconnect_max_backoff_ms: u64,
    /// How often a job's progress file is read.
    pub progress_file_poll_ms: u64,
    /// Where jobs keep their memory tier (`python/holdfast/memtier.py`: each rank's state and
    /// a peer's copy, every few steps), one directory per job given to its workers as
    /// `HOLDFAST_MEMORY_DIR`; the agent reports what it holds so a relaunch can resume from
    /// it. Host memory (tmpfs) by default; empty = off. Absolute.
    pub memory_tier_dir: PathBuf,
    /// GPUs this host must show; fewer is fatal. 0 = learn the count at first start (kept in
    /// `<state_dir>/expected_gpus`).
    pub expected_gpus: u32,
    /// Whether to look at GPUs through NVML at all (false: GPU checks are not applicable).
    pub gpu_monitoring: bool,
    /// XID classes that replace the catalog's, by code: `{ "13" = "fatal", "94" = "worker" }`.
    /// Classes: ignore, info, worker, reset-gpu, reboot, fatal.
    pub xid_overrides: BTreeMap<String, XidClass>,
    /// XIDs never acted on (logged only).
    pub xid_ignore: Vec<u32>,
    /// The kernel log to scan for XIDs; unset = none.
    pub kmsg_path: Option<PathBuf>,
    /// How far back the kernel log is read at start, in seconds: an XID logged shortly before
    /// an agent restart still counts (so one restarted within this window after a fatal XID
    /// reports it again, until the host reboots or the window passes).
    pub kmsg_lookback_s: u64,
    /// How often the GPU and host probes poll.
    pub health_poll_interval_ms: u64,
    /// How long a probe may take before its checks turn Unknown (a wedged driver).
    pub probe_timeout_ms: u64,
    /// Consecutive observations a non-fatal finding needs before it is reported.
    pub debounce_count: u32,
    /// Paths that need free space: checkpoints, scratch (the state directory always is).
    pub disk_paths: Vec<PathBuf>,
    /// Free space below this on a checked path degrades the node, in MiB.
    pub min_free_disk_mb: u64,
    /// Mount points that must be mounted and writable.
    pub mounts: Vec<PathBuf>,
    /// Available memory below this degrades the node, in MiB.
    pub min_available_memory_mb: u64,
    /// The agent's own resident memory above which it reports itself degraded, in MiB.
    pub agent_max_rss_mb: u64,
    /// Enables the fault-injection test double (`<state_dir>/inject`). Never on in production.
    pub fault_injection: bool,
    /// Address to serve the agent's Prometheus `/metrics` on, e.g. `0.0.0.0:9101`; empty = off.
    pub metrics_listen: String,
    /// The operator's lifecycle script directory (`on-create`, `health/*`, `on-fence`); the
    /// coordinator can only run scripts by name inside it. Empty = this agent runs no scripts.
    pub script_dir: PathBuf,
    /// Timeout of the `on-fence` script the agent runs when its node is fenced.
    pub on_fence_timeout_ms: u64,
    /// The `py-spy` that dumps a stalled worker's Python stacks for the incident; empty = the
    /// one on `PATH`, and without one stacks are "not available".
    pub py_spy: PathBuf,
    /// Warm standby interpreters kept from the start, before any job asks for them: a spare
    /// that takes over a native-launcher job with `warm_imports` then skips the imports too.
    /// The interpreter the job's command names (its first word, e.g. `/opt/venv/bin/python`);
    /// empty = none until a job asks (a job with `warm_imports` gets them after its launches).
    pub standby_python: PathBuf,
    /// The modules the configured standbys import; a launch uses them only if its job's
    /// `warm_imports` are the same.
    pub standby_imports: Vec<String>,
    /// How many configured standbys (a launch uses them only if its `nproc_per_node` is this).
    pub standby_ranks: u32,
    /// PEM CA that signed the coordinator's certificate; required with `https://` coordinator
    /// addresses (TLS on), empty with `http://` ones.
    pub tls_ca_file: PathBuf,
    /// PEM client certificate this agent presents (the coordinator's `tls_client_ca_file`
    /// signs it); empty = none.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
    /// The name the coordinator's certificate is verified for; empty = the host of the address
    /// dialed. Joined agents (`--join`) verify `holdfast-coordinator`, the name every
    /// bootstrapped coordinator certificate carries, whatever address they dial.
    pub tls_server_name: String,
    /// Allow plain `http://` coordinator addresses that are not loopback: commands then arrive
    /// unauthenticated, and anyone on the path can run them as root here. For labs only.
    pub insecure: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            coordinator: "http://127.0.0.1:7070".into(),
            node_id: String::new(),
            role: NodeRole::Worker,
            advertise_address: String::new(),
            state_dir: PathBuf::from("/var/lib/holdfast/agent"),
            heartbeat_interval_ms: 500,
            reconnect_max_backoff_ms: 2000,
            progress_file_poll_ms: 200,
            memory_tier_dir: PathBuf::from("/dev/shm/holdfast"),
            expected_gpus: 0,
            gpu_monitoring: true,
            xid_overrides: BTreeMap::new(),
            xid_ignore: Vec::new(),
            kmsg_path: Some(PathBuf::from("/dev/kmsg")),
            kmsg_lookback_s: 300,
            health_poll_interval_ms: 5000,
            probe_timeout_ms: 3000,
            debounce_count: 3,
            disk_paths: Vec::new(),
            min_free_disk_mb: 1024,
            mounts: Vec::new(),
            min_available_memory_mb: 512,
            agent_max_rss_mb: 512,
            fault_injection: false,
            metrics_listen: String::new(),
            script_dir: PathBuf::new(),
            on_fence_timeout_ms: 60_000,
            py_spy: PathBuf::new(),
            standby_python: PathBuf::new(),
            standby_imports: vec!["torch".into()],
            standby_ranks: 1,
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_server_name: String::new(),
            insecure: false,
        }
    }
}

/// Why a setting is refused (the agent's config shares the coordinator's error).
pub use holdfast_core::config_file::SettingsError as AgentConfigError;

impl AgentConfig {
    /// The coordinator addresses (`coordinator` may list several, comma-separated: the agent
    /// tries them in turn until one leads).
    pub fn coordinators(&self) -> Vec<String> {
        self.coordinator
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let invalid = |key, reason: &str| AgentConfigError::Invalid {
            key,
            reason: reason.to_string(),
        };
        let addresses = self.coordinators();
        if addresses.is_empty()
            || !addresses
                .iter()
                .all(|a| a.starts_with("http://") || a.starts_with("https://"))
        {
            return Err(invalid(
                "coordinator",
                "must be one or more http:// or https:// URLs, separated by commas",
            ));
        }
        if self
            .node_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("node_id", "must not contain whitespace"));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(invalid("heartbeat_interval_ms", "must be greater than 0"));
        }
        if self.reconnect_max_backoff_ms < 100 {
            return Err(invalid("reconnect_max_backoff_ms", "must be at least 100"));
        }
        if self.progress_file_poll_ms == 0 {
            return Err(invalid("progress_file_poll_ms", "must be greater than 0"));
        }
        if !self.script_dir.as_os_str().is_empty() && !self.script_dir.is_absolute() {
            return Err(invalid("script_dir", "must be an absolute path"));
        }
        if !self.memory_tier_dir.as_os_str().is_empty() && !self.memory_tier_dir.is_absolute() {
            return Err(invalid("memory_tier_dir", "must be an absolute path"));
        }
        if self.on_fence_timeout_ms == 0 {
            return Err(invalid("on_fence_timeout_ms", "must be greater than 0"));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }
        if !self.standby_python.as_os_str().is_empty() {
            if !self.standby_python.is_absolute() {
                return Err(invalid("standby_python", "must be an absolute path"));
            }
            let max = holdfast_core::job::MAX_NPROC_PER_NODE;
            if !(1..=max).contains(&self.standby_ranks) {
                return Err(invalid("standby_ranks", &format!("must be 1 to {max}")));
            }
            if self.standby_imports.is_empty() {
                return Err(invalid(
                    "standby_imports",
                    "must name at least one module (what else would a standby save?)",
                ));
            }
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return Err(invalid(
                "tls_key_file",
                "tls_cert_file and tls_key_file are set together (both, or neither)",
            ));
        }
        let tls = !self.tls_ca_file.as_os_str().is_empty();
        if (tls || !self.tls_cert_file.as_os_str().is_empty())
            && !addresses.iter().all(|a| a.starts_with("https://"))
        {
            return Err(invalid(
                "tls_ca_file",
                "TLS settings need https:// coordinator addresses",
            ));
        }
        if !self.insecure {
            if let Some(plain) = addresses
                .iter()
                .find(|a| a.starts_with("http://") && !is_loopback_url(a))
            {
                return Err(AgentConfigError::Invalid {
                    key: "coordinator",
                    reason: format!(
                        "{plain} is plain http:// to another host: anyone on the path could send \
                         this agent commands that run as root. Use https:// (join with --join \
                         TOKEN --ca-hash sha256:…), or set insecure = true (--insecure) for a lab"
                    ),
                });
            }
        }
        self.validate_health()
    }

    /// The health monitors' settings.
    fn validate_health(&self) -> Result<(), AgentConfigError> {
        let invalid = |key, reason: String| AgentConfigError::Invalid { key, reason };
        if let Some(key) = self
            .xid_overrides
            .keys()
            .find(|k| k.parse::<u32>().is_err())
        {
            return Err(invalid(
                "xid_overrides",
                format!("{key:?} is not an XID number"),
            ));
        }
        if self
            .kmsg_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                "kmsg_path",
                "must not be empty (leave it out to not read the kernel log)".into(),
            ));
        }
        for (key, value) in [
            ("health_poll_interval_ms", self.health_poll_interval_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("debounce_count", u64::from(self.debounce_count)),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        for (key, paths) in [("disk_paths", &self.disk_paths), ("mounts", &self.mounts)] {
            if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
                return Err(invalid(
                    key,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        if !self.metrics_listen.is_empty()
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics_listen",
                "must be an address like 0.0.0.0:9101, or empty to turn metrics off".into(),
            ));
        }
        Ok(())
    }

    /// The XID catalog with this config's overrides and ignore list (keys checked by
    /// [`AgentConfig::validate`]).
    pub fn xid_policy(&self) -> XidPolicy {
        let overrides = self
            .xid_overrides
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, *v)))
            .collect();
        XidPolicy::new(
            overrides,
            self.xid_ignore.iter().copied().collect::<BTreeSet<u32>>(),
        )
    }

    /// Parses TOML text; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<AgentConfig, AgentConfigError> {
        holdfast_core::config_file::parse_validated(text, path, AgentConfig::validate)
    }

    /// The node id to announce: the configured one, else the hostname.
    pub fn effective_node_id(&self) -> String {
        if self.node_id.is_empty() {
            crate::identity::hostname()
        } else {
            self.node_id.clone()
        }
    }

    pub fn effective_address(&self) -> String {
        if self.advertise_address.is_empty() {
            "127.0.0.1".into()
        } else {
            self.advertise_address.clone()
        }
    }
}

/// Whether a coordinator URL names this host (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback_url(address: &str) -> bool {
    match url::Url::parse(address)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    holdfast_core::config_fixture_test!(AgentConfig, "config.rs");

    #[test]
    fn bad_values_name_their_key() {
        // Each key, and a change to the defaults that it refuses.
        holdfast_core::config_file::assert_refusals::<AgentConfig, _>(
            &[
                ("coordinator", |c| c.coordinator = "10.0.0.1:7070".into()),
                ("node_id", |c| c.node_id = "a b".into()),
                ("heartbeat_interval_ms", |c| c.heartbeat_interval_ms = 0),
                ("reconnect_max_backoff_ms", |c| {
                    c.reconnect_max_backoff_ms = 1
                }),
                ("progress_file_poll_ms", |c| c.progress_file_poll_ms = 0),
                ("state_dir", |c| c.state_dir = PathBuf::new()),
                ("xid_overrides", |c| {
                    c.xid_overrides = BTreeMap::from([("x79".into(), XidClass::Fatal)])
                }),
                ("script_dir", |c| c.script_dir = "scripts".into()),
                ("memory_tier_dir", |c| c.memory_tier_dir = "shm".into()),
                ("kmsg_path", |c| c.kmsg_path = Some(PathBuf::new())),
                ("health_poll_interval_ms", |c| c.health_poll_interval_ms = 0),
                ("probe_timeout_ms", |c| c.probe_timeout_ms = 0),
                ("debounce_count", |c| c.debounce_count = 0),
                ("disk_paths", |c| c.disk_paths = vec!["ckpt".into()]),
                ("mounts", |c| c.mounts = vec!["scratch".into()]),
                ("metrics_listen", |c| c.metrics_listen = "9101".into()),
                ("on_fence_timeout_ms", |c| c.on_fence_timeout_ms = 0),
                ("standby_python", |c| c.standby_python = "python3".into()),
                ("standby_ranks", |c| {
                    c.standby_python = "/usr/bin/python3".into();
                    c.standby_ranks = 0;
                }),
                ("standby_imports", |c| {
                    c.standby_python = "/usr/bin/python3".into();
                    c.standby_imports = Vec::new();
                }),
            ],
            AgentConfig::validate,
        );
    }

    #[test]
    fn toml_errors_name_the_file_and_key() {
        let err = AgentConfig::from_toml("role = \"boss\"\n", "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.toml") && err.contains("role"), "{err}");
        let ok = AgentConfig::from_toml("role = \"spare\"\nnode_id = \"gpu-7\"\n", "agent.toml")
            .unwrap();
        assert_eq!((ok.role, ok.node_id.as_str()), (NodeRole::Spare, "gpu-7"));
    }

    fn fixture(name: &str) -> Result<AgentConfig, AgentConfigError> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        AgentConfig::from_toml(&text, name)
    }

    #[test]
    fn health_fixtures_load_or_name_the_bad_key() {
        let good = fixture("agent-health.toml").unwrap();
        assert_eq!((good.expected_gpus, good.mounts.len()), (8, 1));
        assert_eq!(good.xid_policy().classify(94).class, XidClass::Worker);
        assert_eq!(good.xid_policy().classify(43).class, XidClass::Ignore);
        for (name, key) in [
            ("agent-health-bad-mount.toml", "mounts"),
            ("agent-health-bad-xid.toml", "xid_overrides"),
        ] {
            let err = fixture(name).unwrap_err().to_string();
            assert!(err.contains(&format!(": {key}: ")), "{name}: {err}");
        }
    }

    #[test]
    fn health_settings_load_from_toml() {
        let text = "expected_gpus = 8\nfault_injection = true\nxid_ignore = [79]\nmounts = [\"/scratch\"]\n\n[xid_overrides]\n13 = \"fatal\"\n";
        let c = AgentConfig::from_toml(text, "agent.toml").unwrap();
        assert_eq!((c.expected_gpus, c.fault_injection), (8, true));
        let policy = c.xid_policy();
        assert_eq!(policy.classify(13).class, XidClass::Fatal);
        assert_eq!(policy.classify(79).class, XidClass::Ignore);
        let err = AgentConfig::from_toml("[xid_overrides]\n13 = \"explode\"\n", "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent.toml") && err.contains("explode"),
            "{err}"
        );
        assert!(!AgentConfig::default().fault_injection, "off by default");
    }
}
