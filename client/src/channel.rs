//! The connection to a gateway: plaintext or TLS, with the caller's bearer token on every call.

use std::task::{Context as TaskContext, Poll};

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

impl Service<Request<Body>> for GatewayChannel {
    type Response = Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            req.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        self.inner.call(req)
    }
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
