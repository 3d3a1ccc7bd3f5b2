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
    pub rdzv_port_span: u16,
    /// Restarts in place a job gets when its spec says nothing.
    pub default_restart_budget: u32,
    /// How often the failure detector looks at the clock (timeouts, stalls).
    pub tick_ms: u64,
    /// Attempts to read the checkpoint store on a relaunch before the job fails.
    pub checkpoint_resolve_attempts: u32,
    /// Delay between those attempts.
    pub checkpoint_resolve_retry_ms: u64,
    /// After a coordinator restart (or a leader change) every node gets this long to reconnect
    /// before it counts as lost; agents retry every ≤ 2 s by default, so a few seconds suffice.
    pub reconnect_grace_ms: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 2000,
            hello_timeout_ms: 5000,
            stop_grace_ms: 5000,
            stop_deadline_ms: 8000,
            replacement_timeout_ms: 0,
            rdzv_port_base: 29500,
            rdzv_port_span: 500,
            default_restart_budget: 3,
            tick_ms: 100,
            checkpoint_resolve_attempts: 5,
            checkpoint_resolve_retry_ms: 1000,
            reconnect_grace_ms: 10_000,
        }
    }
}

/// A setting that cannot work, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl CoordinatorConfig {
    /// Checks the settings fit together; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return Err(invalid("heartbeat_interval_ms", "must be greater than 0"));
        }
        if self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err(invalid(
                "heartbeat_timeout_ms",
                format!(
                    "must be at least twice heartbeat_interval_ms ({} ms), got {} ms",
                    self.heartbeat_interval_ms, self.heartbeat_timeout_ms
                ),
            ));
        }
        if self.hello_timeout_ms == 0 {
            return Err(invalid("hello_timeout_ms", "must be greater than 0"));
        }
        if self.stop_deadline_ms < self.stop_grace_ms {
            return Err(invalid(
                "stop_deadline_ms",
                format!(
                    "must be at least stop_grace_ms ({} ms), got {} ms",
                    self.stop_grace_ms, self.stop_deadline_ms
                ),
            ));
        }
        if self.rdzv_port_span == 0 {
            return Err(invalid("rdzv_port_span", "must be greater than 0"));
        }
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
        if self.reconnect_grace_ms < self.heartbeat_timeout_ms {
            return Err(invalid(
                "reconnect_grace_ms",
                format!(
                    "must be at least heartbeat_timeout_ms ({} ms), got {} ms",
                    self.heartbeat_timeout_ms, self.reconnect_grace_ms
                ),
            ));
        }
        if self.checkpoint_resolve_attempts == 0 {
            return Err(invalid("checkpoint_resolve_attempts", "must be at least 1"));
        }
        Ok(())
    }

    /// Parses TOML text; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<CoordinatorConfig, ConfigError> {
        let config: CoordinatorConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CoordinatorConfig::default().validate().unwrap();
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: Vec<(&str, CoordinatorConfig)> = vec![
            (
                "heartbeat_interval_ms",
                CoordinatorConfig {
                    heartbeat_interval_ms: 0,
                    ..Default::default()
                },
            ),
            (
                "heartbeat_timeout_ms",
                CoordinatorConfig {
                    heartbeat_timeout_ms: 600,
                    ..Default::default()
                },
            ),
            (
                "hello_timeout_ms",
                CoordinatorConfig {
                    hello_timeout_ms: 0,
                    ..Default::default()
                },
            ),
            (
                "stop_deadline_ms",
                CoordinatorConfig {
                    stop_deadline_ms: 1,
                    ..Default::default()
                },
            ),
            (
                "rdzv_port_span",
                CoordinatorConfig {
                    rdzv_port_span: 0,
                    ..Default::default()
                },
            ),
            (
                "tick_ms",
                CoordinatorConfig {
                    tick_ms: 0,
                    ..Default::default()
                },
            ),
            (
                "checkpoint_resolve_attempts",
                CoordinatorConfig {
                    checkpoint_resolve_attempts: 0,
                    ..Default::default()
                },
            ),
        ];
        for (key, config) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{key}: {err}");
        }
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
