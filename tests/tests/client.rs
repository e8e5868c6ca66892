//! The Rust client: routes by country, seals per region, retries what a region cannot take.

use domicile_client::{Client, MAX_ATTEMPTS};
use domicile_proto::pb::RejectReason;
use domicile_tests::{TENANT, federation, synth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_routes_retries_and_reports_what_a_dead_region_could_not_take()
-> anyhow::Result<()> {
    let mut fed = federation(&[("eu-de", &["DE"]), ("eu-fr", &["FR"])]).await?;
    let client = Client::connect(fed.gateway_addr)
        .await?
        .with_trust_bundle(fed.trust_bundle.clone());
    let records = |country: &str, seed| {
        synth::generate(&synth::SynthSpec {
            countries: vec![country.into()],
            subjects: 20,
            interactions: 30,
            seed,
        })
    };
    let both = [records("DE", 1), records("FR", 1)].concat();
    // Without a trust bundle the client seals nothing.
    let bare = Client::connect(fed.gateway_addr).await?;
    let err = bare.ingest(TENANT, &both).await.unwrap_err();
    assert!(
        err.to_string().contains("no federation trust bundle"),
        "{err:#}"
    );
    let summary = client.ingest(TENANT, &both).await?;
    assert_eq!(
        (summary.accepted, summary.retried, summary.rejected_total()),
        (100, 0, 0)
    );

    // With eu-fr down, its records are retried, then reported; eu-de's still land.
    fed.stop_node("eu-fr").await;
    // (Another tenant, since the generator reuses its idempotency keys.)
    let summary = client.ingest("acme-2", &both).await?;
    assert_eq!(summary.accepted, 50);
    assert_eq!(
        summary
            .rejected
            .get(RejectReason::RegionUnavailable.as_str_name()),
        Some(&50)
    );
    assert_eq!(summary.retried, 50 * u64::from(MAX_ATTEMPTS - 1));
    Ok(())
}
