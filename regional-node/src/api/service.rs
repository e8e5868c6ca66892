//! The tonic adapter of the federation API: converts wire messages and delegates to [`Node`].

use std::pin::Pin;

use domicile_ops::principal;
use domicile_proto::{
    consent::{Confirmation, ConsentChange, ConsentQuestion},
    domain::{AggregateSpec, IncidentSpec, RecordSpec, TenantId, is_incident_id},
    error::Violations,
    followup::FollowUpSpec,
    pb::{
        ConfirmConsentResponse, FetchSubjectRequestExportResponse, GetRegionInfoRequest,
        GetRegionInfoResponse, GetSubjectRequestResponse, PlaceLegalHoldResponse,
        RecordConsentResponse, RegionalNodeAggregateRequest, RegionalNodeAggregateResponse,
        RegionalNodeCheckContactPermissionRequest, RegionalNodeCheckContactPermissionResponse,
        RegionalNodeConfirmConsentRequest, RegionalNodeConfirmConsentResponse,
        RegionalNodeFetchSubjectRequestExportRequest,
        RegionalNodeFetchSubjectRequestExportResponse, RegionalNodeGetAuditCheckpointRequest,
        RegionalNodeGetAuditCheckpointResponse, RegionalNodeGetConsentRequest,
        RegionalNodeGetConsentResponse, RegionalNodeGetIncidentRequest,
        RegionalNodeGetIncidentResponse, RegionalNodeGetRegionOverviewRequest,
        RegionalNodeGetRegionOverviewResponse, RegionalNodeGetSubjectRequestRequest,
        RegionalNodeGetSubjectRequestResponse, RegionalNodeIngestRequest,
        RegionalNodeIngestResponse, RegionalNodeListFollowUpsRequest,
        RegionalNodeListFollowUpsResponse, RegionalNodeListSubjectRequestsRequest,
        RegionalNodeListSubjectRequestsResponse, RegionalNodeOpenFollowUpRequest,
        RegionalNodeOpenFollowUpResponse, RegionalNodePlaceLegalHoldRequest,
        RegionalNodePlaceLegalHoldResponse, RegionalNodeQueryRecordsRequest,
        RegionalNodeQueryRecordsResponse, RegionalNodeRecordConsentRequest,
        RegionalNodeRecordConsentResponse, RegionalNodeReleaseLegalHoldRequest,
        RegionalNodeReleaseLegalHoldResponse, RegionalNodeReportIncidentRequest,
        RegionalNodeReportIncidentResponse, RegionalNodeSubmitSubjectRequestRequest,
        RegionalNodeSubmitSubjectRequestResponse, RegionalNodeUpdateSubjectRequestRequest,
        RegionalNodeUpdateSubjectRequestResponse, RegionalNodeWithdrawConsentRequest,
        RegionalNodeWithdrawConsentResponse, ReleaseLegalHoldResponse,
        SubmitSubjectRequestResponse, UpdateSubjectRequestResponse, WithdrawConsentResponse,
        regional_node_server::RegionalNode,
    },
    rights::{CaseQuery, CaseUpdate, HoldSpec, PageStart, RightsRequest, needs_dpo, region_of_id},
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{domain::consent::Recorded, node::Node};

/// Largest piece of an export's ciphertext per message of `FetchSubjectRequestExport`.
const EXPORT_CHUNK: usize = 256 * 1024;

/// An export as the messages of `FetchSubjectRequestExport`: the first with the key, schema,
/// expiry and length, every one with the next piece of the ciphertext (one message for an
/// empty one).
fn export_messages(
    export: domicile_proto::pb::SealedExport,
    expires_at: i64,
) -> Vec<FetchSubjectRequestExportResponse> {
    let total = export.ciphertext.len() as u64;
    let mut chunks: Vec<Vec<u8>> = export
        .ciphertext
        .chunks(EXPORT_CHUNK)
        .map(<[u8]>::to_vec)
        .collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| FetchSubjectRequestExportResponse {
            encapsulated_key: if i == 0 {
                export.encapsulated_key.clone()
            } else {
                Vec::new()
            },
            schema: if i == 0 {
                export.schema.clone()
            } else {
                String::new()
            },
            expires_at: (i == 0).then(|| domicile_proto::domain::whole_seconds(expires_at)),
            total_bytes: if i == 0 { total } else { 0 },
            chunk,
        })
        .collect()
}

/// The client's request inside a federation wrapper, or `INVALID_ARGUMENT` naming `request`.
fn inner<T>(request: Option<T>) -> Result<T, Status> {
    request.ok_or_else(|| Violations::one("request", "required").into())
}

/// Serves `domicile.v1.RegionalNode` for one [`Node`].
#[derive(Debug, Clone)]
pub struct RegionalNodeService {
    node: Node,
}

impl RegionalNodeService {
    /// Wraps a node.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl RegionalNode for RegionalNodeService {
    async fn open_follow_up(
        &self,
        request: Request<RegionalNodeOpenFollowUpRequest>,
    ) -> Result<Response<RegionalNodeOpenFollowUpResponse>, Status> {
        let req = request
            .into_inner()
            .request
            .ok_or_else(|| Violations::one("request", "required"))?;
        let spec = FollowUpSpec::parse(&req)?;
        let response = self.node.open_follow_up(spec).await?;
        Ok(Response::new(RegionalNodeOpenFollowUpResponse {
            response: Some(response),
        }))
    }

    async fn list_follow_ups(
        &self,
        request: Request<RegionalNodeListFollowUpsRequest>,
    ) -> Result<Response<RegionalNodeListFollowUpsResponse>, Status> {
        let req = request.into_inner();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        let follow_ups = self
            .node
            .list_follow_ups(tenant, req.follow_up_ids, req.open_only, false)
            .await?;
        Ok(Response::new(RegionalNodeListFollowUpsResponse {
            follow_ups,
        }))
    }

    async fn get_region_info(
        &self,
        _request: Request<GetRegionInfoRequest>,
    ) -> Result<Response<GetRegionInfoResponse>, Status> {
        let config = self.node.config();
        Ok(Response::new(GetRegionInfoResponse {
            region_id: config.region_id.clone(),
            countries: config.countries.clone(),
            sealing_key: Some(self.node.sealing_key()),
            audit_public_key: self.node.audit().public_key().to_vec(),
            signed_sealing_key: Some(self.node.signed_sealing_key()),
        }))
    }

    async fn ingest(
        &self,
        request: Request<RegionalNodeIngestRequest>,
    ) -> Result<Response<RegionalNodeIngestResponse>, Status> {
        let req = request.into_inner();
        let envelope = req
            .envelope
            .ok_or_else(|| Violations::one("envelope", "required"))?;
        let results = self.node.ingest(&req.tenant_id, envelope).await?;
        Ok(Response::new(RegionalNodeIngestResponse { results }))
    }

    async fn aggregate(
        &self,
        request: Request<RegionalNodeAggregateRequest>,
    ) -> Result<Response<RegionalNodeAggregateResponse>, Status> {
        let req = request.into_inner();
        let spec = AggregateSpec::from_query(req.query.as_ref(), "query")?;
        Ok(Response::new(
            self.node.aggregate(&req.tenant_id, spec).await?,
        ))
    }

    type QueryRecordsStream =
        Pin<Box<dyn Stream<Item = Result<RegionalNodeQueryRecordsResponse, Status>> + Send>>;

    async fn query_records(
        &self,
        request: Request<RegionalNodeQueryRecordsRequest>,
    ) -> Result<Response<Self::QueryRecordsStream>, Status> {
        let req = request.into_inner();
        let spec = RecordSpec::from_query(req.query.as_ref(), "query")?;
        let rx = self.node.query_records(&req.tenant_id, spec)?;
        let stream = ReceiverStream::new(rx).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn check_contact_permission(
        &self,
        request: Request<RegionalNodeCheckContactPermissionRequest>,
    ) -> Result<Response<RegionalNodeCheckContactPermissionResponse>, Status> {
        let q = ConsentQuestion::from_check(&inner(request.into_inner().request)?)?;
        let response = self.node.check_contact_permission(q).await?;
        Ok(Response::new(RegionalNodeCheckContactPermissionResponse {
            response: Some(response),
        }))
    }

    async fn record_consent(
        &self,
        request: Request<RegionalNodeRecordConsentRequest>,
    ) -> Result<Response<RegionalNodeRecordConsentResponse>, Status> {
        let change = ConsentChange::from_record(&inner(request.into_inner().request)?)?;
        let Recorded {
            entry,
            state,
            token,
        } = self.node.record_consent(change).await?;
        let (confirmation_token, expires) = token.map_or((String::new(), None), |(t, at)| {
            (t, Some(domicile_proto::domain::whole_seconds(at)))
        });
        Ok(Response::new(RegionalNodeRecordConsentResponse {
            response: Some(RecordConsentResponse {
                entry: Some(entry),
                state: state as i32,
                confirmation_token,
                token_expires_at: expires,
            }),
        }))
    }

    async fn confirm_consent(
        &self,
        request: Request<RegionalNodeConfirmConsentRequest>,
    ) -> Result<Response<RegionalNodeConfirmConsentResponse>, Status> {
        let confirmation = Confirmation::parse(&inner(request.into_inner().request)?)?;
        let recorded = self.node.confirm_consent(confirmation).await?;
        Ok(Response::new(RegionalNodeConfirmConsentResponse {
            response: Some(ConfirmConsentResponse {
                entry: Some(recorded.entry),
                state: recorded.state as i32,
            }),
        }))
    }

    async fn withdraw_consent(
        &self,
        request: Request<RegionalNodeWithdrawConsentRequest>,
    ) -> Result<Response<RegionalNodeWithdrawConsentResponse>, Status> {
        let change = ConsentChange::from_withdraw(&inner(request.into_inner().request)?)?;
        let recorded = self.node.record_consent(change).await?;
        Ok(Response::new(RegionalNodeWithdrawConsentResponse {
            response: Some(WithdrawConsentResponse {
                entry: Some(recorded.entry),
                state: recorded.state as i32,
            }),
        }))
    }

    async fn get_consent(
        &self,
        request: Request<RegionalNodeGetConsentRequest>,
    ) -> Result<Response<RegionalNodeGetConsentResponse>, Status> {
        let q = ConsentQuestion::from_get(&inner(request.into_inner().request)?)?;
        let response = self.node.get_consent(q).await?;
        Ok(Response::new(RegionalNodeGetConsentResponse {
            response: Some(response),
        }))
    }

    async fn get_audit_checkpoint(
        &self,
        request: Request<RegionalNodeGetAuditCheckpointRequest>,
    ) -> Result<Response<RegionalNodeGetAuditCheckpointResponse>, Status> {
        let known_seq = request.into_inner().known_seq;
        let (checkpoint, known_hash) = self.node.witnessed_checkpoint(known_seq).await?;
        Ok(Response::new(RegionalNodeGetAuditCheckpointResponse {
            checkpoint: Some(checkpoint),
            known_hash,
        }))
    }

    async fn get_region_overview(
        &self,
        request: Request<RegionalNodeGetRegionOverviewRequest>,
    ) -> Result<Response<RegionalNodeGetRegionOverviewResponse>, Status> {
        let req = request.into_inner();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        let window = domicile_proto::domain::OverviewWindow::parse(
            req.since.as_ref(),
            req.bucket_seconds,
            self.node.now(),
        )?;
        let report = self
            .node
            .region_overview(tenant, window.since, window.bucket_seconds)
            .await?;
        Ok(Response::new(report))
    }

    async fn report_incident(
        &self,
        request: Request<RegionalNodeReportIncidentRequest>,
    ) -> Result<Response<RegionalNodeReportIncidentResponse>, Status> {
        let req = request.into_inner();
        let client = inner(req.request)?;
        let spec = IncidentSpec::parse(&client)?;
        let principal = self
            .node
            .authorize_dpo(spec.tenant.as_str(), &client)
            .await?;
        let region = principal::scope(
            Some(principal),
            self.node.report_incident(req.incident_id, spec),
        )
        .await?;
        Ok(Response::new(RegionalNodeReportIncidentResponse {
            region: Some(region),
        }))
    }

    async fn get_incident(
        &self,
        request: Request<RegionalNodeGetIncidentRequest>,
    ) -> Result<Response<RegionalNodeGetIncidentResponse>, Status> {
        let req = inner(request.into_inner().request)?;
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        if !is_incident_id(&req.incident_id) {
            return Err(
                Violations::one("incident_id", "must be \"inc-\" and 32 hex characters").into(),
            );
        }
        let incident = self.node.get_incident(tenant, req.incident_id).await?;
        Ok(Response::new(RegionalNodeGetIncidentResponse {
            incident: Some(incident),
        }))
    }

    async fn submit_subject_request(
        &self,
        request: Request<RegionalNodeSubmitSubjectRequestRequest>,
    ) -> Result<Response<RegionalNodeSubmitSubjectRequestResponse>, Status> {
        let client = inner(request.into_inner().request)?;
        let req = RightsRequest::parse(&client)?;
        // Access, portability and erasure act on the whole record: the DPO's signature, checked
        // here, not the gateway's word. Other kinds are checked when signed.
        let principal = if needs_dpo(req.kind) || client.dpo_signature.is_some() {
            Some(self.node.authorize_dpo(&client.tenant_id, &client).await?)
        } else {
            None
        };
        let receipt = principal::scope(principal, self.node.submit_subject_request(req)).await?;
        Ok(Response::new(RegionalNodeSubmitSubjectRequestResponse {
            response: Some(SubmitSubjectRequestResponse {
                receipts: vec![receipt],
                coverage: Vec::new(),
            }),
        }))
    }

    async fn get_subject_request(
        &self,
        request: Request<RegionalNodeGetSubjectRequestRequest>,
    ) -> Result<Response<RegionalNodeGetSubjectRequestResponse>, Status> {
        let req = inner(request.into_inner().request)?;
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        region_of_id(&req.request_id, "sr", "request_id")?;
        let receipt = self
            .node
            .get_subject_request(tenant, req.request_id)
            .await?;
        Ok(Response::new(RegionalNodeGetSubjectRequestResponse {
            response: Some(GetSubjectRequestResponse {
                receipt: Some(receipt),
            }),
        }))
    }

    async fn update_subject_request(
        &self,
        request: Request<RegionalNodeUpdateSubjectRequestRequest>,
    ) -> Result<Response<RegionalNodeUpdateSubjectRequestResponse>, Status> {
        let client = inner(request.into_inner().request)?;
        let update = CaseUpdate::parse(&client)?;
        // A step of a request that needed the DPO's signature needs it too: the gateway cannot
        // verify, refuse or extend on its own.
        let kind = self
            .node
            .subject_request_kind(update.tenant.clone(), update.request_id.clone())
            .await?;
        let principal = if needs_dpo(kind) || client.dpo_signature.is_some() {
            Some(self.node.authorize_dpo(&client.tenant_id, &client).await?)
        } else {
            None
        };
        let receipt = principal::scope(principal, self.node.update_subject_request(update)).await?;
        Ok(Response::new(RegionalNodeUpdateSubjectRequestResponse {
            response: Some(UpdateSubjectRequestResponse {
                receipt: Some(receipt),
            }),
        }))
    }

    async fn list_subject_requests(
        &self,
        request: Request<RegionalNodeListSubjectRequestsRequest>,
    ) -> Result<Response<RegionalNodeListSubjectRequestsResponse>, Status> {
        let wrapper = request.into_inner();
        let client = inner(wrapper.request)?;
        let query = CaseQuery::parse(&client)?;
        let start = if wrapper.after_request_id.is_empty() {
            PageStart::default()
        } else {
            region_of_id(&wrapper.after_request_id, "sr", "after_request_id")?;
            PageStart {
                due_at: wrapper.after_due_at,
                request_id: wrapper.after_request_id,
            }
        };
        let (receipts, counts) = self.node.list_subject_requests(query, start).await?;
        Ok(Response::new(RegionalNodeListSubjectRequestsResponse {
            receipts,
            counts: Some(counts),
        }))
    }

    type FetchSubjectRequestExportStream = Pin<
        Box<
            dyn Stream<Item = Result<RegionalNodeFetchSubjectRequestExportResponse, Status>> + Send,
        >,
    >;

    async fn fetch_subject_request_export(
        &self,
        request: Request<RegionalNodeFetchSubjectRequestExportRequest>,
    ) -> Result<Response<Self::FetchSubjectRequestExportStream>, Status> {
        let req = inner(request.into_inner().request)?;
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        region_of_id(&req.request_id, "sr", "request_id")?;
        let (export, expires_at) = self
            .node
            .fetch_subject_request_export(tenant, req.request_id)
            .await?;
        let messages = export_messages(export, expires_at)
            .into_iter()
            .map(|response| {
                Ok(RegionalNodeFetchSubjectRequestExportResponse {
                    response: Some(response),
                })
            });
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn place_legal_hold(
        &self,
        request: Request<RegionalNodePlaceLegalHoldRequest>,
    ) -> Result<Response<RegionalNodePlaceLegalHoldResponse>, Status> {
        let client = inner(request.into_inner().request)?;
        let spec = HoldSpec::parse(&client, self.node.now())?;
        let principal = self.node.authorize_dpo(&client.tenant_id, &client).await?;
        let hold_id = principal::scope(Some(principal), self.node.place_legal_hold(spec)).await?;
        Ok(Response::new(RegionalNodePlaceLegalHoldResponse {
            response: Some(PlaceLegalHoldResponse { hold_id }),
        }))
    }

    async fn release_legal_hold(
        &self,
        request: Request<RegionalNodeReleaseLegalHoldRequest>,
    ) -> Result<Response<RegionalNodeReleaseLegalHoldResponse>, Status> {
        let req = inner(request.into_inner().request)?;
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        region_of_id(&req.hold_id, "hold", "hold_id")?;
        let principal = self.node.authorize_dpo(tenant.as_str(), &req).await?;
        let erasure_completed = principal::scope(
            Some(principal),
            self.node.release_legal_hold(tenant, req.hold_id),
        )
        .await?;
        Ok(Response::new(RegionalNodeReleaseLegalHoldResponse {
            response: Some(ReleaseLegalHoldResponse { erasure_completed }),
        }))
    }
}
