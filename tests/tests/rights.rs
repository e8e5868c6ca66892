//! Data-subject rights end to end through the gateway: every request kind, erasure under and
//! after a legal hold, the crypto-shredding proof on an earlier copy of the database, and
//! retention.

use domicile_node::domain::stored::Profile;
use domicile_proto::{
    error::field_violations,
    pb::{
        AggregateQuery, AggregateRequest, Channel, CheckContactPermissionRequest, ConsentAction,
        ConsentSource, GetConsentRequest, GetSubjectRequestRequest, Metric, PermissionReasonCode,
        PlaceLegalHoldRequest, Purpose, QueryRecordsRequest, RecordConsentRequest, RecordPayload,
        RecordQuery, ReleaseLegalHoldRequest, SubjectRecord, SubjectRef, SubjectRequestKind,
        SubjectRequestReceipt, SubjectRequestStatus, SubmitSubjectRequestRequest, TimeRange,
        record_payload::Record,
    },
    seal::{EnvelopeSealer, PublicSealingKey, SealingKeyPair, open_export},
};
use domicile_tests::{
    Federation, TENANT, client, federation, gateway_client, ingest_records, person, query_records,
    touch,
};
use prost::Message;
use tonic::Code;

/// 2026-06-01T00:00:00Z.
const T: i64 = 1_780_272_000;

use domicile_proto::domain::unix_now as now;
use domicile_tests::ts;

fn subject(country: &str, id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        country: country.into(),
        external_id: id.into(),
    })
}

fn request(country: &str, id: &str, kind: SubjectRequestKind) -> SubmitSubjectRequestRequest {
    SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: subject(country, id),
        kind: kind as i32,
        actor: "dpo-desk".into(),
        ..Default::default()
    }
}

/// Twelve DE subjects (d0..d11) with two interactions each, d0 with a comment and consent.
async fn setup() -> anyhow::Result<(Federation, domicile_client::Gateway)> {
    setup_with(domicile_ops::clock::system()).await
}

/// [`setup`] with the nodes' clock `clock`.
async fn setup_with(
    clock: domicile_ops::clock::SharedClock,
) -> anyhow::Result<(Federation, domicile_client::Gateway)> {
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .clock(clock)
        .start()
        .await?;
    let mut records = Vec::new();
    for s in 0..12 {
        let id = format!("d{s}");
        records.push(person(
            "DE",
            &id,
            "Jürgen Müller",
            &format!("jm{s}@example.de"),
            "+49 171 2345678",
            "80331",
            1980,
        ));
        for i in 0..2 {
            let comment = if s == 0 {
                "Herr Müller war zufrieden"
            } else {
                ""
            };
            records.push(touch(
                "DE",
                &format!("{id}-i{i}"),
                &id,
                T + i * 86_400,
                comment,
            ));
        }
    }
    records.push(person(
        "US",
        "u0",
        "Emily Johnson",
        "emily@example.com",
        "",
        "94107",
        1990,
    ));
    records.push(touch("US", "u0-i0", "u0", T, "fine"));
    ingest_records(&fed, &records).await?;
    let mut gw = gateway_client(&fed).await?;
    gw.record_consent(RecordConsentRequest {
        tenant_id: TENANT.into(),
        subject: subject("DE", "d0"),
        purpose: Purpose::CxSurvey as i32,
        channel: Channel::Phone as i32,
        action: ConsentAction::Grant as i32,
        source: ConsentSource::WebForm as i32,
        wording_sha256: vec![1; 32],
        actor: "web".into(),
        token_ttl_seconds: 0,
    })
    .await?;
    Ok((fed, gw))
}

/// The export schema (docs/export-schema.json).
fn export_schema() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/export-schema.json")).unwrap();
    jsonschema::validator_for(&schema).expect("the export schema is a valid JSON Schema")
}

/// Asserts that `doc` is valid against the export schema, naming each error.
fn valid_export(doc: &serde_json::Value) {
    let errors: Vec<String> = export_schema()
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_export_schema_refuses_what_the_format_does_not_allow() {
    let schema = export_schema();
    let good = serde_json::json!({
        "schema": "domicile.export.v1", "kind": "portability",
        "request_id": format!("eu-de.sr-{}", "ab".repeat(16)), "region": "eu-de",
        "tenant": "acme", "generated_at": 1, "subject": { "external_id": "c", "country": "DE" },
        "profile": null, "interactions": [],
        "csv": {
            "profile": "full_name,email,phone,postal_code,language,birth_year\n",
            "interactions": "interaction_id,channel,direction,started_at,ended_at,handle_time_seconds,outcome,agent_team,recorded,survey_id,nps,csat,ces,comment\n"
        }
    });
    assert!(schema.is_valid(&good));
    let changed = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    for bad in [
        changed(&|d| d["schema"] = "domicile.export.v2".into()),
        changed(&|d| d["extra"] = 1.into()),
        changed(&|d| {
            d.as_object_mut().unwrap().remove("interactions");
        }),
        changed(&|d| d["csv"] = serde_json::Value::Null),
        changed(&|d| {
            d.as_object_mut().unwrap().remove("csv");
        }),
        changed(&|d| d["restricted"] = true.into()),
        changed(&|d| d["kind"] = "access".into()),
        changed(&|d| d["subject"]["country"] = "de".into()),
        changed(&|d| {
            d["interactions"] = serde_json::json!([{ "channel": "CHANNEL_PHONE" }]);
        }),
    ] {
        assert!(!schema.is_valid(&bad), "accepted: {bad}");
    }
}

fn open(receipt: &SubjectRequestReceipt, keys: &SealingKeyPair) -> serde_json::Value {
    let export = receipt.export.as_ref().expect("an export");
    let json = open_export(
        keys,
        TENANT,
        &receipt.region_id,
        receipt.request_id.as_bytes(),
        &export.encapsulated_key,
        &export.ciphertext,
    )
    .expect("the export opens with the requester's key");
    serde_json::from_slice(&json).unwrap()
}

async fn access(
    fed: &Federation,
    gw: &mut domicile_client::Gateway,
    country: &str,
    id: &str,
    keys: &SealingKeyPair,
) -> anyhow::Result<serde_json::Value> {
    let mut req = request(country, id, SubjectRequestKind::Access);
    req.recipient_public_key = keys.public().as_bytes().to_vec();
    let resp = gw
        .submit_subject_request(fed.signed(req))
        .await?
        .into_inner();
    Ok(open(&resp.receipts[0], keys))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_and_portability_exports_are_sealed_to_the_requester() -> anyhow::Result<()> {
    let (fed, mut gw) = setup().await?;
    let keys = SealingKeyPair::generate();
    // The country is unknown: every region is asked, only the home region answers.
    let mut req = request("", "d0", SubjectRequestKind::Access);
    req.recipient_public_key = keys.public().as_bytes().to_vec();
    let resp = gw
        .submit_subject_request(fed.signed(req))
        .await?
        .into_inner();
    assert_eq!(resp.receipts.len(), 1);
    let receipt = &resp.receipts[0];
    assert_eq!(receipt.region_id, "eu-de");
    assert_eq!(receipt.status, SubjectRequestStatus::Completed as i32);
    let submitted = receipt.submitted_at.unwrap().seconds;
    // The DE policy: one month by the calendar.
    let month = domicile_node::domain::policy::Period { months: 1, days: 0 };
    assert_eq!(receipt.due_at.unwrap().seconds, month.after(submitted));
    assert!(month.after(submitted) >= submitted + 28 * 86_400);
    assert_eq!(receipt.policy_version, "DE@2026-11-01");
    let us = resp.coverage.iter().find(|c| c.region_id == "us").unwrap();
    assert_eq!(us.detail, "holds no data about the subject");
    // The gateway relayed ciphertext only.
    let bytes = resp.encode_to_vec();
    assert!(!bytes.windows(14).any(|w| w == b"jm0@example.de"));

    let doc = open(receipt, &keys);
    valid_export(&doc);
    assert_eq!(doc["schema"], "domicile.export.v1");
    assert_eq!(doc["profile"]["email"], "jm0@example.de");
    assert_eq!(doc["interactions"].as_array().unwrap().len(), 2);
    // The ids as the CRM sent them, though the node stores them keyed.
    assert_eq!(doc["subject"]["external_id"], "d0");
    assert_eq!(doc["interactions"][0]["interaction_id"], "d0-i0");
    assert_eq!(doc["interactions"][1]["interaction_id"], "d0-i1");
    assert_eq!(
        doc["interactions"][0]["survey"]["comment"],
        "Herr Müller war zufrieden"
    );
    assert_eq!(doc["consent_ledger"][0]["action"], "CONSENT_ACTION_GRANT");
    assert!(
        doc["processing_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "consent_change"),
        "{}",
        doc["processing_events"]
    );
    // Another key cannot open it.
    let export = receipt.export.as_ref().unwrap();
    let stranger = SealingKeyPair::generate();
    assert!(
        open_export(
            &stranger,
            TENANT,
            "eu-de",
            receipt.request_id.as_bytes(),
            &export.encapsulated_key,
            &export.ciphertext
        )
        .is_err()
    );

    // Portability: what the subject provided, without the region's own records about them.
    let mut req = request("DE", "d0", SubjectRequestKind::Portability);
    req.recipient_public_key = keys.public().as_bytes().to_vec();
    let resp = gw
        .submit_subject_request(fed.signed(req))
        .await?
        .into_inner();
    let doc = open(&resp.receipts[0], &keys);
    valid_export(&doc);
    assert_eq!(doc["kind"], "portability");
    assert_eq!(doc["profile"]["full_name"], "Jürgen Müller");
    assert!(doc.get("processing_events").is_none());
    // The same records as CSV, a table per record kind.
    let profile_csv = doc["csv"]["profile"].as_str().unwrap();
    let mut profile = csv::Reader::from_reader(profile_csv.as_bytes());
    let rows: Vec<csv::StringRecord> = profile.records().collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][0], "Jürgen Müller");
    assert_eq!(&rows[0][5], "1980");
    let mut interactions =
        csv::Reader::from_reader(doc["csv"]["interactions"].as_str().unwrap().as_bytes());
    let header = interactions.headers()?.clone();
    let rows: Vec<csv::StringRecord> = interactions.records().collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 2);
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[0][column("interaction_id")], "d0-i0");
    assert_eq!(&rows[0][column("nps")], "9");
    assert_eq!(&rows[0][column("comment")], "Herr Müller war zufrieden");
    assert_eq!(&rows[1][column("started_at")], &(T + 86_400).to_string());

    // The receipt can be fetched again (without the export).
    let again = gw
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: resp.receipts[0].request_id.clone(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(again.kind, SubjectRequestKind::Portability as i32);
    assert!(again.export.is_none());

    // Unknown subject; missing key.
    let mut unknown = request("", "nobody", SubjectRequestKind::Access);
    unknown.recipient_public_key = keys.public().as_bytes().to_vec();
    assert_eq!(
        gw.submit_subject_request(fed.signed(unknown))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = gw
        .submit_subject_request(fed.signed(request("DE", "d0", SubjectRequestKind::Access)))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err)[0].field, "recipient_public_key");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rectification_patches_the_profile_and_keeps_its_history() -> anyhow::Result<()> {
    let (fed, mut gw) = setup().await?;
    let regions = client::regions(&mut gw).await?;
    let key = PublicSealingKey::from_bytes(
        &regions
            .iter()
            .find(|r| r.region_id == "eu-de")
            .unwrap()
            .sealing_key
            .as_ref()
            .unwrap()
            .public_key,
    )?;
    let patch = |id: &str| -> anyhow::Result<_> {
        let mut sealer = EnvelopeSealer::new(TENANT, "eu-de", &key)?;
        sealer.seal(
            "DE",
            "rect-1",
            &RecordPayload {
                record: Some(Record::Subject(SubjectRecord {
                    external_id: id.into(),
                    email: "new@example.de".into(),
                    ..Default::default()
                })),
            },
        )?;
        Ok(sealer.finish())
    };
    let mut req = request("DE", "d1", SubjectRequestKind::Rectification);
    req.rectification = Some(patch("d1")?);
    let resp = gw
        .submit_subject_request(fed.signed(req))
        .await?
        .into_inner();
    assert_eq!(
        resp.receipts[0].status,
        SubjectRequestStatus::Completed as i32
    );

    let keys = SealingKeyPair::generate();
    let doc = access(&fed, &mut gw, "DE", "d1", &keys).await?;
    assert_eq!(doc["profile"]["email"], "new@example.de");
    assert_eq!(
        doc["profile"]["full_name"], "Jürgen Müller",
        "untouched fields stay"
    );
    assert_eq!(
        doc["profile_history"][0]["profile"]["email"],
        "jm1@example.de"
    );

    // A patch for another subject is refused, naming the record.
    let mut wrong = request("DE", "d1", SubjectRequestKind::Rectification);
    wrong.rectification = Some(patch("d2")?);
    let err = gw
        .submit_subject_request(fed.signed(wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    Ok(())
}

/// DE's distinct subjects for cx_analytics as the gate stands, in country (the exact
/// `LocalNode` aggregate): across the border aggregates come from releases of closed months,
/// made once (docs/privacy-model.md), which later requests do not change.
async fn de_subjects(fed: &Federation) -> anyhow::Result<u64> {
    let addr = fed.node("eu-de").unwrap().local_addr.unwrap();
    let mut local =
        domicile_proto::pb::local_node_client::LocalNodeClient::connect(format!("http://{addr}"))
            .await?;
    let groups = local
        .aggregate(domicile_proto::pb::LocalNodeAggregateRequest {
            tenant_id: TENANT.into(),
            query: de_aggregate().query,
        })
        .await?
        .into_inner()
        .groups;
    Ok(groups
        .first()
        .map_or(0, |g| g.stats.as_ref().unwrap().distinct_subjects))
}

fn de_aggregate() -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::DistinctSubjects as i32],
            ..Default::default()
        }),
        regions: vec!["eu-de".into()],
        require_all_regions: false,
    }
}

fn de_records() -> QueryRecordsRequest {
    QueryRecordsRequest {
        tenant_id: TENANT.into(),
        query: Some(RecordQuery {
            purpose: Purpose::CxAnalytics as i32,
            ..Default::default()
        }),
        regions: vec!["eu-de".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_crypto_shreds_so_an_earlier_copy_cannot_be_read() -> anyhow::Result<()> {
    let (fed, mut gw) = setup().await?;
    let running = fed.node("eu-de").unwrap();
    let node = running.node.clone().unwrap();
    // The references the database knows d0 and d1 by (only the vault maps them).
    let reference = |id: &str| -> anyhow::Result<String> {
        Ok(node.store().vault().find(TENANT, id)?.unwrap().reference)
    };
    let (d0, d1_ref) = (reference("d0")?, reference("d1")?);
    // A backup taken before the erasure: the data file and its WAL, or a `pg_dump`.
    let dir = tempfile::tempdir()?;
    let copy = fed.copy_database("eu-de", dir.path(), "backup")?;

    let resp = gw
        .submit_subject_request(fed.signed(request("DE", "d0", SubjectRequestKind::Erasure)))
        .await?
        .into_inner();
    assert_eq!(
        resp.receipts[0].status,
        SubjectRequestStatus::Completed as i32
    );

    // After erasure, nothing about the subject comes back from any RPC.
    let keys = SealingKeyPair::generate();
    let mut req = request("", "d0", SubjectRequestKind::Access);
    req.recipient_public_key = keys.public().as_bytes().to_vec();
    assert_eq!(
        gw.submit_subject_request(fed.signed(req))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let consent = gw
        .get_consent(GetConsentRequest {
            tenant_id: TENANT.into(),
            subject: subject("DE", "d0"),
            purpose: 0,
        })
        .await?
        .into_inner();
    assert!(consent.history.is_empty() && consent.current.is_empty());
    assert_eq!(de_subjects(&fed).await?, 11);
    let (rows, _) = query_records(&mut gw, de_records()).await?;
    assert_eq!(rows.len(), 22);
    assert!(
        rows.iter()
            .all(|r| !r.comment_redacted.contains("zufrieden"))
    );

    // The proof: the backup still holds d0's encrypted profile and comment, but with the
    // region's keys as they are now, they do not open. Another subject's still do.
    let backup = copy.connect_read_write()?;
    let blob_of = |id: &str| -> Vec<u8> {
        backup
            .query_row(
                "SELECT profile FROM subject_pii WHERE tenant = $1 AND external_id = $2",
                [TENANT, id],
                |r| r.get(0),
            )
            .unwrap()
    };
    let vault = node.store().vault();
    assert!(
        vault.key(TENANT, &d0)?.is_none() && vault.find(TENANT, "d0")?.is_none(),
        "d0's data key and lookup are destroyed"
    );
    let d1 = vault.key(TENANT, &d1_ref)?.expect("d1's key is alive");
    assert!(
        Profile::open(&d1, TENANT, &d1_ref, &blob_of(&d1_ref)).is_some(),
        "the method works"
    );
    assert!(
        Profile::open(&d1, TENANT, &d0, &blob_of(&d0)).is_none(),
        "no other key opens it"
    );
    let comment: Vec<u8> = backup.query_row(
        "SELECT comment FROM interaction_text WHERE tenant = $1 AND subject_id = $2",
        [TENANT, d0.as_str()],
        |r| r.get(0),
    )?;
    assert!(comment.len() > 24);
    assert!(
        !comment.windows(9).any(|w| w == b"zufrieden"),
        "stored encrypted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_under_a_legal_hold_completes_when_the_hold_ends() -> anyhow::Result<()> {
    // The federation's time (the gateway's and the nodes') is this clock's: the hold's expiry
    // comes when the test moves it.
    let clock = domicile_ops::clock::ManualClock::at(now());
    let (fed, mut gw) = setup_with(std::sync::Arc::new(clock.clone())).await?;
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    let hold_expires = now() + 3_600;
    let hold = gw
        .place_legal_hold(fed.signed(PlaceLegalHoldRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            subject: subject("DE", "d2"),
            reason: "case 2026-114".into(),
            interactions: None,
            expires_at: ts(hold_expires),
        }))
        .await?
        .into_inner()
        .hold_id;
    let resp = gw
        .submit_subject_request(fed.signed(request("DE", "d2", SubjectRequestKind::Erasure)))
        .await?
        .into_inner();
    let receipt = &resp.receipts[0];
    assert_eq!(
        receipt.status,
        SubjectRequestStatus::PartiallyCompleted as i32
    );
    assert_eq!(receipt.held[0].hold_id, hold);
    assert_eq!(receipt.held[0].reason, "case 2026-114");
    assert!(receipt.held[0].whole_subject);
    assert_eq!(receipt.held[0].interactions_kept, 2);
    assert_eq!(
        receipt.held[0].expires_at.as_ref().unwrap().seconds,
        hold_expires
    );
    // The receipt, signed by the region, says what the hold keeps; fetched again it says the
    // same, with the same signature's worth (it verifies with the trust bundle).
    fed.trust_bundle.verify_receipt(receipt)?;
    let again = gw
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: receipt.request_id.clone(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(again.held, receipt.held);
    fed.trust_bundle.verify_receipt(&again)?;

    // Kept, but processed for nothing else: out of aggregates, records and contact.
    let store = node.store();
    assert!(node.profile_of(TENANT, "d2")?.is_some());
    assert_eq!(de_subjects(&fed).await?, 11);
    let check = gw
        .check_contact_permission(CheckContactPermissionRequest {
            tenant_id: TENANT.into(),
            subject: subject("DE", "d2"),
            purpose: Purpose::Service as i32,
            channel: Channel::Email as i32,
        })
        .await?
        .into_inner();
    assert!(!check.allowed);
    assert_eq!(
        check.reasons[1].code,
        PermissionReasonCode::RestrictionInForce as i32
    );

    let released = gw
        .release_legal_hold(fed.signed(ReleaseLegalHoldRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            hold_id: hold.clone(),
        }))
        .await?
        .into_inner();
    assert!(released.erasure_completed);
    assert!(node.profile_of(TENANT, "d2")?.is_none());
    assert!(store.vault().find(TENANT, "d2")?.is_none());
    let final_receipt = gw
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: receipt.request_id.clone(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(final_receipt.status, SubjectRequestStatus::Completed as i32);
    assert!(final_receipt.completed_at.is_some());
    let last = final_receipt.events.last().unwrap();
    assert_eq!(last.action, "hold_ended");
    assert_eq!(last.reason, hold);
    assert_eq!(last.status, SubjectRequestStatus::Completed as i32);
    fed.trust_bundle.verify_receipt(&final_receipt)?;

    // A hold on some interactions keeps only those; one that expires ends by itself.
    gw.place_legal_hold(fed.signed(PlaceLegalHoldRequest {
        dpo_signature: None,
        tenant_id: TENANT.into(),
        subject: subject("DE", "d3"),
        reason: "chargeback dispute".into(),
        interactions: Some(TimeRange {
            start: ts(T),
            end: ts(T + 3_600),
        }),
        // A minute from now by the federation's clock, which the gateway checks it against.
        expires_at: ts(domicile_ops::clock::Clock::now(&clock) + 60),
    }))
    .await?;
    let d3 = store.vault().find(TENANT, "d3")?.unwrap().reference;
    let resp = gw
        .submit_subject_request(fed.signed(request("DE", "d3", SubjectRequestKind::Erasure)))
        .await?
        .into_inner();
    assert_eq!(resp.receipts[0].held[0].interactions_kept, 1);
    let conn = fed.node("eu-de").unwrap().connect()?;
    let left: i64 = conn.query_row(
        "SELECT COUNT(*) FROM interactions WHERE subject_id = $1",
        [d3.as_str()],
        |r| r.get(0),
    )?;
    assert_eq!(left, 1);
    assert!(
        store
            .read(|c| domicile_node::domain::stored::profile(store, c, TENANT, &d3))?
            .is_none(),
        "the profile is not held"
    );
    // Past the hold's expiry, on the clock alone.
    clock.advance(3_600);
    // The gateway reads the same clock: an expiry still ahead of the wall clock but behind the
    // federation's is refused, naming the field.
    let late = gw
        .place_legal_hold(fed.signed(PlaceLegalHoldRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            subject: subject("DE", "d4"),
            reason: "too late".into(),
            interactions: None,
            expires_at: ts(domicile_ops::clock::Clock::now(&clock) - 1),
        }))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::InvalidArgument, "{late:?}");
    assert!(late.message().contains("expires_at"), "{late:?}");
    let swept = node.sweep()?;
    assert_eq!((swept.holds_expired, swept.erasures_completed), (1, 1));
    // The key went with the answer; the rows go with the purge that follows it.
    assert!(store.vault().key(TENANT, &d3)?.is_none());
    node.erasures_purged().await?;
    let left: i64 = conn.query_row(
        "SELECT COUNT(*) FROM interactions WHERE subject_id = $1",
        [d3.as_str()],
        |r| r.get(0),
    )?;
    assert_eq!(left, 0);
    assert!(store.vault().key(TENANT, &d3)?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restriction_and_objection_stop_processing() -> anyhow::Result<()> {
    let (fed, mut gw) = setup().await?;
    gw.submit_subject_request(fed.signed(request("DE", "d4", SubjectRequestKind::Restriction)))
        .await?;
    assert_eq!(de_subjects(&fed).await?, 11);
    let (rows, _) = query_records(&mut gw, de_records()).await?;
    assert_eq!(rows.len(), 22);

    // US marketing is opt-out: allowed until the subject objects.
    let marketing = |id: &str| CheckContactPermissionRequest {
        tenant_id: TENANT.into(),
        subject: subject("US", id),
        purpose: Purpose::Marketing as i32,
        channel: Channel::Email as i32,
    };
    assert!(
        gw.check_contact_permission(marketing("u0"))
            .await?
            .into_inner()
            .allowed
    );
    let mut objection = request("US", "u0", SubjectRequestKind::Objection);
    objection.purposes = vec![Purpose::Marketing as i32, Purpose::Profiling as i32];
    gw.submit_subject_request(fed.signed(objection)).await?;
    let after = gw
        .check_contact_permission(marketing("u0"))
        .await?
        .into_inner();
    assert!(!after.allowed);
    assert_eq!(
        after.reasons[1].code,
        PermissionReasonCode::ObjectionInForce as i32
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_data_except_what_a_hold_keeps() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    // 2020: beyond DE's 730 days for interactions.
    let old = 1_590_000_000;
    ingest_records(
        &fed,
        &[
            person("DE", "o1", "A", "a@example.de", "", "", 0),
            person("DE", "o2", "B", "b@example.de", "", "", 0),
            touch("DE", "o1-old", "o1", old, "alt"),
            touch("DE", "o2-old", "o2", old, "alt"),
            touch("DE", "o1-new", "o1", now() - 86_400, "neu"),
        ],
    )
    .await?;
    let mut gw = gateway_client(&fed).await?;
    gw.place_legal_hold(fed.signed(PlaceLegalHoldRequest {
        dpo_signature: None,
        tenant_id: TENANT.into(),
        subject: subject("DE", "o2"),
        reason: "audit 2020".into(),
        interactions: None,
        expires_at: ts(now() + 3_600),
    }))
    .await?;
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    let swept = node.sweep()?;
    assert_eq!(swept.interactions_deleted, 1, "{swept:?}");
    let conn = fed.node("eu-de").unwrap().connect()?;
    let mut ids: Vec<String> = conn
        .prepare("SELECT interaction_id FROM interactions")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.sort();
    // Stored keyed: recompute the ids that should be left with the subjects' keys.
    let vault = node.store().vault();
    let stored = |subject: &str, id: &str| -> anyhow::Result<String> {
        Ok(vault
            .find(TENANT, subject)?
            .unwrap()
            .stored_id("interaction", id))
    };
    let mut expected = vec![stored("o1", "o1-new")?, stored("o2", "o2-old")?];
    expected.sort();
    assert_eq!(ids, expected);
    let audited: i64 = conn.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'retention_sweep'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(audited, 1);
    Ok(())
}
