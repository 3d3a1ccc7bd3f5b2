//! The coordinator's typed errors, and the one place they become gRPC status codes.

use tonic::Status;

use crate::node::InvalidTransition;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid job spec: {field} {reason}")]
    InvalidJob { field: &'static str, reason: String },
    #[error("job {0} already exists")]
    JobExists(String),
    #[error("no job {0}")]
    NoSuchJob(String),
    #[error("no node {0}")]
    NoSuchNode(String),
    #[error("node id {node} is already connected (hostname {hostname}); refusing a second agent with the same id")]
    DuplicateNode { node: String, hostname: String },
    #[error("malformed agent message: {0}")]
    BadMessage(String),
    #[error("no hello within {0} ms; closing the stream")]
    NoHello(u64),
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error("{0}")]
    NodeBusy(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Status {
        let message = e.to_string();
        match e {
            CoordinatorError::InvalidJob { .. } | CoordinatorError::BadMessage(_) => {
                Status::invalid_argument(message)
            }
            CoordinatorError::JobExists(_) | CoordinatorError::DuplicateNode { .. } => {
                Status::already_exists(message)
            }
            CoordinatorError::NoSuchJob(_) | CoordinatorError::NoSuchNode(_) => {
                Status::not_found(message)
            }
            CoordinatorError::NoHello(_) => Status::deadline_exceeded(message),
            CoordinatorError::Transition(_) | CoordinatorError::NodeBusy(_) => {
                Status::failed_precondition(message)
            }
            CoordinatorError::Unauthenticated(_) => Status::unauthenticated(message),
        }
    }
}
