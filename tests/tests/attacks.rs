//! The attacker's test suite (issue 20): a malicious gateway
//! ([`domicile::attacker::MaliciousGateway`]) in front of a real federation substitutes
//! sealing keys, swaps export recipient keys, strips or forges the DPO's signature, replays
//! signed requests and presents stale audit heads; a compromised gateway also calls nodes
//! directly with the gateway's own mutual-TLS identity, and a node's operator rolls its audit
//! log back. Each attack must fail, at the client or at the node, with a clear error, and
//! release nothing. With `DOMICILE_FEDERATION_STORAGE=postgres` (the README's test command runs
//! the suite a second time so) every node keeps its data in PostgreSQL.

use domicile::attacker::{Attacks, DpoAttack, KeyAttack, MaliciousGateway};
use domicile_client::HeadWitness;
use domicile_node::store::db::Dialect;
use domicile_proto::{
    domain::unix_now as now,
    pb::{
        AuditWitnessStatus, GetAuditCheckpointRequest, GetOverviewRequest,
        GetSubjectRequestRequest, IdentityVerification, PlaceLegalHoldRequest,
        RegionalNodePlaceLegalHoldRequest, RegionalNodeReportIncidentRequest,
        RegionalNodeSubmitSubjectRequestRequest, ReportIncidentRequest, SealingKeyStatement,
        SubjectRef, SubjectRequestKind, SubjectRequestStatus, SubmitSubjectRequestRequest,
        TimeRange, UpdateSubjectRequestRequest, VerificationMethod,
        update_subject_request_request::Action,
    },
    seal::{SealingKeyPair, open_export},
    trust::{TrustError, sign_request},
};
use domicile_tests::{Federation, TENANT, client, federation, person, touch, ts};
use tonic::Code;

/// Two regions, DE subjects d0..d3 with one interaction each.
async fn setup() -> anyhow::Result<Federation> {
    let fed = federation(&[("eu-de", &["DE"]), ("eu-fr", &["FR"])]).await?;
    let mut records = Vec::new();
    for i in 0..4 {
        let id = format!("d{i}");
        records.push(person(
            "DE",
            &id,
            "Jürgen Müller",
            &format!("jm{i}@example.de"),
            "+49 30 1234567",
            "10115",
            1980,
        ));
        records.push(touch("DE", &format!("t{i}"), &id, now() - 86_400, "gut"));
    }
    domicile_tests::ingest_records(&fed, &records).await?;
    Ok(fed)
}

fn interactions_in(fed: &Federation, region: &str) -> anyhow::Result<i64> {
    let conn = fed.node(region).unwrap().connect()?;
    Ok(conn.query_row("SELECT COUNT(*) FROM interactions", [], |r| r.get(0))?)
}

fn de_records(prefix: &str) -> Vec<domicile_tests::SynthRecord> {
    (0..3)
        .map(|i| {
            touch(
                "DE",
                &format!("{prefix}-{i}"),
                "d0",
                now() - 3_600,
                "Frau Schmidt, Tel. 030 1234567",
            )
        })
        .collect()
}

/// A statement of eu-de's current key, signed with the region's real identity key but
/// `not_after` in the past: what a gateway that recorded an old statement could replay.
fn expired_statement(fed: &Federation) -> domicile_proto::pb::SignedSealingKey {
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    let current = node.signed_sealing_key();
    let mut statement =
        <SealingKeyStatement as prost::Message>::decode(current.statement.as_slice())
            .expect("the node's statement decodes");
    statement.not_before = now() - 3 * 86_400;
    statement.not_after = now() - 86_400;
    node.audit().sign_statement(&statement)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_sealing_key_is_refused_before_a_byte_is_sealed() -> anyhow::Result<()> {
    let fed = setup().await?;
    let before = interactions_in(&fed, "eu-de")?;
    let mut honest = domicile_tests::gateway_client(&fed).await?;
    let fr_statement = client::regions(&mut honest)
        .await?
        .into_iter()
        .find(|r| r.region_id == "eu-fr")
        .and_then(|r| r.signed_sealing_key)
        .unwrap();

    let attacks = [
        (
            "its own key, re-signed with its own identity",
            KeyAttack::Substitute,
            "the sealing key's signature does not verify with the region's identity key",
        ),
        (
            "its own key beside the region's signed statement",
            KeyAttack::SwapPlainKey,
            "the relayed sealing key",
        ),
        (
            "its own key, no statement",
            KeyAttack::Unsigned,
            "no signed sealing key",
        ),
        (
            "the region's own statement, expired",
            KeyAttack::Relay(expired_statement(&fed)),
            "not valid now (expired at",
        ),
        (
            "another region's valid statement",
            KeyAttack::Relay(fr_statement),
            "the sealing key's signature does not verify",
        ),
    ];
    for (what, key, says) in attacks {
        let mal = MaliciousGateway::start(
            fed.gateway_addr,
            Attacks {
                target: "eu-de".into(),
                key,
                ..Default::default()
            },
        )
        .await?;
        let mut gw = client::connect(mal.addr).await?;
        let regions = client::regions(&mut gw).await?;
        let err = client::ingest(
            &gw,
            TENANT,
            &regions,
            &fed.trust_bundle,
            &de_records(what),
            10,
        )
        .await
        .expect_err(what);
        let text = format!("{err:#}");
        assert!(
            text.contains("refusing to seal for region eu-de") && text.contains(says),
            "{what}: {text}"
        );
        assert_eq!(
            mal.loot
                .envelopes
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{what}: an envelope reached the attacker"
        );
        let trusted = fed.trust_bundle.verify_region(
            regions.iter().find(|r| r.region_id == "eu-de").unwrap(),
            now(),
        );
        assert!(trusted.is_err(), "{what}");
    }
    assert_eq!(
        interactions_in(&fed, "eu-de")?,
        before,
        "nothing was stored"
    );

    // The same harness relaying honestly: the records go through, sealed to the region's key,
    // and the attacker, which sees every envelope, opens none of them.
    let mal = MaliciousGateway::start(
        fed.gateway_addr,
        Attacks {
            target: "eu-de".into(),
            ..Default::default()
        },
    )
    .await?;
    let mut gw = client::connect(mal.addr).await?;
    let regions = client::regions(&mut gw).await?;
    let summary = client::ingest(
        &gw,
        TENANT,
        &regions,
        &fed.trust_bundle,
        &de_records("ok"),
        10,
    )
    .await?;
    assert_eq!(summary.accepted, 3);
    let loot = &mal.loot;
    assert!(loot.envelopes.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(
        loot.records_read.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(interactions_in(&fed, "eu-de")?, before + 3);

    // A bundle for another federation (another identity for eu-de) refuses the honest key too.
    let mut foreign = domicile_proto::trust::TrustBundle::new();
    foreign.insert("eu-de", &[7; 32], None);
    foreign.insert("eu-fr", &[8; 32], None);
    let err = client::ingest(&gw, TENANT, &regions, &foreign, &de_records("foreign"), 10)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("region eu-de"), "{err:#}");
    Ok(())
}

fn access(recipient: &SealingKeyPair, id: &str) -> SubmitSubjectRequestRequest {
    SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: Some(SubjectRef {
            country: "DE".into(),
            external_id: id.into(),
        }),
        kind: SubjectRequestKind::Access as i32,
        recipient_public_key: recipient.public().as_bytes().to_vec(),
        actor: "dpo-desk".into(),
        ..Default::default()
    }
}

fn erasure(id: &str) -> SubmitSubjectRequestRequest {
    SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: Some(SubjectRef {
            country: "DE".into(),
            external_id: id.into(),
        }),
        kind: SubjectRequestKind::Erasure as i32,
        actor: "dpo-desk".into(),
        ..Default::default()
    }
}

fn hold(id: &str) -> PlaceLegalHoldRequest {
    PlaceLegalHoldRequest {
        tenant_id: TENANT.into(),
        subject: Some(SubjectRef {
            country: "DE".into(),
            external_id: id.into(),
        }),
        reason: "litigation 12".into(),
        expires_at: ts(now() + 30 * 86_400),
        ..Default::default()
    }
}

fn incident() -> ReportIncidentRequest {
    ReportIncidentRequest {
        tenant_id: TENANT.into(),
        window: Some(TimeRange {
            start: ts(now() - 7 * 86_400),
            end: ts(now()),
        }),
        categories: vec![domicile_proto::pb::DataCategory::Profile as i32],
        description: "a laptop was stolen".into(),
        detected_at: ts(now()),
        ..Default::default()
    }
}

/// The node's refusal: `PERMISSION_DENIED`, naming the reason, with `DPO_SIGNATURE_REFUSED`.
fn assert_refused(status: &tonic::Status, reason: &str, says: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(says), "{reason}: {status:?}");
    use tonic_types::StatusExt;
    if let Some(info) = status.get_error_details().error_info() {
        assert_eq!(info.reason, "DPO_SIGNATURE_REFUSED", "{status:?}");
        assert_eq!(info.metadata["reason"], reason, "{status:?}");
    }
}

fn dpo_refusals(fed: &Federation) -> anyhow::Result<Vec<String>> {
    let conn = fed.node("eu-de").unwrap().connect()?;
    let mut stmt =
        conn.prepare("SELECT details FROM audit_log WHERE kind = 'dpo_refused' ORDER BY seq")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cannot_act_as_the_dpo() -> anyhow::Result<()> {
    let fed = setup().await?;
    let dpo = SealingKeyPair::generate();
    let start = |dpo: DpoAttack| {
        MaliciousGateway::start(
            fed.gateway_addr,
            Attacks {
                target: "eu-de".into(),
                dpo,
                ..Default::default()
            },
        )
    };

    // Swapping the export's recipient key for its own breaks the DPO's signature.
    let mal = start(DpoAttack::SwapRecipient).await?;
    let mut gw = client::connect(mal.addr).await?;
    let err = gw
        .submit_subject_request(fed.signed(access(&dpo, "d0")))
        .await
        .unwrap_err();
    assert_refused(
        &err,
        "bad_signature",
        "dpo_signature.signature: does not verify",
    );

    // An access request waiting for the tenant's identity verification, filed honestly.
    let mut honest = client::connect(fed.gateway_addr).await?;
    let waiting = SubmitSubjectRequestRequest {
        verification: None,
        ..access(&dpo, "d2")
    };
    let waiting = honest
        .submit_subject_request(fed.signed(waiting))
        .await?
        .into_inner()
        .receipts
        .remove(0);
    assert_eq!(waiting.status, SubjectRequestStatus::Received as i32);
    let verify = || UpdateSubjectRequestRequest {
        tenant_id: TENANT.into(),
        request_id: waiting.request_id.clone(),
        action: Some(Action::Verify(IdentityVerification {
            method: VerificationMethod::DocumentCheck as i32,
            evidence_reference: "ticket 1".into(),
            verified_by: "agent-1".into(),
            verified_at: None,
        })),
        actor: "dpo-desk".into(),
        dpo_signature: None,
    };

    // Claiming the DPO's authority itself: no signature, or its own key's.
    for (attack, reason, says) in [
        (DpoAttack::Strip, "missing", "dpo_signature: required"),
        (DpoAttack::OwnKey, "unknown_key", "no DPO key with this id"),
    ] {
        let mal = start(attack).await?;
        let mut gw = client::connect(mal.addr).await?;
        let err = gw
            .submit_subject_request(fed.signed(access(&dpo, "d0")))
            .await
            .unwrap_err();
        assert_refused(&err, reason, says);
        let err = gw
            .submit_subject_request(fed.signed(erasure("d1")))
            .await
            .unwrap_err();
        assert_refused(&err, reason, says);
        let err = gw
            .place_legal_hold(fed.signed(hold("d1")))
            .await
            .unwrap_err();
        assert_refused(&err, reason, says);
        let err = gw
            .report_incident(fed.signed(incident()))
            .await
            .unwrap_err();
        assert_refused(&err, reason, says);
        // Verifying the waiting request on its own (which would release the export).
        let err = gw
            .update_subject_request(fed.signed(verify()))
            .await
            .unwrap_err();
        assert_refused(&err, reason, says);
    }
    // Nothing moved: the request still waits, with nothing in its history but its receipt.
    let still = honest
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: waiting.request_id.clone(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(still.status, SubjectRequestStatus::Received as i32);
    assert_eq!(still.events.len(), 1);

    // Relayed honestly, the DPO's request works, and its export opens only with the DPO's key.
    let mal = start(DpoAttack::None).await?;
    let mut gw = client::connect(mal.addr).await?;
    let answer = gw
        .submit_subject_request(fed.signed(access(&dpo, "d0")))
        .await?
        .into_inner();
    let receipt = &answer.receipts[0];
    let export = receipt.export.as_ref().unwrap();
    let open = |keys: &SealingKeyPair| {
        open_export(
            keys,
            TENANT,
            "eu-de",
            receipt.request_id.as_bytes(),
            &export.encapsulated_key,
            &export.ciphertext,
        )
    };
    assert!(open(&dpo).is_ok());
    assert!(open(&mal.sealing).is_err(), "the attacker cannot open it");
    gw.place_legal_hold(fed.signed(hold("d2"))).await?;

    // Replays of what it recorded: each nonce was spent.
    let mut upstream = domicile_tests::gateway_client(&fed).await?;
    let recorded = mal.loot.subject_requests.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1);
    let err = upstream
        .submit_subject_request(recorded[0].clone())
        .await
        .unwrap_err();
    assert_refused(&err, "replayed", "dpo_signature.nonce: already used");
    let held = mal.loot.holds.lock().unwrap().clone();
    let err = upstream
        .place_legal_hold(held[0].clone())
        .await
        .unwrap_err();
    assert_refused(&err, "replayed", "already used");

    // Stale or future signatures (a request kept back, or a skewed forger's clock).
    for at in [now() - 600, now() + 600] {
        let mut late = erasure("d3");
        sign_request(&mut late, &fed.dpo.key, at);
        let err = upstream.submit_subject_request(late).await.unwrap_err();
        assert_refused(
            &err,
            "stale",
            "dpo_signature.signed_at: stale or from the future",
        );
    }

    // Nothing happened to d1 and d3: no erasure, no hold; access still finds them.
    for id in ["d1", "d3"] {
        let found = upstream
            .submit_subject_request(fed.signed(access(&dpo, id)))
            .await?
            .into_inner();
        assert_eq!(found.receipts.len(), 1, "{id} still exists");
    }
    let conn = fed.node("eu-de").unwrap().connect()?;
    let holds: i64 = conn.query_row("SELECT COUNT(*) FROM legal_holds", [], |r| r.get(0))?;
    assert_eq!(holds, 1, "only the DPO's own hold on d2");

    // Every refusal is audited with its reason and the principal that asked.
    let refusals = dpo_refusals(&fed)?;
    for reason in [
        "bad_signature",
        "missing",
        "unknown_key",
        "replayed",
        "stale",
    ] {
        assert!(
            refusals
                .iter()
                .any(|d| d.contains(&format!("\"{reason}\""))),
            "{reason} not audited: {refusals:?}"
        );
    }
    assert!(
        refusals.iter().all(|d| d.contains("\"principal\"")),
        "{refusals:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_calling_a_node_directly_cannot_act_as_the_dpo() -> anyhow::Result<()> {
    let fed = setup().await?;
    // The compromised gateway's own mutual-TLS identity, and a principal header claiming the
    // DPO: the node still wants the DPO's signature.
    let mut node = domicile_tests::node_client(&fed, "eu-de").await?;
    fn claim<T>(inner: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(inner);
        r.metadata_mut().insert(
            "x-domicile-principal",
            "dpo;dpo-key=0000000000000000".parse().unwrap(),
        );
        r
    }
    let err = node
        .submit_subject_request(claim(RegionalNodeSubmitSubjectRequestRequest {
            request: Some(erasure("d0")),
        }))
        .await
        .unwrap_err();
    assert_refused(&err, "missing", "dpo_signature: required");
    let err = node
        .place_legal_hold(claim(RegionalNodePlaceLegalHoldRequest {
            request: Some(hold("d0")),
        }))
        .await
        .unwrap_err();
    assert_refused(&err, "missing", "dpo_signature: required");
    let err = node
        .report_incident(claim(RegionalNodeReportIncidentRequest {
            incident_id: format!("inc-{}", "ab".repeat(16)),
            request: Some(incident()),
        }))
        .await
        .unwrap_err();
    assert_refused(&err, "missing", "dpo_signature: required");
    // A signature for one kind of request does not carry over to another.
    let signed_hold = fed.signed(hold("d0"));
    let mut as_erasure = erasure("d0");
    as_erasure.dpo_signature = signed_hold.dpo_signature.clone();
    let err = node
        .submit_subject_request(claim(RegionalNodeSubmitSubjectRequestRequest {
            request: Some(as_erasure),
        }))
        .await
        .unwrap_err();
    assert_refused(&err, "bad_signature", "does not verify");
    assert_eq!(interactions_in(&fed, "eu-de")?, 4, "d0's data is all there");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_forged_audit_heads_are_caught() -> anyhow::Result<()> {
    let fed = setup().await?;
    let witness = HeadWitness::default();
    let mal = MaliciousGateway::start(
        fed.gateway_addr,
        Attacks {
            target: "eu-de".into(),
            stale_audit_head: true,
            ..Default::default()
        },
    )
    .await?;
    let mut stale = client::connect(mal.addr).await?;
    let mut honest = domicile_tests::gateway_client(&fed).await?;
    let head = |r: domicile_proto::pb::GetAuditCheckpointResponse| r.checkpoint.unwrap();
    let ask = || GetAuditCheckpointRequest {
        region_id: "eu-de".into(),
    };

    // The first head, through the malicious gateway: genuine, so accepted.
    let first = head(stale.get_audit_checkpoint(ask()).await?.into_inner());
    witness.observe(&fed.trust_bundle, "eu-de", &first)?;
    // More activity; the honest head moves on.
    domicile_tests::ingest_records(&fed, &de_records("more")).await?;
    let later = head(honest.get_audit_checkpoint(ask()).await?.into_inner());
    assert!(later.seq > first.seq);
    witness.observe(&fed.trust_bundle, "eu-de", &later)?;
    // The malicious gateway presents the old head again: a rollback.
    let replayed = head(stale.get_audit_checkpoint(ask()).await?.into_inner());
    assert_eq!(replayed.seq, first.seq);
    let err = witness
        .observe(&fed.trust_bundle, "eu-de", &replayed)
        .unwrap_err();
    assert!(matches!(err, TrustError::Rollback(..)), "{err}");
    // A head it made up (another hash), or one signed with its own key, does not verify.
    let mut made_up = later.clone();
    made_up.head_hash[0] ^= 1;
    let err = witness
        .observe(&fed.trust_bundle, "eu-de", &made_up)
        .unwrap_err();
    assert!(matches!(err, TrustError::BadSignature(..)), "{err}");
    let mut own = later.clone();
    own.public_key = mal.identity.verifying_key().as_bytes().to_vec();
    own.signature = ed25519_dalek::Signer::sign(
        &mal.identity,
        &domicile_proto::trust::checkpoint_message(
            "eu-de",
            own.seq + 1,
            own.at.unwrap().seconds,
            &own.head_hash,
        ),
    )
    .to_bytes()
    .to_vec();
    own.seq += 1;
    let err = witness
        .observe(&fed.trust_bundle, "eu-de", &own)
        .unwrap_err();
    assert!(matches!(err, TrustError::BadSignature(..)), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_witness_catches_a_node_restored_from_an_older_copy() -> anyhow::Result<()> {
    let fed = setup().await?;
    let mut gw = domicile_tests::gateway_client(&fed).await?;
    let ask = || GetAuditCheckpointRequest {
        region_id: "eu-de".into(),
    };
    let first = gw.get_audit_checkpoint(ask()).await?.into_inner();
    let w = first.witness.unwrap();
    assert!(
        [
            AuditWitnessStatus::First as i32,
            AuditWitnessStatus::Extends as i32
        ]
        .contains(&w.status),
        "{w:?}"
    );
    domicile_tests::ingest_records(&fed, &de_records("more")).await?;
    let second = gw.get_audit_checkpoint(ask()).await?.into_inner();
    let witnessed = second.checkpoint.unwrap().seq;
    assert_eq!(
        second.witness.unwrap().status,
        AuditWitnessStatus::Extends as i32
    );

    // The region's operator puts back the log as it was at the first head (the node keeps
    // running and signs the head it finds): later entries and checkpoints removed.
    let cut = first.checkpoint.unwrap().seq;
    let conn = fed.node("eu-de").unwrap().connect()?;
    conn.execute_batch(match conn.dialect() {
        Dialect::Sqlite => {
            "DROP TRIGGER audit_log_no_delete; DROP TRIGGER audit_checkpoints_no_delete;"
        }
        Dialect::Postgres => {
            "ALTER TABLE audit_log DISABLE TRIGGER USER; ALTER TABLE audit_checkpoints DISABLE TRIGGER USER;"
        }
    })?;
    conn.execute_batch(&format!(
        "DELETE FROM audit_log WHERE seq > {cut}; DELETE FROM audit_checkpoints WHERE seq > {cut};"
    ))?;
    drop(conn);

    let err = gw.get_audit_checkpoint(ask()).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains("eu-de") && err.message().contains("restored from an older copy"),
        "{err:?}"
    );
    let metrics = fed.gateway.metrics().encode();
    assert!(
        metrics.contains("domicile_gateway_audit_forks_total{region=\"eu-de\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("domicile_gateway_audit_forked{region=\"eu-de\"} 1"),
        "{metrics}"
    );
    // The overview (and so the console) shows it.
    let overview = gw
        .get_overview(GetOverviewRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let de = overview
        .regions
        .iter()
        .find(|r| r.region_id == "eu-de")
        .unwrap();
    let seen = de.audit_witness.as_ref().unwrap();
    assert_eq!(seen.status, AuditWitnessStatus::Fork as i32, "{seen:?}");
    assert_eq!(seen.witnessed_seq, witnessed);
    let page = domicile_gateway::api::console::overview_json(TENANT, "24h", &overview);
    let shown = &page["regions"][0]["audit_witness"];
    assert_eq!(shown["status"], "fork", "{shown}");
    assert!(
        shown["detail"]
            .as_str()
            .unwrap()
            .contains("restored from an older copy"),
        "{shown}"
    );
    // The witnessed head is kept (persisted), not replaced by the fork.
    let file = std::fs::read_to_string(fed.gateway.config().audit_witness_file.clone().unwrap())?;
    let json: serde_json::Value = serde_json::from_str(&file)?;
    assert_eq!(json["regions"]["eu-de"]["seq"], witnessed, "{file}");
    // Other regions are unaffected.
    let fr = gw
        .get_audit_checkpoint(GetAuditCheckpointRequest {
            region_id: "eu-fr".into(),
        })
        .await?
        .into_inner();
    assert_ne!(fr.witness.unwrap().status, AuditWitnessStatus::Fork as i32);
    Ok(())
}
