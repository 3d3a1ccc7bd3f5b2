//! # holdfast CLI
//!
//! One binary, `holdfast`, for every role: `coordinator` and `agent` run the daemons; `launch`
//! submits a job and follows it; `status`, `nodes`, `incidents`, `cordon`, `uncordon` talk to
//! the operator API; `demo` runs a whole cluster on loopback and injects a fault.
//!
//! ## Layout
//! - `src/main.rs` — parses the command line, sets up logging, dispatches to [`commands`].
//! - [`commands`] — one module per subcommand: its flags and its `run` (→ exit code). The
//!   coordinator daemon's start-up lives in `holdfast_coordinator::daemon`; `commands::coordinator`
//!   only maps its flags onto it.
//! - [`client`] — connecting to the operator API.
//! - [`hostlist`] — Slurm hostlist expressions (`SLURM_JOB_NODELIST`) expanded to node names,
//!   for `launch` inside an allocation.
//! - [`follow`] — submitting a job and following it to its end (`launch`, `demo`).
//! - [`reports`] — `report` (MTTD/MTTR, ETTR) and `what-if` (the lost-time model).
//! - [`tables`] — how nodes, jobs and incidents are printed.
//! - [`demo`] — the demo: real processes on loopback, a real fault, an incident report.
//! - [`upgrade`] — rolling agent restarts (`upgrade-agents`), batch by batch.
//! - [`bench`](mod@bench) — `bench swarm`: thousands of simulated agents against a running coordinator.
//!
//! The test rigs (network-namespace hosts, the end-to-end rig) and the helpers the tests in
//! `tests/` share live in the `holdfast-testkit` crate (`testkit/`), outside the product.

pub mod bench;
pub mod client;
pub mod commands;
pub mod demo;
pub mod follow;
pub mod hostlist;
pub mod reports;
pub mod tables;
pub mod upgrade;
