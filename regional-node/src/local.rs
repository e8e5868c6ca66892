//! The in-country `LocalNode` API: the only place a node returns personal data in plaintext.
//! Served on its own listener (`local_listen`), never through the gateway.

use domicile_proto::{
    domain::{AggregateSpec, TenantId, is_incident_id},
    error::Violations,
    pb::{
        ListIncidentSubjectsRequest, ListIncidentSubjectsResponse, LocalNodeAggregateRequest,
        LocalNodeAggregateResponse, local_node_server::LocalNode,
    },
};
use tonic::{Request, Response, Status};

use crate::node::Node;

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

#[tonic::async_trait]
impl LocalNode for LocalNodeService {
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
}
