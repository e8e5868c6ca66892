//! The node's listeners: the federation listener (`RegionalNode`, gRPC health, server
//! reflection) and the optional in-country listener (`LocalNode`, health).

use std::{future::Future, time::Duration};

use domicile_ops::{
    lifecycle::{incoming, not_serving, serve_and_drain},
    rpc::RpcLayer,
    tls::RequirePeer,
};
use domicile_proto::pb::{
    FILE_DESCRIPTOR_SET, local_node_server::LocalNodeServer,
    regional_node_server::RegionalNodeServer,
};
use tokio::net::TcpListener;

use crate::{api::local::LocalNodeService, api::service::RegionalNodeService, node::Node};

/// Signs an audit checkpoint every `audit_checkpoint_seconds` while the node serves, when the
/// log has moved (a checkpoint of an unchanged head is not repeated).
async fn checkpoint_loop(node: Node) {
    let period = Duration::from_secs(node.config().audit_checkpoint_seconds);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticker.tick().await;
        if let Err(e) = node.audit_checkpoint().await {
            tracing::warn!(error = %e, "periodic audit checkpoint failed");
        }
    }
}

/// Largest request the federation listener decodes: a full envelope of 1,000 records of at most
/// 64 KiB each, plus framing.
pub const MAX_MESSAGE_BYTES: usize = 80 * 1024 * 1024;

/// Server reflection over the contract and gRPC health, for grpcurl and grpcui.
fn reflection(
    service: &'static str,
) -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    reflection_builder(service)
        .build_v1()
        .expect("the embedded descriptor sets are valid")
}

/// The same in v1alpha, which grpcurl and grpcui releases still in use speak.
fn reflection_v1alpha(
    service: &'static str,
) -> tonic_reflection::server::v1alpha::ServerReflectionServer<
    impl tonic_reflection::server::v1alpha::ServerReflection,
> {
    reflection_builder(service)
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid")
}

/// Reflection listing only `service` (what the listener serves) and health.
fn reflection_builder(service: &'static str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
}

/// Applies retention once a day while the node serves (the first sweep a day after start).
async fn sweep_loop(node: Node) {
    let period = Duration::from_secs(node.config().retention_sweep_seconds);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticker.tick().await;
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.sweep()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "retention sweep failed"),
            Err(e) => tracing::warn!(error = %e, "retention sweep panicked"),
        }
    }
}

/// Services the node's listeners serve (and label their calls by).
const SERVICES: &[&str] = &[
    "domicile.v1.RegionalNode",
    "domicile.v1.LocalNode",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Serves the node on an already-bound listener until `shutdown` completes, then drains
/// (health `NOT_SERVING` for `shutdown_grace_ms`, then up to `drain_timeout_ms` for the calls in
/// flight).
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RegionalNodeServer<RegionalNodeService>>()
        .await;
    let reflection = reflection("domicile.v1.RegionalNode");
    let checkpoints = tokio::spawn(checkpoint_loop(node.clone()));
    let sweeps = tokio::spawn(sweep_loop(node.clone()));
    let drain = node.config().drain();
    // The principal header is the gateway's: trusted because mutual TLS pins the gateway's
    // identity (`pin` below refuses anyone else before a call reaches a service).
    let layer = RpcLayer::new(node.metrics().rpc.clone(), SERVICES).trusting_principal();
    let mut builder = tonic::transport::Server::builder();
    let pin = match node.federation_tls() {
        Some(tls) => {
            builder = builder.tls_config(tls.config.clone())?;
            tls.pin.clone()
        }
        None => RequirePeer::allow_all(),
    };
    let service = RegionalNodeServer::new(RegionalNodeService::new(node))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let served = serve_and_drain(
        |stop| {
            builder
                .layer(layer)
                .layer(pin)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha("domicile.v1.RegionalNode"))
                .add_service(service)
                .serve_with_incoming_shutdown(incoming(listener), stop)
        },
        shutdown,
        drain,
        not_serving::<RegionalNodeServer<RegionalNodeService>>(&health),
    )
    .await;
    checkpoints.abort();
    sweeps.abort();
    served
}

/// Serves the in-country `LocalNode` API on an already-bound listener until `shutdown`.
/// Bind it to an address only the region's own network reaches.
pub async fn serve_local(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<LocalNodeServer<LocalNodeService>>()
        .await;
    let (tls, access) = node.local_access();
    let (tls, access) = (tls.cloned(), access.clone());
    let mut builder = tonic::transport::Server::builder()
        // Limits like the gateway's: calls per connection and a deadline on each.
        .concurrency_limit_per_connection(LOCAL_CONCURRENCY)
        .timeout(LOCAL_TIMEOUT);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .layer(RpcLayer::new(node.metrics().rpc.clone(), SERVICES))
        .layer(access)
        .add_service(health_service)
        .add_service(reflection("domicile.v1.LocalNode"))
        .add_service(reflection_v1alpha("domicile.v1.LocalNode"))
        .add_service(
            LocalNodeServer::new(LocalNodeService::new(node))
                .max_decoding_message_size(LOCAL_MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// Calls in flight per connection on the in-country listener.
const LOCAL_CONCURRENCY: usize = 64;
/// The longest an in-country call may take.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request the in-country listener decodes.
const LOCAL_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
