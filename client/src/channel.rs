//! The connection to a gateway: plaintext or TLS, with the caller's bearer token on every call.

use std::{
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use anyhow::Context;
use domicile_proto::pb::gateway_client::GatewayClient;
use http::{HeaderValue, Request, Response, header::AUTHORIZATION};
use tonic::{
    body::Body,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tower_service::Service;

/// The generated client over a [`GatewayChannel`].
pub type Gateway = GatewayClient<GatewayChannel>;

/// How to reach a gateway.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// A bearer JWT sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed the gateway's certificate: connect with TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the gateway's certificate must be valid for (default: the address's host).
    pub domain: Option<String>,
    /// A client certificate and key (PEM), for gateways that authenticate callers by
    /// certificate.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A channel that adds the caller's `authorization` header to every request. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayChannel {
    inner: Channel,
    authorization: Option<HeaderValue>,
}

/// Boxed errors, as a gRPC client accepts them.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Request<Body>> for GatewayChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            req.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        let call = self.inner.call(req);
        Box::pin(async move { call.await.map_err(going_away) })
    }
}

/// A call the gateway's connection dropped as it went away becomes `UNAVAILABLE`, as the
/// gRPC spec has it for a server that stops. A gateway that drains to stop sends HTTP/2
/// `GOAWAY`: a call that crossed it fails with `GOAWAY` (which tonic reports as `INTERNAL`,
/// reading its `NO_ERROR` reason as a protocol violation), and a call still queued for the
/// connection when it closed is given back unsent (which tonic reports as `CANCELLED`, as if
/// the caller had cancelled it). Both tell a caller not to retry a call it should retry.
/// Every other error is kept.
fn going_away(e: tonic::transport::Error) -> BoxError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && h2.is_go_away()
            && h2.is_remote()
        {
            return Box::new(tonic::Status::unavailable(format!(
                "the gateway closed the connection (HTTP/2 GOAWAY, {:?}) before answering; \
                 retry with backoff",
                h2.reason()
            )));
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return Box::new(tonic::Status::unavailable(
                "the connection to the gateway closed before the call was sent; retry with backoff",
            ));
        }
        source = err.source();
    }
    Box::new(e)
}

/// Connects to the gateway at `addr` (`host:port`) as `options` say.
pub async fn connect_with(addr: &str, options: &ConnectOptions) -> anyhow::Result<Gateway> {
    let scheme = if options.ca_pem.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
    if let Some(ca) = &options.ca_pem {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(domain) = &options.domain {
            tls = tls.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &options.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let inner = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to the gateway at {addr}"))?;
    let authorization = match &options.token {
        Some(t) => {
            let mut v = HeaderValue::try_from(format!("Bearer {t}"))
                .context("the token is not a valid header value")?;
            // Keeps the token out of HTTP/2 header compression tables and debug output.
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    Ok(GatewayClient::new(GatewayChannel {
        inner,
        authorization,
    })
    .max_decoding_message_size(64 * 1024 * 1024))
}
