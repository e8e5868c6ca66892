//! Operations: the Prometheus endpoint of the gateway and nodes counts what happened, a
//! reloaded gateway adds and removes regions without a restart, and a shutdown drains the calls
//! in flight.

use std::{net::SocketAddr, time::Duration};

use domicile_gateway::{Gateway, GatewayConfig, RegionConfig};
use domicile_ops::metrics::{scrape, serve};
use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, CheckContactPermissionRequest, Dimension, Metric, Purpose,
    QueryRecordsRequest, RecordQuery, RegionStatus, SubjectRef, gateway_client::GatewayClient,
};
use domicile_tests::{TENANT, federation, gateway_client, load, query_records};
use tokio::net::TcpListener;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The value of the sample `name{labels}` (labels in exposition order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every non-comment line is `name{labels} value` or `name value`, and every name is ours.
fn assert_well_formed(text: &str, prefix: &str) {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        assert!(series.starts_with(prefix), "{series} is not under {prefix}");
    }
}

async fn metrics_server(fed: &domicile_tests::Federation) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(
        listener,
        fed.metrics_sources(),
        domicile_ops::metrics::MetricsAccess::open_loopback(),
        std::future::pending(),
    ));
    Ok(addr)
}

fn aggregate(epsilon: Option<f64>) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::Count as i32, Metric::Nps as i32],
            group_by: vec![Dimension::Country as i32, Dimension::Channel as i32],
            epsilon,
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_regions_releases_and_budget() -> anyhow::Result<()> {
    let mut fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    let records = load(&fed, &["DE", "US"], 60, 600, 5).await?;
    let mut gw = gateway_client(&fed).await?;
    let exact = gw.aggregate(aggregate(None)).await?.into_inner();
    gw.aggregate(aggregate(Some(1.0))).await?;
    let bad = gw
        .aggregate(AggregateRequest {
            tenant_id: "no such tenant!".into(),
            ..aggregate(None)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let (streamed, _) = query_records(
        &mut gw,
        QueryRecordsRequest {
            tenant_id: TENANT.into(),
            query: Some(RecordQuery {
                purpose: Purpose::CxAnalytics as i32,
                limit: 40,
                ..Default::default()
            }),
            regions: Vec::new(),
        },
    )
    .await?;
    gw.check_contact_permission(CheckContactPermissionRequest {
        tenant_id: TENANT.into(),
        subject: Some(SubjectRef {
            country: "DE".into(),
            external_id: "nobody".into(),
        }),
        purpose: Purpose::Marketing as i32,
        channel: domicile_proto::pb::Channel::Email as i32,
    })
    .await?;

    let addr = metrics_server(&fed).await?;
    let (status, g) = scrape(addr, "/metrics").await?;
    assert_eq!(status, 200);
    assert_well_formed(&g, "domicile_gateway_");
    let at = |series: &str| sample(&g, series).unwrap_or_else(|| panic!("no {series} in\n{g}"));
    // Served calls, by method and code, with latency.
    assert_eq!(
        at(r#"domicile_gateway_rpc_requests_total{method="Aggregate",code="OK"}"#),
        2.0
    );
    assert_eq!(
        at(r#"domicile_gateway_rpc_requests_total{method="Aggregate",code="INVALID_ARGUMENT"}"#),
        1.0
    );
    assert_eq!(
        at(r#"domicile_gateway_rpc_duration_seconds_count{method="Aggregate"}"#),
        3.0
    );
    assert_eq!(
        at(r#"domicile_gateway_rpc_requests_total{method="QueryRecords",code="OK"}"#),
        1.0
    );
    assert_eq!(at("domicile_gateway_rpc_in_flight"), 0.0);
    // Region calls and fan-out coverage.
    for region in ["eu-de", "us"] {
        assert_eq!(
            at(&format!(
                r#"domicile_gateway_region_requests_total{{region="{region}",method="Aggregate",code="OK"}}"#
            )),
            2.0
        );
    }
    assert_eq!(
        at(r#"domicile_gateway_fanout_regions_total{method="Aggregate",status="OK"}"#),
        4.0
    );
    assert_eq!(
        sample(
            &g,
            r#"domicile_gateway_fanout_incomplete_total{method="Aggregate"}"#
        ),
        None
    );
    assert_eq!(
        at(r#"domicile_gateway_fanout_regions_total{method="QueryRecords",status="OK"}"#),
        2.0
    );
    assert_eq!(
        at("domicile_gateway_records_released_total"),
        streamed.len() as f64
    );
    assert!(at("domicile_gateway_groups_released_total") >= exact.groups.len() as f64);
    assert_eq!(at("domicile_gateway_regions_configured"), 2.0);

    // Each node: its ingest, releases and budget, labelled with its region.
    let (status, de) = scrape(addr, "/metrics/eu-de").await?;
    assert_eq!(status, 200);
    assert_well_formed(&de, "domicile_node_");
    let at = |series: &str| sample(&de, series).unwrap_or_else(|| panic!("no {series} in\n{de}"));
    let de_records = records.iter().filter(|r| r.country == "DE").count();
    assert_eq!(
        at(r#"domicile_node_records_ingested_total{region="eu-de",outcome="accepted"}"#),
        de_records as f64
    );
    assert_eq!(
        at(r#"domicile_node_rpc_requests_total{region="eu-de",method="Aggregate",code="OK"}"#),
        2.0
    );
    let de_groups = exact
        .coverage
        .iter()
        .find(|c| c.region_id == "eu-de")
        .unwrap();
    assert!(
        at(r#"domicile_node_groups_released_total{region="eu-de",purpose="PURPOSE_CX_ANALYTICS"}"#)
            >= f64::from(de_groups.groups_released)
    );
    // DE's budget is 20 per month of data; the latest release (a month, ε = 3) left 17.
    assert_eq!(
        at(r#"domicile_node_dp_budget_remaining_epsilon{region="eu-de",tenant="acme"}"#),
        17.0
    );
    assert_eq!(
        at(
            r#"domicile_node_contact_checks_total{region="eu-de",purpose="PURPOSE_MARKETING",channel="CHANNEL_EMAIL",decision="denied"}"#
        ),
        1.0
    );
    assert!(at(r#"domicile_node_storage_bytes{region="eu-de",file="database"}"#) > 0.0);
    assert!(
        at(
            r#"domicile_node_records_released_total{region="eu-de",purpose="PURPOSE_CX_ANALYTICS"}"#
        ) > 0.0
    );

    let (status, _) = scrape(addr, "/nothing-here").await?;
    assert_eq!(status, 404);

    // A region down: the fan-out is incomplete, and counted so.
    fed.stop_node("us").await;
    gw.aggregate(aggregate(None)).await?;
    let (_, g) = scrape(addr, "/metrics").await?;
    assert_eq!(
        sample(
            &g,
            r#"domicile_gateway_fanout_incomplete_total{method="Aggregate"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &g,
            r#"domicile_gateway_fanout_regions_total{method="Aggregate",status="UNAVAILABLE"}"#
        ),
        Some(1.0)
    );

    // Every series the Grafana dashboard queries is one the gateway or a node exports.
    let families: Vec<&str> = g
        .lines()
        .chain(de.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/domicile.json"
    ))?;
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard)?;
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("domicile_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(queried.len() >= 16, "the dashboard queries {queried:?}");
    for name in &queried {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            families.contains(&family),
            "the dashboard queries {name}, which nobody exports"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_regions_without_a_restart() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("eu-fr", &["FR"]), ("us", &["US"])]).await?;
    let original = fed.gateway.config();
    let mut gw = gateway_client(&fed).await?;
    let listed = |gw: &mut domicile_client::Gateway| {
        let mut gw = gw.clone();
        async move {
            let mut ids: Vec<String> = gw
                .list_regions(domicile_proto::pb::ListRegionsRequest {})
                .await
                .unwrap()
                .into_inner()
                .regions
                .into_iter()
                .map(|r| r.region_id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(listed(&mut gw).await, ["eu-de", "eu-fr", "us"]);

    // Remove eu-fr: ListRegions, routing and fan-out no longer know it.
    let mut smaller = (*original).clone();
    smaller.regions.retain(|r| r.id != "eu-fr");
    let report = fed.gateway.reload(smaller)?;
    assert_eq!(report.removed, ["eu-fr"]);
    assert!(report.added.is_empty() && report.restart_needed.is_empty());
    assert_eq!(listed(&mut gw).await, ["eu-de", "us"]);
    let answer = gw.aggregate(aggregate(None)).await?.into_inner();
    let asked: Vec<_> = answer
        .coverage
        .iter()
        .map(|c| c.region_id.as_str())
        .collect();
    assert_eq!(asked, ["eu-de", "us"]);
    let fr = gw
        .aggregate(AggregateRequest {
            regions: vec!["eu-fr".into()],
            ..aggregate(None)
        })
        .await
        .unwrap_err();
    assert_eq!(fr.code(), tonic::Code::InvalidArgument);

    // Add it back, and re-point us at an endpoint where nothing answers.
    let mut changed = (*original).clone();
    changed
        .regions
        .iter_mut()
        .find(|r| r.id == "us")
        .unwrap()
        .endpoints = vec!["https://127.0.0.1:9".into()];
    let report = fed.gateway.reload(changed)?;
    assert_eq!(report.added, ["eu-fr"]);
    assert_eq!(report.changed, ["us"]);
    let answer = gw.aggregate(aggregate(None)).await?.into_inner();
    let status = |id: &str| {
        answer
            .coverage
            .iter()
            .find(|c| c.region_id == id)
            .map(|c| c.status)
    };
    assert_eq!(status("eu-fr"), Some(RegionStatus::Ok as i32));
    assert_eq!(status("eu-de"), Some(RegionStatus::Ok as i32));
    assert_eq!(status("us"), Some(RegionStatus::Unavailable as i32));

    // A listen address is read at start only: reported, not applied.
    let mut moved = (*original).clone();
    moved.listen = "127.0.0.1:1".parse()?;
    assert_eq!(fed.gateway.reload(moved)?.restart_needed, ["listen"]);
    assert_eq!(fed.gateway.metrics().reloads.get(), 3);

    // A key file that vanished after the check fails the reload, naming the option; the
    // running configuration stays.
    let mut broken = (*original).clone();
    broken.insecure_no_auth = false;
    broken.auth = Some(domicile_gateway::auth::AuthConfig {
        audience: "domicile".into(),
        issuer: None,
        hs256_secret_file: Some("/nonexistent/hs256.secret".into()),
        jwks_file: None,
        leeway_seconds: 30,
        clients: Vec::new(),
    });
    let err = fed.gateway.reload(broken).unwrap_err().to_string();
    assert!(err.contains("auth.hs256_secret_file"), "{err}");
    assert!(fed.gateway.authenticator().is_none());
    assert_eq!(listed(&mut gw).await, ["eu-de", "eu-fr", "us"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_calls_in_flight() -> anyhow::Result<()> {
    // A region that accepts connections and never answers keeps an Aggregate in flight until
    // its deadline.
    let hung = TcpListener::bind("127.0.0.1:0").await?;
    let hung_addr = hung.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let mut config = GatewayConfig::new(vec![RegionConfig {
        id: "eu-de".into(),
        countries: vec!["DE".into()],
        endpoints: vec![format!("http://{hung_addr}")],
        identity: None,
    }]);
    config.shutdown_grace_ms = 600;
    config.insecure_no_auth = true;
    config.insecure_plaintext_federation = true;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = Gateway::new(config)?;
    let server = tokio::spawn(domicile_gateway::serve(gateway.clone(), listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel.clone());
    let check = HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(
        health.check(check.clone()).await?.into_inner().status,
        ServingStatus::Serving as i32
    );

    let mut gw = GatewayClient::new(channel);
    let mut call = tonic::Request::new(aggregate(None));
    call.set_timeout(Duration::from_millis(1500));
    let in_flight = tokio::spawn(async move { gw.aggregate(call).await });
    domicile_tests::eventually("the aggregate is admitted", || {
        let n = gateway.limiter().in_flight();
        async move { n == 1 }
    })
    .await;
    stop.send(()).unwrap();

    // During the grace period the listener still answers, but health says NOT_SERVING.
    domicile_tests::eventually("health says NOT_SERVING while draining", || {
        let mut health = health.clone();
        let check = check.clone();
        async move {
            health
                .check(check)
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::NotServing as i32)
        }
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the call in flight still runs during the grace period"
    );
    // The call in flight completes normally, with the hung region reported late.
    let answer = in_flight.await??.into_inner();
    assert_eq!(
        answer.coverage[0].status,
        RegionStatus::DeadlineExceeded as i32
    );
    // Then the server stops, and new connections are refused.
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}
