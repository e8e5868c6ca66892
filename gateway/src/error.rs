//! The gateway's error type and its one mapping to gRPC status codes.

use std::collections::HashMap;

use domicile_proto::error::Violations;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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
    /// The one region a subject-scoped call went to answered with an error: relayed as is.
    #[error("region {0}: {1}")]
    Region(String, Status),
    /// Every asked region refused: the tenant's privacy budget for a month of data is spent.
    /// Carries each region's `(region, month, remaining epsilon)`.
    #[error("privacy budget exhausted in every region")]
    BudgetExhausted(Vec<(String, String, String)>),
    /// A region's audit head does not extend the head the gateway witnessed before: (region,
    /// what differs).
    #[error("region {0}: audit log fork: {1}")]
    AuditFork(String, String),
    /// No asked region recorded an incident: the code they agree on (or `UNAVAILABLE`) and
    /// each region's reason.
    #[error("no region recorded the incident: {1}")]
    NotRecorded(Code, String),
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Invalid(v) => v.into(),
            GatewayError::AuditFork(region, detail) => Status::with_error_details(
                Code::DataLoss,
                format!("region {region}: AUDIT LOG FORK: {detail}"),
                ErrorDetails::with_error_info(
                    "AUDIT_FORK",
                    "domicile.v1",
                    HashMap::from([("region".to_owned(), region)]),
                ),
            ),
            GatewayError::NotRecorded(code, reasons) => {
                Status::new(code, format!("no region recorded the incident: {reasons}"))
            }
            GatewayError::RegionsUnavailable(which) => Status::unavailable(format!(
                "require_all_regions: not all regions answered: {which}"
            )),
            GatewayError::RegionsDeadline(which) => Status::deadline_exceeded(format!(
                "require_all_regions: not all regions answered within the deadline: {which}"
            )),
            GatewayError::Region(region, status) => match status.code() {
                // Transport failures say which region could not be reached.
                Code::Unavailable | Code::Unknown | Code::Cancelled => Status::unavailable(
                    format!("region {region} unavailable: {}", status.message()),
                ),
                _ => status,
            },
            GatewayError::BudgetExhausted(remaining) => {
                let text = remaining
                    .iter()
                    .map(|(region, month, left)| format!("{region}: {left} left for {month}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let metadata: HashMap<String, String> = remaining
                    .into_iter()
                    .flat_map(|(region, month, left)| {
                        [
                            (format!("{region}.remaining_epsilon"), left),
                            (format!("{region}.month"), month),
                        ]
                    })
                    .collect();
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "privacy budget exhausted in every asked region ({text}): no new release \
                         for that month of data; figures already released stay available"
                    ),
                    ErrorDetails::with_error_info(
                        "PRIVACY_BUDGET_EXHAUSTED",
                        "domicile.v1",
                        metadata,
                    ),
                )
            }
        }
    }
}
