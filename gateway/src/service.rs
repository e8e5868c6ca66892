//! The tonic adapter of the public `Gateway` API.

use domicile_proto::pb::{
    AggregateRequest, AggregateResponse, IngestRequest, IngestResponse, ListRegionsRequest,
    ListRegionsResponse, gateway_server,
};
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
}
