//! Pinned peer identities on mutual-TLS listeners.
//!
//! The TLS handshake already refuses a client without a certificate from the configured CA;
//! [`RequirePeer`] then refuses, before any handler runs, a client whose certificate is not
//! valid for one of the pinned DNS names (`PERMISSION_DENIED`). Health checks are exempt, so
//! that probes on the same listener keep working.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::{
    Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower_layer::Layer;
use tower_service::Service;

/// Whether `leaf` is valid for one of `names`.
pub fn valid_for(leaf: &CertificateDer<'_>, names: &[ServerName<'static>]) -> bool {
    webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| {
        names
            .iter()
            .any(|n| cert.verify_is_valid_for_subject_name(n).is_ok())
    })
}

/// Refuses calls whose client certificate is not valid for a pinned name.
#[derive(Debug, Clone)]
pub struct RequirePeer {
    /// `None`: every peer passes (a plaintext listener in the explicit insecure mode).
    names: Option<Arc<[ServerName<'static>]>>,
}

impl RequirePeer {
    /// Pins `names` (DNS names). Errors name the one that is not a DNS name.
    pub fn new(names: &[String]) -> Result<Self, String> {
        let names = names
            .iter()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|_| format!("{n:?} is not a DNS name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            names: Some(names.into()),
        })
    }

    /// Lets every call through: for a listener in the explicit insecure (plaintext) mode.
    pub fn allow_all() -> Self {
        Self { names: None }
    }
}

impl<S> Layer<S> for RequirePeer {
    type Service = RequirePeerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePeerService {
            inner,
            pinned: self.clone(),
        }
    }
}

/// The service [`RequirePeer`] makes.
#[derive(Debug, Clone)]
pub struct RequirePeerService<S> {
    inner: S,
    pinned: RequirePeer,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for RequirePeerService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(names) = &self.pinned.names else {
            return Box::pin(self.inner.call(req));
        };
        let health = req.uri().path().starts_with("/grpc.health.v1.Health/");
        let peer_ok = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().map(|c| valid_for(c, names)))
            .unwrap_or(false);
        if health || peer_ok {
            return Box::pin(self.inner.call(req));
        }
        tracing::warn!("refused a call from a client certificate that is not pinned");
        let refused = Status::permission_denied(
            "this listener serves only the pinned peer identity (mutual TLS)",
        )
        .into_http();
        Box::pin(std::future::ready(Ok(refused)))
    }
}
