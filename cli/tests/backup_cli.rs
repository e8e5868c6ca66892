//! `domicile node backup` and `domicile node restore` on a real node's files: a backup taken
//! while the node is open, an erasure after it, then a restore. The erased subject stays
//! unreadable in the backup (its key is gone) and is erased again by the restore; everyone
//! else comes back whole, and the audit chain verifies.

mod common;
use common::domicile;

use domicile::synth::{self, SynthSpec};
use domicile_node::{
    Node, NodeConfig, domain::stored::Profile, store::Backend, store::vault::Vault,
};
use domicile_proto::{
    pb::{SubjectRef, SubjectRequestKind, SubmitSubjectRequestRequest},
    rights::RightsRequest,
    seal::{EnvelopeSealer, PublicSealingKey},
};

const TENANT: &str = "acme";

/// Interactions of the subject `?2` of tenant `?1`.
const INTERACTIONS_OF: &str =
    "SELECT COUNT(*) FROM interactions WHERE tenant = $1 AND subject_id = $2";

/// Twenty DE subjects' records, the one the tests erase and one they keep.
fn sample() -> (Vec<synth::SynthRecord>, String, String) {
    let records = synth::generate(&SynthSpec {
        countries: vec!["DE".into()],
        subjects: 20,
        interactions: 400,
        seed: 5,
    });
    (
        records,
        synth::subject_id("DE", 3),
        synth::subject_id("DE", 4),
    )
}

fn count(db: &Backend, sql: &str, subject: &str) -> i64 {
    let conn = db.connect_read_write().unwrap();
    conn.query_row(sql, [TENANT, subject], |r| r.get(0))
        .unwrap()
}

/// Ingests the records through an in-process node, then erases `erased` (a backup of the
/// database is taken in between by `backup`, while the node is open, given the references the
/// database knows `erased` and `kept` by). Returns those references.
async fn ingest_backup_erase(
    config_path: &std::path::Path,
    records: &[synth::SynthRecord],
    (erased, kept): (&str, &str),
    backup: impl FnOnce(&str, &str),
) -> anyhow::Result<(String, String)> {
    let node = Node::open(NodeConfig::from_toml(&std::fs::read_to_string(
        config_path,
    )?)?)?;
    let key = PublicSealingKey::from_bytes(&node.sealing_key().public_key)?;
    let mut sealer = EnvelopeSealer::new(TENANT, "eu-de", &key)?;
    for r in records {
        sealer.seal(&r.country, &r.idempotency_key, &r.payload)?;
    }
    node.ingest(TENANT, sealer.finish()).await?;
    // The subject objected to marketing before the backup: its erasure keeps a suppression,
    // which a restore (a copy from before the erasure) must make again.
    node.record_consent(domicile_proto::consent::ConsentChange::from_record(
        &domicile_proto::pb::RecordConsentRequest {
            tenant_id: TENANT.into(),
            subject: Some(SubjectRef {
                country: "DE".into(),
                external_id: erased.to_owned(),
            }),
            purpose: domicile_proto::pb::Purpose::Marketing as i32,
            channel: domicile_proto::pb::Channel::Email as i32,
            action: domicile_proto::pb::ConsentAction::Object as i32,
            source: domicile_proto::pb::ConsentSource::WebForm as i32,
            wording_sha256: vec![1; 32],
            actor: "test".into(),
            token_ttl_seconds: 0,
        },
    )?)
    .await?;
    let reference = |external: &str| -> anyhow::Result<String> {
        Ok(node
            .store()
            .vault()
            .find(TENANT, external)?
            .expect("an ingested subject has a reference")
            .reference)
    };
    let refs = (reference(erased)?, reference(kept)?);
    backup(&refs.0, &refs.1);
    let receipt = node
        .submit_subject_request(RightsRequest::parse(&SubmitSubjectRequestRequest {
            verification: Some(domicile_proto::rights::verified_by_platform(
                "test-session",
                "test-platform",
            )),
            tenant_id: TENANT.into(),
            subject: Some(SubjectRef {
                country: "DE".into(),
                external_id: erased.to_owned(),
            }),
            kind: SubjectRequestKind::Erasure as i32,
            actor: "test".into(),
            ..Default::default()
        })?)
        .await?;
    assert!(receipt.completed_at.is_some());
    assert!(node.profile_of(TENANT, erased)?.is_none());
    assert!(node.store().vault().find(TENANT, erased)?.is_none());
    node.erasures_purged().await?;
    Ok(refs)
}

/// Whether `id` is anywhere in `bytes` in clear.
fn holds(bytes: &[u8], id: &str) -> bool {
    bytes.windows(id.len()).any(|w| w == id.as_bytes())
}

/// The canaries of subject `external` in `records`: its external id, its records'
/// idempotency keys, its interaction ids and its name and e-mail.
fn canaries_of(records: &[synth::SynthRecord], external: &str) -> Vec<String> {
    use domicile_proto::pb::record_payload::Record;
    let mut out = vec![external.to_owned()];
    for r in records {
        match &r.payload.record {
            Some(Record::Subject(s)) if s.external_id == external => {
                out.push(r.idempotency_key.clone());
                out.extend([s.full_name.clone(), s.email.clone()]);
            }
            Some(Record::Interaction(i)) if i.subject_external_id == external => {
                out.extend([r.idempotency_key.clone(), i.interaction_id.clone()]);
            }
            _ => {}
        }
    }
    out.retain(|c| c.len() >= 6);
    out
}

/// Asserts that no canary is in `bytes` (named `what`), in clear, hex or base64.
fn assert_no_canary(what: &str, bytes: &[u8], canaries: &[String]) {
    use base64::Engine;
    assert!(canaries.len() > 3, "the subject has canaries: {canaries:?}");
    let forms: Vec<String> = canaries
        .iter()
        .flat_map(|c| {
            [
                c.clone(),
                hex::encode(c),
                base64::engine::general_purpose::STANDARD.encode(c),
            ]
        })
        .collect();
    // One pass over the bytes for every form of every canary.
    let found = aho_corasick::AhoCorasick::new(&forms)
        .unwrap()
        .find(bytes)
        .map(|m| &forms[m.pattern().as_usize()]);
    assert!(found.is_none(), "{found:?} found in {what}");
}

/// Every file of the node's directory `dir` whose name starts with `prefix`, concatenated.
fn files_bytes(dir: &std::path::Path, prefix: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file()
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Suppression entries in a node's database.
fn suppressions(db: &Backend) -> i64 {
    db.connect_read_write()
        .unwrap()
        .query_row("SELECT COUNT(*) FROM suppressions", [], |r| r.get(0))
        .unwrap()
}

/// PostgreSQL: the documented path. `pg_dump` while the node serves, an erasure, then (node
/// stopped) `pg_restore` into a fresh database and `domicile node erase-again`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_restore_keeps_erasures_erased_after_erase_again() -> anyhow::Result<()> {
    let cluster = domicile_pg_cluster::PgCluster::start()?;
    let dir = tempfile::tempdir()?;
    let listen = common::free_port();
    let (live, config_path) = common::node_on(Some(&cluster), dir.path(), "live", listen, "");
    let config = config_path.to_str().unwrap();
    let (records, erased_id, kept_id) = sample();
    let dump = dir.path().join("node.pgdump");
    let (erased, kept) =
        ingest_backup_erase(&config_path, &records, (&erased_id, &kept_id), |_, _| {
            cluster.dump("live", &dump).unwrap();
        })
        .await?;
    // The dump names no customer: their ids are not in it in clear.
    let dumped = std::fs::read(&dump)?;
    assert!(!holds(&dumped, &erased_id) && !holds(&dumped, &kept_id));
    let kept_before = count(&live, INTERACTIONS_OF, &kept);
    assert!(kept_before > 0);
    assert_eq!(count(&live, INTERACTIONS_OF, &erased), 0);
    assert!(suppressions(&live) > 0, "the erasure kept a suppression");

    // The SQLite commands say what to do instead.
    let (code, out) = domicile(&["node", "backup", "--config", config, "--to", "x"]);
    assert!(code != 0 && out.contains("pg_dump"), "{out}");

    // Restore into a new database and point the node at it.
    cluster.restore(&dump, "restored")?;
    let restored = Backend::Postgres(cluster.url("restored"));
    assert!(
        count(&restored, INTERACTIONS_OF, &erased) > 0,
        "the dump predates the erasure"
    );
    // Before anything else runs: in the restored dump the erased subject's profile is there,
    // but does not open (its key is gone from the vault); the kept subject's does.
    let sqlite = dir.path().join("eu-de.sqlite");
    let kek: [u8; 32] = std::fs::read(sqlite.with_extension("kek"))?
        .try_into()
        .unwrap();
    let vault = Vault::open(&Backend::Sqlite(sqlite.with_extension("keys.sqlite")), &kek)?;
    assert!(
        vault.find(TENANT, &erased_id)?.is_none(),
        "nothing maps the erased customer's id to its reference any more"
    );
    let conn = restored.connect_read_write()?;
    let blob = |id: &str| -> anyhow::Result<Vec<u8>> {
        Ok(conn.query_row(
            "SELECT profile FROM subject_pii WHERE tenant = $1 AND external_id = $2",
            [TENANT, id],
            |r| r.get(0),
        )?)
    };
    assert!(
        vault.key(TENANT, &erased)?.is_none(),
        "the erased subject's key is destroyed"
    );
    let kept_key = vault.key(TENANT, &kept)?.expect("the kept subject's key");
    assert!(Profile::open(&kept_key, TENANT, &kept, &blob(&kept)?).is_some());
    assert!(Profile::open(&kept_key, TENANT, &erased, &blob(&erased)?).is_none());
    drop((conn, vault));
    let Backend::Postgres(url) = &restored else {
        unreachable!()
    };
    common::node_config(
        &config_path,
        listen,
        &dir.path().join("eu-de.sqlite"),
        &format!("storage = \"{url}\"\n"),
    );
    // Not while the node serves.
    let busy = std::net::TcpListener::bind(listen)?;
    let (code, out) = domicile(&["node", "erase-again", "--config", config]);
    assert!(code != 0 && out.contains("stop the node"), "{out}");
    drop(busy);
    let (code, out) = domicile(&["node", "erase-again", "--config", config]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 subjects, 1 erased since the backup and erased again"),
        "{out}"
    );
    assert_eq!(count(&restored, INTERACTIONS_OF, &erased), 0);
    assert!(suppressions(&restored) > 0, "the suppression is made again");
    // No canary of the erased subject in any byte of the restored database's files, nor in
    // any row of it as text.
    let canaries = canaries_of(&records, &erased_id);
    let Backend::Postgres(url) = &restored else {
        unreachable!()
    };
    let db_name = url.rsplit('/').next().unwrap();
    assert_no_canary(
        "the restored database's files",
        &cluster.database_bytes(db_name)?,
        &canaries,
    );
    let conn = restored.connect_read_write()?;
    let tables: Vec<String> = conn
        .prepare("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for table in &tables {
        for row in conn
            .prepare(&format!("SELECT CAST(t AS TEXT) FROM {table} AS t"))?
            .query_map([], |r| r.get::<_, String>(0))?
        {
            rows.extend(row?.into_bytes());
        }
    }
    drop(conn);
    assert_no_canary("the restored database's rows", &rows, &canaries);
    assert_eq!(count(&restored, INTERACTIONS_OF, &kept), kept_before);
    let node = Node::open(NodeConfig::from_toml(&std::fs::read_to_string(
        &config_path,
    )?)?)?;
    assert!(node.profile_of(TENANT, &kept_id)?.is_some());
    assert!(node.profile_of(TENANT, &erased_id)?.is_none());
    drop(node);
    let (code, out) = domicile(&["audit", "verify", "--config", config]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = domicile(&["audit", "report", "--config", config, "--format", "csv"]);
    assert!(code == 0 && out.contains("restore,"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_keeps_erasures_erased() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("eu-de.sqlite");
    let listen = common::free_port();
    let config_path = dir.path().join("node.toml");
    common::node_config(&config_path, listen, &db, "");
    let config = config_path.to_str().unwrap();
    let backup = dir.path().join("backup.sqlite");
    let (records, erased_id, kept_id) = sample();
    let mut kept_before = 0;
    // Online: the node is open (and could be serving) while the backup is taken.
    let (erased, kept) = ingest_backup_erase(
        &config_path,
        &records,
        (&erased_id, &kept_id),
        |erased, kept| {
            kept_before = count(&Backend::Sqlite(db.clone()), INTERACTIONS_OF, kept);
            // An open follow-up for the subject about to be erased, in the backup.
            Backend::Sqlite(db.clone())
                .connect_read_write()
                .unwrap()
                .execute(
                    "INSERT INTO follow_ups (tenant, follow_up_id, subject_id, country, purpose,
                       channels, channel, reason, priority, status, opened_at, due_at, updated_at)
                     VALUES ($1, $2, $3, 'DE', 1, '1', 1, 'nps-detractor', 2, 1, 0, 0, 0)",
                    [TENANT, FOLLOW_UP, erased],
                )
                .unwrap();
            assert!(
                count(&Backend::Sqlite(db.clone()), INTERACTIONS_OF, erased) > 0 && kept_before > 0
            );
            let backup_to = || {
                domicile(&[
                    "node",
                    "backup",
                    "--config",
                    config,
                    "--to",
                    backup.to_str().unwrap(),
                ])
            };
            let (code, out) = backup_to();
            assert_eq!(code, 0, "{out}");
            let (code, out) = backup_to();
            assert_ne!(code, 0, "an existing backup is never overwritten: {out}");
        },
    )
    .await?;

    // The backup still holds the erased subject's rows, but its profile no longer opens: the
    // key is gone from the vault (crypto-shredding). The kept subject's does.
    let kek: [u8; 32] = std::fs::read(db.with_extension("kek"))?.try_into().unwrap();
    let vault = Vault::open(&Backend::Sqlite(db.with_extension("keys.sqlite")), &kek)?;
    assert_eq!(
        count(
            &Backend::Sqlite(backup.clone()),
            "SELECT COUNT(*) FROM subject_pii WHERE tenant = $1 AND external_id = $2",
            &erased
        ),
        1
    );
    assert!(
        vault.key(TENANT, &erased)?.is_none(),
        "the erased subject's key is destroyed"
    );
    assert!(vault.key(TENANT, &kept)?.is_some());
    assert!(vault.find(TENANT, &erased_id)?.is_none());
    drop(vault);
    // The backup names no customer in clear, nor holds any canary of the erased one.
    let backed_up = std::fs::read(&backup)?;
    assert!(!holds(&backed_up, &erased_id) && !holds(&backed_up, &kept_id));
    assert_no_canary("the backup", &backed_up, &canaries_of(&records, &erased_id));

    // A running node's database is not restored under it.
    let busy = std::net::TcpListener::bind(listen)?;
    let (code, out) = domicile(&[
        "node",
        "restore",
        "--config",
        config,
        "--from",
        backup.to_str().unwrap(),
        "--replace",
    ]);
    assert_ne!(code, 0);
    assert!(out.contains("stop the node"), "{out}");
    drop(busy);
    // Nor is an existing database replaced without --replace.
    let (code, out) = domicile(&[
        "node",
        "restore",
        "--config",
        config,
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(out.contains("--replace"), "{out}");

    let (code, out) = domicile(&[
        "node",
        "restore",
        "--config",
        config,
        "--from",
        backup.to_str().unwrap(),
        "--replace",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 subjects, 1 erased since the backup and erased again"),
        "{out}"
    );

    // No canary of the erased subject in any byte of the restored files (database, WAL,
    // shared memory, vault).
    assert_no_canary(
        "the restored node's files",
        &files_bytes(dir.path(), "eu-de"),
        &canaries_of(&records, &erased_id),
    );
    // The erased subject did not come back; the others did, whole and readable.
    assert!(
        suppressions(&Backend::Sqlite(db.clone())) > 0,
        "the suppression is made again"
    );
    assert_eq!(
        count(&Backend::Sqlite(db.clone()), INTERACTIONS_OF, &erased),
        0
    );
    assert_eq!(
        count(
            &Backend::Sqlite(db.clone()),
            "SELECT COUNT(*) FROM subjects WHERE tenant = $1 AND external_id = $2",
            &erased
        ),
        0
    );
    assert_eq!(
        count(&Backend::Sqlite(db.clone()), INTERACTIONS_OF, &kept),
        kept_before
    );
    // The follow-up the backup held for the erased subject is cancelled and unlinked again.
    let conn = Backend::Sqlite(db.clone()).connect_read_write()?;
    let (link, status): (String, i64) = conn.query_row(
        "SELECT subject_id, status FROM follow_ups WHERE tenant = $1 AND follow_up_id = $2",
        [TENANT, FOLLOW_UP],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    assert_eq!((link.as_str(), status), ("", 5), "unlinked and cancelled");
    drop(conn);
    let node = Node::open(NodeConfig::from_toml(&std::fs::read_to_string(
        &config_path,
    )?)?)?;
    let profile = node.profile_of(TENANT, &kept_id)?;
    assert!(profile.is_some_and(|p| !p.full_name.is_empty()));
    assert!(node.profile_of(TENANT, &erased_id)?.is_none());
    drop(node);
    // The restore is in the audit log, and the chain verifies.
    let (code, out) = domicile(&["audit", "verify", "--config", config]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = domicile(&["audit", "report", "--config", config, "--format", "csv"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restore,"), "{out}");
    Ok(())
}

/// A follow-up id for the restore test.
const FOLLOW_UP: &str = "eu-de.followup-00000000000000000000000000000001";

/// The schema version this build writes.
const SCHEMA: i64 = domicile_node::domain::schema::SCHEMA_VERSION;
#[test]
fn migrate_reports_and_applies_pending_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("eu-de.sqlite");
    let config_path = dir.path().join("node.toml");
    common::node_config(&config_path, common::free_port(), &db, "");
    let config = config_path.to_str().unwrap();
    let (code, out) = domicile(&["node", "migrate", "--config", config, "--check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no database yet"), "{out}");
    let (code, out) = domicile(&["node", "migrate", "--config", config]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("created at schema {SCHEMA}")),
        "{out}"
    );
    // A version-3 database (empty): the rollups are missing.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TABLE rollup_cells; DROP TABLE subject_numbers; PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);
    let (code, out) = domicile(&["node", "migrate", "--config", config, "--check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("schema 3; pending:\n  3 -> 4: rollup cells")
            && out.contains("4 -> 5: DPO signature nonces"),
        "{out}"
    );
    let (code, out) = domicile(&["node", "migrate", "--config", config]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("migrated from schema 3 to {SCHEMA}")),
        "{out}"
    );
    let (code, out) = domicile(&["node", "migrate", "--config", config, "--check"]);
    assert!(
        code == 0 && out.contains(&format!("schema {SCHEMA}, up to date")),
        "{out}"
    );
    // A database from a newer release is refused, never downgraded.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA + 1)
        .unwrap();
    drop(conn);
    let (code, out) = domicile(&["node", "migrate", "--config", config]);
    assert_ne!(code, 0);
    assert!(out.contains("written by a newer Domicile"), "{out}");
}

#[test]
fn migrate_on_postgres_creates_checks_and_refuses_a_newer_schema() -> anyhow::Result<()> {
    let cluster = domicile_pg_cluster::PgCluster::start()?;
    let dir = tempfile::tempdir()?;
    let (db, config_path) = common::node_on(
        Some(&cluster),
        dir.path(),
        "migrated",
        common::free_port(),
        "",
    );
    let config = config_path.to_str().unwrap();
    let (code, out) = domicile(&["node", "migrate", "--config", config, "--check"]);
    assert!(code == 0 && out.contains("no database yet"), "{out}");
    let (code, out) = domicile(&["node", "migrate", "--config", config]);
    assert!(
        code == 0 && out.contains(&format!("created at schema {SCHEMA}")),
        "{out}"
    );
    assert!(
        out.contains("postgres://127.0.0.1:") && !out.contains("domicile@"),
        "{out}"
    );
    let (code, out) = domicile(&["node", "migrate", "--config", config, "--check"]);
    assert!(
        code == 0 && out.contains(&format!("schema {SCHEMA}, up to date")),
        "{out}"
    );
    db.connect_read_write()?.execute_batch(&format!(
        "UPDATE domicile_schema SET version = {}",
        SCHEMA + 1
    ))?;
    let (code, out) = domicile(&["node", "migrate", "--config", config]);
    assert_ne!(code, 0);
    assert!(out.contains("written by a newer Domicile"), "{out}");
    Ok(())
}
