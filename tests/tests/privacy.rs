//! Differential privacy end to end: noise where asked or mandatory, the mechanism and epsilon
//! stated in the response, and a per-tenant daily budget that runs out with
//! `RESOURCE_EXHAUSTED` and the remaining budget in the error details.

use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, Dimension, Metric, NoiseMechanism, Purpose, RegionStatus,
};
use domicile_tests::{TENANT, federation, gateway_client, load};
use tonic_types::StatusExt;

fn request(epsilon: Option<f64>, regions: &[&str]) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::Count as i32, Metric::Nps as i32],
            group_by: vec![Dimension::Channel as i32],
            epsilon,
            ..Default::default()
        }),
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
        require_all_regions: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_noise_is_applied_and_stated() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    load(&fed, &["DE", "US"], 200, 3_000, 11).await?;
    let mut gw = gateway_client(&fed).await?;
    let exact = gw.aggregate(request(None, &[])).await?.into_inner();
    let noisy = gw.aggregate(request(Some(1.0), &[])).await?.into_inner();

    let privacy = noisy.privacy.unwrap();
    assert_eq!(privacy.mechanism, NoiseMechanism::DiscreteLaplace as i32);
    assert_eq!(privacy.epsilon, 1.0);
    for release in &noisy.attestation.as_ref().unwrap().regions {
        assert_eq!(release.mechanism, NoiseMechanism::DiscreteLaplace as i32);
        assert_eq!(release.epsilon, 1.0);
    }
    assert_eq!(
        exact.privacy.unwrap().mechanism,
        NoiseMechanism::None as i32
    );

    // Count has sensitivity L = 20 under a third of epsilon 1 (count, distinct subjects, NPS
    // histogram): scale 60 per region. Every group moves, none by more than 25 scales.
    // The noisy distinct-subject count decides k, so a group near k may come or go: compare
    // the groups both answers have.
    let mut moved = 0;
    let mut compared = 0;
    for n in &noisy.groups {
        let Some(e) = exact.groups.iter().find(|e| e.key == n.key) else {
            continue;
        };
        compared += 1;
        let (n, e) = (n.stats.as_ref().unwrap(), e.stats.as_ref().unwrap());
        let diff = n.interactions.abs_diff(e.interactions);
        assert!(diff < 2 * 25 * 60, "{diff}");
        if diff > 0 {
            moved += 1;
        }
    }
    assert!(
        compared * 2 >= exact.groups.len(),
        "{compared} of {}",
        exact.groups.len()
    );
    assert!(moved > 0, "noise changed the counts");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_is_mandatory_where_the_policy_says_so() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("ru", &["RU"])]).await?;
    load(&fed, &["DE", "RU"], 100, 1_000, 12).await?;
    let mut gw = gateway_client(&fed).await?;
    let resp = gw.aggregate(request(None, &[])).await?.into_inner();
    let regions = resp.attestation.unwrap().regions;
    let ru = regions.iter().find(|r| r.region_id == "ru").unwrap();
    let de = regions.iter().find(|r| r.region_id == "eu-de").unwrap();
    assert_eq!(ru.mechanism, NoiseMechanism::DiscreteLaplace as i32);
    assert_eq!(ru.epsilon, 1.0, "RU's policy epsilon");
    assert_eq!(ru.policy_versions, ["RU@2026-11-01"]);
    assert_eq!(de.mechanism, NoiseMechanism::None as i32);
    assert_eq!(de.epsilon, 0.0);
    assert_eq!(
        resp.privacy.unwrap().mechanism,
        NoiseMechanism::DiscreteLaplace as i32
    );
    // A request may spend less than the policy's epsilon, never more.
    let capped = gw
        .aggregate(request(Some(5.0), &["ru"]))
        .await?
        .into_inner();
    assert_eq!(capped.attestation.unwrap().regions[0].epsilon, 1.0);
    let lower = gw
        .aggregate(request(Some(0.25), &["ru"]))
        .await?
        .into_inner();
    assert_eq!(lower.attestation.unwrap().regions[0].epsilon, 0.25);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_is_resource_exhausted_with_what_is_left() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    load(&fed, &["DE", "US"], 50, 500, 13).await?;
    let mut gw = gateway_client(&fed).await?;
    // DE's daily budget is 10 and its per-query epsilon 1: ten queries of 1 spend it all.
    for _ in 0..10 {
        gw.aggregate(request(Some(1.0), &["eu-de"])).await?;
    }
    let err = gw
        .aggregate(request(Some(0.5), &["eu-de"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let info = err.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "PRIVACY_BUDGET_EXHAUSTED");
    assert_eq!(info.metadata["eu-de.remaining_epsilon"], "0.000");

    // Other regions still answer; the spent one is named in the coverage.
    let partial = gw.aggregate(request(Some(0.5), &[])).await?.into_inner();
    let de = partial
        .coverage
        .iter()
        .find(|c| c.region_id == "eu-de")
        .unwrap();
    assert_eq!(de.status, RegionStatus::BudgetExhausted as i32);
    assert!(
        de.detail.contains("remaining epsilon 0.000 of 10.000"),
        "{}",
        de.detail
    );
    let us = partial
        .coverage
        .iter()
        .find(|c| c.region_id == "us")
        .unwrap();
    assert_eq!(us.status, RegionStatus::Ok as i32);

    // Exact aggregates cost no budget. The spend is durable in the node's database.
    gw.aggregate(request(None, &["eu-de"])).await?;
    let conn = fed.node("eu-de").unwrap().connect()?;
    let spent: i64 = conn.query_row(
        "SELECT spent_milli FROM privacy_budget WHERE tenant = ?1",
        [TENANT],
        |r| r.get(0),
    )?;
    assert_eq!(spent, 10_000);
    Ok(())
}
