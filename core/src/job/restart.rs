//! The job's restart mode: relaunch every rank after a fault, or keep the survivors and have
//! them re-form the process group in place (an in-process restart).

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::protocol::JobRequest;

/// What a recovery does with the surviving ranks' processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartMode {
    /// Stop every rank and relaunch all of them from the latest checkpoint.
    #[default]
    Relaunch,
    /// Keep the survivors running: they are told the new generation and re-form the process
    /// group in place; only the ranks whose worker is gone are launched, and they take the
    /// state from a survivor. A fault while the group re-forms falls back to a relaunch.
    InProcess,
}

impl RestartMode {
    /// The name operators write (`relaunch`, `in_process`).
    pub fn name(self) -> &'static str {
        match self {
            RestartMode::Relaunch => "relaunch",
            RestartMode::InProcess => "in_process",
        }
    }

    /// Parses an operator's `restart` (empty: the default), naming the field when it is wrong.
    pub fn parse(text: &str) -> Result<RestartMode, CoreError> {
        match text {
            "" | "relaunch" => Ok(RestartMode::Relaunch),
            "in_process" | "in-process" => Ok(RestartMode::InProcess),
            other => Err(CoreError::InvalidJob {
                field: "restart",
                reason: format!(
                    "must be relaunch or in_process, got {:?}",
                    other.chars().take(32).collect::<String>()
                ),
            }),
        }
    }
}

/// `restart`: parsed, and in-process restarts only under the native launcher (a command that
/// is its own launcher, such as torchrun, restarts its workers itself).
pub(super) fn validate(request: &JobRequest) -> Result<RestartMode, CoreError> {
    let restart = RestartMode::parse(&request.restart)?;
    if restart == RestartMode::InProcess && request.nproc_per_node.is_none() {
        return Err(CoreError::InvalidJob {
            field: "restart",
            reason: "in_process needs the native launcher: set nproc_per_node".into(),
        });
    }
    Ok(restart)
}
