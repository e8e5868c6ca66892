//! Accountability end to end: every release audited and signed, checkpoints verifiable through
//! the gateway, tampering with a real database file found and named, incidents counted exactly
//! and their subjects listed only in-country.

use std::collections::{BTreeMap, BTreeSet};

use domicile_node::domain::audit::{self, Tampering};
use domicile_node::store::db::Dialect;
use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, DataCategory, Dimension, GetAuditCheckpointRequest,
    GetIncidentRequest, IncidentStatus, ListIncidentSubjectsRequest, ListRegionsRequest, Metric,
    Purpose, QueryRecordsRequest, RecordQuery, ReportIncidentRequest, TimeRange,
    local_node_client::LocalNodeClient, record_payload::Record,
};
use domicile_tests::{
    SynthRecord, TENANT, client, federation, gateway_client, load, query_records,
};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use tonic::Code;

use domicile_proto::domain::unix_now as now;
use domicile_tests::ts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_release_is_audited_signed_and_under_a_verifiable_checkpoint() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    load(&fed, &["DE", "US"], 30, 300, 21).await?;
    let mut gw = gateway_client(&fed).await?;
    let regions = gw
        .list_regions(ListRegionsRequest {})
        .await?
        .into_inner()
        .regions;
    let key_of = |region: &str| {
        regions
            .iter()
            .find(|r| r.region_id == region)
            .unwrap()
            .audit_public_key
            .clone()
    };

    let aggregate = gw
        .aggregate(AggregateRequest {
            tenant_id: TENANT.into(),
            query: Some(AggregateQuery {
                purpose: Purpose::CxAnalytics as i32,
                metrics: vec![Metric::Count as i32],
                group_by: vec![Dimension::Channel as i32],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (_, summary) = query_records(
        &mut gw,
        QueryRecordsRequest {
            tenant_id: TENANT.into(),
            query: Some(RecordQuery {
                purpose: Purpose::CxAnalytics as i32,
                ..Default::default()
            }),
            regions: Vec::new(),
        },
    )
    .await?;
    let releases = aggregate
        .attestation
        .unwrap()
        .regions
        .into_iter()
        .chain(summary.attestation.unwrap().regions);
    let mut last_seq = BTreeMap::new();
    for release in releases {
        assert!(release.audit_seq > 0, "{release:?}");
        let key = key_of(&release.region_id);
        assert!(
            audit::verify_release(&release, &key),
            "signature of {}",
            release.region_id
        );
        // A release altered in transit no longer verifies.
        let mut forged = release.clone();
        forged.groups_released += 1;
        assert!(!audit::verify_release(&forged, &key));
        last_seq.insert(release.region_id.clone(), release.audit_seq);
    }

    for (region, seq) in last_seq {
        let cp = gw
            .get_audit_checkpoint(GetAuditCheckpointRequest {
                region_id: region.clone(),
            })
            .await?
            .into_inner()
            .checkpoint
            .unwrap();
        assert!(cp.seq >= seq, "the checkpoint covers the release");
        assert_eq!(cp.public_key, key_of(&region));
        let key = VerifyingKey::from_bytes(&cp.public_key.clone().try_into().unwrap())?;
        let message =
            audit::checkpoint_message(&region, cp.seq, cp.at.unwrap().seconds, &cp.head_hash);
        key.verify(&message, &Signature::from_slice(&cp.signature)?)?;
        // The node's own walk agrees with the signed head.
        let conn = audit::open_read_only(&fed.node(&region).unwrap().backend)?;
        let verified = audit::verify(&conn, &region, &key.to_bytes())?.unwrap();
        assert!(verified.entries >= cp.seq && verified.checkpoints >= 1);
    }
    let unknown = gw
        .get_audit_checkpoint(GetAuditCheckpointRequest {
            region_id: "atlantis".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_database_file_is_found_and_named() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    // Twenty envelopes: twenty audit entries after the node's start entry.
    let records = domicile_tests::synth::generate(&domicile_tests::SynthSpec {
        countries: vec!["DE".into()],
        subjects: 100,
        interactions: 1_900,
        seed: 22,
    });
    let mut gw = gateway_client(&fed).await?;
    let regions = client::regions(&mut gw).await?;
    client::ingest(&gw, TENANT, &regions, &fed.trust_bundle, &records, 100).await?;
    let cp = gw
        .get_audit_checkpoint(GetAuditCheckpointRequest {
            region_id: "eu-de".into(),
        })
        .await?
        .into_inner()
        .checkpoint
        .unwrap();
    assert!(cp.seq >= 10, "{}", cp.seq);
    let key: [u8; 32] = cp.public_key.clone().try_into().unwrap();
    let dir = tempfile::tempdir()?;
    // Copies of the database (files, or `pg_dump` restored), tampered with as their owner can:
    // the append-only triggers dropped (SQLite) or disabled (PostgreSQL) first.
    let tamper = |name: &str, sql: &str| -> audit::Tamper {
        let conn = fed
            .copy_database("eu-de", dir.path(), name)
            .unwrap()
            .connect_read_write()
            .unwrap();
        let unlock = match conn.dialect() {
            Dialect::Sqlite => {
                "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;
                 DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;"
            }
            Dialect::Postgres => {
                "ALTER TABLE audit_log DISABLE TRIGGER USER;
                 ALTER TABLE audit_checkpoints DISABLE TRIGGER USER;"
            }
        };
        conn.execute_batch(unlock).unwrap();
        conn.execute_batch(sql).unwrap();
        audit::verify(&conn, "eu-de", &key).unwrap().unwrap_err()
    };

    let intact = fed
        .copy_database("eu-de", dir.path(), "intact")?
        .connect_read_write()?;
    assert!(audit::verify(&intact, "eu-de", &key)?.is_ok());
    // Without lifting the guards, checkpoints can be neither removed nor changed.
    for sql in [
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_checkpoints SET seq = seq + 1",
    ] {
        let err = intact.execute_batch(sql).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    let zeros = match intact.dialect() {
        Dialect::Sqlite => "zeroblob(64)",
        Dialect::Postgres => "decode(repeat('00', 64), 'hex')",
    };

    let t = tamper(
        "modified",
        "UPDATE audit_log SET details = replace(details, '\"accepted\":', '\"accepted\":1') WHERE seq = 5",
    );
    assert_eq!((t.seq, t.kind), (5, Tampering::Modified), "{t}");

    let t = tamper("removed", "DELETE FROM audit_log WHERE seq = 6");
    assert_eq!((t.seq, t.kind), (6, Tampering::Removed), "{t}");

    let t = tamper(
        "reordered",
        "UPDATE audit_log SET seq = -1 WHERE seq = 7;
         UPDATE audit_log SET seq = 7 WHERE seq = 8;
         UPDATE audit_log SET seq = 8 WHERE seq = -1;",
    );
    assert_eq!((t.seq, t.kind), (7, Tampering::Reordered), "{t}");

    let cut = cp.seq - 3;
    let t = tamper(
        "truncated",
        &format!("DELETE FROM audit_log WHERE seq > {cut}"),
    );
    assert_eq!((t.seq, t.kind), (cut + 1, Tampering::Truncated), "{t}");

    let t = tamper(
        "forged",
        &format!(
            "UPDATE audit_checkpoints SET signature = {zeros} WHERE seq = {}",
            cp.seq
        ),
    );
    assert_eq!(
        (t.seq, t.kind),
        (cp.seq, Tampering::ForgedCheckpoint),
        "{t}"
    );

    // Every checkpoint over an entry removed: a chain anyone can recompute, so refused.
    let t = tamper("unwitnessed", "DELETE FROM audit_checkpoints WHERE seq > 0");
    assert_eq!((t.seq, t.kind), (1, Tampering::Unwitnessed), "{t}");
    Ok(())
}

/// Brute force: for each (country, category), the subjects with such data before `end`.
fn affected(
    records: &[SynthRecord],
    end: i64,
    ingested_before_end: bool,
) -> BTreeMap<(String, i32), BTreeSet<String>> {
    let mut out: BTreeMap<(String, i32), BTreeSet<String>> = BTreeMap::new();
    for r in records {
        match &r.payload.record {
            Some(Record::Subject(s)) if ingested_before_end => {
                let mut add = |c: DataCategory| {
                    out.entry((r.country.clone(), c as i32))
                        .or_default()
                        .insert(s.external_id.clone());
                };
                add(DataCategory::Profile);
                if !s.email.is_empty() || !s.phone.is_empty() {
                    add(DataCategory::ContactDetails);
                }
            }
            Some(Record::Interaction(i)) if i.started_at.unwrap().seconds < end => {
                let mut add = |c: DataCategory| {
                    out.entry((r.country.clone(), c as i32))
                        .or_default()
                        .insert(i.subject_external_id.clone());
                };
                add(DataCategory::Interactions);
                if let Some(s) = &i.survey {
                    if s.nps.is_some() || s.csat.is_some() || s.ces.is_some() {
                        add(DataCategory::SurveyAnswers);
                    }
                    if !s.comment.is_empty() {
                        add(DataCategory::Comments);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

const CATEGORIES: [DataCategory; 6] = [
    DataCategory::Profile,
    DataCategory::ContactDetails,
    DataCategory::Interactions,
    DataCategory::SurveyAnswers,
    DataCategory::Comments,
    DataCategory::ConsentRecords,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_release_rounded_counts_and_list_exact_ones_only_in_country() -> anyhow::Result<()>
{
    let fed = federation(&[("eu-de", &["DE"]), ("eu-fr", &["FR"]), ("us", &["US"])]).await?;
    let records = load(&fed, &["DE", "FR", "US"], 60, 800, 23).await?;
    let mut gw = gateway_client(&fed).await?;
    let report = |end: i64, detected: i64| ReportIncidentRequest {
        dpo_signature: None,
        tenant_id: TENANT.into(),
        regions: Vec::new(),
        window: Some(TimeRange {
            start: ts(domicile_tests::synth::PERIOD_START),
            end: ts(end),
        }),
        categories: CATEGORIES.iter().map(|c| *c as i32).collect(),
        description: "Backup bucket exposed".into(),
        detected_at: ts(detected),
    };

    // Exposure up to now: every profile counts; interactions up to the end of the data.
    for (end, profiles_stored) in [
        (now() + 3_600, true),
        (domicile_tests::synth::PERIOD_START + 180 * 86_400, false),
    ] {
        let resp = gw
            .report_incident(fed.signed(report(end, now())))
            .await?
            .into_inner();
        let incident = resp.incident.unwrap();
        // The shipped policies: windows widened to whole hours, counts rounded up to tens.
        let aligned_end = (end + 3_599).div_euclid(3_600) * 3_600;
        let exact: BTreeMap<(String, i32), u64> = affected(&records, aligned_end, profiles_stored)
            .into_iter()
            .map(|(k, v)| (k, v.len() as u64))
            .collect();
        let mut got: BTreeMap<(String, i32), u64> = BTreeMap::new();
        for part in &incident.regions {
            for a in &part.affected {
                got.insert((a.country.clone(), a.category), a.subjects);
            }
        }
        let rounded: BTreeMap<(String, i32), u64> = exact
            .iter()
            .map(|(k, v)| (k.clone(), v.div_ceil(10) * 10))
            .collect();
        assert_eq!(got, rounded, "window ending {end}");
        assert!(
            exact.values().any(|v| v % 10 != 0),
            "the data has counts that rounding changes"
        );

        // A second report whose window ends one second later says exactly the same: the
        // difference of the two would otherwise reveal the events of that second.
        let shifted = gw
            .report_incident(fed.signed(report(end + 1, now())))
            .await?
            .into_inner()
            .incident
            .unwrap();
        assert_eq!(shifted.totals, incident.totals);
        for (a, b) in shifted.regions.iter().zip(&incident.regions) {
            assert_eq!(a.affected, b.affected, "{}", a.region_id);
        }
        assert_eq!(incident.regions.len(), 3);
        // 72 hours in every shipped policy of these countries.
        let detected = incident.detected_at.unwrap().seconds;
        assert_eq!(incident.deadline.unwrap().seconds, detected + 72 * 3_600);
        assert_eq!(incident.status, IncidentStatus::Open as i32);

        // GetIncident gives the same, with time left.
        let again = gw
            .get_incident(GetIncidentRequest {
                tenant_id: TENANT.into(),
                incident_id: incident.incident_id.clone(),
            })
            .await?
            .into_inner()
            .incident
            .unwrap();
        assert_eq!(again.totals, incident.totals);
        assert!(again.seconds_left > 71 * 3_600 && again.seconds_left <= 72 * 3_600);

        // Who: only through the in-country listener, region by region.
        if profiles_stored {
            let local = fed.node("eu-de").unwrap().local_addr.unwrap();
            let mut local = LocalNodeClient::connect(format!("http://{local}")).await?;
            let listed = local
                .list_incident_subjects(ListIncidentSubjectsRequest {
                    tenant_id: TENANT.into(),
                    incident_id: incident.incident_id.clone(),
                })
                .await?
                .into_inner();
            // In country, the counts are exact.
            let local_counts: BTreeMap<(String, i32), u64> = listed
                .affected
                .iter()
                .map(|a| ((a.country.clone(), a.category), a.subjects))
                .collect();
            let exact_de: BTreeMap<(String, i32), u64> = exact
                .iter()
                .filter(|((c, _), _)| c == "DE")
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            assert_eq!(local_counts, exact_de);
            let subjects = listed.subjects;
            let de_subjects: BTreeSet<String> = affected(&records, aligned_end, true)
                .into_iter()
                .filter(|((c, _), _)| c == "DE")
                .flat_map(|(_, v)| v)
                .collect();
            let listed: BTreeSet<String> = subjects.iter().map(|s| s.external_id.clone()).collect();
            assert_eq!(listed, de_subjects);
            assert!(
                subjects.iter().all(|s| !s.email.is_empty()),
                "contact details for notifying"
            );

            // Neither the federation listener (as the gateway reaches it, over mutual TLS) nor
            // the gateway serves that list.
            let federation =
                domicile_tests::node_channel(&fed, "eu-de", Some(fed.pki.pair("gateway"))).await?;
            let gateway =
                tonic::transport::Endpoint::from_shared(format!("http://{}", fed.gateway_addr))?
                    .connect()
                    .await?;
            for (addr, channel) in [("federation listener", federation), ("gateway", gateway)] {
                let mut other = LocalNodeClient::new(channel);
                let err = other
                    .list_incident_subjects(ListIncidentSubjectsRequest {
                        tenant_id: TENANT.into(),
                        incident_id: incident.incident_id.clone(),
                    })
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), Code::Unimplemented, "{addr}");
            }
        }
    }

    // A breach detected four days ago is past its 72-hour deadline.
    let late = gw
        .report_incident(fed.signed(report(now(), now() - 4 * 86_400)))
        .await?
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(late.status, IncidentStatus::DeadlinePassed as i32);
    assert!(late.seconds_left < 0);

    // Repeated reports are bounded: the shipped policies allow 20 per tenant per day; this
    // test has made 5. The 21st is refused by every region, and each refusal is audited.
    let mut accepted = 5;
    let refusal = loop {
        let coverage = match gw.report_incident(fed.signed(report(now(), now()))).await {
            Ok(answer) => answer.into_inner().coverage,
            Err(e) => break e.to_string(),
        };
        if coverage
            .iter()
            .all(|c| c.status == domicile_proto::pb::RegionStatus::Ok as i32)
        {
            accepted += 1;
        } else {
            break format!("{coverage:?}");
        }
        assert!(accepted <= 20, "more than 20 reports accepted");
    };
    assert_eq!(accepted, 20);
    assert!(refusal.contains("at most 20"), "{refusal}");
    let conn = fed.node("eu-de").unwrap().connect()?;
    let refused: i64 = conn.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'incident_reported' AND details LIKE '%daily limit%'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(refused, 1);

    let missing = gw
        .get_incident(GetIncidentRequest {
            tenant_id: TENANT.into(),
            incident_id: format!("inc-{}", "0".repeat(32)),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}
