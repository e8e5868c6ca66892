//! Merged aggregates are exact, small groups never leave a region, and dead or hung regions
//! are named in the coverage without delaying the answer past the deadline.

use std::time::{Duration, Instant};

use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, Channel, Dimension, Metric, Purpose, RegionStatus,
};
use domicile_tests::{
    Federation, TENANT, brute_force, federation, gateway_client, load, month_of, policy_k,
};

const ALL_METRICS: [Metric; 7] = [
    Metric::Count,
    Metric::DistinctSubjects,
    Metric::Nps,
    Metric::CsatMean,
    Metric::CesMean,
    Metric::HandleTimeMean,
    Metric::HandleTimeSum,
];

fn request(group_by: &[Dimension], min_group_size: u32) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: ALL_METRICS.iter().map(|m| *m as i32).collect(),
            group_by: group_by.iter().map(|d| *d as i32).collect(),
            min_group_size,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn region_of(country: &str) -> &'static str {
    match country {
        "DE" => "eu-de",
        "FR" => "eu-fr",
        _ => "us",
    }
}

fn country_of(region: &str) -> &'static str {
    match region {
        "eu-de" => "DE",
        "eu-fr" => "FR",
        _ => "US",
    }
}

/// The coverage status reported for `region`.
fn status_of(resp: &domicile_proto::pb::AggregateResponse, region: &str) -> i32 {
    resp.coverage
        .iter()
        .find(|c| c.region_id == region)
        .map_or(0, |c| c.status)
}

async fn three_regions() -> anyhow::Result<(Federation, Vec<(String, domicile_tests::SynthRecord)>)>
{
    let fed = federation(&[("eu-de", &["DE"]), ("eu-fr", &["FR"]), ("us", &["US"])]).await?;
    let records = load(&fed, &["DE", "FR", "US"], 120, 1500, 3).await?;
    let tagged = records
        .into_iter()
        .map(|r| (region_of(&r.country).to_owned(), r))
        .collect();
    Ok((fed, tagged))
}

async fn check_against_brute_force(
    gw: &mut domicile_client::Gateway,
    records: &[(String, domicile_tests::SynthRecord)],
    group_by: &[Dimension],
    k: u32,
    key_of: impl Fn(&str, &str, i32, i64) -> domicile_tests::Key,
) -> anyhow::Result<()> {
    let resp = gw.aggregate(request(group_by, k)).await?.into_inner();
    let k_of = |region: &str| u64::from(k.max(policy_k(country_of(region))));
    let (expected, expected_suppressed) = brute_force(records, k_of, key_of);
    assert_eq!(
        resp.suppressed_groups, expected_suppressed,
        "suppressed groups for {group_by:?}"
    );
    assert_eq!(
        resp.groups.len(),
        expected.len(),
        "released groups for {group_by:?}"
    );
    for (group, (key, stats)) in resp.groups.iter().zip(&expected) {
        let k = group.key.clone().unwrap();
        assert_eq!((k.region_id, k.country, k.channel, k.period), key.clone());
        assert_eq!(
            group.stats.clone().unwrap().normalized(),
            stats.clone().normalized()
        );
        for (value, metric) in group.values.iter().zip(ALL_METRICS) {
            let want = domicile_proto::merge::metric_value(metric, stats);
            assert_eq!(value.metric, metric as i32);
            assert_eq!(value.value, want.value, "{metric:?} of {key:?}");
        }
    }
    assert!(
        resp.coverage
            .iter()
            .all(|c| c.status == RegionStatus::Ok as i32)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_aggregate_equals_brute_force_computation() -> anyhow::Result<()> {
    let (fed, records) = three_regions().await?;
    let mut gw = gateway_client(&fed).await?;
    // By country × channel × month: each group lives in one region.
    check_against_brute_force(
        &mut gw,
        &records,
        &[Dimension::Country, Dimension::Channel, Dimension::Month],
        0,
        |_, country, channel, t| (String::new(), country.into(), channel, month_of(t)),
    )
    .await?;
    // By channel alone: every group merges three regions' partials.
    check_against_brute_force(
        &mut gw,
        &records,
        &[Dimension::Channel],
        0,
        |_, _, channel, _| (String::new(), String::new(), channel, String::new()),
    )
    .await?;
    // By region, and the grand total.
    check_against_brute_force(
        &mut gw,
        &records,
        &[Dimension::Region],
        0,
        |region, _, _, _| (region.into(), String::new(), 0, String::new()),
    )
    .await?;
    check_against_brute_force(&mut gw, &records, &[], 0, |_, _, _, _| Default::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_below_k_are_suppressed_at_the_node_and_k_can_only_be_raised() -> anyhow::Result<()>
{
    let (fed, records) = three_regions().await?;
    let mut gw = gateway_client(&fed).await?;
    // Per country × channel × day, most groups have fewer than k subjects. k is per country:
    // 10 for DE and FR, 5 for the US in the shipped policies.
    let resp = gw
        .aggregate(request(
            &[Dimension::Country, Dimension::Channel, Dimension::Day],
            0,
        ))
        .await?
        .into_inner();
    assert!(resp.suppressed_groups > 0, "day-level groups are small");
    let mut smallest_us_group = u64::MAX;
    for g in &resp.groups {
        let country = &g.key.as_ref().unwrap().country;
        let subjects = g.stats.as_ref().unwrap().distinct_subjects;
        assert!(
            subjects >= u64::from(policy_k(country)),
            "{country}: {subjects}"
        );
        if country == "US" {
            smallest_us_group = smallest_us_group.min(subjects);
        }
    }
    assert!(
        smallest_us_group < 10,
        "US groups use the US k of 5, not the largest k"
    );
    assert_eq!(resp.privacy.unwrap().min_group_size, 10);

    // A request may raise k…
    check_against_brute_force(
        &mut gw,
        &records,
        &[Dimension::Country, Dimension::Channel, Dimension::Month],
        40,
        |_, country, channel, t| (String::new(), country.into(), channel, month_of(t)),
    )
    .await?;
    let raised = gw
        .aggregate(request(
            &[Dimension::Country, Dimension::Channel, Dimension::Month],
            40,
        ))
        .await?
        .into_inner();
    assert!(raised.suppressed_groups > 0);
    assert_eq!(raised.privacy.unwrap().min_group_size, 40);
    // …but asking for k = 2 still gets the regions' own k.
    let lowered = gw
        .aggregate(request(
            &[Dimension::Country, Dimension::Channel, Dimension::Day],
            2,
        ))
        .await?
        .into_inner();
    assert_eq!(lowered.privacy.unwrap().min_group_size, 10);
    assert_eq!(lowered.groups.len(), resp.groups.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_region_is_reported_and_the_answer_still_comes() -> anyhow::Result<()> {
    let (mut fed, _) = three_regions().await?;
    let mut gw = gateway_client(&fed).await?;
    fed.stop_node("eu-fr").await;

    let mut req = tonic::Request::new(request(&[Dimension::Country], 0));
    req.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let resp = gw.aggregate(req).await?.into_inner();
    assert!(started.elapsed() < Duration::from_secs(2));
    let status: Vec<(String, i32)> = resp
        .coverage
        .iter()
        .map(|c| (c.region_id.clone(), c.status))
        .collect();
    assert_eq!(
        status,
        [
            ("eu-de".into(), RegionStatus::Ok as i32),
            ("eu-fr".into(), RegionStatus::Unavailable as i32),
            ("us".into(), RegionStatus::Ok as i32),
        ]
    );
    let countries: Vec<String> = resp
        .groups
        .iter()
        .map(|g| g.key.clone().unwrap().country)
        .collect();
    assert_eq!(countries, ["DE", "US"]);

    // With require_all_regions the gap is an error that names the region.
    let mut strict = request(&[Dimension::Country], 0);
    strict.require_all_regions = true;
    let err = gw.aggregate(strict).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("eu-fr"), "{}", err.message());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_region_never_delays_the_answer_past_the_deadline() -> anyhow::Result<()> {
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .unresponsive_region("eu-fr", &["FR"])
        .start()
        .await?;
    load(&fed, &["DE"], 30, 300, 4).await?;
    let mut gw = gateway_client(&fed).await?;
    // Deadlines well above scheduling noise on a loaded 2-core CI machine; the margin the
    // gateway keeps for merging is 50 ms at these sizes.
    for deadline_ms in [800u64, 1500] {
        let mut req = tonic::Request::new(request(&[Dimension::Channel], 0));
        req.set_timeout(Duration::from_millis(deadline_ms));
        let started = Instant::now();
        let resp = gw.aggregate(req).await?.into_inner();
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(deadline_ms),
            "answered in {elapsed:?}: {:?}",
            resp.coverage
        );
        let fr = status_of(&resp, "eu-fr");
        assert_eq!(fr, RegionStatus::DeadlineExceeded as i32);
        let de = status_of(&resp, "eu-de");
        assert_eq!(de, RegionStatus::Ok as i32);
        assert!(!resp.groups.is_empty());
        assert!(
            resp.groups
                .iter()
                .all(|g| g.key.as_ref().unwrap().channel != Channel::Unspecified as i32)
        );
    }
    Ok(())
}
