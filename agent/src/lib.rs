//! # holdfast agent
//!
//! The per-node daemon: it keeps one stream open to the coordinator, heartbeats on it, runs the
//! job's workers as it is told and reports what they do.
//!
//! ## Layout
//! - [`config`] — settings with defaults and validation.
//! - [`session`] — the stream to the coordinator: connect, hello, heartbeats, reconnect with
//!   backoff; commands go to the supervisor, events come back through the [`Outbox`].
//! - [`worker`] — the worker supervisor: process groups, progress, stop with grace.
//! - [`fencing`] — whether a coordinator's command still counts (its term, the job's
//!   generation), remembered across agent restarts.
//! - [`durable`] — state files written atomically and durably.
//! - [`identity`] — hostname, boot id.
//! - [`join`] — joining the cluster with a token: pinned CA, node certificate from a CSR.
//! - [`renew`] — renewing that certificate at two thirds of its life, over mutual TLS.
//! - [`health`] — the node's health summary carried by heartbeats.
//! - [`metrics`] — the agent's own Prometheus metrics (`metrics_listen`, off by default).
//! - [`restart`] — restarting in place (re-exec) for rolling upgrades.
//! - [`scripts`] — lifecycle scripts from the operator's script directory, with timeouts.
//! - `testdir` (tests and the `test-support` feature only) — a scratch directory per test,
//!   shared with `holdfast-testkit`.
//!
//! The agent keeps its workers running when the coordinator is away: events produced meanwhile
//! wait in the outbox and are sent on reconnect.

pub mod backoff;
pub mod config;
pub use holdfast_core::durable;
pub mod fencing;
pub mod health;
pub mod identity;
pub mod join;
pub mod metrics;
pub mod proctree;
pub mod renew;
pub mod restart;
pub mod scripts;
pub mod session;
pub mod worker;

#[cfg(any(test, feature = "test-support"))]
pub mod testdir;

pub use config::AgentConfig;
pub use session::run;

use holdfast_proto::v1 as pb;

/// Everything the agent sends besides hello and heartbeats goes through here; it outlives any
/// one session, so events produced while disconnected are sent after the next hello.
pub type Outbox = tokio::sync::mpsc::UnboundedSender<pb::AgentMessage>;

/// Version announced in hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
