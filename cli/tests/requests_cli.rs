//! The DPO's case work with the CLI against a running federation: `domicile requests
//! list|show|verify|await|extend|refuse` and `domicile request verify`, the receipt checked
//! offline against the trust bundle (and a tampered one refused).

mod common;
use common::domicile;

use domicile::federation::Federation;
use domicile_proto::pb::{
    RecordPayload, SubjectRecord, SubjectRequestReceipt, record_payload::Record,
};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpo_works_a_case_from_the_queue_to_a_verified_receipt() -> anyhow::Result<()> {
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .start()
        .await?;
    let records: Vec<_> = ["c-1", "c-2"]
        .iter()
        .map(|id| domicile::synth::SynthRecord {
            country: "DE".into(),
            idempotency_key: format!("s-{id}"),
            payload: RecordPayload {
                record: Some(Record::Subject(SubjectRecord {
                    external_id: (*id).into(),
                    full_name: "Jana Novak".into(),
                    email: "jana@example.de".into(),
                    ..Default::default()
                })),
            },
        })
        .collect();
    let mut gw = domicile::client::connect(fed.gateway_addr).await?;
    let regions = domicile::client::regions(&mut gw).await?;
    domicile::client::ingest(&gw, "acme", &regions, &fed.trust_bundle, &records, 10).await?;
    let dir = tempfile::tempdir()?;
    let gateway = fed.gateway_addr.to_string();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let dpo_key = fed.dpo.key_file.to_str().unwrap().to_owned();
    let bundle = fed.trust_bundle_file.to_str().unwrap().to_owned();
    let (code, out) = domicile(&["export", "keygen", "--out", &path("me.key")]);
    assert_eq!(code, 0, "{out}");
    let recipient = out.trim().to_owned();
    let signer = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--gateway",
            &gateway,
            "--dpo-key",
            &dpo_key,
            "--tenant",
            "acme",
        ]);
        domicile(&all)
    };

    // Two requests received, neither verified yet.
    let mut ids = Vec::new();
    for (kind, subject) in [("access", "c-1"), ("erasure", "c-2")] {
        let mut args = vec![
            "dpo",
            "request",
            "--kind",
            kind,
            "--subject",
            subject,
            "--country",
            "DE",
        ];
        if kind == "access" {
            args.extend(["--recipient-key", &recipient]);
        }
        let (code, out) = signer(&args);
        assert_eq!(code, 0, "{out}");
        let r: serde_json::Value = serde_json::from_str(out.lines().next().unwrap())?;
        assert_eq!(r["status"], "SUBJECT_REQUEST_STATUS_RECEIVED", "{out}");
        ids.push(r["request_id"].as_str().unwrap().to_owned());
    }

    // The queue shows both, as JSON and as a table.
    let (code, out) = domicile(&[
        "requests",
        "list",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let queue: serde_json::Value = serde_json::from_str(&out)?;
    let listed: Vec<_> = queue["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), 2, "{out}");
    assert!(ids.iter().all(|id| listed.contains(id)), "{out}");
    assert_eq!(queue["counts"][0]["open"], 2, "{out}");
    let (code, out) = domicile(&[
        "requests",
        "list",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("eu-de: 2 open, 0 due within 7 days, 0 overdue"),
        "{out}"
    );
    assert!(out.contains(&ids[0]) && out.contains("received"), "{out}");

    // Verify the access request: fulfilled, its export written and opened.
    let (code, out) = signer(&[
        "requests",
        "verify",
        "--id",
        &ids[0],
        "--method",
        "document_check",
        "--evidence",
        "ticket-4411",
        "--verified-by",
        "agent-7",
        "--receipts-dir",
        &path("receipts"),
    ]);
    assert_eq!(code, 0, "{out}");
    let done: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(done["status"], "completed", "{out}");
    assert_eq!(done["sealed_export"], true, "{out}");
    assert_eq!(done["verification"]["method"], "document_check", "{out}");
    let file = format!("{}/{}.receipt", path("receipts"), ids[0]);
    let (code, out) = domicile(&[
        "export",
        "open",
        "--key",
        &path("me.key"),
        "--tenant",
        "acme",
        "--receipt",
        &file,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"external_id\": \"c-1\""), "{out}");
    // Fetched again (the requester lost it): the same export, which opens the same way.
    let (code, out) = domicile(&[
        "requests",
        "fetch",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
        "--id",
        &ids[0],
        "--out",
        &path("again.receipt"),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = domicile(&[
        "export",
        "open",
        "--key",
        &path("me.key"),
        "--tenant",
        "acme",
        "--receipt",
        &path("again.receipt"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"external_id\": \"c-1\""), "{out}");
    // A bad method is refused before anything is sent.
    let (code, out) = signer(&[
        "requests",
        "verify",
        "--id",
        &ids[1],
        "--method",
        "a-hunch",
        "--evidence",
        "x",
        "--verified-by",
        "y",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--method"), "{out}");

    // The erasure: waiting for the subject, extended, then refused.
    for (step, reason) in [
        ("await", "identity evidence requested"),
        ("extend", "many systems to search"),
        ("refuse", "identity could not be verified"),
    ] {
        let (code, out) = signer(&["requests", step, "--id", &ids[1], "--reason", reason]);
        assert_eq!(code, 0, "{step}: {out}");
    }

    // Its receipt, signed by the region, checked offline with the trust bundle.
    let (code, out) = domicile(&[
        "requests",
        "show",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
        "--id",
        &ids[1],
        "--out",
        &path("refused.receipt"),
    ]);
    assert_eq!(code, 0, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(shown["status"], "refused", "{out}");
    let steps: Vec<_> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        steps,
        ["received", "awaiting_subject", "extended", "refused"],
        "{out}"
    );
    let (code, out) = domicile(&[
        "request",
        "verify",
        &path("refused.receipt"),
        "--trust-bundle",
        &bundle,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("receipt verified: signed by region \"eu-de\""),
        "{out}"
    );
    assert!(out.contains("identity could not be verified"), "{out}");
    // The verification receipt written by `requests verify` verifies too.
    let (code, out) = domicile(&["request", "verify", &file, "--trust-bundle", &bundle]);
    assert_eq!(code, 0, "{out}");

    // Changed after signing (refused made completed): refused, naming why.
    let mut receipt =
        SubjectRequestReceipt::decode(std::fs::read(path("refused.receipt"))?.as_slice())?;
    receipt.status = domicile_proto::pb::SubjectRequestStatus::Completed as i32;
    std::fs::write(path("forged.receipt"), receipt.encode_to_vec())?;
    let (code, out) = domicile(&[
        "request",
        "verify",
        &path("forged.receipt"),
        "--trust-bundle",
        &bundle,
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    // Not a receipt at all.
    std::fs::write(path("junk.receipt"), b"\xff\xff\xff")?;
    let (code, out) = domicile(&[
        "request",
        "verify",
        &path("junk.receipt"),
        "--trust-bundle",
        &bundle,
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not a receipt"), "{out}");
    Ok(())
}
