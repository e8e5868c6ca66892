//! The node's federation listener: `RegionalNode`, gRPC health and server reflection.

use std::future::Future;

use domicile_proto::pb::{FILE_DESCRIPTOR_SET, regional_node_server::RegionalNodeServer};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::{node::Node, service::RegionalNodeService};

/// Largest request the federation listener decodes: a full envelope of 1,000 records of at most
/// 64 KiB each, plus framing.
pub const MAX_MESSAGE_BYTES: usize = 80 * 1024 * 1024;

/// Serves the node on an already-bound listener until `shutdown` completes.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RegionalNodeServer<RegionalNodeService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let service = RegionalNodeServer::new(RegionalNodeService::new(node))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(
            // Small gRPC frames must not wait for Nagle's algorithm (40 ms with delayed ACKs).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
