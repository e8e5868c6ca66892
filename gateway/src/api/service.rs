//! The tonic adapter of the public `Gateway` API.

use std::pin::Pin;

use domicile_proto::pb::{
    AggregateRequest, AggregateResponse, CheckContactPermissionRequest,
    CheckContactPermissionResponse, ConfirmConsentRequest, ConfirmConsentResponse,
    FetchSubjectRequestExportRequest, FetchSubjectRequestExportResponse, GetAuditCheckpointRequest,
    GetAuditCheckpointResponse, GetConsentRequest, GetConsentResponse, GetIncidentRequest,
    GetIncidentResponse, GetOverviewRequest, GetOverviewResponse, GetSubjectRequestRequest,
    GetSubjectRequestResponse, IngestRequest, IngestResponse, ListFollowUpsRequest,
    ListFollowUpsResponse, ListRegionsRequest, ListRegionsResponse, ListSubjectRequestsRequest,
    ListSubjectRequestsResponse, OpenFollowUpRequest, OpenFollowUpResponse, PlaceLegalHoldRequest,
    PlaceLegalHoldResponse, Purpose, QueryRecordsRequest, QueryRecordsResponse,
    RecordConsentRequest, RecordConsentResponse, ReleaseLegalHoldRequest, ReleaseLegalHoldResponse,
    ReportIncidentRequest, ReportIncidentResponse, SubjectRequestKind, SubmitSubjectRequestRequest,
    SubmitSubjectRequestResponse, UpdateSubjectRequestRequest, UpdateSubjectRequestResponse,
    WithdrawConsentRequest, WithdrawConsentResponse, gateway_server,
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    api::budget::{Budgeted, Reservation},
    auth::{Caller, Operation},
    deadline,
    gateway::Gateway,
    limits::Admission,
};

/// Admits every call under the limits ([`crate::limits`]) before its body is read: a caller
/// over its tenant's rate or concurrency, or any caller while the gateway sheds load, is
/// refused from the headers alone, so the refused request's body (up to
/// `limits.max_message_bytes`) is never buffered nor decoded. Sits inside [`Authenticate`],
/// since the limits are per authenticated tenant (without authentication every caller shares
/// one budget: keying on the unchecked `tenant_id` would let a caller grow the limiter's
/// tables without bound). The admission is held until the response's body ends, so a records
/// stream keeps its concurrency slot for as long as it streams. An admitted call's request
/// then reserves its size from the gateway's request budget ([`crate::api::budget`]) before
/// its body is read, and keeps it as long.
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    gateway: Gateway,
}

impl<S> Admit<S> {
    /// Admits the calls to `inner` under `gateway`'s limits in force.
    pub fn new(inner: S, gateway: Gateway) -> Self {
        Self { inner, gateway }
    }
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Admit<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let tenant = req
            .extensions()
            .get::<Caller>()
            .map_or("", |c| c.tenant.as_str());
        let limiter = self.gateway.limiter();
        match limiter.admit(tenant) {
            // Answered now; the body is dropped unread, and the connection's flow control
            // stops the client from sending the rest.
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            Ok(admission) => {
                // The request's size is reserved before its body is read, and the reservation
                // is kept with the admission until the response ends.
                let reservation = Reservation::default();
                let req = req.map(|body| {
                    tonic::body::Body::new(Budgeted::new(
                        body,
                        limiter.request_budget(),
                        limiter.max_message_bytes(),
                        reservation.clone(),
                    ))
                });
                let response = self.inner.call(req);
                Box::pin(async move {
                    Ok(response.await?.map(|body| {
                        tonic::body::Body::new(Admitted {
                            body,
                            _admission: (admission, reservation),
                        })
                    }))
                })
            }
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Admit<S> {
    const NAME: &'static str = S::NAME;
}

/// A response body that holds its call's admission and its request's reservation until it
/// ends.
struct Admitted {
    body: tonic::body::Body,
    _admission: (Admission, Reservation),
}

impl http_body::Body for Admitted {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Access, portability and erasure act on a person's whole record: only the DPO may ask.
fn needs_dpo(kind: SubjectRequestKind) -> bool {
    domicile_proto::rights::needs_dpo(kind)
}

/// Authenticates every call with the gateway's authenticator in force (so a reload that
/// rotates keys applies at once): the [`Caller`] goes into the request's extensions for the
/// handler's authorisation. Without one (the explicit insecure mode) calls pass unauthenticated.
#[derive(Debug, Clone)]
pub struct Authenticate(pub Gateway);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(auth) = self.0.authenticator() {
            let caller = auth.authenticate(&request)?;
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

/// Runs each call as its caller's principal ([`domicile_ops::principal`]): the regions it calls
/// receive it for their audit logs, and the call's span records it. Sits inside
/// [`Authenticate`], which put the [`Caller`] in the request's extensions; without
/// authentication (the explicit insecure mode) the principal is `anonymous`.
#[derive(Debug, Clone)]
pub struct AsPrincipal<S>(pub S);

impl<S, B> tower_service::Service<http::Request<B>> for AsPrincipal<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let principal: std::sync::Arc<str> = match req.extensions().get::<Caller>() {
            Some(c) => domicile_ops::principal::sanitize(&c.id).into(),
            None => "anonymous".into(),
        };
        tracing::Span::current().record("principal", &*principal);
        Box::pin(domicile_ops::principal::scope(
            Some(principal),
            self.0.call(req),
        ))
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AsPrincipal<S> {
    const NAME: &'static str = S::NAME;
}

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

    /// Authorises the caller: tenant, purpose, operation, DPO authority (the limits were
    /// applied before the body was read, by [`Admit`]).
    fn authorize<T>(
        &self,
        request: &Request<T>,
        op: Operation,
        tenant: Option<&str>,
        purpose: Option<Purpose>,
        needs_dpo: bool,
    ) -> Result<(), Status> {
        match request.extensions().get::<Caller>() {
            Some(c) => c.authorize(op, tenant, purpose, needs_dpo),
            // The interceptor authenticates every call when authentication is on.
            None if self.gateway.authenticator().is_some() => {
                Err(Status::unauthenticated("missing credentials"))
            }
            None => Ok(()),
        }
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
        self.authorize(&request, Operation::Regions, None, None, false)?;
        let regions = self.gateway.list_regions(deadline).await;
        Ok(Response::new(ListRegionsResponse { regions }))
    }

    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Ingest,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
        let response = self.gateway.ingest(request.into_inner(), deadline).await?;
        Ok(Response::new(response))
    }

    async fn aggregate(
        &self,
        request: Request<AggregateRequest>,
    ) -> Result<Response<AggregateResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Aggregate,
            Some(request.get_ref().tenant_id.as_str()),
            request.get_ref().query.as_ref().map(|q| q.purpose()),
            false,
        )?;
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
        self.authorize(
            &request,
            Operation::Records,
            Some(request.get_ref().tenant_id.as_str()),
            request.get_ref().query.as_ref().map(|q| q.purpose()),
            false,
        )?;
        let rx = self.gateway.query_records(request.into_inner(), deadline)?;
        // The admission (concurrency slot) lasts as long as the stream: `Admit` holds it
        // until the response's body ends.
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn check_contact_permission(
        &self,
        request: Request<CheckContactPermissionRequest>,
    ) -> Result<Response<CheckContactPermissionResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Consent,
            Some(request.get_ref().tenant_id.as_str()),
            Some(request.get_ref().purpose()),
            false,
        )?;
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
        self.authorize(
            &request,
            Operation::Consent,
            Some(request.get_ref().tenant_id.as_str()),
            Some(request.get_ref().purpose()),
            false,
        )?;
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
        self.authorize(
            &request,
            Operation::Consent,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
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
        self.authorize(
            &request,
            Operation::Consent,
            Some(request.get_ref().tenant_id.as_str()),
            Some(request.get_ref().purpose()),
            false,
        )?;
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
        self.authorize(
            &request,
            Operation::Consent,
            Some(request.get_ref().tenant_id.as_str()),
            Some(request.get_ref().purpose()),
            false,
        )?;
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
        self.authorize(&request, Operation::Audit, None, None, false)?;
        let response = self
            .gateway
            .get_audit_checkpoint(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_overview(
        &self,
        request: Request<GetOverviewRequest>,
    ) -> Result<Response<GetOverviewResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Admin,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
        let response = self
            .gateway
            .overview(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn report_incident(
        &self,
        request: Request<ReportIncidentRequest>,
    ) -> Result<Response<ReportIncidentResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Incident,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
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
        self.authorize(
            &request,
            Operation::Incident,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
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
        self.authorize(
            &request,
            Operation::Rights,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            needs_dpo(request.get_ref().kind()),
        )?;
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
        self.authorize(
            &request,
            Operation::Rights,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
        let response = self
            .gateway
            .get_subject_request(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn update_subject_request(
        &self,
        request: Request<UpdateSubjectRequestRequest>,
    ) -> Result<Response<UpdateSubjectRequestResponse>, Status> {
        let deadline = self.deadline(&request);
        // The node decides whether the step needs the DPO's signature (it knows the request's
        // kind); a signed step must come from a DPO token here too.
        self.authorize(
            &request,
            Operation::Rights,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            request.get_ref().dpo_signature.is_some(),
        )?;
        let response = self
            .gateway
            .update_subject_request(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    type FetchSubjectRequestExportStream =
        Pin<Box<dyn Stream<Item = Result<FetchSubjectRequestExportResponse, Status>> + Send>>;

    async fn fetch_subject_request_export(
        &self,
        request: Request<FetchSubjectRequestExportRequest>,
    ) -> Result<Response<Self::FetchSubjectRequestExportStream>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Rights,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
        let stream = self
            .gateway
            .fetch_subject_request_export(request.into_inner(), deadline)
            .await?;
        // Relayed as it comes: a message at a time, never the whole export.
        let relayed = stream.map(|item| {
            item.and_then(|m| {
                m.response
                    .ok_or_else(|| Status::internal("the region's answer was empty"))
            })
        });
        Ok(Response::new(Box::pin(relayed)))
    }

    async fn list_subject_requests(
        &self,
        request: Request<ListSubjectRequestsRequest>,
    ) -> Result<Response<ListSubjectRequestsResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Rights,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
        let response = self
            .gateway
            .list_subject_requests(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn place_legal_hold(
        &self,
        request: Request<PlaceLegalHoldRequest>,
    ) -> Result<Response<PlaceLegalHoldResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::Rights,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            true,
        )?;
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
        self.authorize(
            &request,
            Operation::Rights,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            true,
        )?;
        let response = self
            .gateway
            .release_legal_hold(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn open_follow_up(
        &self,
        request: Request<OpenFollowUpRequest>,
    ) -> Result<Response<OpenFollowUpResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::FollowUp,
            Some(request.get_ref().tenant_id.as_str()),
            Some(request.get_ref().purpose()),
            false,
        )?;
        let response = self
            .gateway
            .open_follow_up(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn list_follow_ups(
        &self,
        request: Request<ListFollowUpsRequest>,
    ) -> Result<Response<ListFollowUpsResponse>, Status> {
        let deadline = self.deadline(&request);
        self.authorize(
            &request,
            Operation::FollowUp,
            Some(request.get_ref().tenant_id.as_str()),
            None,
            false,
        )?;
        let response = self
            .gateway
            .list_follow_ups(request.into_inner(), deadline)
            .await?;
        Ok(Response::new(response))
    }
}
