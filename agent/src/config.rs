//! The agent's configuration: a struct with `Default`, a doc per field and `validate()`, loaded
//! from TOML (`holdfast agent --config FILE`) with CLI overrides.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
        }
    }
}

/// A setting that cannot work, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
}

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
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }
        Ok(())
    }

    /// Parses TOML text; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<AgentConfig, AgentConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| AgentConfigError::Parse {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        AgentConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "coordinator",
                AgentConfig {
                    coordinator: "10.0.0.1:7070".into(),
                    ..Default::default()
                },
            ),
            (
                "node_id",
                AgentConfig {
                    node_id: "a b".into(),
                    ..Default::default()
                },
            ),
            (
                "heartbeat_interval_ms",
                AgentConfig {
                    heartbeat_interval_ms: 0,
                    ..Default::default()
                },
            ),
            (
                "reconnect_max_backoff_ms",
                AgentConfig {
                    reconnect_max_backoff_ms: 1,
                    ..Default::default()
                },
            ),
            (
                "progress_file_poll_ms",
                AgentConfig {
                    progress_file_poll_ms: 0,
                    ..Default::default()
                },
            ),
            (
                "state_dir",
                AgentConfig {
                    state_dir: PathBuf::new(),
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
    fn toml_errors_name_the_file_and_key() {
        let err = AgentConfig::from_toml("role = \"boss\"\n", "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.toml") && err.contains("role"), "{err}");
        let ok = AgentConfig::from_toml("role = \"spare\"\nnode_id = \"gpu-7\"\n", "agent.toml")
            .unwrap();
        assert_eq!((ok.role, ok.node_id.as_str()), (NodeRole::Spare, "gpu-7"));
    }
}
