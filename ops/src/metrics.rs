//! Prometheus metrics: the per-RPC families every listener records, and the `/metrics` HTTP
//! endpoint.
//!
//! Labels name methods, regions, countries, purposes, tenants and status codes, never a
//! subject: no label value is ever taken from personal data.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

/// Latency buckets in seconds: 0.5 ms to about 16 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

/// A histogram family with [`latency_buckets`].
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new histogram family with [`latency_buckets`].
pub fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(|| Histogram::new(latency_buckets()))
}

/// Labels of a served call: the gRPC method (or `unknown` for a path no service serves, so
/// that a caller cannot invent label values) and its final status code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// e.g. `Aggregate`.
    pub method: String,
    /// The gRPC status code, e.g. `OK`, `INVALID_ARGUMENT`.
    pub code: String,
}

/// Labels of a served call's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// e.g. `Aggregate`.
    pub method: String,
}

/// Labels of a call to a region.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionCallLabels {
    /// Region id.
    pub region: String,
    /// e.g. `Aggregate`.
    pub method: String,
    /// The gRPC status code.
    pub code: String,
}

/// Labels of a region call's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionMethodLabels {
    /// Region id.
    pub region: String,
    /// e.g. `Aggregate`.
    pub method: String,
}

/// The families every gRPC listener records, registered as `<prefix>_rpc_*`.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    /// Finished calls by method and code.
    pub requests: Family<CallLabels, Counter>,
    /// Time from request to the end of the response (trailers), by method.
    pub duration: LatencyFamily<MethodLabels>,
    /// Calls being served now.
    pub in_flight: Gauge,
    /// Where each served call's span goes, when OTLP export is on.
    pub spans: Option<crate::otlp::SpanExporter>,
}

impl RpcMetrics {
    /// Registers the families in `registry` (which carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: latency_family(),
            in_flight: Gauge::default(),
            spans: None,
        };
        registry.register(
            "rpc_requests",
            "gRPC calls served, by method and final status code",
            m.requests.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Time from a gRPC call's arrival to the end of its response, by method",
            m.duration.clone(),
        );
        registry.register(
            "rpc_in_flight",
            "gRPC calls being served now",
            m.in_flight.clone(),
        );
        m
    }
}

/// The families of calls the gateway makes to regions, registered as `<prefix>_region_*`.
#[derive(Debug, Clone)]
pub struct RegionCallMetrics {
    /// Finished calls by region, method and code.
    pub requests: Family<RegionCallLabels, Counter>,
    /// Time from request to the end of the region's response, by region and method.
    pub duration: LatencyFamily<RegionMethodLabels>,
    /// Where each call's client span goes, when OTLP export is on.
    pub spans: Option<crate::otlp::SpanExporter>,
}

impl RegionCallMetrics {
    /// Registers the families in `registry` (which carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: latency_family(),
            spans: None,
        };
        registry.register(
            "region_requests",
            "Calls to regional nodes, by region, method and final status code",
            m.requests.clone(),
        );
        registry.register(
            "region_duration_seconds",
            "Time from a call to a region to the end of its answer, by region and method",
            m.duration.clone(),
        );
        m
    }
}

/// A source of exposition text: a registry, plus an optional refresh run before each scrape
/// (for values read from the outside, such as file sizes).
#[derive(Clone)]
pub struct Source {
    registry: Arc<Mutex<Registry>>,
    refresh: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").finish_non_exhaustive()
    }
}

impl Source {
    /// A source over `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(Mutex::new(registry)),
            refresh: None,
        }
    }

    /// Runs `refresh` before every scrape.
    pub fn with_refresh(mut self, refresh: impl Fn() + Send + Sync + 'static) -> Self {
        self.refresh = Some(Arc::new(refresh));
        self
    }

    /// The exposition text (OpenMetrics text format, which Prometheus reads).
    pub fn encode(&self) -> String {
        if let Some(refresh) = &self.refresh {
            refresh();
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// Content type of the exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How the metrics endpoint is protected (`[metrics_access]` in the gateway's and the nodes'
/// configuration): TLS with the endpoint's own certificate, and who may scrape: a bearer token
/// (`Authorization: Bearer …`), client certificates from a CA, or both.
///
/// ```toml
/// metrics_listen = "10.0.3.7:9464"
/// [metrics_access]
/// cert_file = "/etc/domicile/pki/metrics.pem"
/// key_file = "/etc/domicile/pki/metrics.key"
/// bearer_token_file = "/etc/domicile/metrics.token"   # and/or
/// client_ca_file = "/etc/domicile/pki/monitoring-ca.pem"
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsAccessConfig {
    /// The endpoint's certificate chain (PEM). With `key_file`: HTTPS.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// Scrapers must present a client certificate from this CA (PEM). Needs TLS.
    #[serde(default)]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// Scrapers must send `Authorization: Bearer <the file's content>` (at least 32
    /// characters; trailing whitespace ignored).
    #[serde(default)]
    pub bearer_token_file: Option<std::path::PathBuf>,
}

impl MetricsAccessConfig {
    /// Checks the combination for `listen`: a metrics endpoint off loopback needs TLS and a
    /// scraper check (token or client certificate). Errors name the option.
    pub fn validate(
        access: Option<&Self>,
        listen: Option<std::net::SocketAddr>,
    ) -> Result<(), (String, String)> {
        let Some(listen) = listen else {
            return Ok(());
        };
        let a = access.cloned().unwrap_or_default();
        if a.cert_file.is_some() != a.key_file.is_some() {
            return Err((
                "metrics_access.key_file".into(),
                "cert_file and key_file go together".into(),
            ));
        }
        if a.client_ca_file.is_some() && a.cert_file.is_none() {
            return Err((
                "metrics_access.client_ca_file".into(),
                "client certificates need TLS: set cert_file and key_file".into(),
            ));
        }
        if !listen.ip().is_loopback()
            && (a.cert_file.is_none()
                || (a.bearer_token_file.is_none() && a.client_ca_file.is_none()))
        {
            return Err((
                "metrics_access".into(),
                format!(
                    "metrics_listen {listen} is not a loopback address: set cert_file and \
                     key_file (TLS), and bearer_token_file or client_ca_file (who may scrape)"
                ),
            ));
        }
        Ok(())
    }
}

/// The loaded [`MetricsAccessConfig`]: the TLS acceptor and the token's digest.
#[derive(Clone, Default)]
pub struct MetricsAccess {
    tls: Option<tokio_rustls::TlsAcceptor>,
    token: Option<[u8; 32]>,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAccess")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.map(|_| "<redacted>"))
            .finish()
    }
}

impl MetricsAccess {
    /// Plain HTTP, no scraper check: only for a loopback endpoint (`domicile dev`, tests).
    pub fn open_loopback() -> Self {
        Self::default()
    }

    /// Loads `config` (`None`: plain HTTP, no check). Errors name the option and the file.
    pub fn load(config: Option<&MetricsAccessConfig>) -> Result<Self, String> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio_rustls::rustls;
        let Some(c) = config else {
            return Ok(Self::default());
        };
        let token = match &c.bearer_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("metrics_access.bearer_token_file: {}: {e}", path.display())
                })?;
                let token = text.trim_end();
                if token.len() < 32 {
                    return Err(
                        "metrics_access.bearer_token_file: the token must be at least 32 \
                         characters"
                            .into(),
                    );
                }
                Some(digest(token.as_bytes()))
            }
            None => None,
        };
        let tls = match (&c.cert_file, &c.key_file) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("metrics_access.cert_file: {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("metrics_access.key_file: {}: {e}", key.display()))?;
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("metrics_access: {e}"))?;
                let builder = match &c.client_ca_file {
                    Some(ca) => {
                        let mut roots = rustls::RootCertStore::empty();
                        for cert in CertificateDer::pem_file_iter(ca)
                            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                            .map_err(|e| {
                                format!("metrics_access.client_ca_file: {}: {e}", ca.display())
                            })?
                        {
                            roots.add(cert).map_err(|e| {
                                format!("metrics_access.client_ca_file: {}: {e}", ca.display())
                            })?;
                        }
                        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider,
                        )
                        .build()
                        .map_err(|e| format!("metrics_access.client_ca_file: {e}"))?;
                        builder.with_client_cert_verifier(verifier)
                    }
                    None => builder.with_no_client_auth(),
                };
                let mut server = builder
                    .with_single_cert(certs, key)
                    .map_err(|e| format!("metrics_access.cert_file: {e}"))?;
                server.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
            }
            _ => None,
        };
        Ok(Self { tls, token })
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        req.headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            // Digests compared: the time taken says nothing about the token's prefix.
            .is_some_and(|t| digest(t.as_bytes()) == *expected)
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Serves `GET <path>` for each `(path, source)` on `listener` until `shutdown` completes;
/// anything else is 404 (or 405 for another method). HTTP/1.1, over TLS and with the scraper
/// checks `access` asks for (401 without the bearer token).
pub async fn serve(
    listener: TcpListener,
    sources: BTreeMap<String, Source>,
    access: MetricsAccess,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let sources = Arc::new(sources);
    let access = Arc::new(access);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    continue;
                }
            },
        };
        let sources = sources.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let checked = access.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let sources = sources.clone();
                let access = checked.clone();
                async move {
                    if !access.authorised(&req) {
                        let mut r = Response::new(Full::new(Bytes::from_static(
                            b"a bearer token is required\n",
                        )));
                        *r.status_mut() = StatusCode::UNAUTHORIZED;
                        return Ok::<_, Infallible>(r);
                    }
                    Ok::<_, Infallible>(respond(&sources, &req))
                }
            });
            let http = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.max_buf_size(16 * 1024);
                b
            };
            let served = match &access.tls {
                Some(tls) => {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        tls.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => {
                            http.serve_connection(TokioIo::new(stream), service).await
                        }
                        _ => {
                            tracing::debug!("metrics connection: TLS handshake failed");
                            return;
                        }
                    }
                }
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn respond(sources: &BTreeMap<String, Source>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    let Some(source) = sources.get(req.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let mut r = Response::new(Full::new(Bytes::from(source.encode())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

/// Fetches `http://addr/path` with a minimal HTTP/1.1 client (for tests and `domicile dev`).
pub async fn scrape(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    scrape_with(addr, path, &[]).await
}

/// [`scrape`], sending `headers` too (e.g. `("authorization", "Bearer …")`).
pub async fn scrape_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A new metric of type `M`, registered in `registry` as `name` with `help`.
pub fn registered<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: Default + Clone + prometheus_client::registry::Metric,
{
    let m = M::default();
    registry.register(name, help, m.clone());
    m
}
