//! # holdfast-core
//!
//! What both daemons share and the coordinator decides, with no network and no async runtime;
//! the decisions touch no files (only [`config_file`] reads settings and [`durable`] writes
//! state files, for the daemons): every function here takes the time as an argument (the
//! daemons read the clock once, through [`now_ms`], and pass it down).
//!
//! ## Layout
//! - [`node`], [`job`], [`incident`] — the three lifecycles, each one enum and one pure `step`;
//!   beside a node's state, its [`node::Link`] (how its agent is reached now).
//! - [`cluster`] — the decision core: registry, jobs, incidents, failure detector, behind one
//!   entry point, [`cluster::Cluster::step`], that takes an [`cluster::Input`] and `now` and
//!   returns [`cluster::Command`]s for the coordinator's shell to carry out. Split by concern:
//!   `detector` (reports and timeouts become faults), `liveness` (the coordinator's own stalls,
//!   shared silence, progress that vouches), `reconcile` (hello), `placement` (which node runs
//!   what, within a job's `allowed_nodes`), `recovery` (the job driver), `scripts` (lifecycle
//!   scripts), `provisioning`, `breaker`, `operators`, `records` (durable state and restore),
//!   `retention` (finished jobs and closed incidents archived, then forgotten), `survey` (the
//!   tick's one pass over the nodes), `table` (the node registry: found by hash, walked in id
//!   order). A job finds its ranks by node through its index (`job/index.rs`).
//! - `sim` (feature `sim`) — the simulation harness: the real core with in-memory agents, a
//!   fake clock and fault injection; a test double, never enabled in the daemons.
//! - [`protocol`] — what agents report and are told, and what operators submit and see, in the
//!   core's own types (the coordinator's wire layer maps them to protobuf).
//! - [`checkpoint`] — the checkpoint a generation resumes from; fenced generations; the memory
//!   state tier (what nodes hold, the newest step held for every rank; chosen in `job/tiers.rs`).
//! - [`records`] — the durable state as keyed records.
//! - [`config`] — the coordinator's settings with defaults and validation.
//! - [`config_file`] — TOML settings files: errors that name the file, the line and the key; the
//!   fixture test every daemon's config runs.
//! - [`ids`] — [`NodeId`], [`JobId`], [`Generation`], [`Term`]: the names and counters that
//!   travel through the core, stored as the bare string or number.
//! - [`durable`] — files written whole or not at all (temp + fsync + rename + directory fsync).
//! - [`fault`] — the one cause of every fault (incidents, fenced nodes, metrics).
//! - [`error`] — why the core refuses an input.
//! - `sim` — the simulation test double (test builds and the `sim` feature only): the real core
//!   driven by in-memory agents, a fake clock and injected faults.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod durable;
pub mod error;
pub mod evidence;
pub mod fault;
pub mod ids;
pub mod incident;
pub mod job;
pub mod limits;
pub mod node;
pub mod protocol;
pub mod records;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use config::CoordinatorConfig;
pub use ids::{Generation, JobId, NodeId, Term};

/// Wall-clock time in milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Matches `step 12`, `step=12`, `Step: 12` in a worker's output.
pub const DEFAULT_PROGRESS_REGEX: &str = r"(?i)\bstep[\s:=]+(\d+)";

/// The current wall-clock time. The daemons' one clock read: everything below their shells gets
/// `now` passed in.
pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
