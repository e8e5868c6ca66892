//! Differential privacy end to end (docs/privacy-model.md): every aggregate that crosses a
//! border is summed from noisy releases, the mechanism, the releases and the epsilon newly
//! spent are stated in the response, and a budget per month of data runs out with
//! `RESOURCE_EXHAUSTED` naming the month and what is left.

use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, Dimension, LocalNodeAggregateRequest, Metric, NoiseMechanism,
    Purpose, RegionStatus, TimeRange, local_node_client::LocalNodeClient,
};
use domicile_tests::{Federation, TENANT, federation, gateway_client, load, ts};
use tonic_types::StatusExt;

/// 2025-11-01 and 2026-11-01: the twelve months of the generated data.
const FROM: i64 = 1_761_955_200;
const TO: i64 = 1_793_491_200;

fn request(group_by: &[Dimension], epsilon: Option<f64>, regions: &[&str]) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::Count as i32, Metric::Nps as i32],
            group_by: group_by.iter().map(|d| *d as i32).collect(),
            time_range: Some(TimeRange {
                start: ts(FROM),
                end: ts(TO),
            }),
            epsilon,
            ..Default::default()
        }),
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
        require_all_regions: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cross_border_aggregate_is_noised_and_says_from_what() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    load(&fed, &["DE", "US"], 200, 3_000, 11).await?;
    let mut gw = gateway_client(&fed).await?;
    // No epsilon asked for, or one: the same releases, the same answer.
    let first = gw
        .aggregate(request(&[Dimension::Channel], None, &[]))
        .await?
        .into_inner();
    let privacy = first.privacy.unwrap();
    assert_eq!(privacy.mechanism, NoiseMechanism::DiscreteLaplace as i32);
    // Twelve month releases of ε = 3 made by this call in each region.
    assert_eq!(privacy.epsilon, 36.0);
    for release in &first.attestation.as_ref().unwrap().regions {
        assert_eq!(release.mechanism, NoiseMechanism::DiscreteLaplace as i32);
        assert_eq!(release.epsilon, 36.0);
        assert_eq!(release.derived_from.len(), 12);
        assert!(release.derived_from.iter().all(|r| r.epsilon == 3.0));
        assert_eq!(release.released_through.unwrap().seconds, TO);
    }
    let second = gw
        .aggregate(request(&[Dimension::Channel], Some(0.5), &[]))
        .await?
        .into_inner();
    assert_eq!(
        second.privacy.unwrap().epsilon,
        0.0,
        "nothing new to release"
    );
    assert_eq!(second.groups, first.groups);

    // Against the exact figures in country: every group moved, by at most what twelve cells
    // of noise make. Volume in a month cell has scale b = 5·14/(3·3) ≈ 7.8 (the shipped
    // policies); twelve cells give a standard deviation of √12·√2·b ≈ 38; ten of them bound it.
    let mut moved = 0;
    for region in ["eu-de", "us"] {
        let addr = fed.node(region).unwrap().local_addr.unwrap();
        let mut local = LocalNodeClient::connect(format!("http://{addr}")).await?;
        let exact = local
            .aggregate(LocalNodeAggregateRequest {
                tenant_id: TENANT.into(),
                query: request(&[Dimension::Channel], None, &[]).query,
            })
            .await?
            .into_inner()
            .groups;
        let mine = gw
            .aggregate(request(&[Dimension::Channel], None, &[region]))
            .await?
            .into_inner();
        for g in &mine.groups {
            let e = exact
                .iter()
                .find(|e| e.key == g.key)
                .expect("the group exists");
            let (n, e) = (
                g.stats.as_ref().unwrap().interactions,
                e.stats.as_ref().unwrap().interactions,
            );
            assert!(n.abs_diff(e) < 380, "{region}: {n} vs {e}");
            moved += usize::from(n != e);
        }
    }
    assert!(moved > 0, "noise changed the counts");
    Ok(())
}

/// A federation whose DE policy allows 3.0 per month of data: the month releases, no more.
async fn tight_budget() -> anyhow::Result<(Federation, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let shipped = format!("{}/../deploy/policies", env!("CARGO_MANIFEST_DIR"));
    let de = std::fs::read_to_string(format!("{shipped}/DE.toml"))?
        .replace("epsilon_per_month = 20.0", "epsilon_per_month = 3.0");
    std::fs::write(dir.path().join("DE.toml"), de)?;
    std::fs::copy(format!("{shipped}/US.toml"), dir.path().join("US.toml"))?;
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .policy_dir(dir.path())
        .start()
        .await?;
    Ok((fed, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_month_is_resource_exhausted_with_what_is_left() -> anyhow::Result<()> {
    let (fed, _dir) = tight_budget().await?;
    load(&fed, &["DE", "US"], 50, 500, 13).await?;
    let mut gw = gateway_client(&fed).await?;
    // The month releases take DE's whole budget for each month; day releases no longer fit.
    gw.aggregate(request(&[Dimension::Channel], None, &["eu-de"]))
        .await?;
    let err = gw
        .aggregate(request(&[Dimension::Day], None, &["eu-de"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let info = err.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "PRIVACY_BUDGET_EXHAUSTED");
    assert_eq!(info.metadata["eu-de.remaining_epsilon"], "0.000");
    assert_eq!(info.metadata["eu-de.month"], "2025-11");

    // Other regions still answer; the spent one is named in the coverage.
    let partial = gw
        .aggregate(request(&[Dimension::Day], None, &[]))
        .await?
        .into_inner();
    let de = partial
        .coverage
        .iter()
        .find(|c| c.region_id == "eu-de")
        .unwrap();
    assert_eq!(de.status, RegionStatus::BudgetExhausted as i32);
    assert!(
        de.detail.contains("remaining epsilon 0.000 of 3.000"),
        "{}",
        de.detail
    );
    let us = partial
        .coverage
        .iter()
        .find(|c| c.region_id == "us")
        .unwrap();
    assert_eq!(us.status, RegionStatus::Ok as i32);

    // The month figures stay available, for free; the spend is durable in the database.
    gw.aggregate(request(&[Dimension::Channel], None, &["eu-de"]))
        .await?;
    let conn = fed.node("eu-de").unwrap().connect()?;
    let spent: i64 = conn.query_row(
        "SELECT SUM(spent_milli) FROM dp_budget WHERE tenant = $1",
        [TENANT],
        |r| r.get(0),
    )?;
    assert_eq!(spent, 12 * 3_000);
    Ok(())
}
