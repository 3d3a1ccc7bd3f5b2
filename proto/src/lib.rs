//! The `holdfast.v1` protocol, generated from `holdfast/v1/holdfast.proto`:
//! the agent ⇄ coordinator stream (`AgentService`) and the operator API
//! (`OperatorService`) used by the CLI and the dashboard.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("holdfast.v1");
}

pub use v1::*;
