//! # holdfast coordinator
//!
//! The control plane: it keeps a synchronous multi-node training job making progress while the
//! hosts under it fail.
//!
//! ## Layout
//! The decisions are made in `holdfast-core` (no I/O): its `Cluster::step` takes an input and
//! returns commands. This crate is the shell around it.
//! - [`daemon`] — the coordinator daemon's start-up: settings, token and TLS files, the store,
//!   etcd leadership, systemd notify, signals (`holdfast coordinator` calls it).
//! - [`server`] — the async shell: gRPC (agent stream, operator API), the ticker, the executor
//!   of the core's commands.
//! - [`wire`] — protobuf messages ⇄ the core's inputs, commands and events; [`view`] — the
//!   records operators read.
//! - [`checkpoint`] — finds the latest *complete* checkpoint through `object_store`.
//! - [`store`] — durable state: records in a redb file (default) or in memory.
//! - `ha` (feature `etcd`) — leader election and state in etcd for several coordinators.
//! - [`report`] — MTTD/MTTR percentiles, ETTR and the what-if lost-time model (pure).
//! - [`metrics`] — Prometheus text exposition of nodes, health, incidents, jobs (pure).
//! - [`dashboard`] — the embedded web dashboard (`dashboard/`: `wire.js` the protobuf and gRPC-web
//!   transport, `fleet.js` the heatmap and virtualised node table, `rate.js` the steps/s chart,
//!   `app.js` the other panels) and `/metrics`, on the gRPC port.
//! - [`provider`] — where replacement hosts come from: the spare pool, or operator scripts.
//! - [`auth`] — operator API tokens and roles, checked in front of the operator service.
//! - [`pki`] — the cluster CA made on first start, join tokens, node certificates.
//! - [`tls`] — TLS on the coordinator's port; client certificates for agents (mutual TLS).
//! - [`archive`] — the export of finished jobs and closed incidents that retention forgets.
//! - [`error`] — typed errors and their gRPC status codes.
//! - [`malloc`] — large buffers in their own mappings, so their unwritten pages stay unresident.

pub mod archive;
pub mod auth;
pub mod checkpoint;
pub mod daemon;
pub mod dashboard;
pub mod error;
#[cfg(feature = "etcd")]
pub mod ha;
pub mod malloc;
pub mod metrics;
pub mod pki;
pub mod provider;
pub mod report;
pub mod server;
pub mod store;
pub mod tls;
pub mod view;
pub mod wire;

pub use holdfast_core::config;
pub use holdfast_core::{now_ms, CoordinatorConfig, UnixMillis, DEFAULT_PROGRESS_REGEX};
pub use server::{run, run_with_store};
