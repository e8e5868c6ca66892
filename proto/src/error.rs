//! Invalid input as a gRPC status: `INVALID_ARGUMENT` with a `google.rpc.BadRequest` detail
//! that names every field at fault, so a client can fix its request without guessing.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field: its path in the request (e.g. `query.metrics[2]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, protobuf field names joined with `.`, repeated indices in brackets.
    pub field: String,
    /// What is wrong, for a client author. Never contains a personal value.
    pub description: String,
}

/// All violations found in one request. Empty means valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// A single violation.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Self::new();
        v.add(field, description);
        v
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when empty, `Err(self)` otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// Most violations a status names, in its message and its details: a request with thousands
/// of bad values gets a short answer (the first ones and a count), not one as long as itself.
pub const MAX_REPORTED_VIOLATIONS: usize = 10;

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().take(MAX_REPORTED_VIOLATIONS).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        if self.0.len() > MAX_REPORTED_VIOLATIONS {
            write!(f, "; and {} more", self.0.len() - MAX_REPORTED_VIOLATIONS)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl From<Violations> for Status {
    fn from(v: Violations) -> Self {
        let mut details = ErrorDetails::new();
        for violation in v.0.iter().take(MAX_REPORTED_VIOLATIONS) {
            details.add_bad_request_violation(&violation.field, &violation.description);
        }
        Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {v}"),
            details,
        )
    }
}

/// The field violations carried by a status, if any (for clients and tests).
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|br| {
            br.field_violations
                .into_iter()
                .map(|fv| FieldViolation {
                    field: fv.field,
                    description: fv.description,
                })
                .collect()
        })
        .unwrap_or_default()
}
