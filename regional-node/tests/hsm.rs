//! The key-encryption key in a PKCS#11 token (SoftHSM2, Debian's `softhsm2`, as a real token):
//! the node wraps and unwraps subject keys inside the token, ingests, reads, erases and
//! restarts with it; a wrong PIN and a missing key stop the start with a clear error; the key
//! cannot be read out of the token; and a region whose KEK was a file moves it into the token
//! with an online, resumable rotation.
//!
//! One test function in this binary: a PKCS#11 library is initialised once per process, and
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) then.

use std::{path::Path, process::Command};

use domicile_node::{
    Node, NodeConfig,
    store::kek::{KekSource, Pkcs11Config},
};
use domicile_proto::{
    pb::{
        RecordPayload, RecordStatus, SubjectRecord, SubjectRef, SubjectRequestKind,
        SubmitSubjectRequestRequest, record_payload::Record,
    },
    rights::RightsRequest,
    seal::{EnvelopeSealer, PublicSealingKey},
};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "domicile-eu-de";
const PIN: &str = "31415926";

fn softhsm(dir: &Path) {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM2 is not installed ({MODULE}): `apt-get install softhsm2` (the README's test \
         command installs it when run as root)"
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // SAFETY: set before any thread of this test process reads the environment (the only
    // test in this binary, before the runtime starts); SoftHSM2 reads it at C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN, "--pin", PIN])
        .args(["--so-pin", "27182818"])
        .output()
        .expect("softhsm2-util runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn token(dir: &Path, key_label: &str, pin: &str) -> Pkcs11Config {
    let pin_file = dir.join(format!("pin-{pin}"));
    std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
    Pkcs11Config {
        module: MODULE.into(),
        token_label: TOKEN.into(),
        key_label: key_label.into(),
        pin_file: Some(pin_file),
        pin_env: None,
    }
}

fn config(dir: &Path, kek: Option<Pkcs11Config>) -> NodeConfig {
    let mut config = NodeConfig::new("eu-de", &["DE"], dir.join("n.sqlite"));
    config.insecure_plaintext = true; // in-process only
    config.kek_pkcs11 = kek;
    config
}

async fn ingest(node: &Node, ids: &[&str]) {
    let key = PublicSealingKey::from_bytes(&node.sealing_key().public_key).unwrap();
    let mut sealer = EnvelopeSealer::new("acme", "eu-de", &key).unwrap();
    for id in ids {
        sealer
            .seal(
                "DE",
                &format!("subject/{id}"),
                &RecordPayload {
                    record: Some(Record::Subject(SubjectRecord {
                        external_id: (*id).into(),
                        full_name: format!("Name of {id}"),
                        ..Default::default()
                    })),
                },
            )
            .unwrap();
    }
    let results = node.ingest("acme", sealer.finish()).await.unwrap();
    assert!(
        results
            .iter()
            .all(|r| r.status == RecordStatus::Accepted as i32),
        "{results:?}"
    );
}

fn name_of(node: &Node, id: &str) -> Option<String> {
    node.profile_of("acme", id)
        .unwrap()
        .map(|p| p.full_name.clone())
}

async fn erase(node: &Node, id: &str) {
    let receipt = node
        .submit_subject_request(
            RightsRequest::parse(&SubmitSubjectRequestRequest {
                verification: Some(domicile_proto::rights::verified_by_platform(
                    "test-session",
                    "test-platform",
                )),
                tenant_id: "acme".into(),
                subject: Some(SubjectRef {
                    country: "DE".into(),
                    external_id: id.into(),
                }),
                kind: SubjectRequestKind::Erasure as i32,
                actor: "test".into(),
                ..Default::default()
            })
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(receipt.completed_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kek_lives_in_a_pkcs11_token() {
    let dir = tempfile::tempdir().unwrap();
    softhsm(dir.path());

    // Missing key: the token holds none of that label yet.
    let region = dir.path().join("region");
    let cfg = config(&region, Some(token(dir.path(), "domicile-kek", PIN)));
    domicile_node::store::keys::create_region_keys(&cfg).unwrap();
    let err = Node::open(cfg.clone()).unwrap_err().to_string();
    assert!(
        err.contains("no secret key labelled \"domicile-kek\""),
        "{err}"
    );

    // Wrong PIN (first, while no session of this process is logged in to the token).
    let wrong = config(&region, Some(token(dir.path(), "domicile-kek", "00000000")));
    let err = Node::open(wrong).unwrap_err().to_string();
    assert!(err.contains("refused the PIN"), "{err}");
    // Nothing of the data was made by either failed start.
    assert!(!region.join("n.sqlite").exists());

    // `domicile keygen --config` makes the key inside the token, where it stays.
    let kek = cfg.kek_pkcs11.clone().unwrap();
    domicile_node::store::kek::create_token_key(&kek).unwrap();
    assert!(domicile_node::store::kek::token_key_is_sealed(&kek).unwrap());
    let again = domicile_node::store::kek::create_token_key(&kek)
        .unwrap_err()
        .to_string();
    assert!(again.contains("already holds a key"), "{again}");
    assert!(!cfg.kek_path().exists(), "no KEK file is ever made");

    // Ingest, read, erase.
    let node = Node::open(cfg.clone()).unwrap();
    ingest(&node, &["c-1", "c-2"]).await;
    assert_eq!(name_of(&node, "c-1").as_deref(), Some("Name of c-1"));
    erase(&node, "c-1").await;
    assert_eq!(name_of(&node, "c-1"), None);
    drop(node);

    // Restart: the token opens the same keys.
    let node = Node::open(cfg.clone()).unwrap();
    assert_eq!(name_of(&node, "c-2").as_deref(), Some("Name of c-2"));
    assert_eq!(name_of(&node, "c-1"), None, "erased stays erased");
    drop(node);

    // Another key of the same token is not this vault's KEK: refused before touching data.
    let other = token(dir.path(), "another-kek", PIN);
    domicile_node::store::kek::create_token_key(&other).unwrap();
    let err = Node::open(config(&region, Some(other)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match this key vault"), "{err}");

    // A region whose KEK is a file moves it into the token: rotation, online and resumable.
    let filed = dir.path().join("filed");
    let old = config(&filed, None);
    domicile_node::store::keys::create_region_keys(&old).unwrap();
    let node = Node::open(old.clone()).unwrap();
    let ids: Vec<String> = (0..30).map(|i| format!("f-{i}")).collect();
    ingest(&node, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    drop(node);
    let new_kek = token(dir.path(), "filed-kek", PIN);
    domicile_node::store::kek::create_token_key(&new_kek).unwrap();
    let mut rotating = config(&filed, Some(new_kek.clone()));
    rotating.previous_kek = Some(KekSource {
        file: Some(old.kek_path()),
        env: None,
        pkcs11: None,
    });
    // The node serves during the rotation: old keys open, new subjects use the token.
    let node = Node::open(rotating.clone()).unwrap();
    ingest(&node, &["f-new"]).await;
    let vault = domicile_node::store::vault::Vault::open_for(&rotating).unwrap();
    assert_eq!(vault.to_rewrap().unwrap(), 30);
    assert_eq!(vault.rewrap(12).unwrap(), 12);
    assert_eq!(name_of(&node, "f-3").as_deref(), Some("Name of f-3"));
    while vault.rewrap(12).unwrap() > 0 {}
    assert_eq!(vault.retire_other_keks().unwrap(), 1);
    drop((vault, node));
    // Done: the token alone opens the vault; the old file no longer does.
    let node = Node::open(config(&filed, Some(new_kek))).unwrap();
    for id in ids.iter().chain([&"f-new".to_owned()]) {
        assert_eq!(name_of(&node, id), Some(format!("Name of {id}")));
    }
    drop(node);
    let err = Node::open(old).unwrap_err().to_string();
    assert!(err.contains("does not match this key vault"), "{err}");
}
