//! `domicile audit verify` and `domicile audit report` against a real node's data, on each
//! backend.

mod common;
use common::domicile;

use domicile_node::{Node, NodeConfig, store::db::Dialect};
use domicile_proto::{
    consent::ConsentChange,
    pb::{Channel, ConsentAction, ConsentSource, Purpose, RecordConsentRequest, SubjectRef},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_tampered_entry_and_report_lists_activities_on_sqlite()
-> anyhow::Result<()> {
    verify_and_report(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_tampered_entry_and_report_lists_activities_on_postgres()
-> anyhow::Result<()> {
    let cluster = domicile_pg_cluster::PgCluster::start()?;
    verify_and_report(Some(&cluster)).await
}

async fn verify_and_report(cluster: Option<&domicile_pg_cluster::PgCluster>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (db, config_path) = common::node_on(cluster, dir.path(), "audit", common::free_port(), "");
    {
        let node = Node::open(NodeConfig::from_toml(&std::fs::read_to_string(
            &config_path,
        )?)?)?;
        for i in 0..5 {
            node.record_consent(ConsentChange::from_record(&RecordConsentRequest {
                tenant_id: "acme".into(),
                subject: Some(SubjectRef {
                    country: "DE".into(),
                    external_id: format!("c-{i}"),
                }),
                purpose: Purpose::CxSurvey as i32,
                channel: Channel::Phone as i32,
                action: ConsentAction::Grant as i32,
                source: ConsentSource::WebForm as i32,
                wording_sha256: vec![1; 32],
                actor: "test".into(),
                token_ttl_seconds: 0,
            })?)
            .await?;
        }
        node.audit_checkpoint().await?;
    }
    let config = config_path.to_str().unwrap();

    let (code, out) = domicile(&["audit", "verify", "--config", config]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("intact: 6 entries, 2 signed checkpoints"),
        "{out}"
    );

    let (code, out) = domicile(&["audit", "report", "--config", config, "--format", "csv"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("activity,tenant,purpose,events"), "{out}");
    assert!(
        out.contains("consent_change,acme,PURPOSE_CX_SURVEY,5,\"consent_records\""),
        "{out}"
    );
    let (code, out) = domicile(&["audit", "report", "--config", config]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["retention"][0]["policy"], "DE@2026-11-01");

    // Retention on demand, audited (the log then verifies with one more entry).
    let (code, out) = domicile(&["node", "sweep", "--config", config]);
    assert_eq!(code, 0, "{out}");
    // Standard output holds the JSON; the log lines on standard error follow it.
    let start = out.find('{').expect("a JSON document");
    let end = start + out[start..].find("\n}").expect("its end") + 2;
    let swept: serde_json::Value = serde_json::from_str(&out[start..end])?;
    assert_eq!(swept["interactions_deleted"], 0);
    let head = dir.path().join("head.json");
    let head_arg = head.to_str().unwrap();
    let (code, out) = domicile(&[
        "audit",
        "verify",
        "--config",
        config,
        "--save-head",
        head_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 8 entries"), "{out}");
    assert!(out.contains("trusted head saved: entry 7"), "{out}");
    let (code, out) = domicile(&[
        "audit",
        "verify",
        "--config",
        config,
        "--trusted-head",
        head_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("extends the trusted head: entry 7"), "{out}");

    // An operator "restores" the log as it was at entry 5: the later entries and their
    // checkpoints removed (triggers lifted). On its own the shorter log verifies; against the
    // head kept apart from the node, it is caught.
    let conn = db.connect_read_write()?;
    conn.execute_batch(match conn.dialect() {
        Dialect::Sqlite => {
            "DROP TRIGGER audit_log_no_delete; DROP TRIGGER audit_checkpoints_no_delete;"
        }
        Dialect::Postgres => {
            "ALTER TABLE audit_log DISABLE TRIGGER USER; ALTER TABLE audit_checkpoints DISABLE TRIGGER USER;"
        }
    })?;
    conn.execute_batch(
        "CREATE TABLE log_copy AS SELECT * FROM audit_log WHERE seq > 5; \
         CREATE TABLE cp_copy AS SELECT * FROM audit_checkpoints WHERE seq > 5; \
         DELETE FROM audit_log WHERE seq > 5; DELETE FROM audit_checkpoints WHERE seq > 5;",
    )?;
    drop(conn);
    let (code, out) = domicile(&["audit", "verify", "--config", config]);
    assert_eq!(code, 0, "a consistent older log verifies alone: {out}");
    assert!(out.contains("intact: 5 entries"), "{out}");
    let (code, out) = domicile(&[
        "audit",
        "verify",
        "--config",
        config,
        "--trusted-head",
        head_arg,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("TAMPERED: entry 6: Forked") && out.contains("restored from an older copy"),
        "{out}"
    );
    // Put the entries back for the next attack.
    let conn = db.connect_read_write()?;
    conn.execute_batch(
        "INSERT INTO audit_log SELECT * FROM log_copy; \
         INSERT INTO audit_checkpoints SELECT * FROM cp_copy; \
         DROP TABLE log_copy; DROP TABLE cp_copy;",
    )?;
    drop(conn);
    let (code, out) = domicile(&[
        "audit",
        "verify",
        "--config",
        config,
        "--trusted-head",
        head_arg,
    ]);
    assert_eq!(code, 0, "{out}");

    // Behind the node's back: lift the guard and edit entry 3.
    let conn = db.connect_read_write()?;
    conn.execute_batch(match conn.dialect() {
        Dialect::Sqlite => "DROP TRIGGER audit_log_no_update;",
        Dialect::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER USER;",
    })?;
    conn.execute_batch(
        "UPDATE audit_log SET details = replace(details, 'CX_SURVEY', 'MARKETING') WHERE seq = 3;",
    )?;
    drop(conn);
    let (code, out) = domicile(&["audit", "verify", "--config", config]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("TAMPERED: entry 3: Modified"), "{out}");

    // Verifying against another key fails at the first checkpoint, whatever the log says.
    let other = "00".repeat(31) + "01";
    let (code, out) = domicile(&[
        "audit",
        "verify",
        "--config",
        config,
        "--public-key",
        &other,
    ]);
    assert_ne!(code, 0, "{out}");
    Ok(())
}
