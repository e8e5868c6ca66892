//! The tonic adapter of the federation API: converts wire messages and delegates to [`Node`].

use std::pin::Pin;

use domicile_proto::{
    domain::{AggregateSpec, RecordSpec},
    error::Violations,
    pb::{
        GetRegionInfoRequest, GetRegionInfoResponse, RegionalNodeAggregateRequest,
        RegionalNodeAggregateResponse, RegionalNodeIngestRequest, RegionalNodeIngestResponse,
        RegionalNodeQueryRecordsRequest, RegionalNodeQueryRecordsResponse,
        regional_node_server::RegionalNode,
    },
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::Node;

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
    async fn get_region_info(
        &self,
        _request: Request<GetRegionInfoRequest>,
    ) -> Result<Response<GetRegionInfoResponse>, Status> {
        let config = self.node.config();
        Ok(Response::new(GetRegionInfoResponse {
            region_id: config.region_id.clone(),
            countries: config.countries.clone(),
            sealing_key: Some(self.node.sealing_key()),
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
}
