//! Traces to the operator's collector: with `[otlp]` set, the gateway and every node export
//! their RPC spans over OTLP/gRPC to a receiver this test starts. The caller's trace is one
//! trace at the collector: the gateway's server span continues the caller's span, its call to
//! each region is a client span under it, and each node's span is a child of that call. No
//! personal value of the data set, nor the tenant's token, is in any exported byte.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use domicile_ops::otlp::OtlpConfig;
use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, Channel as CxChannel, CheckContactPermissionRequest,
    Dimension, Metric, Purpose, QueryRecordsRequest, RecordQuery, SubjectRef,
};
use domicile_tests::{Federation, TENANT, gateway_client, ingest_records, person, touch};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;

/// An OTLP/gRPC trace receiver that keeps what it is sent, and says when something came.
#[derive(Clone, Default)]
struct Receiver(
    Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    Arc<tokio::sync::Notify>,
);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        self.1.notify_one();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.clone())
                    .map(|v| match v {
                        Value::StringValue(s) => s,
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(Received {
                            service: service.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.encode_to_vec())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_reach_the_collector_as_one_trace_without_personal_data() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .otlp(OtlpConfig {
            endpoint: format!("http://{addr}"),
            ca_file: None,
            flush_ms: 10,
        })
        .start()
        .await?;

    // Canaries: a person's identity and a comment, ingested and then asked about.
    let canaries = [
        "cust-otlp-canary-7731",
        "Wilhelmina Canary-Trace",
        "wilhelmina.canary@trace.example",
        "+49 171 7731 0042",
        "the callback never came, otlp canary comment",
    ];
    let mut records = vec![person(
        "DE",
        canaries[0],
        canaries[1],
        canaries[2],
        canaries[3],
        "10115",
        1980,
    )];
    for i in 0..3 {
        records.push(touch(
            "DE",
            &format!("otlp-canary-interaction-{i}"),
            canaries[0],
            1_790_000_000 + i,
            canaries[4],
        ));
    }
    ingest_records(&fed, &records).await?;
    let mut gw = gateway_client(&fed).await?;
    let _ = gw
        .check_contact_permission(CheckContactPermissionRequest {
            tenant_id: TENANT.into(),
            subject: Some(SubjectRef {
                country: "DE".into(),
                external_id: canaries[0].into(),
            }),
            purpose: Purpose::CxSurvey as i32,
            channel: CxChannel::Phone as i32,
        })
        .await;
    let _ = domicile_tests::query_records(
        &mut gw,
        QueryRecordsRequest {
            tenant_id: TENANT.into(),
            query: Some(RecordQuery {
                purpose: Purpose::CxAnalytics as i32,
                limit: 10,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    // A call under the caller's own trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::Count as i32],
            group_by: vec![Dimension::Country as i32],
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: false,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse()?,
    );
    gw.aggregate(request).await?;

    // Wait for exports (not for time to pass) until the gateway's and both nodes' spans of the
    // trace are in (the gateway's span ends last, with its response).
    let in_trace = |spans: &[Received]| -> Vec<Received> {
        spans
            .iter()
            .filter(|r| hex::encode(&r.span.trace_id) == trace_id)
            .cloned()
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let trace = in_trace(&receiver.spans());
        let nodes = trace
            .iter()
            .filter(|r| r.service == "domicile-node")
            .count();
        let gateway = trace
            .iter()
            .any(|r| r.service == "domicile-gateway" && r.span.kind == SpanKind::Server as i32);
        if nodes >= 2 && gateway {
            break trace;
        }
        let arrived = tokio::time::timeout_at(deadline, receiver.1.notified()).await;
        assert!(
            arrived.is_ok(),
            "the nodes' spans did not arrive ({} spans in all)",
            receiver.spans().len()
        );
    };

    // The gateway's server span continues the caller's span.
    let server = trace
        .iter()
        .find(|r| {
            r.service == "domicile-gateway"
                && r.span.kind == SpanKind::Server as i32
                && r.span.name == "domicile.v1.Gateway/Aggregate"
        })
        .expect("the gateway's Aggregate span");
    assert_eq!(hex::encode(&server.span.parent_span_id), caller_span);
    // One client span per region under it, and each node's span under its client span.
    let calls: Vec<&Received> = trace
        .iter()
        .filter(|r| r.service == "domicile-gateway" && r.span.kind == SpanKind::Client as i32)
        .collect();
    assert!(calls.len() >= 2, "{calls:#?}");
    for call in &calls {
        assert_eq!(call.span.parent_span_id, server.span.span_id);
        assert_eq!(call.span.name, "domicile.v1.RegionalNode/Aggregate");
        let node = trace
            .iter()
            .find(|r| r.service == "domicile-node" && r.span.parent_span_id == call.span.span_id)
            .unwrap_or_else(|| panic!("a node span under {call:#?}"));
        assert_eq!(node.span.kind, SpanKind::Server as i32);
        assert_eq!(node.span.name, "domicile.v1.RegionalNode/Aggregate");
        assert!(node.span.end_time_unix_nano >= node.span.start_time_unix_nano);
    }
    // The other calls were exported too (ingest, the contact check, the record query).
    let names: Vec<String> = receiver.spans().into_iter().map(|r| r.span.name).collect();
    for expected in [
        "domicile.v1.RegionalNode/Ingest",
        "domicile.v1.Gateway/CheckContactPermission",
        "domicile.v1.RegionalNode/CheckContactPermission",
        "domicile.v1.Gateway/QueryRecords",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    // Nothing personal in any exported byte.
    let bytes = receiver.bytes();
    for canary in canaries {
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{canary:?} reached the collector"
        );
    }
    fed.shutdown().await;
    Ok(())
}
