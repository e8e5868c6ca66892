//! The gateway's public listener: `Gateway`, gRPC health and server reflection, with per-call
//! spans and metrics, background region probes, and a graceful drain on shutdown.

use std::{future::Future, time::Duration};

use domicile_ops::{
    lifecycle::{incoming, not_serving, serve_and_drain},
    rpc::RpcLayer,
};
use domicile_proto::pb::{FILE_DESCRIPTOR_SET, gateway_server::GatewayServer};
use tokio::net::TcpListener;

use crate::{
    api::service::{Admit, AsPrincipal, Authenticate, GatewayService},
    gateway::Gateway,
};

/// Why the gateway could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A TLS file named in `[tls]` cannot be read.
    #[error("{0}")]
    Tls(String),
}

/// Services the public listener serves (and labels its calls by).
const SERVICES: &[&str] = &[
    "domicile.v1.Gateway",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Probes every region every `probe_interval_ms` (as configured at each round, so a reload
/// applies), keeping health, keys and the `region_up` metric current.
async fn probe_loop(gateway: Gateway) {
    loop {
        let config = gateway.config();
        tokio::time::sleep(Duration::from_millis(config.probe_interval_ms)).await;
        gateway
            .directory()
            .probe_all(Duration::from_millis(config.probe_timeout_ms))
            .await;
    }
}

/// Serves the gateway on an already-bound listener until `shutdown` completes, then drains
/// (health `NOT_SERVING` for `shutdown_grace_ms`, then up to `drain_timeout_ms` for the calls in
/// flight).
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<GatewayService>>().await;
    // Reflection in both versions: grpcurl and grpcui releases still in use speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // List what this listener serves, not every service of the contract.
            .with_service_name("domicile.v1.Gateway")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    let drain = gateway.config().drain();
    let mut builder = tonic::transport::Server::builder();
    match gateway.config().server_tls() {
        Ok(Some(tls)) => builder = builder.tls_config(tls)?,
        Ok(None) => {}
        Err(e) => return Err(ServeError::Tls(e)),
    }
    let layer = RpcLayer::new(gateway.metrics().rpc.clone(), SERVICES);
    let probes = tokio::spawn(probe_loop(gateway.clone()));
    let witness = tokio::spawn(crate::calls::audit::witness_loop(gateway.clone()));
    let service = tonic::service::interceptor::InterceptedService::new(
        AsPrincipal(Admit::new(
            GatewayServer::new(GatewayService::new(gateway.clone()))
                .max_decoding_message_size(gateway.config().limits.max_message_bytes),
            gateway.clone(),
        )),
        Authenticate(gateway.clone()),
    );
    let served = serve_and_drain(
        |stop| {
            builder
                .layer(layer)
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming(listener), stop)
        },
        shutdown,
        drain,
        not_serving::<GatewayServer<GatewayService>>(&health),
    )
    .await;
    probes.abort();
    witness.abort();
    Ok(served?)
}
