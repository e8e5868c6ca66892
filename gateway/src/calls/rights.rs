//! Data-subject requests and legal holds: routed to the subject's region (by country, by the
//! region prefix of an id, or — when the country is unknown — to every region, of which only
//! the one holding the subject answers). Exports pass through sealed; the gateway cannot open
//! them.

use std::time::Duration;

use domicile_proto::{
    domain::TenantId,
    error::Violations,
    pb::{
        FetchSubjectRequestExportRequest, GetSubjectRequestRequest, GetSubjectRequestResponse,
        ListSubjectRequestsRequest, ListSubjectRequestsResponse, PlaceLegalHoldRequest,
        PlaceLegalHoldResponse, RegionStatus, RegionalNodeFetchSubjectRequestExportRequest,
        RegionalNodeFetchSubjectRequestExportResponse, RegionalNodeGetSubjectRequestRequest,
        RegionalNodeListSubjectRequestsRequest, RegionalNodePlaceLegalHoldRequest,
        RegionalNodeReleaseLegalHoldRequest, RegionalNodeSubmitSubjectRequestRequest,
        RegionalNodeUpdateSubjectRequestRequest, ReleaseLegalHoldRequest, ReleaseLegalHoldResponse,
        SubjectRequestKind, SubmitSubjectRequestRequest, SubmitSubjectRequestResponse,
        UpdateSubjectRequestRequest, UpdateSubjectRequestResponse,
    },
    rights::{CaseQuery, CaseUpdate, HoldSpec, PageStart, RightsRequest, region_of_id},
};
use tonic::{Code, Status};

use crate::{
    error::GatewayError,
    federation::fanout::{fan_out, request},
    gateway::Gateway,
};

pub(crate) fn missing(region: &str) -> GatewayError {
    GatewayError::Region(
        region.to_owned(),
        Status::internal("the region's answer was empty"),
    )
}

impl Gateway {
    /// The region named by `id` (`<region>.<prefix>-…`), or a violation of `field`.
    pub(crate) fn region_of(
        &self,
        id: &str,
        prefix: &str,
        field: &str,
    ) -> Result<std::sync::Arc<crate::federation::directory::Region>, GatewayError> {
        let region = region_of_id(id, prefix, field)?;
        Ok(self
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
                self.region_for_country(country)
                    .ok_or_else(|| {
                        Violations::one(
                            "subject.country",
                            "no region serves this country; see ListRegions",
                        )
                    })?
                    .clone(),
            ),
            (None, Some(envelope)) if parsed.kind == SubjectRequestKind::Rectification => Some(
                self.region(&envelope.region_id)
                    .ok_or_else(|| Violations::one("rectification.region_id", "unknown region"))?
                    .clone(),
            ),
            _ => None,
        };
        let message = RegionalNodeSubmitSubjectRequestRequest { request: Some(req) };
        // One region: its answer, error included, is relayed as it is.
        if let Some(region) = target {
            let mut client = region.client.clone();
            let call = client.submit_subject_request(request(message, deadline));
            let answer = Self::one_region(&region.id, deadline, call).await?;
            return answer.response.ok_or_else(|| missing(&region.id));
        }
        // Country unknown: ask every region; those without the subject answer NOT_FOUND.
        let targets: Vec<_> = self.regions().into_iter().map(|r| (r, ())).collect();
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
        for outcome in outcomes {
            let mut entry = outcome.coverage();
            match outcome.result {
                Ok(Some(answer)) => receipts.extend(answer.receipts),
                Ok(None) => entry.detail = "holds no data about the subject".into(),
                Err(_) => {}
            }
            coverage.push(entry);
        }
        if receipts.is_empty() {
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
        Ok(SubmitSubjectRequestResponse { receipts, coverage })
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

    /// One step of a request's case, in the region in its id.
    pub async fn update_subject_request(
        &self,
        req: UpdateSubjectRequestRequest,
        deadline: Duration,
    ) -> Result<UpdateSubjectRequestResponse, GatewayError> {
        CaseUpdate::parse(&req)?;
        let region = self.region_of(&req.request_id, "sr", "request_id")?;
        let mut client = region.client.clone();
        let call = client.update_subject_request(request(
            RegionalNodeUpdateSubjectRequestRequest { request: Some(req) },
            deadline,
        ));
        let answer = Self::one_region(&region.id, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region.id))
    }

    /// The case queue: each asked region's page after the token's starting point, merged by
    /// (due date, request id) and cut to the page size; the next token starts after the last
    /// receipt kept. A region that does not answer is named in `coverage` and its cases are
    /// missing from this page (a later page does not bring them back: ask again).
    pub async fn list_subject_requests(
        &self,
        req: ListSubjectRequestsRequest,
        deadline: Duration,
    ) -> Result<ListSubjectRequestsResponse, GatewayError> {
        let query = CaseQuery::parse(&req)?;
        let start = PageStart::parse(&req.page_token)?;
        let mut v = Violations::new();
        let targets = self.resolve_regions(&req.regions, &mut v);
        v.into_result(())?;
        let message = RegionalNodeListSubjectRequestsRequest {
            request: Some(ListSubjectRequestsRequest {
                regions: Vec::new(),
                page_token: String::new(),
                ..req
            }),
            after_due_at: start.due_at,
            after_request_id: start.request_id,
        };
        let targets: Vec<_> = targets.into_iter().map(|r| (r, ())).collect();
        let outcomes = fan_out(targets, deadline, |region, (), deadline| {
            let mut client = region.client.clone();
            let message = message.clone();
            async move {
                client
                    .list_subject_requests(request(message, deadline))
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await;
        let size = query.page_size as usize;
        let mut receipts = Vec::new();
        let mut coverage = Vec::new();
        let mut counts = Vec::new();
        // A region whose page is full may have more after it.
        let mut more = false;
        for outcome in outcomes {
            coverage.push(outcome.coverage());
            if let Ok(answer) = outcome.result {
                more |= answer.receipts.len() >= size;
                receipts.extend(answer.receipts);
                counts.extend(answer.counts);
            }
        }
        let key = |r: &domicile_proto::pb::SubjectRequestReceipt| {
            (
                r.due_at.as_ref().map_or(0, |t| t.seconds),
                r.request_id.clone(),
            )
        };
        receipts.sort_by_key(key);
        // More than a page merged (no region's page full), or a full page somewhere.
        let next_page_token = if more || receipts.len() > size {
            receipts.truncate(size);
            receipts.last().map_or_else(String::new, |r| {
                let (due_at, request_id) = key(r);
                PageStart { due_at, request_id }.token()
            })
        } else {
            String::new()
        };
        Ok(ListSubjectRequestsResponse {
            receipts,
            next_page_token,
            coverage,
            counts,
        })
    }

    /// An export's stream from the region in the request's id, relayed message by message
    /// (ciphertext only: the gateway cannot open it).
    pub async fn fetch_subject_request_export(
        &self,
        req: FetchSubjectRequestExportRequest,
        deadline: Duration,
    ) -> Result<tonic::Streaming<RegionalNodeFetchSubjectRequestExportResponse>, GatewayError> {
        TenantId::parse(&req.tenant_id, "tenant_id")?;
        let region = self.region_of(&req.request_id, "sr", "request_id")?;
        let mut client = region.client.clone();
        let call = client.fetch_subject_request_export(request(
            RegionalNodeFetchSubjectRequestExportRequest { request: Some(req) },
            deadline,
        ));
        Self::one_region(&region.id, deadline, call).await
    }

    /// Places a legal hold in the subject's region.
    pub async fn place_legal_hold(
        &self,
        req: PlaceLegalHoldRequest,
        deadline: Duration,
    ) -> Result<PlaceLegalHoldResponse, GatewayError> {
        let spec = HoldSpec::parse(&req, self.now())?;
        let region = self
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
