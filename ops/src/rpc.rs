//! Per-call instrumentation, as tower middleware around gRPC over HTTP/2.
//!
//! - [`RpcLayer`] wraps a listener: each call gets a `tracing` span named `rpc` with its method
//!   and trace ids (continuing the caller's `traceparent`, or starting a trace), runs with that
//!   context as [`crate::trace::current`], and is counted and timed until its trailers.
//! - [`Instrumented`] wraps a client channel to one region: each call carries a child
//!   `traceparent` and is counted and timed per region.
//!
//! Only method names from a fixed list and status codes become labels. With OTLP export on
//! (the metrics' `spans`), each call's span also goes to the collector ([`crate::otlp`]).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::{counter::Counter, family::Family};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    metrics::{
        CallLabels, LatencyFamily, MethodLabels, RegionCallLabels, RegionCallMetrics,
        RegionMethodLabels, RpcMetrics,
    },
    otlp::{FinishedSpan, Kind},
    principal,
    trace::{self, TRACEPARENT, TraceContext},
};

/// The canonical names of gRPC status codes, by number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code name in a `grpc-status` header, if there is one.
fn code_of(headers: &HeaderMap) -> Option<&'static str> {
    let v = headers.get("grpc-status")?;
    let n: usize = v.to_str().ok()?.parse().ok()?;
    Some(CODES.get(n).copied().unwrap_or("UNKNOWN"))
}

/// The method of a gRPC path `/package.Service/Method` if the service is one of `services`,
/// else `unknown`.
fn method_of(path: &str, services: &[&'static str]) -> &'static str {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return "unknown";
    };
    if !services.contains(&service) {
        return "unknown";
    }
    // A static name is needed for a bounded label set: look it up rather than allocate.
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown")
}

/// The span name of a call to `path`: `package.Service/Method` for a served method, else
/// `unknown` (a caller cannot put its own text into a span name).
fn span_name(path: &str, services: &[&'static str]) -> String {
    match method_of(path, services) {
        "unknown" => "unknown".to_owned(),
        _ => path.trim_start_matches('/').to_owned(),
    }
}

/// Every method of the services Domicile serves (gateway, node, local node, health,
/// reflection).
const KNOWN_METHODS: &[&str] = &[
    "ListRegions",
    "GetRegionInfo",
    "Ingest",
    "Aggregate",
    "QueryRecords",
    "CheckContactPermission",
    "RecordConsent",
    "ConfirmConsent",
    "WithdrawConsent",
    "GetConsent",
    "GetAuditCheckpoint",
    "ReportIncident",
    "GetIncident",
    "SubmitSubjectRequest",
    "GetSubjectRequest",
    "UpdateSubjectRequest",
    "ListSubjectRequests",
    "FetchSubjectRequestExport",
    "PlaceLegalHold",
    "ReleaseLegalHold",
    "ListIncidentSubjects",
    "Check",
    "Watch",
    "ServerReflectionInfo",
];

/// Records one call's end: once, with the code from the trailers, the headers of a
/// trailers-only response, or `CANCELLED` when the response is dropped before its end.
struct Finish {
    start: Instant,
    span: tracing::Span,
    record: Box<dyn FnOnce(&'static str, f64) + Send + Sync>,
}

impl Finish {
    fn done(self, code: &'static str) {
        let seconds = self.start.elapsed().as_secs_f64();
        tracing::debug!(parent: &self.span, code, ms = seconds * 1000.0, "call finished");
        (self.record)(code, seconds);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call when its trailers pass (or when it is dropped).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        finish: Option<Finish>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(f) = this.project().finish.take() {
                f.done("CANCELLED");
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(f) = this.finish.take()
                {
                    f.done(code_of(trailers).unwrap_or("UNKNOWN"));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.finish.take() {
                    f.done("UNKNOWN");
                }
            }
            // A body that ends without trailers carries no gRPC status.
            Poll::Ready(None) => {
                if let Some(f) = this.finish.take() {
                    f.done("UNKNOWN");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps the response of a call: records it now when the headers already carry the status
/// (trailers-only), else when the body's trailers pass.
fn metered<B>(response: Response<B>, finish: Finish) -> Response<MeteredBody<B>> {
    let (parts, body) = response.into_parts();
    let finish = match code_of(&parts.headers) {
        Some(code) => {
            finish.done(code);
            None
        }
        None => Some(finish),
    };
    Response::from_parts(
        parts,
        MeteredBody {
            inner: body,
            finish,
        },
    )
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Calls `inner`, then meters the response with `finish` (or records `failed` when the call
/// fails before a response), inside `span`.
fn call_metered<F, RB, E>(
    fut: F,
    finish: Finish,
    failed: &'static str,
    context: Option<TraceContext>,
    span: tracing::Span,
) -> BoxFuture<Result<Response<MeteredBody<RB>>, E>>
where
    F: std::future::Future<Output = Result<Response<RB>, E>> + Send + 'static,
    RB: 'static,
    E: 'static,
{
    Box::pin(
        async move {
            match trace::scope(context, fut).await {
                Ok(response) => Ok(metered(response, finish)),
                Err(e) => {
                    finish.done(failed);
                    Err(e)
                }
            }
        }
        .instrument(span),
    )
}

/// Middleware for a gRPC listener; see the module documentation.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: RpcMetrics,
    services: Arc<[&'static str]>,
    trust_principal: bool,
}

impl RpcLayer {
    /// Instruments calls to `services` (full names, e.g. `domicile.v1.Gateway`), recording into
    /// `metrics`; calls to other paths are labelled `unknown`.
    pub fn new(metrics: RpcMetrics, services: &[&'static str]) -> Self {
        Self {
            metrics,
            services: services.into(),
            trust_principal: false,
        }
    }

    /// Runs each call as the principal its [`crate::principal::HEADER`] names (and records it
    /// in the span): only for a listener whose callers are pinned to the gateway's identity,
    /// which is the one that sets the header.
    pub fn trusting_principal(mut self) -> Self {
        self.trust_principal = true;
        self
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RpcLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

impl<S, B, RB> Service<Request<B>> for RpcService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_of(req.uri().path(), &self.layer.services);
        let parent = req
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| TraceContext::parse(v.as_bytes()));
        let context = parent.map_or_else(TraceContext::new_root, |p| p.child());
        let principal = if self.layer.trust_principal {
            req.headers()
                .get(principal::HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|p| Arc::<str>::from(principal::sanitize(p)))
        } else {
            None
        };
        // `principal` is filled here from the gateway's header, or later by the gateway's
        // authentication (never a personal value: a service or staff identity).
        let span = tracing::info_span!(
            "rpc",
            method,
            trace_id = %context.trace_id_hex(),
            span_id = %context.span_id_hex(),
            parent_span_id = parent.map(|p| p.span_id_hex()),
            principal = principal.as_deref(),
        );
        let metrics = self.layer.metrics.clone();
        metrics.in_flight.inc();
        let otlp = metrics.spans.as_ref().map(|_| {
            (
                span_name(req.uri().path(), &self.layer.services),
                std::time::SystemTime::now(),
            )
        });
        let finish = Finish {
            start: Instant::now(),
            span: span.clone(),
            record: Box::new(move |code, seconds| {
                metrics.in_flight.dec();
                record(&metrics.requests, &metrics.duration, method, code, seconds);
                if let (Some(exporter), Some((name, start))) = (&metrics.spans, otlp) {
                    exporter.record(FinishedSpan {
                        context,
                        parent: parent.map(|p| p.span_id),
                        name,
                        kind: Kind::Server,
                        start,
                        duration: std::time::Duration::from_secs_f64(seconds),
                        code,
                        attributes: Vec::new(),
                    });
                }
            }),
        };
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        call_metered(
            principal::scope(principal, fut),
            finish,
            "UNKNOWN",
            Some(context),
            span,
        )
    }
}

fn record(
    requests: &Family<CallLabels, Counter>,
    duration: &LatencyFamily<MethodLabels>,
    method: &str,
    code: &str,
    seconds: f64,
) {
    requests
        .get_or_create(&CallLabels {
            method: method.to_owned(),
            code: code.to_owned(),
        })
        .inc();
    duration
        .get_or_create(&MethodLabels {
            method: method.to_owned(),
        })
        .observe(seconds);
}

/// A client channel to one region, instrumented; see the module documentation.
#[derive(Debug, Clone)]
pub struct Instrumented<S> {
    inner: S,
    region: Arc<str>,
    metrics: RegionCallMetrics,
}

impl<S> Instrumented<S> {
    /// Wraps `inner`, the channel to `region`.
    pub fn new(inner: S, region: &str, metrics: RegionCallMetrics) -> Self {
        Self {
            inner,
            region: region.into(),
            metrics,
        }
    }
}

/// Services the gateway calls on a region.
const REGION_SERVICES: &[&str] = &["domicile.v1.RegionalNode", "grpc.health.v1.Health"];

impl<S, B, RB> Service<Request<B>> for Instrumented<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let method = method_of(req.uri().path(), REGION_SERVICES);
        let caller = trace::current();
        let context = caller.map_or_else(TraceContext::new_root, |c| c.child());
        let otlp = self.metrics.spans.as_ref().map(|_| {
            (
                span_name(req.uri().path(), REGION_SERVICES),
                std::time::SystemTime::now(),
            )
        });
        req.headers_mut().insert(
            TRACEPARENT,
            HeaderValue::try_from(context.to_string()).expect("a traceparent is ASCII"),
        );
        // Who the call acts for, for the node's audit log; sanitised to a header value.
        match principal::current().and_then(|p| HeaderValue::try_from(&*p).ok()) {
            Some(p) => {
                req.headers_mut().insert(principal::HEADER, p);
            }
            None => {
                req.headers_mut().remove(principal::HEADER);
            }
        }
        let span = tracing::debug_span!(
            "region_call",
            region = %self.region,
            method,
            trace_id = %context.trace_id_hex(),
            span_id = %context.span_id_hex(),
        );
        let metrics = self.metrics.clone();
        let region = self.region.clone();
        let finish = Finish {
            start: Instant::now(),
            span: span.clone(),
            record: Box::new(move |code, seconds| {
                metrics
                    .requests
                    .get_or_create(&RegionCallLabels {
                        region: region.to_string(),
                        method: method.to_owned(),
                        code: code.to_owned(),
                    })
                    .inc();
                metrics
                    .duration
                    .get_or_create(&RegionMethodLabels {
                        region: region.to_string(),
                        method: method.to_owned(),
                    })
                    .observe(seconds);
                if let (Some(exporter), Some((name, start))) = (&metrics.spans, otlp) {
                    exporter.record(FinishedSpan {
                        context,
                        parent: caller.map(|c| c.span_id),
                        name,
                        kind: Kind::Client,
                        start,
                        duration: std::time::Duration::from_secs_f64(seconds),
                        code,
                        attributes: vec![("domicile.region", region.to_string())],
                    });
                }
            }),
        };
        let fut = self.inner.call(req);
        // The context is already in the request's header.
        call_metered(fut, finish, "UNAVAILABLE", None, span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_served_services_are_unknown() {
        let services = ["domicile.v1.Gateway"];
        assert_eq!(
            method_of("/domicile.v1.Gateway/Aggregate", &services),
            "Aggregate"
        );
        assert_eq!(
            method_of("/domicile.v1.Gateway/Invented", &services),
            "unknown"
        );
        assert_eq!(method_of("/evil.Service/Aggregate", &services), "unknown");
        assert_eq!(method_of("/", &services), "unknown");
        assert_eq!(method_of("", &services), "unknown");
    }

    #[test]
    fn status_codes_by_number() {
        let mut h = HeaderMap::new();
        assert_eq!(code_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("3"));
        assert_eq!(code_of(&h), Some("INVALID_ARGUMENT"));
        h.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(code_of(&h), Some("UNKNOWN"));
    }
}
