//! The in-country `LocalNode` API: the only place a node returns personal data in plaintext.
//! Served on its own listener (`local_listen`), never through the gateway.
//!
//! Off loopback it is mutual TLS with the region's own CA (`[local_tls]`, apart from the
//! gateway's), and [`LocalAccess`] (its tower layer here) admits only the callers named in `[[local_principals]]`,
//! each to the methods of its role; every call then runs as the principal
//! `local:<identity>/<role>`, which the audit entries it causes name.

use domicile_proto::{
    domain::{AggregateSpec, TenantId, is_incident_id},
    error::Violations,
    pb::{
        ListIncidentSubjectsRequest, ListIncidentSubjectsResponse, LocalNodeAggregateRequest,
        LocalNodeAggregateResponse, LocalNodeIngestRequest, LocalNodeIngestResponse,
        LocalNodeIngestStreamRequest, LocalNodeIngestStreamResponse, LocalNodeListFollowUpsRequest,
        LocalNodeListFollowUpsResponse, RecordFollowUpOutcomeRequest,
        RecordFollowUpOutcomeResponse, ReidentifyFollowUpRequest, ReidentifyFollowUpResponse,
        local_node_server::LocalNode,
    },
};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Request, Response, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};

use crate::{
    config::LocalRole,
    node::{
        Node,
        local_access::{Admitted, LocalAccess},
    },
};

/// The roles that may call each `LocalNode` method. Health and reflection are open to every
/// admitted caller; a method not listed is refused to everyone.
pub fn roles_for(method: &str) -> &'static [LocalRole] {
    use LocalRole::*;
    match method {
        "ListIncidentSubjects" => &[RegionalDpo],
        "Aggregate" => &[RegionalDpo, Supervisor],
        "Ingest" | "IngestStream" => &[Integration],
        "ListFollowUps" => &[Agent, Supervisor, RegionalDpo],
        "ReidentifyFollowUp" | "RecordFollowUpOutcome" => &[Agent, Supervisor],
        _ => &[],
    }
}

impl<S> tower_layer::Layer<S> for LocalAccess {
    type Service = LocalAccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LocalAccessService {
            inner,
            access: self.clone(),
        }
    }
}

/// The service [`LocalAccess`] makes.
#[derive(Debug, Clone)]
pub struct LocalAccessService<S> {
    inner: S,
    access: LocalAccess,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for LocalAccessService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let leaf = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().cloned());
        let refuse = |status: Status| -> Self::Future {
            Box::pin(std::future::ready(Ok(status.into_http())))
        };
        let principal = match self.access.admit(leaf.as_ref()) {
            Admitted::Everyone => Arc::<str>::from("local:loopback"),
            Admitted::Nobody => {
                tracing::warn!(
                    "in-country listener: refused a caller that is not a local principal"
                );
                return refuse(Status::permission_denied(
                    "this certificate is not one of the region's local principals",
                ));
            }
            Admitted::As(role, principal) => {
                let open = path.starts_with("/grpc.health.v1.Health/")
                    || path.starts_with("/grpc.reflection.");
                let method = path
                    .strip_prefix("/domicile.v1.LocalNode/")
                    .unwrap_or_default();
                if !open && !roles_for(method).contains(&role) {
                    tracing::warn!(role = role.as_str(), "in-country listener: role refused");
                    return refuse(Status::permission_denied(format!(
                        "role {} may not call this method",
                        role.as_str()
                    )));
                }
                principal
            }
        };
        Box::pin(domicile_ops::principal::scope(
            Some(principal),
            self.inner.call(req),
        ))
    }
}

/// Serves `domicile.v1.LocalNode` for one [`Node`].
#[derive(Debug, Clone)]
pub struct LocalNodeService {
    node: Node,
}

impl LocalNodeService {
    /// Wraps a node.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// Batches of an `IngestStream` in flight (received, not yet answered): the client's sending
/// stops when the node is this far behind.
const STREAM_BATCHES_IN_FLIGHT: usize = 4;

#[tonic::async_trait]
impl LocalNode for LocalNodeService {
    type IngestStreamStream = std::pin::Pin<
        Box<
            dyn futures::Stream<Item = Result<LocalNodeIngestStreamResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn ingest(
        &self,
        request: Request<LocalNodeIngestRequest>,
    ) -> Result<Response<LocalNodeIngestResponse>, Status> {
        let req = request.into_inner();
        let results = self.node.ingest_plain(&req.tenant_id, req.records).await?;
        Ok(Response::new(LocalNodeIngestResponse { results }))
    }

    async fn ingest_stream(
        &self,
        request: Request<tonic::Streaming<LocalNodeIngestStreamRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        use futures::StreamExt;
        let mut batches = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BATCHES_IN_FLIGHT);
        let node = self.node.clone();
        // One batch at a time, in order; the caller's principal goes with the task.
        tokio::spawn(domicile_ops::trace::carried(async move {
            while let Some(batch) = batches.next().await {
                let answer = match batch {
                    Ok(b) => node
                        .ingest_plain(&b.tenant_id, b.records)
                        .await
                        .map(|results| LocalNodeIngestStreamResponse { results })
                        .map_err(Status::from),
                    Err(status) => Err(status),
                };
                let stop = answer.is_err();
                if tx.send(answer).await.is_err() || stop {
                    return;
                }
            }
        }));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_incident_subjects(
        &self,
        request: Request<ListIncidentSubjectsRequest>,
    ) -> Result<Response<ListIncidentSubjectsResponse>, Status> {
        let req = request.into_inner();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        if !is_incident_id(&req.incident_id) {
            return Err(
                Violations::one("incident_id", "must be \"inc-\" and 32 hex characters").into(),
            );
        }
        let (subjects, affected) = self.node.incident_subjects(tenant, req.incident_id).await?;
        Ok(Response::new(ListIncidentSubjectsResponse {
            subjects,
            affected,
        }))
    }

    async fn aggregate(
        &self,
        request: Request<LocalNodeAggregateRequest>,
    ) -> Result<Response<LocalNodeAggregateResponse>, Status> {
        let req = request.into_inner();
        TenantId::parse(&req.tenant_id, "tenant_id")?;
        let spec = AggregateSpec::from_query(req.query.as_ref(), "query")?;
        let groups = self.node.exact_aggregate(&req.tenant_id, spec).await?;
        Ok(Response::new(LocalNodeAggregateResponse { groups }))
    }

    async fn list_follow_ups(
        &self,
        request: Request<LocalNodeListFollowUpsRequest>,
    ) -> Result<Response<LocalNodeListFollowUpsResponse>, Status> {
        let req = request.into_inner();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        let follow_ups = self
            .node
            .list_follow_ups(tenant, Vec::new(), req.open_only, true)
            .await?;
        Ok(Response::new(LocalNodeListFollowUpsResponse { follow_ups }))
    }

    async fn reidentify_follow_up(
        &self,
        request: Request<ReidentifyFollowUpRequest>,
    ) -> Result<Response<ReidentifyFollowUpResponse>, Status> {
        let req = request.into_inner();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        let response = self
            .node
            .reidentify_follow_up(tenant, req.follow_up_id)
            .await?;
        Ok(Response::new(response))
    }

    async fn record_follow_up_outcome(
        &self,
        request: Request<RecordFollowUpOutcomeRequest>,
    ) -> Result<Response<RecordFollowUpOutcomeResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id");
        let outcome = domicile_proto::followup::outcome(req.outcome);
        let id = domicile_proto::followup::region_of_follow_up(&req.follow_up_id, "follow_up_id");
        for e in [
            tenant.as_ref().err(),
            outcome.as_ref().err(),
            id.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        {
            v.0.extend(e.0.iter().cloned());
        }
        let (Ok(tenant), Ok(outcome)) = (tenant, outcome) else {
            return Err(v.into());
        };
        v.into_result(())?;
        let follow_up = self
            .node
            .record_follow_up_outcome(tenant, req.follow_up_id, outcome)
            .await?;
        Ok(Response::new(RecordFollowUpOutcomeResponse {
            follow_up: Some(follow_up),
        }))
    }
}
