//! The DPO's and the operators' trust commands against a running federation:
//! `domicile dpo keygen|request|hold|release`, `domicile export keygen|open`, and
//! `domicile trust export|bundle` making the bundle clients verify sealing keys with.

mod common;
use common::domicile;

use domicile::federation::Federation;
use domicile_node::{Node, NodeConfig};
use domicile_proto::pb::{RecordPayload, RegionInfo, SubjectRecord, record_payload::Record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dpo_signs_on_their_machine_and_an_unregistered_key_is_refused() -> anyhow::Result<()> {
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .start()
        .await?;
    let records = [domicile::synth::SynthRecord {
        country: "DE".into(),
        idempotency_key: "s-c-1".into(),
        payload: RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: "c-1".into(),
                full_name: "Jana Novak".into(),
                email: "jana@example.de".into(),
                ..Default::default()
            })),
        },
    }];
    let mut gw = domicile::client::connect(fed.gateway_addr).await?;
    let regions = domicile::client::regions(&mut gw).await?;
    domicile::client::ingest(&gw, "acme", &regions, &fed.trust_bundle, &records, 10).await?;
    let dir = tempfile::tempdir()?;
    let gateway = fed.gateway_addr.to_string();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // The requester's key; the DPO's signed access request; the export opened.
    let (code, out) = domicile(&["export", "keygen", "--out", &path("me.key")]);
    assert_eq!(code, 0, "{out}");
    let recipient = out.trim().to_owned();
    let dpo_key = fed.dpo.key_file.to_str().unwrap().to_owned();
    let receipts = path("receipts");
    let request_with = |key: &str, kind: &str, verified: &[&str]| {
        let mut args = vec![
            "dpo",
            "request",
            "--gateway",
            &gateway,
            "--dpo-key",
            key,
            "--tenant",
            "acme",
            "--kind",
            kind,
            "--subject",
            "c-1",
            "--country",
            "DE",
            "--recipient-key",
            &recipient,
            "--receipts-dir",
            &receipts,
        ];
        args.extend_from_slice(verified);
        domicile(&args)
    };
    let verified = [
        "--verified",
        "document_check",
        "--evidence",
        "ticket-4411",
        "--verified-by",
        "agent-7",
    ];
    let request = |key: &str, kind: &str| request_with(key, kind, &verified);
    // Without the verification the request waits for it: no export yet.
    let (code, out) = request_with(&dpo_key, "access", &[]);
    assert_eq!(code, 0, "{out}");
    let waiting: serde_json::Value = serde_json::from_str(out.lines().next().unwrap())?;
    assert_eq!(
        waiting["status"], "SUBJECT_REQUEST_STATUS_RECEIVED",
        "{out}"
    );
    assert_eq!(waiting["sealed_export"], false, "{out}");
    // An unknown method is refused before anything is sent.
    let (code, out) = request_with(
        &dpo_key,
        "access",
        &[
            "--verified",
            "a-hunch",
            "--evidence",
            "x",
            "--verified-by",
            "y",
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--verified"), "{out}");
    let (code, out) = request(&dpo_key, "access");
    assert_eq!(code, 0, "{out}");
    let receipt: serde_json::Value = serde_json::from_str(out.lines().next().unwrap())?;
    assert_eq!(receipt["sealed_export"], true, "{out}");
    assert_eq!(
        receipt["status"], "SUBJECT_REQUEST_STATUS_COMPLETED",
        "{out}"
    );
    let file = format!(
        "{}/{}.receipt",
        path("receipts"),
        receipt["request_id"].as_str().unwrap()
    );
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

    // A key nobody registered: refused by the node, naming why.
    let (code, out) = domicile(&[
        "dpo",
        "keygen",
        "--out",
        &path("rogue.key"),
        "--tenant",
        "acme",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("[[key]]") && out.contains("tenant = \"acme\""),
        "{out}"
    );
    let (code, out) = request(&path("rogue.key"), "portability");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("PermissionDenied") || out.contains("permission"),
        "{out}"
    );
    assert!(out.contains("no DPO key with this id"), "{out}");

    // A hold and its release, both signed.
    let (code, out) = domicile(&[
        "dpo",
        "hold",
        "--gateway",
        &gateway,
        "--dpo-key",
        &dpo_key,
        "--tenant",
        "acme",
        "--subject",
        "c-1",
        "--country",
        "DE",
        "--reason",
        "case-9",
        "--days",
        "30",
    ]);
    assert_eq!(code, 0, "{out}");
    let hold_id = out.lines().next().unwrap().trim().to_owned();
    assert!(hold_id.starts_with("eu-de.hold-"), "{out}");
    let (code, out) = domicile(&[
        "dpo",
        "release",
        "--gateway",
        &gateway,
        "--dpo-key",
        &dpo_key,
        "--tenant",
        "acme",
        "--hold-id",
        &hold_id,
    ]);
    assert_eq!(code, 0, "{out}");

    // The operators' bundle: each region's entry exported from its node's configuration, then
    // combined; it verifies the statement that node signs, and refuses another region's.
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir)?;
    let (_, config) = common::node_on(None, &node_dir, "trust", common::free_port(), "");
    let node = Node::open(NodeConfig::from_toml(&std::fs::read_to_string(&config)?)?)?;
    let (code, out) = domicile(&["trust", "export", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(path("eu-de.json"), &out)?;
    let (code, out) = domicile(&["trust", "bundle", &path("eu-de.json")]);
    assert_eq!(code, 0, "{out}");
    let bundle = domicile_proto::trust::TrustBundle::from_json(&out, "combined")?;
    let mut info = RegionInfo {
        region_id: "eu-de".into(),
        signed_sealing_key: Some(node.signed_sealing_key()),
        ..Default::default()
    };
    bundle.verify_region(&info, domicile_proto::domain::unix_now())?;
    // The federation's eu-de is another node, with another identity: refused.
    info.signed_sealing_key = regions
        .iter()
        .find(|r| r.region_id == "eu-de")
        .unwrap()
        .signed_sealing_key
        .clone();
    assert!(
        bundle
            .verify_region(&info, domicile_proto::domain::unix_now())
            .is_err()
    );
    // Two different identity keys for one region are not combined silently.
    let mut other = domicile_proto::trust::TrustBundle::new();
    other.insert("eu-de", &[9; 32], None);
    std::fs::write(path("other.json"), other.to_json())?;
    let (code, out) = domicile(&["trust", "bundle", &path("eu-de.json"), &path("other.json")]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("region eu-de appears with two different identity keys"),
        "{out}"
    );
    Ok(())
}
