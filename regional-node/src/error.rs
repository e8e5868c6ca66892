//! The node's error type and its one mapping to gRPC status codes.

use std::collections::HashMap;

use domicile_proto::error::Violations;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of Domicile's errors.
pub const ERROR_DOMAIN: &str = "domicile.v1";
/// `ErrorInfo.reason` when a country policy refuses the call.
pub const DENIED_BY_POLICY: &str = "DENIED_BY_POLICY";
/// `ErrorInfo.reason` when the DPO's signature is refused.
pub const DPO_SIGNATURE_REFUSED: &str = "DPO_SIGNATURE_REFUSED";
/// `ErrorInfo.reason` when the differential-privacy budget is spent.
pub const BUDGET_EXHAUSTED: &str = "PRIVACY_BUDGET_EXHAUSTED";

/// What can go wrong in a node call.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request is invalid; the violations name the fields.
    #[error("{0}")]
    Invalid(#[from] Violations),
    /// The storage failed. The message is for operators' logs; clients get a generic text.
    #[error("storage: {0}")]
    Storage(#[from] DbError),
    /// The country policies refuse the call; the text names the countries and rule, never data.
    #[error("denied by policy: {0}")]
    DeniedByPolicy(String),
    /// The tenant's differential-privacy budget for the day cannot pay for the query.
    #[error(
        "privacy budget exhausted: {remaining_milli} of {budget_milli} thousandths left, {requested_milli} requested"
    )]
    BudgetExhausted {
        /// The month of data whose budget is spent, `YYYY-MM`.
        month: String,
        /// Epsilon left of that month's budget, in thousandths.
        remaining_milli: u64,
        /// The budget per month of data, in thousandths.
        budget_milli: u64,
        /// What the query needed, in thousandths.
        requested_milli: u32,
    },
    /// What the request names does not exist (for this tenant). The text names no personal data.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is valid but cannot apply in the current state (e.g. a used token).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The request needs the tenant DPO's signature and it is missing, wrong, stale or
    /// replayed.
    #[error("{0}")]
    DpoRefused(domicile_proto::trust::DpoRefusal),
    /// The node cannot answer now and a retry later can succeed (e.g. an erasure's rows are
    /// still being deleted). The text names no personal data.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

/// What went wrong in the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection to run on: the runtime could not start, or the pool gave none
    /// (all in use past the wait, or it could not connect in time).
    #[error("postgres connection: {0}")]
    Thread(String),
    /// The database's address or its TLS options are unusable (the message names which).
    #[error("postgres configuration: {0}")]
    Config(String),
    /// A statement's text breaks the rules both engines are written to (its parameters are
    /// not `$1` … `$N`).
    #[error("statement: {0}")]
    Statement(String),
    /// A query expected a row and found none.
    #[error("no row")]
    NoRow,
    /// A column held a value of another type than the code reads.
    #[error("column {index}: {message}")]
    Type {
        /// The column.
        index: usize,
        /// What did not fit.
        message: String,
    },
}

/// PostgreSQL's message and SQLSTATE for a server error (its `DETAIL`, which can quote
/// values, is left out), or the client's own text with its causes (e.g. why a TLS handshake
/// failed: a certificate for another name, an unknown issuer).
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

impl DbError {
    /// Whether the PostgreSQL session is gone: the client saw its connection close, or the
    /// server ended it (SQLSTATE class 57P: an administrator's command, a crash, a shutdown)
    /// or broke it (class 08). Never for SQLite, whose connection is a file.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Postgres(e) => {
                e.is_closed()
                    || e.code()
                        .is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("08"))
            }
            _ => false,
        }
    }

    /// Whether this is a unique or primary-key violation (on either backend).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            // Only a key's violation: SQLite's primary code covers NOT NULL and CHECK too.
            Self::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            Self::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for NodeError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(e.into())
    }
}

impl From<tokio_postgres::Error> for NodeError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Storage(e.into())
    }
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
            NodeError::NotFound(what) => Status::not_found(what),
            NodeError::Unavailable(why) => Status::unavailable(why),
            NodeError::FailedPrecondition(why) => Status::failed_precondition(why),
            NodeError::DeniedByPolicy(why) => Status::with_error_details(
                Code::FailedPrecondition,
                format!("denied by policy: {why}"),
                ErrorDetails::with_error_info(DENIED_BY_POLICY, ERROR_DOMAIN, HashMap::new()),
            ),
            NodeError::BudgetExhausted {
                month,
                remaining_milli,
                budget_milli,
                requested_milli,
            } => {
                let eps = |m: u64| format!("{:.3}", m as f64 / 1000.0);
                let metadata = HashMap::from([
                    ("month".to_owned(), month.clone()),
                    ("remaining_epsilon".to_owned(), eps(remaining_milli)),
                    ("epsilon_per_month".to_owned(), eps(budget_milli)),
                    (
                        "requested_epsilon".to_owned(),
                        eps(u64::from(requested_milli)),
                    ),
                    (
                        "renews".to_owned(),
                        "never: the budget is per month of data; released figures stay available"
                            .to_owned(),
                    ),
                ]);
                let mut details =
                    ErrorDetails::with_error_info(BUDGET_EXHAUSTED, ERROR_DOMAIN, metadata);
                details.add_quota_failure_violation(
                    "differential-privacy epsilon per tenant per month of data",
                    format!(
                        "{month}: {} of {} left; a new release needs {}",
                        eps(remaining_milli),
                        eps(budget_milli),
                        eps(u64::from(requested_milli))
                    ),
                );
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "privacy budget exhausted for the data of {month}: remaining epsilon {} of {}; \
                         figures already released stay available",
                        eps(remaining_milli),
                        eps(budget_milli)
                    ),
                    details,
                )
            }
            NodeError::DpoRefused(refusal) => Status::with_error_details(
                Code::PermissionDenied,
                refusal.to_string(),
                ErrorDetails::with_error_info(
                    DPO_SIGNATURE_REFUSED,
                    ERROR_DOMAIN,
                    HashMap::from([("reason".to_owned(), refusal.reason().to_owned())]),
                ),
            ),
            NodeError::Internal(msg) => {
                tracing::error!(error = %msg, "internal failure");
                Status::internal("internal error")
            }
        }
    }
}
