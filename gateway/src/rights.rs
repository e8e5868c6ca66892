//! Data-subject requests and legal holds: routed to the subject's region (by country, by the
//! region prefix of an id, or — when the country is unknown — to every region, of which only
//! the one holding the subject answers). Exports pass through sealed; the gateway cannot open
//! them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domicile_proto::{
    domain::TenantId,
    error::Violations,
    pb::{
        GetSubjectRequestRequest, GetSubjectRequestResponse, PlaceLegalHoldRequest,
        PlaceLegalHoldResponse, RegionStatus, RegionalNodeGetSubjectRequestRequest,
        RegionalNodePlaceLegalHoldRequest, RegionalNodeReleaseLegalHoldRequest,
        RegionalNodeSubmitSubjectRequestRequest, ReleaseLegalHoldRequest, ReleaseLegalHoldResponse,
        SubjectRequestKind, SubmitSubjectRequestRequest, SubmitSubjectRequestResponse,
    },
    rights::{HoldSpec, RightsRequest, region_of_id},
};
use tonic::{Code, Status};

use crate::{
    error::GatewayError,
    fanout::{fan_out, request},
    gateway::Gateway,
};

fn missing(region: &str) -> GatewayError {
    GatewayError::Region(
        region.to_owned(),
        Status::internal("the region's answer was empty"),
    )
}

impl Gateway {
    /// The region named by `id` (`<region>.<prefix>-…`), or a violation of `field`.
    fn region_of(
        &self,
        id: &str,
        prefix: &str,
        field: &str,
    ) -> Result<std::sync::Arc<crate::directory::Region>, GatewayError> {
        let region = region_of_id(id, prefix, field)?;
        Ok(self
            .directory()
            .region(&region)
            .ok_or_else(|| Violations::one(field, "issued by no known region"))?
            .clone())
    }

    /// Routes a data-subject request to the subject's region, or asks every region when the
    /// subject's country is unknown.
    pub async fn submit_subject_request(
        &self,
        req: SubmitSubjectRequestRequest,
        deadline: Duration,
    ) -> Result<SubmitSubjectRequestResponse, GatewayError> {
        let parsed = RightsRequest::parse(&req)?;
        let target = match (&parsed.country, &parsed.rectification) {
            (Some(country), _) => Some(
                self.directory()
                    .region_for_country(country)
                    .ok_or_else(|| {
                        Violations::one(
                            "subject.country",
                            "no region serves this country; see ListRegions",
                        )
                    })?
                    .clone(),
            ),
            (None, Some(envelope)) if parsed.kind == SubjectRequestKind::Rectification => Some(
                self.directory()
                    .region(&envelope.region_id)
                    .ok_or_else(|| Violations::one("rectification.region_id", "unknown region"))?
                    .clone(),
            ),
            _ => None,
        };
        let message = RegionalNodeSubmitSubjectRequestRequest { request: Some(req) };
        let targets: Vec<_> = match &target {
            Some(region) => vec![(region.clone(), ())],
            None => self
                .directory()
                .regions()
                .iter()
                .map(|r| (r.clone(), ()))
                .collect(),
        };
        let asked_all = target.is_none();
        let outcomes = fan_out(targets, deadline, |region, (), deadline| {
            let mut client = region.client.clone();
            let message = message.clone();
            async move {
                match client
                    .submit_subject_request(request(message, deadline))
                    .await
                {
                    Ok(r) => Ok(r.into_inner().response),
                    Err(s) if s.code() == Code::NotFound => Ok(None),
                    Err(s) => Err(s),
                }
            }
        })
        .await;
        let mut receipts = Vec::new();
        let mut coverage = Vec::new();
        let mut first_error = None;
        for outcome in outcomes {
            let mut entry = outcome.coverage();
            match outcome.result {
                Ok(Some(answer)) => receipts.extend(answer.receipts),
                Ok(None) => entry.detail = "holds no data about the subject".into(),
                Err(failure) => {
                    first_error.get_or_insert((outcome.region.id.clone(), failure));
                }
            }
            coverage.push(entry);
        }
        if receipts.is_empty() {
            // A single region's refusal is relayed as it is (e.g. a rejected rectification).
            if let (false, Some((region, failure))) = (asked_all, first_error) {
                return Err(GatewayError::Region(
                    region,
                    Status::new(status_code(failure.status), failure.detail),
                ));
            }
            let all_answered = coverage.iter().all(|c| c.status == RegionStatus::Ok as i32);
            return Err(if all_answered {
                GatewayError::Region(
                    "all".into(),
                    Status::not_found("no region holds data about this subject"),
                )
            } else {
                GatewayError::RegionsUnavailable(
                    "no answering region holds the subject; some did not answer".into(),
                )
            });
        }
        Ok(SubmitSubjectRequestResponse {
            receipts,
            coverage: if asked_all { coverage } else { Vec::new() },
        })
    }

    /// A request's receipt, from the region in its id.
    pub async fn get_subject_request(
        &self,
        req: GetSubjectRequestRequest,
        deadline: Duration,
    ) -> Result<GetSubjectRequestResponse, GatewayError> {
        TenantId::parse(&req.tenant_id, "tenant_id")?;
        let region = self.region_of(&req.request_id, "sr", "request_id")?;
        let mut client = region.client.clone();
        let call = client.get_subject_request(request(
            RegionalNodeGetSubjectRequestRequest { request: Some(req) },
            deadline,
        ));
        let answer = Self::one_region(&region.id, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region.id))
    }

    /// Places a legal hold in the subject's region.
    pub async fn place_legal_hold(
        &self,
        req: PlaceLegalHoldRequest,
        deadline: Duration,
    ) -> Result<PlaceLegalHoldResponse, GatewayError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let spec = HoldSpec::parse(&req, now)?;
        let region = self
            .directory()
            .region_for_country(&spec.country)
            .ok_or_else(|| {
                Violations::one(
                    "subject.country",
                    "no region serves this country; see ListRegions",
                )
            })?
            .clone();
        let mut client = region.client.clone();
        let call = client.place_legal_hold(request(
            RegionalNodePlaceLegalHoldRequest { request: Some(req) },
            deadline,
        ));
        let answer = Self::one_region(&region.id, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region.id))
    }

    /// Releases a legal hold in the region in its id.
    pub async fn release_legal_hold(
        &self,
        req: ReleaseLegalHoldRequest,
        deadline: Duration,
    ) -> Result<ReleaseLegalHoldResponse, GatewayError> {
        TenantId::parse(&req.tenant_id, "tenant_id")?;
        let region = self.region_of(&req.hold_id, "hold", "hold_id")?;
        let mut client = region.client.clone();
        let call = client.release_legal_hold(request(
            RegionalNodeReleaseLegalHoldRequest { request: Some(req) },
            deadline,
        ));
        let answer = Self::one_region(&region.id, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region.id))
    }
}

/// The gRPC code a region failure is relayed with.
fn status_code(status: RegionStatus) -> Code {
    match status {
        RegionStatus::DeadlineExceeded => Code::DeadlineExceeded,
        RegionStatus::Rejected => Code::InvalidArgument,
        RegionStatus::DeniedByPolicy => Code::FailedPrecondition,
        RegionStatus::BudgetExhausted => Code::ResourceExhausted,
        _ => Code::Unavailable,
    }
}
