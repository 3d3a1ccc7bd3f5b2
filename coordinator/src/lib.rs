//! # holdfast coordinator
//!
//! The control plane: it keeps a synchronous multi-node training job making progress while the
//! hosts under it fail.
//!
//! ## Layout
//! - [`node`], [`job`], [`incident`] — the three lifecycles, each one enum and one pure `step`.
//! - [`cluster`] — the decision core: registry, jobs, incidents, failure detector. Takes `now`,
//!   returns effects; no I/O.
//! - [`checkpoint`] — finds the latest *complete* checkpoint through `object_store`.
//! - [`server`] — the async shell: gRPC (agent stream, operator API), the ticker, the effect
//!   executor.
//! - [`store`] — durable state: records in a redb file (default) or in memory.
//! - `ha` (feature `etcd`) — leader election and state in etcd for several coordinators.
//! - [`report`] — MTTD/MTTR percentiles, ETTR and the what-if lost-time model (pure).
//! - [`metrics`] — Prometheus text exposition of nodes, health, incidents, jobs (pure).
//! - [`dashboard`] — the embedded web dashboard and `/metrics`, on the gRPC port.
//! - [`provider`] — where replacement hosts come from: the spare pool, or operator scripts.
//! - [`auth`] — operator API tokens and roles, checked in front of the operator service.
//! - [`tls`] — TLS on the coordinator's port; client certificates for agents (mutual TLS).
//! - [`config`] — settings with defaults and validation.
//! - [`error`] — typed errors and their gRPC status codes.

pub mod auth;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod error;
#[cfg(feature = "etcd")]
pub mod ha;
pub mod incident;
pub mod job;
pub mod metrics;
pub mod node;
pub mod provider;
pub mod report;
pub mod serve;
pub mod server;
pub mod store;
pub mod tls;
mod view;

pub use config::CoordinatorConfig;
pub use server::{run, run_with_store};

/// Wall-clock time in milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Matches `step 12`, `step=12`, `Step: 12` in a worker's output.
pub const DEFAULT_PROGRESS_REGEX: &str = r"(?i)\bstep[\s:=]+(\d+)";

/// The current wall-clock time. The only clock read of the coordinator: everything below the
/// shell gets `now` passed in.
pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
