//! Sealing-key rotation: after a rotation the node publishes only its new key, still opens
//! envelopes sealed to the previous key until the grace period ends, and refuses them with
//! `UNKNOWN_KEY` after it.

use domicile_node::{Node, NodeConfig, config::unix_seconds};
use domicile_proto::{
    pb::{
        RecordPayload, RecordStatus, RejectReason, SealedEnvelope, SubjectRecord,
        record_payload::Record,
    },
    seal::{EnvelopeSealer, PublicSealingKey},
};

fn envelope(key: &domicile_proto::pb::SealingKey, id: &str) -> SealedEnvelope {
    let key = PublicSealingKey::from_bytes(&key.public_key).unwrap();
    let mut sealer = EnvelopeSealer::new("acme", "eu-de", &key).unwrap();
    sealer
        .seal(
            "DE",
            &format!("subject/{id}"),
            &RecordPayload {
                record: Some(Record::Subject(SubjectRecord {
                    external_id: id.into(),
                    full_name: "Erika Mustermann".into(),
                    ..Default::default()
                })),
            },
        )
        .unwrap();
    sealer.finish()
}

#[test]
fn offset_date_times_in_unix_seconds() {
    let t = |s: &str| unix_seconds(&s.parse().unwrap());
    assert_eq!(t("1970-01-02T00:00:00Z"), Some(86_400));
    assert_eq!(t("2026-11-23T20:00:00+01:00"), Some(1_795_460_400));
    assert_eq!(t("2026-11-23"), None, "a date without a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_key_opens_envelopes_until_its_grace_period_ends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new("eu-de", &["DE"], dir.path().join("n.sqlite"));
    config.insecure_plaintext = true; // in-process only
    domicile_node::store::keys::create_region_keys(&config)?;
    let node = Node::open(config.clone())?;
    let old = node.sealing_key();
    // A client sealed these before the rotation.
    let in_grace = envelope(&old, "c-1");
    let late = envelope(&old, "c-2");
    drop(node);

    // Rotate: the old key becomes the previous one, and a fresh key the current one.
    let current = config.sealing_key_path();
    let previous = dir.path().join("sealing.previous.key");
    std::fs::rename(&current, &previous)?;
    domicile_node::store::keys::write_private(
        &current,
        &domicile_proto::seal::SealingKeyPair::generate().private_bytes(),
    )?;
    config.previous_sealing_key_file = Some(previous);
    config.previous_sealing_key_until = Some("2999-01-01T00:00:00Z".parse()?);
    let node = Node::open(config.clone())?;
    let new = node.sealing_key();
    assert_ne!(new.key_id, old.key_id, "a new key is published");
    let results = node.ingest("acme", in_grace).await?;
    assert_eq!(
        results[0].status,
        RecordStatus::Accepted as i32,
        "{results:?}"
    );
    let fresh = envelope(&new, "c-3");
    let results = node.ingest("acme", fresh).await?;
    assert_eq!(results[0].status, RecordStatus::Accepted as i32);
    drop(node);

    // The grace period is over: the previous key opens nothing.
    config.previous_sealing_key_until = Some("2020-01-01T00:00:00Z".parse()?);
    let node = Node::open(config)?;
    assert_eq!(node.sealing_key().key_id, new.key_id);
    let results = node.ingest("acme", late).await?;
    assert_eq!(results[0].status, RecordStatus::Rejected as i32);
    assert_eq!(results[0].reason, RejectReason::UnknownKey as i32);
    Ok(())
}

#[test]
fn a_previous_key_needs_its_grace_period() {
    let mut config = NodeConfig::new("eu-de", &["DE"], "n.sqlite".into());
    config.insecure_plaintext = true;
    config.previous_sealing_key_file = Some("old.key".into());
    let e = config.validate().unwrap_err();
    assert_eq!(e.path, "previous_sealing_key_until");
}
