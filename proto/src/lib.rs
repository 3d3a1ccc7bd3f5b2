//! The `holdfast.v1` protocol, generated from `holdfast/v1/holdfast.proto`:
//! the agent ⇄ coordinator stream (`AgentService`) and the operator API
//! (`OperatorService`) used by the CLI and the dashboard.
//!
//! [`names`] maps the operator API's typed enums to and from the short state names the
//! coordinator uses, and reads either field of a message whose enum has a string twin.
//! [`codec`] is the protobuf codec the services and clients are generated with (prost's, with
//! per-stream buffers sized for the agent stream's small messages).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("holdfast.v1");
}

pub mod codec;
pub mod names;

/// The gRPC metadata key of the coordinator's retry-after, in milliseconds, on an
/// `unavailable` refusal of a hello (admission control during a connect storm).
pub const RETRY_AFTER_KEY: &str = "holdfast-retry-after-ms";

pub use v1::*;
