//! Why the core refuses an input. The coordinator maps each variant to a gRPC status in one
//! place.

use crate::node::InvalidTransition;

/// A refused agent or operator request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A job spec field is wrong.
    #[error("invalid job spec: {field} {reason}")]
    InvalidJob {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An agent-supplied field is too large or malformed (see [`crate::limits`]).
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field, as `message.field`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A job with this id exists.
    #[error("job {0} already exists")]
    JobExists(String),
    /// No such job.
    #[error("no job {0}")]
    NoSuchJob(String),
    /// No such node.
    #[error("no node {0}")]
    NoSuchNode(String),
    /// Another live stream holds the node id.
    #[error("node id {node} is already connected (hostname {hostname}); refusing a second agent with the same id")]
    DuplicateNode {
        /// The node id.
        node: String,
        /// The hostname of the stream that holds it.
        hostname: String,
    },
    /// An agent message that makes no sense.
    #[error("malformed agent message: {0}")]
    BadMessage(String),
    /// The node's lifecycle does not allow the move.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// The node cannot do that now.
    #[error("{0}")]
    NodeBusy(String),
    /// A new node id while the registry holds `max_nodes` already.
    #[error("the coordinator holds {max} nodes already (max_nodes); refusing new node id {node}: retire nodes or raise max_nodes")]
    TooManyNodes {
        /// The refused node id.
        node: String,
        /// The configured cap.
        max: usize,
    },
}
