//! `QueryRecords`: pseudonymised, generalised, redacted interactions; `aggregates_only`
//! countries denied; limits and backpressure; the attestation of what left each region.

use std::time::Duration;

use domicile_proto::pb::{Purpose, QueryRecordsRequest, RecordQuery, RegionStatus, ReleaseKind};
use domicile_tests::{
    TENANT, federation, gateway_client, ingest_records, load, person, query_records, touch,
};

/// 2026-03-14T15:09:26Z.
const T: i64 = 1_773_500_966;

fn request(purpose: Purpose, limit: u32) -> QueryRecordsRequest {
    QueryRecordsRequest {
        tenant_id: TENANT.into(),
        query: Some(RecordQuery {
            purpose: purpose as i32,
            limit,
            ..Default::default()
        }),
        regions: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_leave_pseudonymised_generalised_and_redacted() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    ingest_records(
        &fed,
        &[
            person(
                "DE",
                "cust-de-1",
                "Jürgen Müller",
                "jm@example.de",
                "+49 171 2345678",
                "80331",
                1987,
            ),
            person(
                "US",
                "cust-us-1",
                "Emily Johnson",
                "emily@example.com",
                "+1 415 555 0100",
                "94107",
                1990,
            ),
            touch(
                "DE",
                "int-de-1",
                "cust-de-1",
                T,
                "Herr Müller, erreichbar unter +49 171 2345678 oder jm@example.de",
            ),
            touch(
                "DE",
                "int-de-2",
                "cust-de-1",
                T + 60,
                "IBAN DE89 3704 0044 0532 0130 00 bitte",
            ),
            touch(
                "US",
                "int-us-1",
                "cust-us-1",
                T,
                "Emily here, card 4111 1111 1111 1111",
            ),
        ],
    )
    .await?;
    let mut gw = gateway_client(&fed).await?;
    let (records, summary) = query_records(&mut gw, request(Purpose::CxAnalytics, 0)).await?;
    assert_eq!(records.len(), 3);
    assert_eq!(summary.records, 3);

    let de: Vec<_> = records.iter().filter(|r| r.country == "DE").collect();
    assert_eq!(de.len(), 2);
    assert_eq!(
        de[0].comment_redacted,
        "Herr [NAME], erreichbar unter [PHONE] oder [EMAIL]"
    );
    assert_eq!(de[1].comment_redacted, "IBAN [IBAN] bitte");
    for r in &de {
        assert_eq!(r.region_id, "eu-de");
        assert_eq!(r.birth_decade, 1980);
        assert_eq!(r.postal_prefix, "80", "DE keeps 2 postal characters");
        assert_eq!(r.language, "de");
        let t = r.started_at.unwrap().seconds;
        assert_eq!(t % 3600, 0, "DE truncates timestamps to the hour");
        assert_eq!(t, T - T % 3600);
        assert_eq!(r.subject_pseudonym.len(), 32);
        assert!(!r.subject_pseudonym.contains("cust"));
        assert!(!r.interaction_pseudonym.contains("int-"));
    }
    // One subject, one pseudonym; two interactions, two pseudonyms.
    assert_eq!(de[0].subject_pseudonym, de[1].subject_pseudonym);
    assert_ne!(de[0].interaction_pseudonym, de[1].interaction_pseudonym);
    let us = records.iter().find(|r| r.country == "US").unwrap();
    assert_eq!(us.comment_redacted, "[NAME] here, card [CARD]");
    assert_eq!(us.postal_prefix, "941", "US keeps the ZIP3");

    // Stable within a purpose, unlinkable across purposes. Regions interleave in any order,
    // so compare in a fixed one.
    let sorted = |mut rows: Vec<domicile_proto::pb::PseudonymisedInteraction>| {
        rows.sort_by_key(|r| {
            (
                r.region_id.clone(),
                r.started_at.unwrap().seconds,
                r.comment_redacted.clone(),
            )
        });
        rows
    };
    let records = sorted(records);
    let (again, _) = query_records(&mut gw, request(Purpose::CxAnalytics, 0)).await?;
    let again = sorted(again);
    for (a, b) in records.iter().zip(&again) {
        assert_eq!(a.subject_pseudonym, b.subject_pseudonym);
        assert_eq!(a.interaction_pseudonym, b.interaction_pseudonym);
    }
    let (other, _) = query_records(&mut gw, request(Purpose::Service, 0)).await?;
    let other = sorted(other);
    for (a, b) in records.iter().zip(&other) {
        assert_eq!(a.started_at, b.started_at);
        assert_ne!(a.subject_pseudonym, b.subject_pseudonym);
        assert_ne!(a.interaction_pseudonym, b.interaction_pseudonym);
    }

    // Coverage and attestation: both regions released records under their policies.
    assert!(
        summary
            .coverage
            .iter()
            .all(|c| c.status == RegionStatus::Ok as i32)
    );
    let attestation = summary.attestation.unwrap();
    let de_release = attestation
        .regions
        .iter()
        .find(|r| r.region_id == "eu-de")
        .unwrap();
    assert_eq!(de_release.kind, ReleaseKind::PseudonymisedRecords as i32);
    assert_eq!(de_release.rows_released, 2);
    assert_eq!(de_release.policy_versions, ["DE@2026-11-01"]);
    assert_eq!(de_release.query_fingerprint.len(), 64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_only_regions_are_denied_and_the_rest_streams() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("ru", &["RU"])]).await?;
    load(&fed, &["DE", "RU"], 20, 100, 5).await?;
    let mut gw = gateway_client(&fed).await?;
    let (records, summary) = query_records(&mut gw, request(Purpose::CxAnalytics, 0)).await?;
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(|r| r.country == "DE"));
    let ru = summary
        .coverage
        .iter()
        .find(|c| c.region_id == "ru")
        .unwrap();
    assert_eq!(ru.status, RegionStatus::DeniedByPolicy as i32);
    assert!(ru.detail.contains("aggregates only"), "{}", ru.detail);
    let de = summary
        .coverage
        .iter()
        .find(|c| c.region_id == "eu-de")
        .unwrap();
    assert_eq!(de.status, RegionStatus::Ok as i32);
    let ru_release = summary
        .attestation
        .unwrap()
        .regions
        .into_iter()
        .find(|r| r.region_id == "ru")
        .unwrap();
    assert_eq!(ru_release.kind, ReleaseKind::None as i32);
    assert_eq!(ru_release.rows_released, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_caps_the_stream_and_each_region() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    load(&fed, &["DE", "US"], 20, 600, 6).await?;
    let mut gw = gateway_client(&fed).await?;
    let (records, summary) = query_records(&mut gw, request(Purpose::CxAnalytics, 300)).await?;
    assert_eq!(records.len(), 300);
    assert_eq!(summary.records, 300);
    for release in summary.attestation.unwrap().regions {
        assert!(release.rows_released <= 300, "{release:?}");
    }
    // Each region streams in time order.
    for region in ["eu-de", "us"] {
        let times: Vec<i64> = records
            .iter()
            .filter(|r| r.region_id == region)
            .map(|r| r.started_at.unwrap().seconds)
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{region} in time order"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_node_back() -> anyhow::Result<()> {
    const ROWS: u64 = 40_000;
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    load(&fed, &["DE"], 200, ROWS as usize, 7).await?;
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    // A client with a small HTTP/2 window, as a memory-conscious consumer would configure.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fed.gateway_addr))?
        .initial_stream_window_size(64 * 1024)
        .connect()
        .await?;
    let mut gw = domicile_proto::pb::gateway_client::GatewayClient::new(channel);
    let mut req = tonic::Request::new(request(Purpose::CxAnalytics, 0));
    req.set_timeout(Duration::from_secs(30));
    let mut stream = gw.query_records(req).await?.into_inner();
    let first = stream.message().await?.expect("a first batch");
    let mut seen = first.records.len() as u64;
    // The client reads nothing for a while: the node must stop well short of the end, held
    // back by the bounded channels and HTTP/2 flow control, not buffer everything. Wait until
    // it has stopped (it fills the buffers at its own pace), then check that it stays stopped.
    let started = std::time::Instant::now();
    let mut produced_while_paused = node.records_released();
    let mut unchanged = 0;
    // Stopped means: no progress over three samples in a row (a busy CI machine can pause a
    // producer for one sample without it being blocked).
    while unchanged < 3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = node.records_released();
        if now == produced_while_paused {
            unchanged += 1;
        } else {
            unchanged = 0;
            produced_while_paused = now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the node never stopped"
        );
    }
    println!("rows produced while the client paused: {produced_while_paused} of {ROWS}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        node.records_released(),
        produced_while_paused,
        "the node is blocked while the client does not read"
    );
    assert!(
        produced_while_paused < ROWS / 4,
        "{produced_while_paused} of {ROWS} rows produced while the client read {seen}"
    );
    let mut summary = None;
    while let Some(msg) = stream.message().await? {
        seen += msg.records.len() as u64;
        summary = msg.summary.or(summary);
    }
    assert_eq!(seen, ROWS);
    assert_eq!(summary.unwrap().records, ROWS);
    assert_eq!(node.records_released(), ROWS);
    Ok(())
}
