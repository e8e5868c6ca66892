//! Backups of a node's data file, and restores that keep erasures erased.
//!
//! [`backup`] copies the database with SQLite's online backup API while the node serves (WAL
//! mode lets the copy read a consistent snapshot beside the writer). The key vault is not part
//! of it, by design: erasure destroys a subject's key there, so a backup of the data taken
//! before an erasure stays unreadable for that subject (crypto-shredding).
//!
//! [`restore`] puts a backup back with the node stopped. It checks the copy, then erases again
//! every subject the vault has a tombstone for (erased after the backup was taken), so that
//! their analytical rows, consents and requests do not come back either, and records the
//! restore in the audit log. The copy goes into place only once all that is committed.
//!
//! On PostgreSQL, backups are `pg_dump`'s and restores `pg_restore`'s; [`erase_again`] then
//! does to the restored database what [`restore`] does to a SQLite copy.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, backup::Backup};

use crate::{
    config::NodeConfig,
    domain::audit::{AuditLog, Entry, Kind},
    error::NodeError,
    store::keys,
    store::vault::Vault,
    {domain::schema::SCHEMA_VERSION, store::Backend},
};

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Subjects of the backup that were erased since, and were erased again.
    pub erased_again: usize,
    /// Subjects in the backup.
    pub subjects: usize,
}

fn internal(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(format!("{what}: {e}"))
}

/// Copies `from` (an SQLite file) to `to` page by page with the online backup API.
fn copy(from: &Path, to: &Path) -> Result<(), NodeError> {
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(Duration::from_secs(5))?;
    let mut target = Connection::open(to)?;
    Backup::new(&source, &mut target)?.run_to_completion(1024, Duration::ZERO, None)?;
    // The copy is a self-contained file: no write-ahead log beside it.
    target.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

/// Writes a consistent copy of the node's database to `to` (through a temporary file beside
/// it, renamed into place when complete). The node may be serving.
pub fn backup(config: &NodeConfig, to: &Path) -> Result<BackupReport, NodeError> {
    if let Backend::Postgres(_) = config.backend() {
        return Err(internal("backup", POSTGRES_BACKUP));
    }
    if !config.database.exists() {
        return Err(internal(
            "database",
            format!("{} does not exist", config.database.display()),
        ));
    }
    if to.exists() {
        return Err(internal(
            "backup",
            format!("{} exists; choose a new file", to.display()),
        ));
    }
    let partial = with_suffix(to, "partial");
    let _ = std::fs::remove_file(&partial);
    copy(&config.database, &partial)?;
    std::fs::rename(&partial, to).map_err(|e| internal("backup", e))?;
    let bytes = std::fs::metadata(to).map_or(0, |m| m.len());
    Ok(BackupReport {
        path: to.to_owned(),
        bytes,
    })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{suffix}"));
    PathBuf::from(name)
}

/// Every subject the database knows of, by tenant.
fn subjects(conn: &crate::store::db::Connection) -> Result<BTreeSet<(String, String)>, NodeError> {
    let mut stmt = conn.prepare(
        "SELECT tenant, external_id FROM subjects
         UNION SELECT tenant, subject_id FROM interactions
         UNION SELECT tenant, subject_id FROM consent_ledger
         UNION SELECT tenant, subject_id FROM subject_requests
         UNION SELECT tenant, subject_id FROM legal_holds
         UNION SELECT tenant, subject_id FROM subject_flags
         UNION SELECT tenant, subject_id FROM follow_ups WHERE subject_id <> ''
         UNION SELECT tenant, substr(idempotency_key, 1, 32) FROM ingest_keys",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<Result<_, _>>()
}

/// The documented backup of a node on PostgreSQL, for the refusal of the SQLite commands.
const POSTGRES_BACKUP: &str = "this node's data is in PostgreSQL: back it up with pg_dump and \
     restore it with pg_restore, then run `domicile node erase-again` (docs/operations.md, \
     \"Backup and restore\")";

/// The node must be stopped: its listen address must be free.
fn stopped(config: &NodeConfig, what: &str) -> Result<(), NodeError> {
    if std::net::TcpListener::bind(config.listen).is_err() {
        return Err(internal(
            what,
            format!(
                "{} is in use: stop the node before restoring its database",
                config.listen
            ),
        ));
    }
    Ok(())
}

/// In the open transaction of `tx` (a restored database): erases again every subject the
/// vault holds a tombstone for, and records the restore in the audit log.
fn erase_again_in(
    tx: &crate::store::db::Connection,
    config: &NodeConfig,
) -> Result<RestoreReport, NodeError> {
    let vault = Vault::open_for(config)?;
    let audit_seed = keys::load_secret(&config.audit_key_path(), "audit_key_file")?;
    let audit = AuditLog::new(
        &config.region_id,
        &audit_seed,
        config.audit_checkpoint_every,
    );
    let known = subjects(tx)?;
    let mut erased_again = 0;
    for (tenant, subject) in &known {
        if vault.was_erased(tenant, subject)? {
            // Holds recorded in the backup still apply; what they keep stays, flagged.
            crate::domain::rights::erase(
                tx,
                tenant,
                subject,
                &[],
                domicile_proto::domain::unix_now(),
                crate::domain::rights::Purge::Now,
            )?;
            erased_again += 1;
        }
    }
    // The suppressions the erasures kept are not in a copy taken before them: the vault kept
    // them, and they are written back.
    for (tenant, kept) in vault.kept_suppressions()? {
        crate::domain::consent::restore_suppressions(tx, &tenant, std::slice::from_ref(&kept))?;
    }
    audit.append(
        tx,
        Entry {
            kind: Kind::Restore,
            tenant: "",
            subject: None,
            details: serde_json::json!({
                "subjects": known.len(),
                "erased_again": erased_again,
            }),
        },
    )?;
    Ok(RestoreReport {
        erased_again,
        subjects: known.len(),
    })
}

/// After a database was restored in place (PostgreSQL: `pg_restore`), with the node stopped:
/// erases again every subject erased since the backup was taken, and records the restore in
/// the audit log, in one transaction.
pub fn erase_again(config: &NodeConfig) -> Result<RestoreReport, NodeError> {
    stopped(config, "erase-again")?;
    let backend = config.backend();
    if crate::store::schema_version(&backend)? != Some(SCHEMA_VERSION) {
        return Err(internal(
            "erase-again",
            format!(
                "{} does not hold a database of schema version {SCHEMA_VERSION}",
                backend.describe()
            ),
        ));
    }
    backend
        .connect_read_write()?
        .transaction(|tx| erase_again_in(tx, config))
}

/// Restores the backup at `from` as the node's database. The node must be stopped; with
/// `replace`, an existing database (and its write-ahead log) is replaced, otherwise its
/// presence is an error. Subjects erased since the backup are erased again.
pub fn restore(
    config: &NodeConfig,
    from: &Path,
    replace: bool,
) -> Result<RestoreReport, NodeError> {
    if let Backend::Postgres(_) = config.backend() {
        return Err(internal("restore", POSTGRES_BACKUP));
    }
    stopped(config, "restore")?;
    if config.database.exists() && !replace {
        return Err(internal(
            "restore",
            format!(
                "{} exists; pass --replace to replace it",
                config.database.display()
            ),
        ));
    }
    let staged = with_suffix(&config.database, "restoring");
    let _ = std::fs::remove_file(&staged);
    copy(from, &staged)?;
    let report = (|| {
        let conn = Connection::open(&staged)?;
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(internal("the backup is damaged", check));
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            return Err(internal(
                "the backup",
                format!("schema version {version}, this node needs {SCHEMA_VERSION}"),
            ));
        }
        crate::store::db::Connection::sqlite(conn).transaction(|tx| erase_again_in(tx, config))
    })();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    };
    // The replaced database's write-ahead log must not be replayed into the restored file.
    for stale in ["-wal", "-shm"] {
        let mut name = config.database.as_os_str().to_owned();
        name.push(stale);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    std::fs::rename(&staged, &config.database).map_err(|e| internal("restore", e))?;
    Ok(report)
}
