//! What an erasure leaves behind, tried as an auditor would: the suppression it keeps for a
//! subject who had objected (and nothing else of them), and the bytes of the node's own files
//! after it (docs/erasure.md).

use base64::Engine;
use domicile_node::store::Backend;
use domicile_proto::pb::{
    Channel, CheckContactPermissionRequest, ConsentAction, ConsentSource, PermissionReasonCode,
    Purpose, QueryRecordsRequest, RecordConsentRequest, RecordQuery, SubjectRef,
    SubjectRequestKind, SubjectRequestStatus, SubmitSubjectRequestRequest,
};
use domicile_tests::{
    Federation, TENANT, eventually, federation, gateway_client, ingest_records, person,
    query_records, touch,
};

fn subject(country: &str, id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        country: country.into(),
        external_id: id.into(),
    })
}

async fn erase(fed: &Federation, gw: &mut domicile_client::Gateway, country: &str, id: &str) {
    let resp = gw
        .submit_subject_request(fed.signed(SubmitSubjectRequestRequest {
            verification: Some(domicile_proto::rights::verified_by_platform(
                "test-session",
                "test-platform",
            )),
            tenant_id: TENANT.into(),
            subject: subject(country, id),
            kind: SubjectRequestKind::Erasure as i32,
            actor: "dpo-desk".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.receipts[0].status,
        SubjectRequestStatus::Completed as i32
    );
}

async fn consent(gw: &mut domicile_client::Gateway, id: &str, action: ConsentAction) {
    gw.record_consent(RecordConsentRequest {
        tenant_id: TENANT.into(),
        subject: subject("US", id),
        purpose: Purpose::Marketing as i32,
        channel: Channel::Email as i32,
        action: action as i32,
        source: ConsentSource::WebForm as i32,
        wording_sha256: vec![1; 32],
        actor: "web".into(),
        token_ttl_seconds: 0,
    })
    .await
    .unwrap();
}

/// Marketing by e-mail to `id` (US: opt-out): whether allowed, and the consent reason's code.
async fn check(gw: &mut domicile_client::Gateway, id: &str) -> (bool, i32) {
    let resp = gw
        .check_contact_permission(CheckContactPermissionRequest {
            tenant_id: TENANT.into(),
            subject: subject("US", id),
            purpose: Purpose::Marketing as i32,
            channel: Channel::Email as i32,
        })
        .await
        .unwrap()
        .into_inner();
    (resp.allowed, resp.reasons.last().map_or(0, |r| r.code))
}

const SUPPRESSED: i32 = PermissionReasonCode::SuppressedAfterErasure as i32;

async fn people(fed: &Federation, who: &[(&str, &str)]) {
    let records: Vec<_> = who
        .iter()
        .map(|(id, email)| {
            let mut r = person("US", id, "Emily Johnson", email, "", "94107", 1990);
            // The CRM sends the customer again with another record: a new key.
            r.idempotency_key = format!("s-{id}-{email}");
            r
        })
        .collect();
    ingest_records(fed, &records).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objector_erased_then_sent_again_is_not_contacted() -> anyhow::Result<()> {
    let fed = federation(&[("us", &["US"])]).await?;
    let mut gw = gateway_client(&fed).await?;
    people(
        &fed,
        &[("u1", "Emily.J@Example.com"), ("u2", "kim@example.com")],
    )
    .await;
    // Opt-out country: contactable until the objection.
    assert!(check(&mut gw, "u1").await.0);
    consent(&mut gw, "u1", ConsentAction::Object).await;
    assert!(!check(&mut gw, "u1").await.0);

    erase(&fed, &mut gw, "US", "u1").await;
    erase(&fed, &mut gw, "US", "u2").await;
    // The same person, asked about after the erasure, and sent again by the CRM…
    assert_eq!(check(&mut gw, "u1").await, (false, SUPPRESSED));
    people(&fed, &[("u1", "emily.j@example.com")]).await;
    assert_eq!(check(&mut gw, "u1").await, (false, SUPPRESSED));
    // …or under a new customer id with the same e-mail address (case aside).
    people(&fed, &[("u1-new", "EMILY.J@example.com")]).await;
    assert_eq!(check(&mut gw, "u1-new").await, (false, SUPPRESSED));
    // u2 never objected: erased and sent again, the country rule decides (opt-out: allowed).
    people(&fed, &[("u2", "kim@example.com")]).await;
    assert_eq!(
        check(&mut gw, "u2").await,
        (true, PermissionReasonCode::ConsentState as i32)
    );
    // A consent given after the erasure is a new entry on file, and it decides.
    consent(&mut gw, "u1", ConsentAction::Grant).await;
    assert!(check(&mut gw, "u1").await.0);

    // The suppression holds no identifier in clear: only keyed hashes, purpose, channel, day.
    let conn = fed.node("us").unwrap().connect()?;
    let rows: Vec<(String, i64, i64)> = conn
        .prepare("SELECT identifier, purpose, since_day FROM suppressions")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    assert!(!rows.is_empty());
    for (id, purpose, _) in &rows {
        assert_eq!(id.len(), 32, "a keyed hash: {id}");
        assert!(!id.contains("u1") && !id.contains("emily"));
        assert_eq!(*purpose, Purpose::Marketing as i64);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_can_turn_the_suppression_off() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/policies"))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let text = if path.ends_with("US.toml") {
            let off = text.replace("keep_suppression = true", "keep_suppression = false");
            assert_ne!(off, text, "US.toml states keep_suppression");
            off
        } else {
            text
        };
        std::fs::write(dir.path().join(path.file_name().unwrap()), text)?;
    }
    let fed = Federation::builder()
        .region("us", &["US"])
        .policy_dir(dir.path())
        .start()
        .await?;
    let mut gw = gateway_client(&fed).await?;
    people(&fed, &[("u1", "emily@example.com")]).await;
    consent(&mut gw, "u1", ConsentAction::Object).await;
    erase(&fed, &mut gw, "US", "u1").await;
    assert_eq!(
        check(&mut gw, "u1").await,
        (true, PermissionReasonCode::ConsentState as i32),
        "nothing kept: the country rule decides"
    );
    let n: i64 = fed.node("us").unwrap().connect()?.query_row(
        "SELECT COUNT(*) FROM suppressions",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(n, 0);
    Ok(())
}

/// Every value of one table's rows as text (bytea in hex), one row per line: what a
/// `pg_dump` of the database holds, in a form a byte scan can read (a custom-format dump is
/// compressed).
fn rows_as_text(backend: &Backend) -> anyhow::Result<Vec<u8>> {
    let conn = backend.connect_read_write()?;
    let tables: Vec<String> = conn
        .prepare("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for table in &tables {
        let rows: Vec<String> = conn
            .prepare(&format!("SELECT CAST(t AS TEXT) FROM {table} AS t"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for row in rows {
            out.extend_from_slice(row.as_bytes());
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// Every file directly in `dir`, by name.
fn files_in(dir: &std::path::Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_file() {
            files.push((p.display().to_string(), std::fs::read(&p)?));
        }
    }
    Ok(files)
}

/// The forensic test (docs/erasure.md). A subject with canary values in every field, its ids
/// too (external id, interaction ids, idempotency keys, profile, comments), is erased through
/// the gateway. Then every byte of the node's files (database, WAL, SHM, key vault; on
/// PostgreSQL the database's files and the cluster's WAL, and a `pg_dump`), and of copies
/// taken *before* the erasure (the database file and WAL, or a `pg_dump` and the raw data
/// directory), is scanned for every canary in clear, hex and base64: none is found, because no
/// id is ever stored in clear and everything personal is encrypted. What remains of the
/// subject in the older copies is rows under a reference that nothing maps to the customer
/// any more, whose ciphertexts no key opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_is_in_no_byte_of_the_nodes_files_nor_of_a_copy_from_before()
-> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let mut gw = gateway_client(&fed).await?;
    let subject_id = "CnrySubject7Q2";
    let canaries: Vec<String> = [
        subject_id,
        "CnryIntrxn",
        "CnryIdemKey",
        "CnryComment2Z5",
        "CnryName8H1",
        "cnry.mail9@example.de",
        "+49 151 90817263",
        "CnryPostal",
    ]
    .map(String::from)
    .to_vec();
    let mut who = person(
        "DE",
        subject_id,
        "CnryName8H1",
        "cnry.mail9@example.de",
        "+49 151 90817263",
        "CnryPostal",
        1970,
    );
    who.idempotency_key = "CnryIdemKey-p".into();
    let mut records = vec![who];
    for i in 0..40 {
        let mut t = touch(
            "DE",
            &format!("CnryIntrxn-{i}"),
            subject_id,
            1_780_272_000 + i * 3_600,
            &format!("CnryComment2Z5 {i}"),
        );
        t.idempotency_key = format!("CnryIdemKey-{i}");
        records.push(t);
    }
    // Someone else, kept: the scan must still see their rows (the method works), by an
    // outcome code stored in clear.
    records.push(person(
        "DE",
        "kept-1",
        "Kept Person",
        "kept@example.de",
        "",
        "10115",
        1980,
    ));
    let mut kept = touch("DE", "kept-i1", "kept-1", 1_780_272_000, "KeptComment");
    if let Some(domicile_proto::pb::record_payload::Record::Interaction(r)) =
        &mut kept.payload.record
    {
        r.outcome = "keptcode7x".into();
    }
    records.push(kept);
    // Free text in a field stored in clear is refused, naming the field, not echoing the value.
    let mut free = touch("DE", "CnryIntrxn-x", subject_id, 1_780_272_000, "");
    if let Some(domicile_proto::pb::record_payload::Record::Interaction(r)) =
        &mut free.payload.record
    {
        r.outcome = "called CnryName8H1 back".into();
    }
    let running = fed.node("eu-de").unwrap();
    let node = running.node.clone().unwrap();
    let key = domicile_proto::seal::PublicSealingKey::from_bytes(&node.sealing_key().public_key)?;
    let mut sealer = domicile_proto::seal::EnvelopeSealer::new(TENANT, "eu-de", &key)?;
    sealer.seal(&free.country, &free.idempotency_key, &free.payload)?;
    let refused = node.ingest(TENANT, sealer.finish()).await?;
    assert_eq!(
        refused[0].status,
        domicile_proto::pb::RecordStatus::Rejected as i32
    );
    assert!(
        refused[0].detail.contains("payload.interaction.outcome")
            && !refused[0].detail.contains("CnryName8H1"),
        "{}",
        refused[0].detail
    );
    ingest_records(&fed, &records).await?;
    let vault = node.store().vault();
    let reference = vault
        .find(TENANT, subject_id)?
        .expect("the subject has a reference")
        .reference;
    // Copies from before the erasure, as backups would hold them.
    let dir = tempfile::tempdir()?;
    let before = fed.copy_database("eu-de", dir.path(), "before")?;
    let mut scanned: Vec<(String, Vec<u8>)> = vec![(
        "the database's files before the erasure".into(),
        fed.database_bytes("eu-de")?,
    )];
    match &before {
        Backend::Sqlite(_) => scanned.extend(files_in(dir.path())?),
        Backend::Postgres(_) => scanned.push((
            "a pg_dump from before the erasure".into(),
            rows_as_text(&before)?,
        )),
    }
    let old_rows = |sql: &str| -> anyhow::Result<i64> {
        Ok(before
            .connect_read_write()?
            .query_row(sql, [TENANT, reference.as_str()], |r| r.get(0))?)
    };
    assert_eq!(
        old_rows("SELECT COUNT(*) FROM interactions WHERE tenant = $1 AND subject_id = $2")?,
        40,
        "the copy holds the subject's interactions, under its reference"
    );
    let before_files = scanned.len();

    erase(&fed, &mut gw, "DE", subject_id).await;
    // The rows go after the answer (docs/erasure.md): the files are scanned once they are
    // gone and the WAL checkpointed, which is also when the node's reads resume.
    node.erasures_purged().await?;
    assert_eq!(node.erasures_purging(), 0);

    // After: the node's own files, every one of them.
    scanned.push((
        "the database's files after the erasure".into(),
        fed.database_bytes("eu-de")?,
    ));
    scanned.extend(files_in(running.database.parent().unwrap())?);
    if let Backend::Postgres(_) = running.backend {
        let after = fed.copy_database("eu-de", dir.path(), "after")?;
        scanned.push(("a pg_dump after the erasure".into(), rows_as_text(&after)?));
    }
    if let Backend::Sqlite(_) = running.backend {
        assert!(
            scanned.iter().any(|(name, _)| name.ends_with("-wal")),
            "the WAL is scanned too"
        );
    }
    // The kept subject's rows are seen, before and after: the scan works.
    for group in [&scanned[..before_files], &scanned[before_files..]] {
        assert!(
            group.iter().any(|(_, bytes)| find(bytes, b"keptcode7x")),
            "the kept subject's outcome code is found in {:?}",
            group.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    }
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
    // One pass over each file for every form of every canary.
    let matcher = aho_corasick::AhoCorasick::new(&forms)?;
    let planted = format!(
        "xx{}yy",
        base64::engine::general_purpose::STANDARD.encode(&canaries[5])
    );
    assert!(
        matcher.find(planted.as_bytes()).is_some(),
        "the matcher finds a canary inside a base64 blob"
    );
    for (name, bytes) in &scanned {
        if let Some(m) = matcher.find(bytes) {
            panic!("{} found in {name}", forms[m.pattern().as_usize()]);
        }
    }
    // The copy from before can no longer be linked or read: nothing maps the customer's id to
    // a reference, the reference has no key, and so its profile and comments do not open.
    assert!(vault.find(TENANT, subject_id)?.is_none());
    assert!(vault.key(TENANT, &reference)?.is_none());
    assert!(vault.external_id(TENANT, &reference)?.is_none());
    assert_eq!(
        old_rows("SELECT COUNT(*) FROM subject_pii WHERE tenant = $1 AND external_id = $2")?,
        1,
        "the copy still holds the sealed profile…"
    );
    assert!(
        node.profile_of(TENANT, subject_id)?.is_none(),
        "…which nothing opens"
    );
    // The live database holds nothing under the reference but the request's record.
    let live = running.connect()?;
    for table in [
        "interactions",
        "interaction_text",
        "consent_state",
        "subject_flags",
    ] {
        let n: i64 = live.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE tenant = $1 AND subject_id = $2"),
            [TENANT, reference.as_str()],
            |r| r.get(0),
        )?;
        assert_eq!(n, 0, "{table} holds nothing of the erased subject");
    }
    let (start, end) = domicile_node::store::vault::stored_id_range(&reference);
    let keys: i64 = live.query_row(
        "SELECT COUNT(*) FROM ingest_keys WHERE tenant = $1 AND idempotency_key >= $2 AND idempotency_key < $3",
        [TENANT, start.as_str(), end.as_str()],
        |r| r.get(0),
    )?;
    assert_eq!(keys, 0, "nor do the idempotency keys");
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `subject` with `n` interactions (one in four with a comment), one hour apart.
fn history(subject_id: &str, n: i64) -> Vec<domicile_tests::SynthRecord> {
    let mut records = vec![person(
        "DE",
        subject_id,
        "Erika Mustermann",
        &format!("{subject_id}@example.de"),
        "",
        "10115",
        1975,
    )];
    for i in 0..n {
        let comment = if i % 4 == 0 { "sehr freundlich" } else { "" };
        records.push(touch(
            "DE",
            &format!("{subject_id}-i{i}"),
            subject_id,
            1_780_272_000 + i * 3_600,
            comment,
        ));
    }
    records
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

/// Rows of `table` whose `column` is `reference`.
fn rows_of(
    running: &domicile_tests::RunningNode,
    table: &str,
    column: &str,
    reference: &str,
) -> anyhow::Result<i64> {
    Ok(running.connect()?.query_row(
        &format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"),
        [reference],
        |r| r.get(0),
    )?)
}

/// An erasure answers once the subject is unlinkable (its vault entry gone) and its rows are
/// queued; the rows go after. Tried as a curious analyst would: a `QueryRecords` sent in that
/// window must not release the erased subject's records. It waits, and answers once they are
/// gone, without them. (With the wait taken out of `QueryRecords`, this test fails: the query
/// does not wait.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_sees_an_erased_subjects_rows_between_the_answer_and_the_purge()
-> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let mut gw = gateway_client(&fed).await?;
    let mut records = history("purged-1", 25);
    for other in ["kept-a", "kept-b", "kept-c"] {
        records.extend(history(other, 3));
    }
    ingest_records(&fed, &records).await?;
    let running = fed.node("eu-de").unwrap();
    let node = running.node.clone().unwrap();
    let reference = node
        .store()
        .vault()
        .find(TENANT, "purged-1")?
        .unwrap()
        .reference;
    let (before, _) = query_records(&mut gw, de_records()).await?;
    assert_eq!(before.len(), 25 + 3 * 3);

    let hold = node.hold_purges();
    erase(&fed, &mut gw, "DE", "purged-1").await;
    // Answered: unlinkable already, the rows still there and queued.
    assert!(node.store().vault().find(TENANT, "purged-1")?.is_none());
    assert!(node.store().vault().key(TENANT, &reference)?.is_none());
    assert_eq!(node.profile_of(TENANT, &reference)?, None);
    assert_eq!(
        rows_of(running, "interactions", "subject_id", &reference)?,
        25
    );
    assert_eq!(
        rows_of(running, "erasure_purges", "subject_id", &reference)?,
        1
    );
    assert_eq!(node.erasures_purging(), 1);
    assert!(
        node.metrics()
            .encode()
            .contains("domicile_node_erasures_purging{region=\"eu-de\"} 1"),
        "operators see the purge waiting"
    );

    // The analyst's query, sent in the window: it waits at the node.
    let mut analyst = gateway_client(&fed).await?;
    let query = tokio::spawn(async move { query_records(&mut analyst, de_records()).await });
    eventually("the record query waits for the purge", || async {
        node.reads_waiting_for_purges() == 1
    })
    .await;
    assert!(!query.is_finished());
    assert_eq!(
        rows_of(running, "interactions", "subject_id", &reference)?,
        25
    );

    drop(hold);
    let (after, _) = query.await??;
    assert_eq!(after.len(), 3 * 3, "none of the erased subject's records");
    for (table, column) in [
        ("interactions", "subject_id"),
        ("interaction_text", "subject_id"),
        ("subject_numbers", "subject_id"),
        ("erasure_purges", "subject_id"),
    ] {
        assert_eq!(rows_of(running, table, column, &reference)?, 0, "{table}");
    }
    let (start, end) = domicile_node::store::vault::stored_id_range(&reference);
    let keys: i64 = running.connect()?.query_row(
        "SELECT COUNT(*) FROM ingest_keys WHERE idempotency_key >= $1 AND idempotency_key < $2",
        [start.as_str(), end.as_str()],
        |r| r.get(0),
    )?;
    assert_eq!(keys, 0, "the idempotency keys went with the rows");
    assert_eq!(node.erasures_purging(), 0);
    Ok(())
}

/// The purge queue is durable: a node stopped between an erasure's answer and the deletion
/// of its rows (a crash, a restart for an upgrade) deletes them when it starts again, and its
/// reads wait for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_before_the_purge_finishes_it_when_it_starts_again() -> anyhow::Result<()> {
    let mut fed = federation(&[("eu-de", &["DE"])]).await?;
    let mut gw = gateway_client(&fed).await?;
    let mut records = history("purged-2", 1_200);
    records.extend(history("kept-d", 4));
    ingest_records(&fed, &records).await?;
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    let reference = node
        .store()
        .vault()
        .find(TENANT, "purged-2")?
        .unwrap()
        .reference;
    let config = node.config().clone();
    let hold = node.hold_purges();
    erase(&fed, &mut gw, "DE", "purged-2").await;
    fed.stop_node("eu-de").await;
    // The process dies with the purge not started: nothing of this node runs again (the hold,
    // and the node it keeps, are never dropped), as after a SIGKILL.
    std::mem::forget(hold);
    drop(node);

    let running = fed.node("eu-de").unwrap();
    assert_eq!(
        rows_of(running, "interactions", "subject_id", &reference)?,
        1_200
    );
    let restarted = domicile_node::Node::open(config)?;
    // More than one purge step (1,200 rows), and the reads wait for all of them.
    restarted.erasures_purged().await?;
    assert_eq!(restarted.erasures_purging(), 0);
    for table in ["interactions", "interaction_text", "erasure_purges"] {
        assert_eq!(
            rows_of(running, table, "subject_id", &reference)?,
            0,
            "{table}"
        );
    }
    let kept = restarted.store().vault().find(TENANT, "kept-d")?.unwrap();
    assert_eq!(
        rows_of(running, "interactions", "subject_id", &kept.reference)?,
        4,
        "nobody else's rows"
    );
    Ok(())
}
