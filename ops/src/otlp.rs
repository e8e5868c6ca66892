//! OTLP export of the RPC spans to the operator's collector (Jaeger, Tempo, an OpenTelemetry
//! Collector), over gRPC. Off unless `[otlp]` names an endpoint.
//!
//! Each listener's [`crate::rpc::RpcLayer`] reports a server span per call, and the gateway's
//! [`crate::rpc::Instrumented`] channel a client span per call to a region; both carry the W3C
//! trace context the calls already propagate, so the gateway's span, its call to a region and
//! the node's span are one trace at the collector. A span names the RPC, its status code, the
//! service and the region: never a tenant's data, a subject, a principal or a request field.
//!
//! Spans are queued (bounded: when the collector is slow, spans are dropped and counted, and
//! calls never wait) and sent in batches by a task started with the first span.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::trace::TraceContext;

/// Where spans go (`[otlp]` in the gateway's and the nodes' configuration).
///
/// ```toml
/// [otlp]
/// endpoint = "http://otel-collector.monitoring:4317"   # OTLP/gRPC
/// ca_file = "/etc/domicile/pki/collector-ca.pem"       # with an https:// endpoint
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// The CA that issued the collector's certificate (PEM), for an `https://` endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The longest a finished span waits before it is sent, in milliseconds. Default 1000,
    /// 10 to 60000.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
}

fn default_flush_ms() -> u64 {
    1000
}

impl OtlpConfig {
    /// Checks the endpoint's form; errors name the option.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let https = self.endpoint.starts_with("https://");
        if !(https || self.endpoint.starts_with("http://"))
            || self.endpoint.parse::<http::Uri>().is_err()
        {
            return Err((
                "otlp.endpoint".into(),
                "must be an http:// or https:// URL of an OTLP/gRPC receiver".into(),
            ));
        }
        if self.ca_file.is_some() && !https {
            return Err((
                "otlp.ca_file".into(),
                "only with an https:// endpoint".into(),
            ));
        }
        if !(10..=60_000).contains(&self.flush_ms) {
            return Err(("otlp.flush_ms".into(), "must be 10 to 60000".into()));
        }
        Ok(())
    }
}

/// Whether a span served a call or made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call this process served.
    Server,
    /// A call this process made (the gateway to a region).
    Client,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// Its trace and span ids.
    pub context: TraceContext,
    /// The span it is a child of, if any.
    pub parent: Option<[u8; 8]>,
    /// `package.Service/Method`, or `unknown`.
    pub name: String,
    /// Server or client.
    pub kind: Kind,
    /// When it started.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The final gRPC status code, e.g. `OK`.
    pub code: &'static str,
    /// Further attributes: names and values chosen by this crate, never request data.
    pub attributes: Vec<(&'static str, String)>,
}

/// Most spans waiting to be sent; more are dropped (and counted).
const QUEUE: usize = 8192;
/// Most spans in one export request.
const BATCH: usize = 512;

/// A handle that queues finished spans for the collector. Cheap to clone.
#[derive(Clone)]
pub struct SpanExporter {
    tx: mpsc::Sender<FinishedSpan>,
    /// The receiving side and what the sending task needs, until the first span starts it.
    pending: Arc<Mutex<Option<Worker>>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for SpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanExporter")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Worker {
    rx: mpsc::Receiver<FinishedSpan>,
    endpoint: tonic::transport::Endpoint,
    resource: Resource,
    flush: Duration,
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

impl SpanExporter {
    /// An exporter to `config`'s collector for the service `service` (e.g. `domicile-node`),
    /// with resource attributes `resource` (e.g. the region). Nothing connects until the
    /// first span.
    pub fn new(
        config: &OtlpConfig,
        service: &str,
        resource: &[(&str, &str)],
    ) -> Result<Self, String> {
        config
            .validate()
            .map_err(|(path, message)| format!("{path}: {message}"))?;
        let mut endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| format!("otlp.endpoint: {e}"))?
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &config.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("otlp.ca_file: {}: {e}", ca.display()))?;
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                )
                .map_err(|e| format!("otlp.ca_file: {e}"))?;
        }
        let mut attributes = vec![
            kv("service.name", service),
            kv("service.version", env!("CARGO_PKG_VERSION")),
        ];
        attributes.extend(resource.iter().map(|(k, v)| kv(k, *v)));
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Self {
            tx,
            pending: Arc::new(Mutex::new(Some(Worker {
                rx,
                endpoint,
                resource: Resource {
                    attributes,
                    ..Default::default()
                },
                flush: Duration::from_millis(config.flush_ms),
            }))),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues `span` (dropping it when the queue is full). Called on a Tokio runtime: the
    /// first call starts the sending task there.
    pub fn record(&self, span: FinishedSpan) {
        if let Some(worker) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            tokio::spawn(worker.run(self.dropped.clone()));
        }
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Worker {
    async fn run(mut self, dropped: Arc<AtomicU64>) {
        let mut client = TraceServiceClient::new(self.endpoint.connect_lazy());
        let mut failing = false;
        loop {
            let Some(first) = self.rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.flush;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(self.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "domicile".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans: batch.into_iter().map(to_otlp).collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            match client.export(request).await {
                Ok(_) => {
                    if failing {
                        tracing::info!("OTLP export: the collector accepts spans again");
                    }
                    failing = false;
                }
                Err(status) => {
                    dropped.fetch_add(n, Ordering::Relaxed);
                    // Once per outage, not once per batch.
                    if !failing {
                        tracing::warn!(code = ?status.code(), "OTLP export failed; spans are dropped until the collector answers");
                    }
                    failing = true;
                }
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn to_otlp(span: FinishedSpan) -> Span {
    let mut attributes = vec![
        kv("rpc.system", "grpc"),
        kv("rpc.grpc.status_code", span.code),
    ];
    if let Some((service, method)) = span.name.split_once('/') {
        attributes.push(kv("rpc.service", service));
        attributes.push(kv("rpc.method", method));
    }
    attributes.extend(span.attributes.into_iter().map(|(k, v)| kv(k, v)));
    let start = unix_nanos(span.start);
    Span {
        trace_id: span.context.trace_id.to_vec(),
        span_id: span.context.span_id.to_vec(),
        parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(span.context.flags),
        name: span.name,
        kind: match span.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start
            .saturating_add(u64::try_from(span.duration.as_nanos()).unwrap_or(u64::MAX)),
        attributes,
        status: Some(Status {
            code: if span.code == "OK" {
                StatusCode::Ok
            } else {
                StatusCode::Error
            } as i32,
            message: if span.code == "OK" {
                String::new()
            } else {
                span.code.to_owned()
            },
        }),
        ..Default::default()
    }
}
