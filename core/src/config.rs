//! The coordinator's configuration: a struct with `Default`, a doc per field and `validate()`,
//! loaded from TOML (`holdfast coordinator --config FILE`) with CLI overrides.

use serde::{Deserialize, Serialize};

/// Coordinator settings. Every field has a default; a TOML file sets only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Interval agents send heartbeats at (told to them in `Welcome`).
    pub heartbeat_interval_ms: u64,
    /// A connected node with no heartbeat for this long is declared lost. Keep it at 3–5
    /// intervals: lower gives false alarms on loaded hosts, higher delays detection.
    pub heartbeat_timeout_ms: u64,
    /// A new stream that sends no `Hello` within this long is closed.
    pub hello_timeout_ms: u64,
    /// Admission control: new agent sessions admitted per second, sustained. A hello beyond
    /// it (and beyond `hello_burst`) is refused with `unavailable` and a retry-after that
    /// places it in line, so a fleet connecting at once (a power event, a coordinator
    /// restart) is served in order while the detector and the admitted agents' heartbeats
    /// keep their time.
    pub hello_rate_per_s: u32,
    /// Admission control: hellos admitted at once before the rate applies.
    pub hello_burst: u32,
    /// Admission control: a hello whose turn comes within this long waits for it on its open
    /// stream (no reconnect, no new handshake); one further back is refused with its
    /// retry-after. 0 refuses every hello beyond the rate at once. At most 60,000.
    pub hello_hold_ms: u64,
    /// SIGTERM → SIGKILL grace agents give workers when stopping them.
    pub stop_grace_ms: u64,
    /// How long recovery waits for survivors to confirm their workers stopped before moving on
    /// (a survivor that never answers will be fenced by its own timeout).
    pub stop_deadline_ms: u64,
    /// How long a job waits for a replacement node before failing; 0 waits for ever.
    pub replacement_timeout_ms: u64,
    /// Rendezvous ports are drawn from `[rdzv_port_base, rdzv_port_base + rdzv_port_span)`,
    /// a fresh one per generation so stale workers cannot join a new rendezvous.
    pub rdzv_port_base: u16,
    /// How many ports that range holds (at least 1); a job's port comes round again only after
    /// this many generations.
    pub rdzv_port_span: u16,
    /// Restarts in place a job gets when its spec says nothing.
    pub default_restart_budget: u32,
    /// How often the failure detector looks at the clock (timeouts, stalls).
    pub tick_ms: u64,
    /// Attempts to read the checkpoint store on a relaunch before the job fails.
    pub checkpoint_resolve_attempts: u32,
    /// Delay between those attempts.
    pub checkpoint_resolve_retry_ms: u64,
    /// Whether the resolver reads every file of a candidate checkpoint and checks its SHA-256
    /// against the marker's manifest (sizes are always checked). Off by default: it reads the
    /// whole checkpoint on every relaunch.
    pub checkpoint_verify_checksums: bool,
    /// A new generation's rank may stay silent this long before its first progress (process
    /// start, framework imports, rendezvous, checkpoint load) without counting as stalled; the
    /// job's stall timeout applies once it reports progress. 0 = the stall timeout from the
    /// start.
    pub startup_grace_ms: u64,
    /// After a coordinator restart (or a leader change) every node gets this long to reconnect
    /// before it counts as lost; agents retry every ≤ 2 s by default, so a few seconds suffice.
    pub reconnect_grace_ms: u64,
    /// Bootstrap script every new or repaired node runs before its deep check (a name inside
    /// the agents' `script_dir`, e.g. `on-create`); empty = no bootstrap.
    pub bootstrap_script: String,
    /// Deep-check scripts, run in order after the bootstrap and before a node becomes ready
    /// (e.g. `["health/host", "health/gpu"]`); the first failure rejects the node.
    pub check_scripts: Vec<String>,
    /// Longest a single lifecycle script may run; the agent kills its process group then.
    pub script_timeout_ms: u64,
    /// Run the deep check again on a ready node before it takes over a failed node's ranks
    /// (it may have been idle for hours); a node that fails is fenced and the next is tried.
    pub check_replacements: bool,
    /// How long an allocated node whose agent's stream closed *without* a goodbye (agent
    /// crash, OOM kill) may take to reconnect before it counts as lost. Its workers keep
    /// training meanwhile and the restarted agent adopts them. 0 = lost at once (fastest
    /// detection of a dead host whose kernel still closed the socket). A host that died
    /// outright is caught by the heartbeat timeout either way.
    pub agent_lost_grace_ms: u64,
    /// Delay before the second restart in place of a job (the first is at once); doubles with
    /// each further restart up to `restart_backoff_max_ms`.
    pub restart_backoff_ms: u64,
    /// Cap of that delay (default 1 min), so a large restart budget never waits longer than
    /// this between tries.
    pub restart_backoff_max_ms: u64,
    /// Worker faults on one node within `quarantine_window_ms` after which the coordinator
    /// stops restarting in place and replaces the node, fencing it (quarantine) until an
    /// operator uncordons it; 0 = never.
    pub quarantine_after: u32,
    /// The window those faults are counted in (default 10 min); older faults are forgotten.
    /// Must be above 0 when `quarantine_after` is set.
    pub quarantine_window_ms: u64,
    /// Health findings that repeat on one node within this window escalate: each repeat asks
    /// for the next action after the last one (restart worker → reset GPU → reboot → replace),
    /// as GPUd escalates repeated XIDs. Default 1 h; 0 = never escalate.
    pub health_escalation_window_ms: u64,
    /// When a node drained by a health finding (reset GPU, reboot) leaves its job:
    /// `next_recovery` (default) keeps it in its job until the job's next recovery, which
    /// replaces it; `now` replaces it at once.
    pub drain_replace: String,
    /// Lifecycle script run on a drained node once it holds no job (e.g. `remediate`, which
    /// resets the GPU or reboots the host), followed by the deep checks (`check_scripts`):
    /// passing them returns the node to service, failing fences it, and a host that reboots
    /// rejoins through its bootstrap and checks. Empty (the default) = none: the node stays
    /// drained until its host is rebooted or an operator uncordons it.
    pub remediation_script: String,
    /// Circuit breaker: when fencing one more node would make more than this share of all
    /// nodes fenced within `circuit_breaker_window_ms`, the coordinator stops fencing (the
    /// suspect node is released instead and rejoins through its checks) and raises an alert:
    /// that many failures at once point at something shared (network, storage, a bad rollout).
    /// 1.0 = never trips.
    pub circuit_breaker_share: f64,
    /// The window fences are counted in for that share (default 5 min): a burst trips the
    /// breaker, a slow trickle of failing hardware does not.
    pub circuit_breaker_window_ms: u64,
    /// Correlated silence: when at least this share of the connected nodes (and at least two)
    /// are past the heartbeat timeout at once, a shared cause (a switch, the control network,
    /// the coordinator's own network) is suspected before N node faults: fencing is held, one
    /// alert is raised, and only the nodes still silent once the rest are heard again (or once
    /// `silence_storm_hold_ms` passed) are treated as faults. 1.0 = only when every node is
    /// silent.
    pub silence_storm_share: f64,
    /// How long a silence storm may hold fencing while some nodes are still heard. When every
    /// node is silent the coordinator cannot tell anything and holds until nodes are heard
    /// again, saying so.
    pub silence_storm_hold_ms: u64,
    /// Where replacement hosts come from: `spares` (agents registered as spares; the default)
    /// or `exec` (the `provision` and `fence` scripts in `provider_dir`, e.g. EC2, Slurm).
    pub provider: String,
    /// The operator's provider scripts (`provision`, `fence`), for `provider = "exec"`.
    pub provider_dir: std::path::PathBuf,
    /// Longest one provider script may run; its process group is killed then.
    pub provider_timeout_ms: u64,
    /// Tries per provider call (1 = no retry).
    pub provider_attempts: u32,
    /// Pause between those tries; the default 5 s gives a passing provider error (an API
    /// throttle, a busy scheduler) time to clear.
    pub provider_retry_ms: u64,
    /// File of operator API tokens, one `<role> <token>` per line (roles `viewer`, `operator`;
    /// `#` comments). Empty leaves the operator API open to anyone who can reach the port,
    /// which the coordinator warns about at start. Absolute, so it does not depend on the
    /// directory a service manager starts the coordinator in.
    pub operator_tokens_file: std::path::PathBuf,
    /// PEM certificate (chain) the coordinator's port serves TLS with; empty = plain TCP.
    /// Agents and the CLI then use `https://` addresses.
    pub tls_cert_file: std::path::PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: std::path::PathBuf,
    /// PEM CA that signs agents' client certificates: when set, an agent stream without a
    /// certificate from this CA is refused (mutual TLS), and so is a hello whose node id is not
    /// the certificate's identity (a DNS subject alternative name or the common name).
    /// Operators use tokens instead.
    pub tls_client_ca_file: std::path::PathBuf,
    /// Directory of the cluster CA this coordinator bootstrapped (`ca.pem`, `ca.key`), its join
    /// tokens and the certificates it issued: when set, agents may join with a token and get a
    /// node certificate (`JoinService`), and a certificate revoked there is refused. Empty = no
    /// joins. `holdfast coordinator` sets it when it bootstraps; see docs/security.md.
    pub pki_dir: std::path::PathBuf,
    /// Lifetime of the node certificates this coordinator issues from `pki_dir`, in seconds
    /// (90 days by default; 10 s to 3,650 days: short lifetimes are for tests). Agents renew theirs once two thirds of
    /// it have passed (`JoinService.Renew`, over mutual TLS).
    pub node_cert_lifetime_s: u64,
    /// Host names browsers may reach the dashboard and the operator API by, besides IP
    /// literals, `localhost` and this host's name: a browser request under any other name is
    /// refused (DNS rebinding), as is one from another site's page.
    pub allowed_hosts: Vec<String>,
    /// Most nodes the coordinator registers (retired ones included); a hello from a new node id
    /// beyond it is refused, naming this key. Bounds what a flood of fresh node ids can store.
    pub max_nodes: usize,
    /// How long a finished job and a closed incident are kept after they ended (7 days by
    /// default); older ones are exported to `archive_file` and then forgotten.
    pub finished_retention_ms: u64,
    /// Most finished jobs kept (1,000 by default, at most 100,000): beyond it the oldest are
    /// exported and forgotten even inside `finished_retention_ms`. Running jobs always stay.
    pub max_finished_jobs: usize,
    /// Most closed incidents kept (10,000 by default, at most 1,000,000), as
    /// `max_finished_jobs`. Open incidents always stay; incident ids are never reused.
    pub max_closed_incidents: usize,
    /// Where forgotten jobs and incidents are exported before they are dropped: one JSON line
    /// each (`{"kind":"job"|"incident","at":…,"record":…}`), appended and fsynced. Empty =
    /// `archive.jsonl` beside the state file (`holdfast coordinator` fills it in); with no
    /// state file and none set, they are written to the log. Absolute.
    pub archive_file: std::path::PathBuf,
    /// With `--etcd`: PEM CA that etcd's serving certificate must chain to. Set, etcd is
    /// dialled over TLS (`https://`); empty = plain `http://`. Absolute.
    pub etcd_ca_file: std::path::PathBuf,
    /// With `--etcd`: PEM client certificate for etcd's `--client-cert-auth` (with
    /// `etcd_key_file` and `etcd_ca_file`). Absolute.
    pub etcd_cert_file: std::path::PathBuf,
    /// PEM private key of `etcd_cert_file`. Absolute.
    pub etcd_key_file: std::path::PathBuf,
    /// With `--etcd`: the etcd user to authenticate as (etcd `auth enable`), with
    /// `etcd_password_file`; empty = no etcd authentication.
    pub etcd_user: String,
    /// File whose first line is `etcd_user`'s password (kept out of the config, the command
    /// line and the logs; make it 0600). Absolute.
    pub etcd_password_file: std::path::PathBuf,
    /// Most operations etcd takes in one transaction (its `--max-txn-ops`, 128 by default): a
    /// state save with more changes is refused whole, naming the limit, never half-applied.
    pub etcd_max_txn_ops: usize,
    /// Most bytes etcd takes in one request (its `--max-request-bytes`, 1.5 MiB by default),
    /// as `etcd_max_txn_ops`.
    pub etcd_max_request_bytes: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 2000,
            hello_timeout_ms: 5000,
            hello_rate_per_s: 1000,
            hello_burst: 200,
            hello_hold_ms: 10_000,
            stop_grace_ms: 5000,
            stop_deadline_ms: 8000,
            replacement_timeout_ms: 0,
            rdzv_port_base: 29500,
            rdzv_port_span: 500,
            default_restart_budget: 3,
            tick_ms: 100,
            checkpoint_resolve_attempts: 5,
            checkpoint_resolve_retry_ms: 1000,
            checkpoint_verify_checksums: false,
            startup_grace_ms: 60_000,
            reconnect_grace_ms: 10_000,
            bootstrap_script: String::new(),
            check_scripts: Vec::new(),
            script_timeout_ms: 600_000,
            check_replacements: true,
            agent_lost_grace_ms: 0,
            restart_backoff_ms: 2_000,
            restart_backoff_max_ms: 60_000,
            quarantine_after: 3,
            quarantine_window_ms: 600_000,
            health_escalation_window_ms: 3_600_000,
            drain_replace: "next_recovery".into(),
            remediation_script: String::new(),
            circuit_breaker_share: 0.5,
            circuit_breaker_window_ms: 300_000,
            silence_storm_share: 0.5,
            silence_storm_hold_ms: 30_000,
            provider: "spares".into(),
            provider_dir: std::path::PathBuf::from("/etc/holdfast/providers"),
            provider_timeout_ms: 600_000,
            provider_attempts: 3,
            provider_retry_ms: 5_000,
            operator_tokens_file: std::path::PathBuf::new(),
            tls_cert_file: std::path::PathBuf::new(),
            tls_key_file: std::path::PathBuf::new(),
            tls_client_ca_file: std::path::PathBuf::new(),
            pki_dir: std::path::PathBuf::new(),
            node_cert_lifetime_s: 90 * 86_400,
            allowed_hosts: Vec::new(),
            max_nodes: 20_000,
            finished_retention_ms: 7 * 24 * 3_600_000,
            max_finished_jobs: 1_000,
            max_closed_incidents: 10_000,
            archive_file: std::path::PathBuf::new(),
            etcd_ca_file: std::path::PathBuf::new(),
            etcd_cert_file: std::path::PathBuf::new(),
            etcd_key_file: std::path::PathBuf::new(),
            etcd_user: String::new(),
            etcd_password_file: std::path::PathBuf::new(),
            etcd_max_txn_ops: 128,
            etcd_max_request_bytes: 1536 * 1024,
        }
    }
}

pub use crate::config_file::SettingsError as ConfigError;

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `key` must not be 0.
/// The shortest node certificate lifetime `node_cert_lifetime_s` accepts: agents renew at two
/// thirds of it, so anything shorter turns into a renewal storm.
pub const MIN_NODE_CERT_LIFETIME_S: u64 = 10;

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

/// Count `key` must be at least 1 and at most `ceiling` (every kept record is held in memory
/// and stored).
fn at_most(key: &'static str, value: usize, ceiling: usize) -> Result<(), ConfigError> {
    if value == 0 || value > ceiling {
        return Err(invalid(
            key,
            format!("must be between 1 and {ceiling}, got {value}"),
        ));
    }
    Ok(())
}

/// Duration `key` must be at least duration `floor_key`.
fn at_least_ms(
    key: &'static str,
    value: u64,
    floor_key: &str,
    floor: u64,
) -> Result<(), ConfigError> {
    if value < floor {
        return Err(invalid(
            key,
            format!("must be at least {floor_key} ({floor} ms), got {value} ms"),
        ));
    }
    Ok(())
}

/// `key` is a share of nodes: in (0, 1].
fn share(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(invalid(key, format!("must be in (0, 1], got {value}")));
    }
    Ok(())
}

/// `key` must be one of two words.
fn either(key: &'static str, value: &str, [a, b]: [&str; 2]) -> Result<(), ConfigError> {
    if value != a && value != b {
        return Err(invalid(
            key,
            format!("must be {a:?} or {b:?}, got {value:?}"),
        ));
    }
    Ok(())
}

impl CoordinatorConfig {
    /// Checks the settings fit together; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("heartbeat_interval_ms", self.heartbeat_interval_ms)?;
        if self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err(invalid(
                "heartbeat_timeout_ms",
                format!(
                    "must be at least twice heartbeat_interval_ms ({} ms), got {} ms",
                    self.heartbeat_interval_ms, self.heartbeat_timeout_ms
                ),
            ));
        }
        positive("hello_timeout_ms", self.hello_timeout_ms)?;
        positive("hello_rate_per_s", u64::from(self.hello_rate_per_s))?;
        positive("hello_burst", u64::from(self.hello_burst))?;
        if self.hello_hold_ms > 60_000 {
            return Err(invalid(
                "hello_hold_ms",
                format!("must be at most 60000 ms, got {} ms", self.hello_hold_ms),
            ));
        }
        positive("max_nodes", self.max_nodes as u64)?;
        if !(MIN_NODE_CERT_LIFETIME_S..=3_650 * 86_400).contains(&self.node_cert_lifetime_s) {
            return Err(invalid(
                "node_cert_lifetime_s",
                format!(
                    "must be {MIN_NODE_CERT_LIFETIME_S} s to 3650 days, got {} s",
                    self.node_cert_lifetime_s
                ),
            ));
        }
        positive("finished_retention_ms", self.finished_retention_ms)?;
        at_most("max_finished_jobs", self.max_finished_jobs, 100_000)?;
        at_most("max_closed_incidents", self.max_closed_incidents, 1_000_000)?;
        if !self.archive_file.as_os_str().is_empty() && !self.archive_file.is_absolute() {
            return Err(invalid(
                "archive_file",
                "must be an absolute path (or empty for archive.jsonl beside the state file)",
            ));
        }
        self.validate_etcd()?;
        at_least_ms(
            "stop_deadline_ms",
            self.stop_deadline_ms,
            "stop_grace_ms",
            self.stop_grace_ms,
        )?;
        positive("rdzv_port_span", u64::from(self.rdzv_port_span))?;
        if u32::from(self.rdzv_port_base) + u32::from(self.rdzv_port_span) > 65536 {
            return Err(invalid(
                "rdzv_port_span",
                "rdzv_port_base + rdzv_port_span must not pass 65535",
            ));
        }
        if self.tick_ms == 0 || self.tick_ms > self.heartbeat_timeout_ms {
            return Err(invalid(
                "tick_ms",
                "must be greater than 0 and at most heartbeat_timeout_ms",
            ));
        }
        at_least_ms(
            "reconnect_grace_ms",
            self.reconnect_grace_ms,
            "heartbeat_timeout_ms",
            self.heartbeat_timeout_ms,
        )?;
        if self.checkpoint_resolve_attempts == 0 {
            return Err(invalid("checkpoint_resolve_attempts", "must be at least 1"));
        }
        if !self.bootstrap_script.is_empty() {
            check_script_name(&self.bootstrap_script)
                .map_err(|r| invalid("bootstrap_script", r))?;
        }
        for name in &self.check_scripts {
            check_script_name(name).map_err(|r| invalid("check_scripts", r))?;
        }
        if !self.remediation_script.is_empty() {
            check_script_name(&self.remediation_script)
                .map_err(|r| invalid("remediation_script", r))?;
        }
        either(
            "drain_replace",
            &self.drain_replace,
            ["next_recovery", "now"],
        )?;
        positive("script_timeout_ms", self.script_timeout_ms)?;
        at_least_ms(
            "restart_backoff_max_ms",
            self.restart_backoff_max_ms,
            "restart_backoff_ms",
            self.restart_backoff_ms,
        )?;
        if self.quarantine_after > 0 && self.quarantine_window_ms == 0 {
            return Err(invalid(
                "quarantine_window_ms",
                "must be greater than 0 when quarantine_after is set",
            ));
        }
        share("circuit_breaker_share", self.circuit_breaker_share)?;
        share("silence_storm_share", self.silence_storm_share)?;
        positive("circuit_breaker_window_ms", self.circuit_breaker_window_ms)?;
        either("provider", &self.provider, ["spares", "exec"])?;
        if self.provider == "exec" && !self.provider_dir.is_absolute() {
            return Err(invalid(
                "provider_dir",
                "must be an absolute path when provider = \"exec\"",
            ));
        }
        positive("provider_timeout_ms", self.provider_timeout_ms)?;
        if self.provider_attempts == 0 {
            return Err(invalid("provider_attempts", "must be at least 1"));
        }
        if !self.operator_tokens_file.as_os_str().is_empty()
            && !self.operator_tokens_file.is_absolute()
        {
            return Err(invalid(
                "operator_tokens_file",
                "must be an absolute path (or empty for an open operator API)",
            ));
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return Err(invalid(
                "tls_key_file",
                "tls_cert_file and tls_key_file are set together (both, or neither for plain TCP)",
            ));
        }
        if !self.tls_client_ca_file.as_os_str().is_empty()
            && self.tls_cert_file.as_os_str().is_empty()
        {
            return Err(invalid(
                "tls_client_ca_file",
                "needs tls_cert_file and tls_key_file: client certificates only exist over TLS",
            ));
        }
        if !self.pki_dir.as_os_str().is_empty() && self.tls_client_ca_file.as_os_str().is_empty() {
            return Err(invalid(
                "pki_dir",
                "needs tls_client_ca_file (the CA in pki_dir): joined agents speak mutual TLS",
            ));
        }
        Ok(())
    }

    /// The etcd connection keys fit together (see docs/ha.md).
    fn validate_etcd(&self) -> Result<(), ConfigError> {
        let set = |p: &std::path::Path| !p.as_os_str().is_empty();
        for (key, path) in [
            ("etcd_ca_file", &self.etcd_ca_file),
            ("etcd_cert_file", &self.etcd_cert_file),
            ("etcd_key_file", &self.etcd_key_file),
            ("etcd_password_file", &self.etcd_password_file),
        ] {
            if set(path) && !path.is_absolute() {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        if set(&self.etcd_cert_file) != set(&self.etcd_key_file) {
            return Err(invalid(
                "etcd_key_file",
                "etcd_cert_file and etcd_key_file are set together",
            ));
        }
        if set(&self.etcd_cert_file) && !set(&self.etcd_ca_file) {
            return Err(invalid(
                "etcd_cert_file",
                "needs etcd_ca_file: a client certificate is only sent over TLS",
            ));
        }
        if self.etcd_user.is_empty() == set(&self.etcd_password_file) {
            return Err(invalid(
                "etcd_password_file",
                "etcd_user and etcd_password_file are set together",
            ));
        }
        positive("etcd_max_txn_ops", self.etcd_max_txn_ops as u64)?;
        if self.etcd_max_request_bytes < 64 * 1024 {
            return Err(invalid(
                "etcd_max_request_bytes",
                format!(
                    "must be at least 65536 (etcd's --max-request-bytes), got {}",
                    self.etcd_max_request_bytes
                ),
            ));
        }
        Ok(())
    }

    /// True when replacements are asked of operator scripts (they can bring new hosts).
    pub fn provisions_hosts(&self) -> bool {
        self.provider == "exec"
    }

    /// True when new nodes run a bootstrap or deep check before they become ready.
    pub fn has_lifecycle_scripts(&self) -> bool {
        !self.bootstrap_script.is_empty() || !self.check_scripts.is_empty()
    }

    /// Parses TOML text; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<CoordinatorConfig, ConfigError> {
        crate::config_file::parse_validated(text, path, CoordinatorConfig::validate)
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &std::path::Path) -> Result<CoordinatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }
}

/// Agents only run scripts by a relative name inside their script directory; a name that
/// could not be run there is refused at start rather than on the first node.
fn check_script_name(name: &str) -> Result<(), String> {
    let path = std::path::Path::new(name);
    let plain = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if name.trim().is_empty() || path.is_absolute() || !plain || name.ends_with('/') {
        return Err(format!(
            "{name:?} must be a relative name inside the agents' script_dir (no leading /, no `..`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    crate::config_fixture_test!(CoordinatorConfig, "config.rs");

    use super::*;

    #[test]
    fn each_bad_value_names_its_key() {
        // Each key, and a change to the defaults that it refuses.
        crate::config_file::assert_refusals::<CoordinatorConfig, _>(
            &[
                ("heartbeat_interval_ms", |c| c.heartbeat_interval_ms = 0),
                ("heartbeat_timeout_ms", |c| c.heartbeat_timeout_ms = 600),
                ("hello_timeout_ms", |c| c.hello_timeout_ms = 0),
                ("hello_rate_per_s", |c| c.hello_rate_per_s = 0),
                ("hello_burst", |c| c.hello_burst = 0),
                ("stop_deadline_ms", |c| c.stop_deadline_ms = 1),
                ("rdzv_port_span", |c| c.rdzv_port_span = 0),
                ("tick_ms", |c| c.tick_ms = 0),
                ("checkpoint_resolve_attempts", |c| {
                    c.checkpoint_resolve_attempts = 0
                }),
            ],
            CoordinatorConfig::validate,
        );
    }

    #[test]
    fn toml_with_an_unknown_key_or_wrong_type_is_refused_with_the_line() {
        let err = CoordinatorConfig::from_toml("heartbeat_intervall_ms = 5\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml") && err.contains("heartbeat_intervall_ms"),
            "{err}"
        );
        let err = CoordinatorConfig::from_toml("\nheartbeat_timeout_ms = \"x\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let c = CoordinatorConfig::from_toml("heartbeat_timeout_ms = 3000\n", "c.toml").unwrap();
        assert_eq!(c.heartbeat_timeout_ms, 3000);
        assert_eq!(c.heartbeat_interval_ms, 500);
    }
}
