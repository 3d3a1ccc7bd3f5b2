//! # holdfast testkit
//!
//! The test rigs of holdfast and the helpers its tests share (`cli/tests/*.rs`). Not part of
//! the product: the `holdfast` binary never links it. It depends on the `holdfast` library and
//! is a dev-dependency of the `holdfast` package, a cycle cargo allows for tests.
//!
//! ## Layout
//! - [`rig`] — the [`Rig`] trait: one cluster under test, on loopback
//!   ([`LocalCluster`](holdfast_cli::demo::LocalCluster), the demo's) or on network-namespace
//!   hosts ([`NetnsCluster`](e2e::NetnsCluster)); and the operator-API helpers written against
//!   it (`job`, `wait_job`, `wait_node`, `finish`, …).
//! - [`netns`] — test hosts in network namespaces (cut, heal, kill a host).
//! - [`e2e`] — the end-to-end rig on those hosts: torchrun, an S3 server, faults, baseline.
//! - [`seed`] — the GCS and Azure emulators' on-disk stores written directly (100,000
//!   checkpoint objects in seconds, where their APIs take minutes).
//! - [`slurm`] — a Slurm cluster (slurmctld, slurmds, munge) on network-namespace hosts.
//! - [`wait`] — waiting for a condition with a deadline.
//! - [`raw_grpc`] — a codec that sends arbitrary bytes as gRPC messages (a hostile peer).
//! - [`ec2`] — a real EC2 API server (moto's) and the aws CLI, for the ec2 provider's tests.
//! - [`files`] — a test's scratch directory, the repository root, executable scripts.
//! - [`jobs`] — the training job most tests run.
//! - [`host`] — tools the machine offers (skip, or fail under `HOLDFAST_TEST_STRICT=1`), ports,
//!   the headless browser.
//! - [`process`] — the binary under test ([`holdfast_exe!`]), command output, raw HTTP,
//!   benchmark summaries.
//! - `src/bin/holdfast-e2e.rs` — the end-to-end rig's runner behind `scripts/bench-e2e.sh`.

pub mod checkpoints;
pub mod e2e;
pub mod ec2;
pub mod files;
pub mod host;
pub mod jobs;
pub mod netns;
pub mod process;
pub mod raw_grpc;
pub mod rig;
pub mod seed;
pub mod slurm;
pub mod wait;

pub use files::{
    certificates, exec_provider_config, provider_scripts, repo_root, write_file, write_script,
    Scratch,
};
pub use host::{
    free_port, libfaketime, python, require, script_line, skip, strict, Browser, ScriptLines,
};
pub use jobs::{assert_recovered_once, checkpoint_dir, train_spec, Train};
pub use process::{http, http_get, run, run_async, spawn_logged, timing_summary, KillOnDrop, Ran};
pub use rig::{
    client_nodes, coordinator_with_agent_config, find_node, finish, incidents, job, local_cluster,
    node, nodes, ready_count, submit, wait_job, wait_node, wait_node_ready, Rig,
};
pub use wait::{check, poll_until, wait_for, wait_for_blocking};
