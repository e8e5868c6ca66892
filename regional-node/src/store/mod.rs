//! Embedded storage: one SQLite file per node, in WAL mode.
//!
//! Personal fields live in their own tables (`subject_pii`, `interaction_text`), apart from the
//! analytical columns, encrypted with the subject's data key. No id in this database is a
//! customer's: `external_id` and `subject_id` columns hold the subject's *reference* (random,
//! mapped to the external id only by the key vault), `interaction_id` and `idempotency_key`
//! hold keyed forms that only the subject's data key recomputes ([`crate::store::vault`]). Every table
//! is keyed by tenant first: no query can reach across tenants.
//!
//! One writer connection behind a mutex (SQLite has one writer anyway) takes each envelope in a
//! single transaction — one commit, one fsync per batch. Readers use their own connections from a
//! small pool so that aggregates never wait for ingest (WAL lets readers and the writer overlap).

pub mod db;
pub mod kek;
pub mod keys;
pub mod postgres;
#[cfg(test)]
pub(crate) mod testing;
pub mod vault;

use std::{any::Any, path::PathBuf, sync::Mutex, sync::mpsc};

use domicile_proto::domain::unix_now as now;
use domicile_proto::domain::{Interaction, Subject};
use rusqlite::OpenFlags;

use crate::{
    domain::rollup::Facts,
    error::NodeError,
    store::db::{Connection, Dialect, params},
    store::vault::{SubjectKey, Vault, comment_aad, interaction_id_aad, profile_aad},
};

const SCHEMA: &str = r#"
-- `external_id` (here and below) holds the subject's reference, not the customer's id.
CREATE TABLE IF NOT EXISTS subjects (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    country     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, external_id)
) WITHOUT ROWID;

-- Personal data of a subject, kept apart from the analytical columns and encrypted with the
-- subject's data key (see vault.rs). `has_contact` (an e-mail or phone is on file) is the one
-- fact about it kept in clear, for incident counts.
CREATE TABLE IF NOT EXISTS subject_pii (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    profile     BLOB NOT NULL,
    has_contact INTEGER NOT NULL,
    PRIMARY KEY (tenant, external_id)
) WITHOUT ROWID;

-- Earlier versions of rectified profiles, encrypted like the profile.
CREATE TABLE IF NOT EXISTS subject_pii_history (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    replaced_at INTEGER NOT NULL,
    profile     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS subject_pii_history_by_subject ON subject_pii_history (tenant, external_id);

-- `interaction_id` is the stored form of the id (the reference and a keyed hash);
-- `sealed_id` the clear id, encrypted with the subject's data key, for access exports.
CREATE TABLE IF NOT EXISTS interactions (
    tenant         TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    country        TEXT NOT NULL,
    channel        INTEGER NOT NULL,
    direction      INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    handle_time    INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    agent_team     TEXT NOT NULL,
    recorded       INTEGER NOT NULL,
    survey_id      TEXT,
    nps            INTEGER,
    csat           INTEGER,
    ces            INTEGER,
    sealed_id      BLOB,
    PRIMARY KEY (tenant, interaction_id)
);
CREATE INDEX IF NOT EXISTS interactions_by_time ON interactions (tenant, started_at);

-- Free text is personal data: kept apart and encrypted with the subject's data key.
CREATE TABLE IF NOT EXISTS interaction_text (
    tenant         TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    comment        BLOB NOT NULL,
    PRIMARY KEY (tenant, interaction_id)
) WITHOUT ROWID;

-- Idempotency: one row per accepted (tenant, idempotency key), the key in its stored form
-- (the subject's reference and a keyed hash), so an erasure deletes its subject's by range.
CREATE TABLE IF NOT EXISTS ingest_keys (
    tenant          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    ingested_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
) WITHOUT ROWID;
"#;

/// Page cache of the writer connection, KiB: the indexes ingest touches stay in memory.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Page cache of each pooled reader connection, KiB.
const READER_CACHE_KIB: i64 = 8 * 1024;

/// Cache and memory-map settings of one connection.
fn tune(conn: &rusqlite::Connection, cache_kib: i64) -> Result<(), NodeError> {
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    // Deleted rows are overwritten with zeros in their pages (and so in the WAL frames that
    // carry those pages), not left in free space: an erasure removes bytes, not only rows.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // A longer WAL between checkpoints: a page changed by many batches is copied back once.
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    Ok(())
}

/// The version of the schema this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 9;

/// A subject's personal fields, stored encrypted as one JSON document.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Full name.
    pub full_name: String,
    /// E-mail address.
    pub email: String,
    /// Phone number.
    pub phone: String,
    /// Postal code.
    pub postal_code: String,
    /// Preferred language.
    pub language: String,
    /// Year of birth.
    pub birth_year: Option<u32>,
}

impl Profile {
    /// Encrypts the profile for `subject` (a reference) of `tenant` with its data key.
    pub fn seal(
        &self,
        key: &SubjectKey,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<u8>, NodeError> {
        let json = serde_json::to_vec(self).map_err(|e| NodeError::Internal(e.to_string()))?;
        key.seal(&profile_aad(tenant, subject), &json)
    }

    /// Decrypts a stored profile; `None` when it does not open (shredded key or tampering).
    pub fn open(key: &SubjectKey, tenant: &str, subject: &str, blob: &[u8]) -> Option<Self> {
        let json = key.open(&profile_aad(tenant, subject), blob)?;
        serde_json::from_slice(&json).ok()
    }
}

/// A record ready to store: validated and with its routing metadata. Its ids are the clear
/// ones until [`Store::key_records`] rewrites them into their stored forms.
#[derive(Debug)]
pub struct StoredRecord {
    /// Idempotency key.
    pub idempotency_key: String,
    /// An interaction's clear id, sealed with the subject's data key (set by
    /// [`Store::key_records`]).
    pub sealed_id: Option<Vec<u8>>,
    /// Subject country.
    pub country: String,
    /// The record.
    pub body: RecordBody,
}

/// The content of a record to store.
#[derive(Debug)]
pub enum RecordBody {
    /// A profile.
    Subject(Subject),
    /// A touchpoint.
    Interaction(Interaction),
}

impl StoredRecord {
    /// The record's subject: its external id, or its reference once keyed.
    pub fn subject(&self) -> &str {
        match &self.body {
            RecordBody::Subject(s) => &s.external_id,
            RecordBody::Interaction(i) => &i.subject_id,
        }
    }
}

/// The data keys of a batch's subjects, by reference ([`Store::key_records`]).
#[derive(Debug, Default)]
pub struct BatchKeys(std::collections::HashMap<String, SubjectKey>);

/// What storing one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored.
    Stored,
    /// Its idempotency key was seen before; nothing changed.
    Duplicate,
}

/// A grouped write's answer, of the type its caller expects.
type Answer = Result<Box<dyn Any + Send>, NodeError>;

/// A write waiting for the next group commit: its work, run in the group's transaction, and
/// where its answer goes once the group is durable.
struct Pending {
    run: Box<dyn FnOnce(&Connection) -> Answer + Send>,
    reply: mpsc::SyncSender<Answer>,
}

/// One step of the schema, from `version - 1` to `version`. Tables and indexes a version adds
/// are created by the schema itself (`IF NOT EXISTS`); a step fills what they must hold.
pub struct Migration {
    /// The version it reaches.
    pub version: i64,
    /// What it does, for the log and `domicile node migrate --check`.
    pub what: &'static str,
    apply: fn(&Connection) -> Result<(), NodeError>,
}

/// Every migration, in order. A database older than the first one's starting version cannot
/// be migrated.
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 4,
        what: "rollup cells and per-subject cells, built from the stored interactions",
        apply: |tx| crate::domain::rollup::rebuild(tx),
    },
    Migration {
        version: 5,
        what: "DPO signature nonces; audit checkpoints append-only (both made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 6,
        what: "differentially private releases and their accountant (made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 7,
        what: "suppressions kept by erasures (made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 8,
        what: "subjects by reference, ids keyed by the subject's data key (an empty database only)",
        apply: keyed_ids,
    },
    Migration {
        version: 9,
        what: "follow-up cases (made by the schema)",
        apply: |_| Ok(()),
    },
];

/// Migration 8: the layout where no customer id is stored in clear. Ids stored by an earlier
/// version are in clear and their subjects' keys are in the vault by external id: converting
/// them needs both databases at once and is not done in place, so a database that holds
/// subjects is refused (docs/erasure.md, upgrading from schema 7).
fn keyed_ids(tx: &Connection) -> Result<(), NodeError> {
    let held: i64 = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM subjects) + (SELECT COUNT(*) FROM interactions)
              + (SELECT COUNT(*) FROM consent_ledger)",
        params![],
        |r| r.get(0),
    )?;
    if held > 0 {
        return Err(NodeError::Internal(
            "schema 7 holds customer ids in clear and this release cannot convert them in \
             place: export the subjects, start an empty database and ingest them again \
             (docs/erasure.md, upgrading from schema 7)"
                .into(),
        ));
    }
    match tx.dialect() {
        Dialect::Sqlite => {
            let has: i64 = tx.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('interactions') WHERE name = 'sealed_id'",
                params![],
                |r| r.get(0),
            )?;
            if has == 0 {
                tx.execute_batch("ALTER TABLE interactions ADD COLUMN sealed_id BLOB")?;
            }
        }
        Dialect::Postgres => {
            tx.execute_batch("ALTER TABLE interactions ADD COLUMN IF NOT EXISTS sealed_id BYTEA")?
        }
    }
    Ok(())
}

/// The migrations that take a database at `version` to [`SCHEMA_VERSION`], or why it cannot
/// be.
pub fn pending_migrations(version: i64) -> Result<Vec<&'static Migration>, NodeError> {
    let oldest = MIGRATIONS.first().map_or(SCHEMA_VERSION, |m| m.version - 1);
    if version > SCHEMA_VERSION {
        return Err(NodeError::Internal(format!(
            "schema version {version} was written by a newer Domicile; this one knows up to \
             {SCHEMA_VERSION}"
        )));
    }
    if version < oldest {
        return Err(NodeError::Internal(format!(
            "schema version {version} is older than any this Domicile migrates from ({oldest}); \
             migrate with an earlier release first"
        )));
    }
    Ok(MIGRATIONS.iter().filter(|m| m.version > version).collect())
}

/// Where a node keeps its data: the `storage` setting of its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (`sqlite:///var/lib/domicile/eu-de.sqlite`, or the `database` path).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user@host:port/db`), which several node replicas
    /// may share.
    Postgres(String),
}

impl Backend {
    /// Parses a storage URL: `sqlite://<path>` or `postgres://…` / `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "sqlite:// needs a path, e.g. sqlite:///var/lib/domicile/node.sqlite".into(),
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err("expected sqlite://<path> or postgres://<user>@<host>:<port>/<database>".into())
    }

    /// A description for logs: the SQLite path, or PostgreSQL's host, port and database
    /// (never the password).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(p) => p.display().to_string(),
            Self::Postgres(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                format!("postgres://{}", rest.split('?').next().unwrap_or(rest))
            }
        }
    }

    /// A new read-write connection, outside the node's store (for tests and tools that
    /// inspect or alter a database directly).
    pub fn connect_read_write(&self) -> Result<Connection, NodeError> {
        self.connect(false)
    }

    /// A new read-only connection (for operator commands).
    pub fn connect_read_only(&self) -> Result<Connection, NodeError> {
        self.connect(true)
    }

    /// A new connection.
    fn connect(&self, read_only: bool) -> Result<Connection, NodeError> {
        match self {
            Self::Sqlite(path) => {
                let conn = if read_only {
                    rusqlite::Connection::open_with_flags(
                        path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?
                } else {
                    let c = rusqlite::Connection::open(path)?;
                    c.pragma_update(None, "journal_mode", "WAL")?;
                    // FULL: a commit is on disk before the node acknowledges the batch.
                    c.pragma_update(None, "synchronous", "FULL")?;
                    c
                };
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                tune(
                    &conn,
                    if read_only {
                        READER_CACHE_KIB
                    } else {
                        WRITER_CACHE_KIB
                    },
                )?;
                Ok(Connection::sqlite(conn))
            }
            Self::Postgres(url) => {
                let conn = Connection::postgres(url)?;
                if read_only {
                    conn.execute_batch("SET default_transaction_read_only = on")?;
                }
                Ok(conn)
            }
        }
    }
}

/// The schema version of the node's database, read without changing it (`None` when it does
/// not exist or holds no table yet).
pub fn schema_version(backend: &Backend) -> Result<Option<i64>, NodeError> {
    match backend {
        Backend::Sqlite(path) => {
            if !path.exists() {
                return Ok(None);
            }
            let conn =
                rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let tables: i64 =
                conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables == 0 {
                return Ok(None);
            }
            Ok(Some(conn.pragma_query_value(
                None,
                "user_version",
                |r| r.get(0),
            )?))
        }
        Backend::Postgres(_) => pg_schema_version(&backend.connect(true)?),
    }
}

/// The version PostgreSQL's `domicile_schema` table records, if it exists.
fn pg_schema_version(conn: &Connection) -> Result<Option<i64>, NodeError> {
    let exists: bool = conn.query_row(
        "SELECT to_regclass('domicile_schema') IS NOT NULL",
        params![],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    conn.query_opt("SELECT version FROM domicile_schema", params![], |r| {
        r.get(0)
    })
}

/// Brings the node's database to [`SCHEMA_VERSION`] (creating it if missing) without serving;
/// returns the version it had (`None`: new).
pub fn migrate(config: &crate::config::NodeConfig) -> Result<Option<i64>, NodeError> {
    let backend = config.backend();
    let before = schema_version(&backend)?;
    Store::open_with_vault(&backend, Vault::open_for(config)?)?;
    Ok(before)
}

/// The node's store: one writer connection (group-committed) and a pool of readers, over
/// SQLite or PostgreSQL.
pub struct Store {
    backend: Backend,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Writes queued for [`Store::write_grouped`], committed together by whichever
    /// caller next holds the writer.
    pending: Mutex<Vec<Pending>>,
    vault: Vault,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.describe())
            .finish()
    }
}

/// The advisory-lock key that serialises schema changes between replicas starting together.
const SCHEMA_LOCK: i64 = 0x646f_6d69_0001;

impl Store {
    /// Opens (creating if needed) the database and its key vault at `vault` (with the region's
    /// key-encryption key), and applies the schema and any pending migration.
    pub fn open(backend: &Backend, vault: &Backend, kek: &[u8; 32]) -> Result<Self, NodeError> {
        Self::open_with_vault(backend, Vault::open(vault, kek)?)
    }

    /// Opens (creating if needed) the database beside its opened key vault (whose KEK was
    /// checked before this touches any data), and applies the schema and any pending migration.
    pub fn open_with_vault(backend: &Backend, vault: Vault) -> Result<Self, NodeError> {
        if let Backend::Sqlite(path) = backend
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| NodeError::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        let writer = backend.connect(false)?;
        writer.transaction(|tx| apply_schema(tx, backend))?;
        Ok(Self {
            backend: backend.clone(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            vault,
        })
    }

    /// Where the data is.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The key vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// A subject's decrypted profile, if stored and its key is alive.
    pub fn profile(
        &self,
        conn: &Connection,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<Profile>, NodeError> {
        let blob: Option<Vec<u8>> = conn.query_opt(
            "SELECT profile FROM subject_pii WHERE tenant = ?1 AND external_id = ?2",
            params![tenant, subject],
            |r| r.get(0),
        )?;
        let (Some(blob), Some(key)) = (blob, self.vault.key(tenant, subject)?) else {
            return Ok(None);
        };
        Ok(Profile::open(&key, tenant, subject, &blob))
    }

    /// Rewrites a batch's ids into their stored forms, in place: each subject's external id
    /// becomes its reference (made, with its data key, for subjects not seen before),
    /// interaction ids and idempotency keys their keyed forms, and an interaction's clear id
    /// is sealed. Returns the subjects' keys, by reference, for [`Store::ingest`]. The keys are
    /// made in the vault's own transaction: a key made for a batch that then fails is harmless,
    /// a record stored without its key would not be.
    pub fn key_records<'a>(
        &self,
        tenant: &str,
        records: impl IntoIterator<Item = &'a mut StoredRecord>,
    ) -> Result<BatchKeys, NodeError> {
        let records: Vec<&mut StoredRecord> = records.into_iter().collect();
        let externals: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r.subject()).collect();
        let mut by_external = self.vault.resolve(tenant, &externals, true)?;
        for record in records {
            let key = by_external
                .get(record.subject())
                .ok_or_else(|| NodeError::Internal("a data key is missing".into()))?;
            record.idempotency_key = key.stored_id("idempotency", &record.idempotency_key);
            match &mut record.body {
                RecordBody::Subject(s) => s.external_id.clone_from(&key.reference),
                RecordBody::Interaction(i) => {
                    let stored = key.stored_id("interaction", &i.interaction_id);
                    record.sealed_id = Some(key.seal(
                        &interaction_id_aad(tenant, &stored),
                        i.interaction_id.as_bytes(),
                    )?);
                    i.interaction_id = stored;
                    i.subject_id.clone_from(&key.reference);
                }
            }
        }
        Ok(BatchKeys(
            by_external
                .drain()
                .map(|(_, k)| (k.reference.clone(), k))
                .collect(),
        ))
    }

    /// Stores a batch whose ids [`Store::key_records`] rewrote, group-committed with the
    /// batches that arrive while the previous commit is being written
    /// ([`Store::write_grouped`]). Each record's outcome, in order. `audit` runs in the same
    /// transaction, after the records, so the batch and its audit entry are durable together
    /// or not at all; the outcomes are returned once they are durable.
    pub fn ingest(
        &self,
        tenant: &str,
        records: Vec<StoredRecord>,
        keys: BatchKeys,
        audit: impl FnOnce(&Connection, &[StoreOutcome]) -> Result<(), NodeError> + Send + 'static,
    ) -> Result<Vec<StoreOutcome>, NodeError> {
        let tenant = tenant.to_owned();
        self.write_grouped(move |tx| {
            let outcomes = store_batch(tx, &tenant, &records, &keys.0)?;
            audit(tx, &outcomes)?;
            Ok(outcomes)
        })
    }

    /// The writer, reconnected first if its PostgreSQL connection was lost (a restarted or
    /// failed-over server): the next write then succeeds instead of failing forever.
    fn writer(&self) -> Result<std::sync::MutexGuard<'_, Connection>, NodeError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_closed() {
            *conn = self.backend.connect(false)?;
        }
        Ok(conn)
    }

    /// Runs `f` in a transaction shared with the other writes queued meanwhile, and returns its
    /// value once that transaction is committed (group commit: one fsync for the group).
    ///
    /// The caller queues its write, then takes the writer: if a previous holder already
    /// committed the write, the caller only collects the answer; otherwise it commits every
    /// queued write (its own among them) in one transaction, each in a savepoint of its own, so
    /// that a write that fails is undone alone and the others still commit. Answers go out
    /// only after the commit, and each caller passes through the writer before returning.
    pub fn write_grouped<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let (reply, answer) = mpsc::sync_channel(1);
        // Another caller's thread may commit the group: the job keeps its own principal, so
        // its audit entries name who caused them.
        let principal = domicile_ops::principal::current();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                run: Box::new(move |tx| {
                    domicile_ops::principal::sync_scope(principal, || f(tx))
                        .map(|v| Box::new(v) as Box<dyn Any + Send>)
                }),
                reply,
            });
        let answered = {
            let conn = self.writer();
            // Committed by the previous holder: leave the writes queued since to their own
            // callers rather than make this one wait for another commit.
            match answer.try_recv() {
                Ok(value) => Some(value),
                Err(_) => {
                    let group = std::mem::take(
                        &mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    match conn {
                        Ok(conn) => commit_group(&conn, group),
                        Err(e) => {
                            for job in group {
                                let _ = job.reply.send(Err(NodeError::Internal(format!(
                                    "database connection: {e}"
                                ))));
                            }
                        }
                    }
                    None
                }
            }
        };
        let value = match answered {
            Some(value) => value,
            None => answer
                .recv()
                .map_err(|_| NodeError::Internal("a grouped write was dropped".into()))?,
        }?;
        Ok(*value
            .downcast::<T>()
            .expect("each write's answer has the type it was queued with"))
    }

    /// After an erasure committed, on SQLite: copies the write-ahead log into the database and
    /// truncates it (`wal_checkpoint(TRUNCATE)`), so the log's older frames — page images from
    /// before the erasure — leave the WAL file at once rather than at the next automatic
    /// checkpoint (up to 64 MiB later). True when the checkpoint completed (a reader holding an
    /// old snapshot makes SQLite leave frames it still needs; the next erasure's checkpoint, or
    /// the automatic one, takes them). On PostgreSQL nothing: `VACUUM` would not overwrite the
    /// dead rows' bytes either, and on a large `interactions` table it would scan it all under
    /// the writer for every erasure; autovacuum reclaims the space, and crypto-shredding is
    /// the guarantee there (docs/erasure.md).
    pub fn scrub_after_erasure(&self) -> Result<bool, NodeError> {
        if let Backend::Postgres(_) = self.backend {
            return Ok(true);
        }
        let conn = self.writer()?;
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }

    /// Runs `f` in one write transaction: committed when `f` succeeds, rolled back otherwise.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        self.writer()?.transaction(f)
    }

    /// Runs `f` with a read-only connection from the pool.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => self.backend.connect(true)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }
}

/// Creates or migrates the schema in the open transaction of `tx`.
fn apply_schema(tx: &Connection, backend: &Backend) -> Result<(), NodeError> {
    let version = match tx.dialect() {
        Dialect::Sqlite => {
            let c = tx.as_sqlite().expect("a SQLite connection");
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let empty: i64 = c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
            (empty > 0).then_some(version)
        }
        Dialect::Postgres => {
            // Replicas starting together take turns; the second finds the schema made.
            tx.lock(SCHEMA_LOCK)?;
            pg_schema_version(tx)?
        }
    };
    let version = version.unwrap_or(SCHEMA_VERSION);
    pending_migrations(version)
        .map_err(|e| NodeError::Internal(format!("{}: {e}", backend.describe())))?;
    let sqlite_schema = [
        SCHEMA,
        crate::domain::consent::SCHEMA,
        crate::domain::audit::SCHEMA,
        crate::domain::authority::SCHEMA,
        crate::domain::incident::SCHEMA,
        crate::domain::followup::SCHEMA,
        crate::domain::rights::SCHEMA,
        crate::domain::release::SCHEMA,
        &crate::domain::rollup::schema(),
    ]
    .concat();
    match tx.dialect() {
        Dialect::Sqlite => tx.execute_batch(&sqlite_schema)?,
        Dialect::Postgres => {
            tx.execute_batch(&crate::store::postgres::translate(&sqlite_schema))?;
            tx.execute_batch(&crate::store::postgres::triggers())?;
        }
    }
    for m in pending_migrations(version)? {
        tracing::info!(
            database = %backend.describe(),
            from = m.version - 1,
            to = m.version,
            what = m.what,
            "migrating the schema"
        );
        let started = std::time::Instant::now();
        (m.apply)(tx)?;
        tracing::info!(
            to = m.version,
            seconds = started.elapsed().as_secs_f64(),
            "schema migrated"
        );
    }
    match tx.dialect() {
        Dialect::Sqlite => tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?,
        Dialect::Postgres => {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS domicile_schema (version BIGINT NOT NULL);
                 DELETE FROM domicile_schema;",
            )?;
            tx.execute(
                "INSERT INTO domicile_schema (version) VALUES (?1)",
                params![SCHEMA_VERSION],
            )?;
        }
    }
    Ok(())
}

/// Commits `group` in one transaction, each write in a savepoint, and answers each: its value
/// once the commit is durable, or its error (a failed write is rolled back alone).
fn commit_group(conn: &Connection, group: Vec<Pending>) {
    let fail_all = |group: Vec<mpsc::SyncSender<Answer>>, e: &dyn std::fmt::Display| {
        for reply in group {
            let _ = reply.send(Err(NodeError::Internal(format!("commit: {e}"))));
        }
    };
    if let Err(e) = conn.begin() {
        return fail_all(group.into_iter().map(|p| p.reply).collect(), &e);
    }
    let mut done = Vec::with_capacity(group.len());
    for job in group {
        if let Err(e) = conn.execute_batch("SAVEPOINT grouped_write") {
            let _ = job.reply.send(Err(e));
            continue;
        }
        match (job.run)(conn) {
            Ok(value) => match conn.execute_batch("RELEASE grouped_write") {
                Ok(()) => done.push((job.reply, value)),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            },
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK TO grouped_write; RELEASE grouped_write");
                let _ = job.reply.send(Err(e));
            }
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for (reply, value) in done {
                let _ = reply.send(Ok(value));
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            fail_all(done.into_iter().map(|(r, _)| r).collect(), &e)
        }
    }
}

/// Writes one batch's records in `tx`; each record's outcome, in order.
fn store_batch(
    tx: &Connection,
    tenant: &str,
    records: &[StoredRecord],
    keys: &std::collections::HashMap<String, SubjectKey>,
) -> Result<Vec<StoreOutcome>, NodeError> {
    let key_of = |subject: &str| {
        keys.get(subject)
            .ok_or_else(|| NodeError::Internal("a data key is missing".into()))
    };
    let now = now();
    let mut outcomes = Vec::with_capacity(records.len());
    let mut rollups = crate::domain::rollup::Delta::default();
    {
        const CLAIM: &str = "INSERT OR IGNORE INTO ingest_keys (tenant, idempotency_key, kind, ingested_at) VALUES (?1, ?2, ?3, ?4)";
        const SUBJECT: &str = "INSERT INTO subjects (tenant, external_id, country, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (tenant, external_id) DO UPDATE SET country = excluded.country, updated_at = excluded.updated_at";
        const PII: &str = "INSERT INTO subject_pii (tenant, external_id, profile, has_contact)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, external_id) DO UPDATE SET profile = excluded.profile, has_contact = excluded.has_contact";
        const NEW_INTERACTION: &str =
            "INSERT INTO interactions (tenant, interaction_id, subject_id, country,
               channel, direction, started_at, ended_at, handle_time, outcome, agent_team, recorded,
               survey_id, nps, csat, ces, sealed_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT (tenant, interaction_id) DO NOTHING";
        const REPLACE_INTERACTION: &str = "UPDATE interactions SET subject_id = ?3, country = ?4,
               channel = ?5, direction = ?6, started_at = ?7, ended_at = ?8, handle_time = ?9,
               outcome = ?10, agent_team = ?11, recorded = ?12, survey_id = ?13, nps = ?14,
               csat = ?15, ces = ?16, sealed_id = ?17
             WHERE tenant = ?1 AND interaction_id = ?2";
        const TEXT: &str = "INSERT INTO interaction_text (tenant, interaction_id, subject_id, comment)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, interaction_id) DO UPDATE SET subject_id = excluded.subject_id, comment = excluded.comment";
        const DROP_TEXT: &str =
            "DELETE FROM interaction_text WHERE tenant = ?1 AND interaction_id = ?2";
        // Prepared once per batch (on SQLite; PostgreSQL's connection caches its own).
        let mut claim = tx.prepare_cached(CLAIM)?;
        let mut subject = tx.prepare_cached(SUBJECT)?;
        let mut pii = tx.prepare_cached(PII)?;
        let mut new_interaction = tx.prepare_cached(NEW_INTERACTION)?;
        let mut replace_interaction = tx.prepare_cached(REPLACE_INTERACTION)?;
        let mut text = tx.prepare_cached(TEXT)?;
        let mut drop_text = tx.prepare_cached(DROP_TEXT)?;
        for record in records {
            let kind = match record.body {
                RecordBody::Subject(_) => 1,
                RecordBody::Interaction(_) => 2,
            };
            if claim.execute(params![tenant, record.idempotency_key, kind, now])? == 0 {
                outcomes.push(StoreOutcome::Duplicate);
                continue;
            }
            match &record.body {
                RecordBody::Subject(s) => {
                    subject.execute(params![tenant, s.external_id, record.country, now])?;
                    let profile = Profile {
                        full_name: s.full_name.clone(),
                        email: s.email.clone(),
                        phone: s.phone.clone(),
                        postal_code: s.postal_code.clone(),
                        language: s.language.clone(),
                        birth_year: s.birth_year.map(u32::from),
                    };
                    let sealed = profile.seal(key_of(&s.external_id)?, tenant, &s.external_id)?;
                    let has_contact = !s.email.is_empty() || !s.phone.is_empty();
                    pii.execute(params![tenant, s.external_id, sealed, has_contact])?;
                }
                RecordBody::Interaction(i) => {
                    let survey = i.survey.as_ref();
                    let values = params![
                        tenant,
                        i.interaction_id,
                        i.subject_id,
                        record.country,
                        i.channel as i32,
                        i.direction as i32,
                        i.started_at,
                        i.ended_at,
                        i.handle_time_seconds,
                        i.outcome,
                        i.agent_team,
                        i.recorded,
                        survey.map(|s| s.survey_id.as_str()),
                        survey.and_then(|s| s.nps),
                        survey.and_then(|s| s.csat),
                        survey.and_then(|s| s.ces),
                        record.sealed_id,
                    ];
                    // A new interaction id is one insert; an existing one (sent again under
                    // a new idempotency key) replaces the stored row, which leaves its cells.
                    let replaced = new_interaction.execute(values)? == 0;
                    if replaced {
                        rollups.remove_where(
                            tx,
                            "i.tenant = ?1 AND i.interaction_id = ?2",
                            params![tenant, i.interaction_id],
                        )?;
                        replace_interaction.execute(values)?;
                    }
                    rollups.add(
                        tx,
                        &Facts {
                            tenant: tenant.to_owned(),
                            subject: i.subject_id.clone(),
                            country: record.country.clone(),
                            channel: i.channel as i32,
                            started_at: i.started_at,
                            handle_time: i64::from(i.handle_time_seconds),
                            nps: survey.and_then(|s| s.nps).map(i64::from),
                            csat: survey.and_then(|s| s.csat).map(i64::from),
                            ces: survey.and_then(|s| s.ces).map(i64::from),
                        },
                    )?;
                    match survey.filter(|s| !s.comment.is_empty()) {
                        Some(s) => {
                            let sealed = key_of(&i.subject_id)?.seal(
                                &comment_aad(tenant, &i.interaction_id),
                                s.comment.as_bytes(),
                            )?;
                            text.execute(params![tenant, i.interaction_id, i.subject_id, sealed])?
                        }
                        // A replaced interaction loses the comment it no longer has.
                        None if replaced => drop_text.execute(params![tenant, i.interaction_id])?,
                        None => 0,
                    };
                }
            }
            outcomes.push(StoreOutcome::Stored);
        }
    }
    rollups.apply(tx)?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::store::testing::Databases;

    /// A store on each backend, with a table `t`.
    fn stores(dbs: &Databases) -> Vec<Arc<Store>> {
        dbs.both()
            .iter()
            .map(|backend| {
                let store = dbs.store(backend);
                store
                    .write(|tx| tx.execute_batch("CREATE TABLE t (v BIGINT PRIMARY KEY)"))
                    .unwrap();
                Arc::new(store)
            })
            .collect()
    }

    fn values(store: &Store) -> Vec<i64> {
        store
            .read(|c| {
                c.prepare("SELECT v FROM t ORDER BY v")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap()
    }

    #[test]
    fn concurrent_writes_share_commits_and_all_land() {
        let dbs = Databases::new();
        for store in stores(&dbs) {
            let (threads, each) = (8, 40);
            let barrier = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for i in 0..each {
                            let v = (t * each + i) as i64;
                            let got = store
                                .write_grouped(move |tx| {
                                    tx.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                                    Ok(v)
                                })
                                .unwrap();
                            assert_eq!(got, v, "each write gets its own answer");
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let expected: Vec<i64> = (0..(threads * each) as i64).collect();
            assert_eq!(values(&store), expected, "{:?}", store.backend());
        }
    }

    #[test]
    fn a_failed_write_is_undone_alone() {
        let dbs = Databases::new();
        for store in stores(&dbs) {
            // Hold the writer so that both writes queue up and are committed as one group.
            let held = store.writer.lock().unwrap();
            let spawn = |v: i64, fail: bool| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.write_grouped(move |tx| {
                        tx.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                        if fail {
                            return Err(NodeError::Internal("refused".into()));
                        }
                        Ok(v)
                    })
                })
            };
            let bad = spawn(1, true);
            let good = spawn(2, false);
            while store.pending.lock().unwrap().len() < 2 {
                std::thread::yield_now();
            }
            drop(held);
            assert!(bad.join().unwrap().is_err());
            assert_eq!(good.join().unwrap().unwrap(), 2);
            assert_eq!(
                values(&store),
                [2],
                "the failed write's insert was rolled back, the other kept ({:?})",
                store.backend()
            );
        }
    }

    #[test]
    fn a_write_that_breaks_a_constraint_is_undone_alone_and_the_group_commits() {
        // On PostgreSQL an error aborts the transaction: the savepoint must bring it back.
        let dbs = Databases::new();
        for store in stores(&dbs) {
            store
                .write(|tx| tx.execute("INSERT INTO t (v) VALUES (7)", []))
                .unwrap();
            let held = store.writer.lock().unwrap();
            let spawn = |v: i64| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.write_grouped(move |tx| {
                        tx.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                        Ok(v)
                    })
                })
            };
            let duplicate = spawn(7);
            let fresh = spawn(8);
            while store.pending.lock().unwrap().len() < 2 {
                std::thread::yield_now();
            }
            drop(held);
            let err = duplicate.join().unwrap().unwrap_err();
            assert!(
                matches!(&err, NodeError::Storage(db) if db.is_unique_violation()),
                "{err}"
            );
            assert_eq!(fresh.join().unwrap().unwrap(), 8);
            assert_eq!(values(&store), [7, 8], "{:?}", store.backend());
        }
    }

    #[test]
    fn the_accountant_never_overspends_under_concurrency() {
        // Eight threads charging one month of data at once, on both backends (each charge in
        // its own write transaction, as a release makes it).
        let dbs = Databases::new();
        for store in stores(&dbs) {
            let charge = |store: &Store, milli: u32| {
                store
                    .write(|tx| crate::domain::release::charge(tx, "acme", 682, milli, 10_000))
                    .unwrap()
            };
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        (0..10).filter(|_| charge(&store, 300).is_some()).count()
                    })
                })
                .collect();
            let charged: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            // 10,000 / 300: 33 charges fit, 1,000 thousandths never do.
            assert_eq!(charged, 33, "{:?}", store.backend());
            let spent = store
                .read(|c| crate::domain::release::spent(c, "acme", 682))
                .unwrap();
            assert_eq!(spent, 9_900);
            assert_eq!(charge(&store, 100), Some(10_000));
            assert_eq!(charge(&store, 1), None);
            // Another month of data has its own budget.
            assert_eq!(
                store
                    .write(|tx| crate::domain::release::charge(tx, "acme", 683, 1, 10_000))
                    .unwrap(),
                Some(1)
            );
        }
    }

    #[test]
    fn two_replicas_append_to_one_audit_chain() {
        // Two stores over one database (one SQLite file, or one PostgreSQL database with one
        // vault), four writers each, appending at once: one chain, no gap, no fork.
        let dbs = Databases::new();
        for backend in dbs.both() {
            let vault = dbs.vault(&backend);
            let replicas: Vec<Arc<Store>> = (0..2)
                .map(|_| Arc::new(Store::open(&backend, &vault, &[7; 32]).unwrap()))
                .collect();
            let log = Arc::new(crate::domain::audit::AuditLog::new("eu-de", &[9; 32], 25));
            let handles: Vec<_> = (0..8)
                .map(|w| {
                    let (store, log) = (replicas[w % 2].clone(), log.clone());
                    std::thread::spawn(move || {
                        for i in 0..25 {
                            let log = log.clone();
                            store
                                .write_grouped(move |tx| {
                                    log.append(
                                        tx,
                                        crate::domain::audit::Entry {
                                            kind: crate::domain::audit::Kind::IngestBatch,
                                            tenant: "acme",
                                            subject: None,
                                            details: serde_json::json!({ "writer": w, "i": i }),
                                        },
                                    )
                                })
                                .unwrap();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let verified = replicas[0]
                .read(|c| crate::domain::audit::verify(c, "eu-de", &log.public_key()))
                .unwrap()
                .unwrap();
            assert_eq!(verified.entries, 200, "{:?}", backend);
            assert_eq!(verified.checkpoints, 8);
        }
    }

    #[test]
    fn a_newer_schema_is_refused_on_either_backend() {
        let dbs = Databases::new();
        for backend in dbs.both() {
            drop(dbs.store(&backend));
            let conn = backend.connect_read_write().unwrap();
            match conn.dialect() {
                Dialect::Sqlite => conn.execute_batch("PRAGMA user_version = 99").unwrap(),
                Dialect::Postgres => conn
                    .execute_batch("UPDATE domicile_schema SET version = 99")
                    .unwrap(),
            }
            assert_eq!(schema_version(&backend).unwrap(), Some(99));
            let err = Store::open(&backend, &dbs.vault(&backend), &[7; 32]).unwrap_err();
            assert!(err.to_string().contains("newer Domicile"), "{err}");
        }
    }
}
