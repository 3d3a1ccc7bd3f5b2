//! # holdfast CLI
//!
//! One binary, `holdfast`, for every role: `coordinator` and `agent` run the daemons; `launch`
//! submits a job and follows it; `status`, `nodes`, `incidents`, `cordon`, `uncordon` talk to
//! the operator API; `demo` runs a whole cluster on loopback and injects a fault.
//!
//! ## Layout
//! - [`client`] — connecting to the operator API.
//! - [`follow`] — submitting a job and following it to its end (`launch`, `demo`).
//! - [`reports`] — `report` (MTTD/MTTR, ETTR) and `what-if` (the lost-time model).
//! - [`tables`] — how nodes, jobs and incidents are printed.
//! - [`demo`] — the demo: real processes on loopback, a real fault, an incident report.
//! - [`upgrade`] — rolling agent restarts (`upgrade-agents`), batch by batch.
//! - [`sdnotify`] — systemd's notify protocol for the daemons (ready, stopping, watchdog).

pub mod client;
pub mod demo;
pub mod follow;
pub mod reports;
pub mod sdnotify;
pub mod tables;
pub mod upgrade;
