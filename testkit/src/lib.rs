//! # holdfast testkit
//!
//! The test rigs of holdfast and the helpers its tests share. Not part of the product: the
//! `holdfast` binary never links it.
//!
//! ## Layout
//! - [`netns`] — test hosts in network namespaces (cut, heal, kill a host).
//! - [`e2e`] — the end-to-end rig on those hosts: torchrun, an S3 server, faults, baseline.
//! - `src/bin/holdfast-e2e.rs` — the rig's runner behind `scripts/bench-e2e.sh`.

pub mod e2e;
pub mod netns;
