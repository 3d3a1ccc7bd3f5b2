//! The worker supervisor: runs the job's command as its own process group, reports its start,
//! progress and exit, and stops it with SIGTERM → grace → SIGKILL of the whole group.
//!
//! Commands arrive in order on one channel and are carried out one at a time, so a `Launch`
//! of generation g+1 always stops generation g first. Generations only go up: a command of an
//! older coordinator term or a launch of a generation already run (a zombie coordinator's, or
//! a late one) is refused, as [`crate::fencing`] decides.
//!
//! ## Workers outlive the agent
//! A worker is its own process group and writes its output to `<state_dir>/logs/…log`, not to
//! a pipe: an agent restart (crash, upgrade, `systemctl restart` with `KillMode=process`) leaves
//! it training. On start, [`Supervisor::adopt`] reads `worker.json`; if the recorded pid is
//! alive with the same start time it is adopted: the log is followed again (its tail re-read
//! for the latest step), the progress file polled, and the pid watched for its end. An adopted
//! worker is not the agent's child, so its exit status is unknown; the coordinator infers it
//! from the other ranks (a synchronous job's ranks finish together).
//!
//! ## Layout
//! - `actor.rs` — the supervisor: its command loop, fencing checks, stop with grace, exits.
//! - `spawn.rs` — starting a worker: its process group, log file and `HOLDFAST_*` variables.
//! - `native.rs` — the native launcher: one process per local rank with torchrun's variables.
//! - `reform.rs` — in-process restarts: a survivor kept and told the next generation.
//! - `standby.rs` — warm standby interpreters (modules imported) that take the next launch.
//! - `follow.rs` — following a running worker: its log output and progress file, as steps.
//! - `memtier.rs` — the job's memory tier (`HOLDFAST_MEMORY_DIR`): what it holds, and a
//!   generation's fallback from it, reported.
//! - `evidence.rs` — the worker's process state, CPU rate and output quiet, every heartbeat.
//! - `stacks.rs` — `py-spy dump` of a stalled worker's Python processes.
//! - `adopt.rs` — taking over the worker recorded in `worker.json` after an agent restart.
//! - `record.rs` — `worker.json`, the record of the running worker.
//! - `placeholders.rs` — the `{placeholder}` values a launch's command is written with.

mod actor;
mod adopt;
mod evidence;
mod follow;
mod memtier;
mod native;
pub mod placeholders;
mod record;
mod reform;
mod spawn;
mod stacks;
mod standby;

use holdfast_proto::v1 as pb;

pub use actor::Supervisor;
pub use evidence::EvidenceSampler;
pub use follow::parse_step;
pub use placeholders::{placeholders, substitute};
pub use record::{RankProcess, WorkerRecord};
pub use stacks::find_py_spy;
pub use standby::{configured_standby, StandbyKey};

/// A command for the supervisor.
#[derive(Debug)]
pub enum WorkerCommand {
    Launch(Box<pb::Launch>),
    Stop(pb::Stop),
    /// Stop everything: the node was fenced.
    Fence(pb::Fence),
    /// A coordinator of this term spoke: older terms are refused from now on. (The session
    /// records its welcomes in the shared fencing state itself, before any command follows.)
    Term(u64),
    /// Dump the stalled worker's stacks; carried out before the stop that follows it.
    DumpStacks(pb::DumpStacks),
}

/// The worker's status, as the session reports it in hello.
#[derive(Debug, Clone, Default)]
pub struct WorkerSnapshot {
    pub record: Option<WorkerRecord>,
    pub last_step: u64,
    /// When the follower last saw an output line of the running worker.
    pub last_output_at: Option<std::time::Instant>,
}
