//! The node's error type and its one mapping to gRPC status codes.

use domicile_proto::error::Violations;
use tonic::Status;

/// What can go wrong in a node call.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request is invalid; the violations name the fields.
    #[error("{0}")]
    Invalid(#[from] Violations),
    /// The storage failed. The message is for operators' logs; clients get a generic text.
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Invalid(v) => v.into(),
            NodeError::Storage(err) => {
                // Storage errors can quote values (e.g. constraint failures): log, never return.
                tracing::error!(error = %err, "storage failure");
                Status::unavailable("storage unavailable; retry with the same idempotency keys")
            }
            NodeError::Internal(msg) => {
                tracing::error!(error = %msg, "internal failure");
                Status::internal("internal error")
            }
        }
    }
}
