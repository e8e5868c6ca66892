//! One concurrent call per region under a deadline, with each region's outcome.
//!
//! A slow or dead region never holds the answer past the deadline: each call is raced against
//! the same timer, and whatever has not answered by then is reported as
//! `REGION_STATUS_DEADLINE_EXCEEDED`.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use domicile_proto::pb::{RegionCoverage, RegionStatus};
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub use crate::deadline::request;
use crate::federation::directory::Region;

/// How one region took part.
#[derive(Debug)]
pub struct RegionOutcome<T> {
    /// The region.
    pub region: Arc<Region>,
    /// Its answer, or why there is none.
    pub result: Result<T, RegionFailure>,
    /// How long the gateway waited.
    pub latency: Duration,
}

/// Why a region's answer is missing.
#[derive(Debug, Clone)]
pub struct RegionFailure {
    /// The status to report.
    pub status: RegionStatus,
    /// A description for the coverage entry.
    pub detail: String,
    /// The node's `google.rpc.ErrorInfo` metadata, when it sent one (e.g. the remaining privacy
    /// budget). Never personal data: nodes put only parameters there.
    pub metadata: Vec<(String, String)>,
}

impl RegionFailure {
    /// The failure a node's status amounts to.
    pub fn from_status(s: &Status) -> Self {
        let info = s.get_details_error_info();
        let denied = info
            .as_ref()
            .is_some_and(|i| i.reason == "DENIED_BY_POLICY");
        let status = match s.code() {
            Code::DeadlineExceeded => RegionStatus::DeadlineExceeded,
            Code::PermissionDenied => RegionStatus::DeniedByPolicy,
            Code::FailedPrecondition if denied => RegionStatus::DeniedByPolicy,
            Code::ResourceExhausted => RegionStatus::BudgetExhausted,
            Code::InvalidArgument | Code::FailedPrecondition => RegionStatus::Rejected,
            _ => RegionStatus::Unavailable,
        };
        let mut metadata: Vec<(String, String)> = info
            .map(|info| info.metadata.into_iter().collect())
            .unwrap_or_default();
        metadata.sort();
        Self {
            status,
            detail: format!("{:?}: {}", s.code(), s.message()),
            metadata,
        }
    }

    /// A region that did not answer within `deadline`.
    pub fn deadline(deadline: Duration) -> Self {
        Self {
            status: RegionStatus::DeadlineExceeded,
            detail: format!("no answer within {} ms", deadline.as_millis()),
            metadata: Vec::new(),
        }
    }
}

impl<T> RegionOutcome<T> {
    /// The coverage entry for this outcome (group counts filled by the caller).
    pub fn coverage(&self) -> RegionCoverage {
        coverage(&self.region.id, self.result.as_ref().err(), self.latency)
    }
}

/// The coverage entry of a region that answered (`failure` is `None`) or failed.
pub fn coverage(
    region_id: &str,
    failure: Option<&RegionFailure>,
    latency: Duration,
) -> RegionCoverage {
    let (status, detail) = match failure {
        None => (RegionStatus::Ok, String::new()),
        Some(f) => (f.status, f.detail.clone()),
    };
    RegionCoverage {
        region_id: region_id.to_owned(),
        status: status as i32,
        detail,
        latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
        groups_released: 0,
        groups_suppressed: 0,
    }
}

/// Calls `call` for every `(region, input)` concurrently, each with `deadline`; returns one
/// outcome per region, in input order, no later than the deadline.
pub async fn fan_out<I, T, F, Fut>(
    targets: Vec<(Arc<Region>, I)>,
    deadline: Duration,
    call: F,
) -> Vec<RegionOutcome<T>>
where
    F: Fn(Arc<Region>, I, Duration) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let calls = targets.into_iter().map(|(region, input)| {
        let fut = call(region.clone(), input, deadline);
        async move {
            let result = match tokio::time::timeout(deadline, fut).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(status)) => Err(RegionFailure::from_status(&status)),
                Err(_) => Err(RegionFailure::deadline(deadline)),
            };
            RegionOutcome {
                region,
                result,
                latency: started.elapsed(),
            }
        }
    });
    futures::future::join_all(calls).await
}
