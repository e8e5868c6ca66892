//! W3C trace context end to end: the caller's `traceparent` is continued by the gateway's span,
//! each region call is a child span, and each node continues the trace from it; the ids appear
//! in the JSON logs of both sides.

use domicile_proto::pb::{AggregateQuery, AggregateRequest, Dimension, Metric, Purpose};
use domicile_tests::{Capture, TENANT, federation, gateway_client, load};
use serde_json::Value;

/// The fields of the span named `name` among a JSON log line's current span and its parents
/// (an event with an explicit parent lists that span as `span` only).
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    let parents = line["spans"].as_array().into_iter().flatten();
    std::iter::once(&line["span"])
        .chain(parents)
        .find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_reaches_every_region() -> anyhow::Result<()> {
    let cap = Capture::default();
    let writer = cap.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "domicile=debug,domicile_ops=debug,domicile_node=debug,domicile_gateway=debug",
        ))
        .with_writer(move || writer.clone())
        .init();

    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    load(&fed, &["DE", "US"], 30, 300, 3).await?;
    let mut gw = gateway_client(&fed).await?;
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
    // A call without a traceparent starts a trace of its own.
    gw.aggregate(AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::Count as i32],
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: false,
    })
    .await?;
    fed.shutdown().await;

    let text = String::from_utf8(cap.bytes())?;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    let in_trace: Vec<&Value> = lines
        .iter()
        .filter(|l| span(l, "rpc").is_some_and(|s| s["trace_id"] == trace_id))
        .collect();

    // The gateway's span continues the caller's.
    let gateway = in_trace
        .iter()
        .filter_map(|l| span(l, "rpc"))
        .find(|s| s["parent_span_id"] == caller_span)
        .expect("the gateway's rpc span has the caller's span as parent");
    assert_eq!(gateway["method"], "Aggregate");
    let gateway_span = gateway["span_id"].as_str().unwrap();
    assert_ne!(gateway_span, caller_span);

    // One region call per region, each a span of its own in the same trace…
    let region_calls: Vec<&Value> = in_trace
        .iter()
        .filter(|l| l["fields"]["message"] == "call finished")
        .filter_map(|l| span(l, "region_call"))
        .collect();
    let mut regions: Vec<&str> = region_calls
        .iter()
        .map(|s| s["region"].as_str().unwrap())
        .collect();
    regions.sort();
    assert_eq!(regions, ["eu-de", "us"]);
    // …and each node's span continues its region call, and its logs carry the trace.
    for call in &region_calls {
        assert_eq!(call["trace_id"], trace_id);
        let call_span = call["span_id"].as_str().unwrap();
        assert_ne!(call_span, gateway_span);
        let node = lines
            .iter()
            .filter(|l| l["fields"]["message"] == "aggregate released")
            .filter_map(|l| span(l, "rpc"))
            .find(|s| s["parent_span_id"] == call_span)
            .unwrap_or_else(|| panic!("no node log line continues region call {call_span}"));
        assert_eq!(node["trace_id"], trace_id);
        assert_eq!(node["method"], "Aggregate");
    }

    // The second call has other trace ids everywhere.
    let other_traces: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "aggregate released")
        .filter_map(|l| span(l, "rpc")?["trace_id"].as_str())
        .filter(|t| *t != trace_id)
        .collect();
    assert_eq!(other_traces.len(), 1, "one new trace for the second call");
    Ok(())
}
