//! The tonic adapter of the public `Gateway` API.

use std::pin::Pin;

use domicile_proto::pb::{
    AggregateRequest, AggregateResponse, CheckContactPermissionRequest,
    CheckContactPermissionResponse, ConfirmConsentRequest, ConfirmConsentResponse,
    GetAuditCheckpointRequest, GetAuditCheckpointResponse, GetConsentRequest, GetConsentResponse,
    GetIncidentRequest, GetIncidentResponse, GetSubjectRequestRequest, GetSubjectRequestResponse,
    IngestRequest, IngestResponse, ListRegionsRequest, ListRegionsResponse, PlaceLegalHoldRequest,
    PlaceLegalHoldResponse, QueryRecordsRequest, QueryRecordsResponse, RecordConsentRequest,
    RecordConsentResponse, ReleaseLegalHoldRequest, ReleaseLegalHoldResponse,
    ReportIncidentRequest, ReportIncidentResponse, SubmitSubjectRequestRequest,
    SubmitSubjectRequestResponse, WithdrawConsentRequest, WithdrawConsentResponse, gateway_server,
};
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{deadline, gateway::Gateway};

/// Serves `domicile.v1.Gateway`.
#[derive(Debug, Clone)]
pub struct GatewayService {
    gateway: Gateway,
}

impl GatewayService {
    /// Wraps a gateway.
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }

    fn deadline<T>(&self, request: &Request<T>) -> std::time::Duration {
        let config = self.gateway.config();
        deadline::for_regions(deadline::of_request(
            request.metadata(),
            config.default_deadline(),
            config.max_deadline(),
        ))
    }
}

#[tonic::async_trait]
impl gateway_server::Gateway for GatewayService {
    async fn list_regions(
        &self,
        request: Request<ListRegionsRequest>,
    ) -> Result<Response<ListRegionsResponse>, Status> {
        let deadline = self.deadline(&request);
        let regions = self.gateway.list_regions(deadline).await;
        Ok(Response::new(ListRegionsResponse { regions }))
    }

    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self.gateway.ingest(request.into_inner(), deadline).await?;
        Ok(Response::new(response))
    }

    async fn aggregate(
        &self,
        request: Request<AggregateRequest>,
    ) -> Result<Response<AggregateResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .aggregate(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    type QueryRecordsStream =
        Pin<Box<dyn Stream<Item = Result<QueryRecordsResponse, Status>> + Send>>;

    async fn query_records(
        &self,
        request: Request<QueryRecordsRequest>,
    ) -> Result<Response<Self::QueryRecordsStream>, Status> {
        let deadline = self.deadline(&request);
        let rx = self.gateway.query_records(request.into_inner(), deadline)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn check_contact_permission(
        &self,
        request: Request<CheckContactPermissionRequest>,
    ) -> Result<Response<CheckContactPermissionResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .check_contact_permission(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<RecordConsentResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .record_consent(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn confirm_consent(
        &self,
        request: Request<ConfirmConsentRequest>,
    ) -> Result<Response<ConfirmConsentResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .confirm_consent(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn withdraw_consent(
        &self,
        request: Request<WithdrawConsentRequest>,
    ) -> Result<Response<WithdrawConsentResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .withdraw_consent(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_consent(
        &self,
        request: Request<GetConsentRequest>,
    ) -> Result<Response<GetConsentResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .get_consent(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_audit_checkpoint(
        &self,
        request: Request<GetAuditCheckpointRequest>,
    ) -> Result<Response<GetAuditCheckpointResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .get_audit_checkpoint(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn report_incident(
        &self,
        request: Request<ReportIncidentRequest>,
    ) -> Result<Response<ReportIncidentResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .report_incident(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_incident(
        &self,
        request: Request<GetIncidentRequest>,
    ) -> Result<Response<GetIncidentResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .get_incident(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn submit_subject_request(
        &self,
        request: Request<SubmitSubjectRequestRequest>,
    ) -> Result<Response<SubmitSubjectRequestResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .submit_subject_request(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_subject_request(
        &self,
        request: Request<GetSubjectRequestRequest>,
    ) -> Result<Response<GetSubjectRequestResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .get_subject_request(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn place_legal_hold(
        &self,
        request: Request<PlaceLegalHoldRequest>,
    ) -> Result<Response<PlaceLegalHoldResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .place_legal_hold(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn release_legal_hold(
        &self,
        request: Request<ReleaseLegalHoldRequest>,
    ) -> Result<Response<ReleaseLegalHoldResponse>, Status> {
        let deadline = self.deadline(&request);
        let response = self
            .gateway
            .release_legal_hold(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }
}
