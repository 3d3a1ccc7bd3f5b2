//! How a job's ranks are started ([`Launcher`]: as given, or holdfast's native launcher) and
//! restarted after a fault ([`RestartMode`]: relaunch every rank, or keep the survivors and
//! have them re-form the process group in place — an in-process restart).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{FaultCause, Job, JobLimits, JobState};
use crate::error::CoreError;
use crate::protocol::JobRequest;
use crate::{NodeId, UnixMillis};

/// How an agent turns a launch into processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Launcher {
    /// The command runs once per node, as given (it is its own launcher, e.g. torchrun).
    #[default]
    Command,
    /// The agent starts `nproc_per_node` copies of the command itself, each with torchrun's
    /// environment contract (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, …), with no rendezvous
    /// round and no launcher process in between.
    Native {
        /// Ranks (processes) per node.
        nproc_per_node: u32,
        /// Python modules a standby interpreter per local rank imports ahead of the next
        /// launch, so a relaunch skips them; empty: ranks start cold.
        warm_imports: Vec<String>,
    },
}

/// The most ranks one node may run under the native launcher (hosts have at most a few dozen
/// accelerators; more is a typo).
pub const MAX_NPROC_PER_NODE: u32 = 256;

impl Launcher {
    /// Ranks per node: 1 for a command that is its own launcher.
    pub fn nproc_per_node(&self) -> u32 {
        match self {
            Launcher::Command => 1,
            Launcher::Native { nproc_per_node, .. } => *nproc_per_node,
        }
    }

    pub(super) fn validate(request: &JobRequest) -> Result<Launcher, CoreError> {
        let invalid = |field: &'static str, reason: String| CoreError::InvalidJob { field, reason };
        let Some(nproc_per_node) = request.nproc_per_node else {
            if !request.warm_imports.is_empty() {
                return Err(invalid(
                    "warm_imports",
                    "needs the native launcher: set nproc_per_node".into(),
                ));
            }
            return Ok(Launcher::Command);
        };
        if !(1..=MAX_NPROC_PER_NODE).contains(&nproc_per_node) {
            return Err(invalid(
                "nproc_per_node",
                format!("must be 1 to {MAX_NPROC_PER_NODE}, got {nproc_per_node}"),
            ));
        }
        for module in &request.warm_imports {
            let valid = !module.is_empty()
                && module.split('.').all(|part| {
                    part.chars()
                        .next()
                        .is_some_and(|c| c.is_alphabetic() || c == '_')
                        && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                });
            if !valid {
                return Err(invalid(
                    "warm_imports",
                    format!("{module:?} is not a Python module name"),
                ));
            }
        }
        Ok(Launcher::Native {
            nproc_per_node,
            warm_imports: request.warm_imports.clone(),
        })
    }
}

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
pub(super) fn validate_restart(request: &JobRequest) -> Result<RestartMode, CoreError> {
    let restart = RestartMode::parse(&request.restart)?;
    if restart == RestartMode::InProcess && request.nproc_per_node.is_none() {
        return Err(CoreError::InvalidJob {
            field: "restart",
            reason: "in_process needs the native launcher: set nproc_per_node".into(),
        });
    }
    Ok(restart)
}

/// At a fault of rank `faulty` (`cause`) in a running generation: marks the ranks in `live`
/// (whose workers may still run) as kept when the job restarts in process and is not re-forming
/// already (a fault while the group re-forms falls back to stopping every rank), takes them out
/// of `live` (the ranks left there are stopped) and records the step they reached, which the
/// new generation resumes from. A rank blamed for a stall hangs: it is not kept but stopped and
/// launched anew while the others re-form. A stall blamed on no rank keeps none: which process
/// hangs is unknown, so every rank is relaunched.
pub(super) fn keep_survivors(
    job: &mut Job,
    live: &mut BTreeSet<usize>,
    faulty: usize,
    cause: &FaultCause,
) {
    let stalled = matches!(cause, FaultCause::ProgressStalled { .. });
    let unattributed = matches!(cause, FaultCause::ProgressStalled { blamed: false, .. });
    let in_place = job.spec.restart == RestartMode::InProcess && !job.reforming && !unattributed;
    if job.reforming {
        (job.message).push_str(" (during an in-process re-form: relaunching every rank)");
    }
    job.reforming = false;
    for (i, r) in job.ranks.iter_mut().enumerate() {
        let hung = stalled && i == faulty;
        r.kept = in_place && !hung && live.contains(&i);
    }
    if in_place {
        let kept = job.ranks.iter().filter(|r| r.kept);
        job.reform_step = kept.map(|r| r.last_step).max().unwrap_or(0);
    }
    live.retain(|&i| !job.ranks[i].kept);
}

/// A re-form that has not stepped on every rank within the start-up grace: the rank that did
/// not (its node, how long it was idle) and the fault it counts as (against no node).
pub(super) fn reform_overdue(
    job: &Job,
    now: UnixMillis,
    limits: &JobLimits,
) -> Option<(NodeId, u64, FaultCause)> {
    if !job.reforming || !matches!(job.state, JobState::Launching | JobState::Running) {
        return None;
    }
    job.ranks.iter().find_map(|r| {
        let idle = (now - r.last_progress_at).max(0) as u64;
        let late = !r.progressed && idle >= limits.startup_grace_ms.max(1);
        let why = || format!("the process group did not re-form in place within {idle} ms");
        late.then(|| {
            (
                r.node.clone(),
                idle,
                FaultCause::stall_unattributed(idle, why()),
            )
        })
    })
}
