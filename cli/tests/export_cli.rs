//! `domicile export keygen` and `domicile export open`: the requester's side of an access
//! request, against a real node.

mod common;
use common::domicile;

use domicile_node::{Node, NodeConfig};
use domicile_proto::{
    pb::{
        RecordPayload, SubjectRecord, SubjectRef, SubjectRequestKind, SubmitSubjectRequestRequest,
        record_payload::Record,
    },
    rights::RightsRequest,
    seal::{EnvelopeSealer, PublicSealingKey},
};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_opens_their_export_with_their_own_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new("eu-de", &["DE"], dir.path().join("n.sqlite"));
    config.insecure_plaintext = true; // in-process only: the node never serves here
    domicile_node::store::keys::create_region_keys(&config)?;
    let node = Node::open(config)?;
    let key = PublicSealingKey::from_bytes(&node.sealing_key().public_key)?;
    let mut sealer = EnvelopeSealer::new("acme", "eu-de", &key)?;
    sealer.seal(
        "DE",
        "s-1",
        &RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: "c-1".into(),
                full_name: "Jana Novak".into(),
                email: "jana@example.de".into(),
                ..Default::default()
            })),
        },
    )?;
    node.ingest("acme", sealer.finish()).await?;

    let key_file = dir.path().join("requester.key");
    let (code, out) = domicile(&["export", "keygen", "--out", key_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let public = hex::decode(out.trim())?;
    assert_eq!(public.len(), 32);

    let receipt = node
        .submit_subject_request(RightsRequest::parse(&SubmitSubjectRequestRequest {
            verification: Some(domicile_proto::rights::verified_by_platform(
                "test-session",
                "test-platform",
            )),
            tenant_id: "acme".into(),
            subject: Some(SubjectRef {
                country: "DE".into(),
                external_id: "c-1".into(),
            }),
            kind: SubjectRequestKind::Access as i32,
            recipient_public_key: public,
            actor: "dpo".into(),
            ..Default::default()
        })?)
        .await?;
    let receipt_file = dir.path().join("receipt.bin");
    std::fs::write(&receipt_file, receipt.encode_to_vec())?;

    let (code, out) = domicile(&[
        "export",
        "open",
        "--key",
        key_file.to_str().unwrap(),
        "--tenant",
        "acme",
        "--receipt",
        receipt_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(doc["profile"]["email"], "jana@example.de");
    assert_eq!(doc["schema"], "domicile.export.v1");

    // Another tenant name (part of the sealing context) does not open it.
    let (code, _) = domicile(&[
        "export",
        "open",
        "--key",
        key_file.to_str().unwrap(),
        "--tenant",
        "globex",
        "--receipt",
        receipt_file.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    Ok(())
}
