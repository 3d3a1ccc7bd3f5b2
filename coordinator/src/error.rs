//! The coordinator's typed errors, and the one place they become gRPC status codes.

use holdfast_core::error::CoreError;
use tonic::Status;

/// Why the coordinator refused a request.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The core refused it.
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("invalid job spec: {field} {reason}")]
    InvalidJob { field: &'static str, reason: String },
    #[error("malformed agent message: {0}")]
    BadMessage(String),
    #[error("no hello within {0} ms; closing the stream")]
    NoHello(u64),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error(
        "the agent sent more than {0} messages per second (beyond its burst); closing the stream"
    )]
    Flood(u32),
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Status {
        let message = e.to_string();
        match e {
            CoordinatorError::InvalidJob { .. } | CoordinatorError::BadMessage(_) => {
                Status::invalid_argument(message)
            }
            CoordinatorError::NoHello(_) => Status::deadline_exceeded(message),
            CoordinatorError::Unauthenticated(_) => Status::unauthenticated(message),
            CoordinatorError::Flood(_) => Status::resource_exhausted(message),
            CoordinatorError::Core(core) => match core {
                CoreError::InvalidJob { .. }
                | CoreError::InvalidField { .. }
                | CoreError::BadMessage(_) => Status::invalid_argument(message),
                CoreError::JobExists(_) | CoreError::DuplicateNode { .. } => {
                    Status::already_exists(message)
                }
                CoreError::NoSuchJob(_) | CoreError::NoSuchNode(_) => Status::not_found(message),
                CoreError::TooManyNodes { .. } => Status::resource_exhausted(message),
                CoreError::Transition(_) | CoreError::NodeBusy(_) => {
                    Status::failed_precondition(message)
                }
            },
        }
    }
}
