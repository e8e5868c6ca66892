//! Ingest lands only in the region that serves the record's country, and only there.

use domicile::federation::RunningNode;
use domicile_proto::pb::record_payload::Record;
use domicile_tests::{TENANT, federation, load};

fn strings_in(node: &RunningNode, sql: &str) -> Vec<String> {
    let conn = node.connect().unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_lands_only_in_the_region_that_serves_the_country() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("eu-fr", &["FR"]), ("us", &["US"])]).await?;
    let records = load(&fed, &["DE", "FR", "US"], 50, 400, 1).await?;

    for (region, country) in [("eu-de", "DE"), ("eu-fr", "FR"), ("us", "US")] {
        let db = fed.node(region).unwrap();
        let countries = strings_in(db, "SELECT DISTINCT country FROM interactions");
        assert_eq!(
            countries,
            [country],
            "{region} holds only {country} interactions"
        );
        let subject_countries = strings_in(db, "SELECT DISTINCT country FROM subjects");
        assert_eq!(subject_countries, [country]);

        // Every e-mail of this country's subjects is held by this region, which can read it…
        let subjects: Vec<(String, String)> = records
            .iter()
            .filter(|r| r.country == country)
            .filter_map(|r| match &r.payload.record {
                Some(Record::Subject(s)) => Some((s.external_id.clone(), s.email.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(subjects.len(), 50);
        let node = fed.node(region).unwrap().node.clone().unwrap();
        for (id, email) in &subjects {
            let profile = node.profile_of(TENANT, id)?.unwrap();
            assert_eq!(&profile.email, email);
        }

        // …and not a byte of them, nor of the customers' ids, is in clear in any region's
        // files (database, WAL, vault): at rest they are encrypted or keyed, and other regions
        // never had them at all.
        for any in &fed.nodes {
            let mut bytes = fed.database_bytes(&any.region_id)?;
            bytes.extend(
                std::fs::read(any.database.with_extension("keys.sqlite")).unwrap_or_default(),
            );
            // One pass over the bytes for all 100 needles (the PostgreSQL files are large).
            let needles = subjects.iter().flat_map(|(id, email)| [id, email]);
            let found = aho_corasick::AhoCorasick::new(needles)?.find(&bytes);
            assert!(
                found.is_none(),
                "a customer id or e-mail of {country} found in clear in {}'s files",
                any.region_id
            );
        }
        // Other regions do not know these subjects at all.
        let other_regions_hold_none = fed.nodes.iter().filter(|n| n.region_id != region).all(|n| {
            let vault = n.node.as_ref().unwrap().store().vault();
            subjects
                .iter()
                .all(|(id, _)| vault.find(TENANT, id).unwrap().is_none())
        });
        assert!(other_regions_hold_none);
    }
    let counts: Vec<u64> = fed
        .nodes
        .iter()
        .map(|n| {
            let conn = n.connect().unwrap();
            conn.query_row(
                "SELECT COUNT(*) FROM interactions WHERE tenant = $1",
                [TENANT],
                |r| r.get(0),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(counts, [400, 400, 400]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_idempotent_per_tenant_and_key() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let records = load(&fed, &["DE"], 10, 40, 2).await?;
    let gw = domicile_tests::gateway_client(&fed).await?;
    let mut gw2 = gw.clone();
    let regions = domicile_tests::client::regions(&mut gw2).await?;
    let again =
        domicile_tests::client::ingest(&gw, TENANT, &regions, &fed.trust_bundle, &records, 25)
            .await?;
    assert_eq!(again.accepted, 0);
    assert_eq!(again.duplicate, 50);
    let conn = fed.node("eu-de").unwrap().connect()?;
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM interactions", [], |r| r.get(0))?;
    assert_eq!(n, 40);
    // The same keys under another tenant are that tenant's own records.
    let other =
        domicile_tests::client::ingest(&gw, "globex", &regions, &fed.trust_bundle, &records, 25)
            .await?;
    assert_eq!(other.accepted, 50);
    Ok(())
}
