//! The gateway's error type and its one mapping to gRPC status codes.

use domicile_proto::error::Violations;
use tonic::Status;

/// What can go wrong in a gateway call.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is invalid; the violations name the fields.
    #[error("{0}")]
    Invalid(#[from] Violations),
    /// `require_all_regions` was set and some region did not answer.
    #[error("regions unavailable: {0}")]
    RegionsUnavailable(String),
    /// `require_all_regions` was set and some region missed the deadline (and none failed
    /// otherwise).
    #[error("regions missed the deadline: {0}")]
    RegionsDeadline(String),
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Invalid(v) => v.into(),
            GatewayError::RegionsUnavailable(which) => Status::unavailable(format!(
                "require_all_regions: not all regions answered: {which}"
            )),
            GatewayError::RegionsDeadline(which) => Status::deadline_exceeded(format!(
                "require_all_regions: not all regions answered within the deadline: {which}"
            )),
        }
    }
}
