//! Embedded storage: one SQLite file per node, in WAL mode.
//!
//! Personal fields live in their own tables (`subject_pii`, `interaction_text`), apart from the
//! analytical columns, so that at-rest encryption and crypto-shredding can be added to exactly
//! those tables. Every table is keyed by tenant first: no query can reach across tenants.
//!
//! One writer connection behind a mutex (SQLite has one writer anyway) takes each envelope in a
//! single transaction — one commit, one fsync per batch. Readers use their own connections from a
//! small pool so that aggregates never wait for ingest (WAL lets readers and the writer overlap).

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use domicile_proto::domain::{Interaction, Subject};
use rusqlite::{Connection, OpenFlags, params};

use crate::error::NodeError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS subjects (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    country     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, external_id)
) WITHOUT ROWID;

-- Personal data of a subject, kept apart from the analytical columns.
CREATE TABLE IF NOT EXISTS subject_pii (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    full_name   TEXT NOT NULL,
    email       TEXT NOT NULL,
    phone       TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    language    TEXT NOT NULL,
    birth_year  INTEGER,
    PRIMARY KEY (tenant, external_id)
) WITHOUT ROWID;

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
    PRIMARY KEY (tenant, interaction_id)
);
CREATE INDEX IF NOT EXISTS interactions_by_time ON interactions (tenant, started_at);

-- Free text is personal data: kept apart, like subject_pii.
CREATE TABLE IF NOT EXISTS interaction_text (
    tenant         TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    comment        TEXT NOT NULL,
    PRIMARY KEY (tenant, interaction_id)
) WITHOUT ROWID;

-- Idempotency: one row per accepted (tenant, idempotency key).
CREATE TABLE IF NOT EXISTS ingest_keys (
    tenant          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    ingested_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
) WITHOUT ROWID;

-- Differential-privacy budget spent per tenant and UTC day, in thousandths of epsilon.
CREATE TABLE IF NOT EXISTS privacy_budget (
    tenant      TEXT NOT NULL,
    day         TEXT NOT NULL,
    spent_milli INTEGER NOT NULL,
    PRIMARY KEY (tenant, day)
) WITHOUT ROWID;
"#;

/// The outcome of charging epsilon to a tenant's daily budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Charged; this much is left today (thousandths).
    Charged {
        /// Left after the charge.
        remaining_milli: u64,
    },
    /// Refused: not enough left; nothing changed.
    Exhausted {
        /// Left today.
        remaining_milli: u64,
    },
}

/// A record ready to store: validated and with its routing metadata.
#[derive(Debug)]
pub struct StoredRecord {
    /// Idempotency key.
    pub idempotency_key: String,
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

/// What storing one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored.
    Stored,
    /// Its idempotency key was seen before; nothing changed.
    Duplicate,
}

/// The SQLite store of one node.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    pub fn open(path: &Path) -> Result<Self, NodeError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| NodeError::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk before the node acknowledges the batch.
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(SCHEMA)?;
        writer.execute_batch(crate::consent::SCHEMA)?;
        writer.execute_batch(crate::audit::SCHEMA)?;
        writer.execute_batch(crate::incident::SCHEMA)?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a batch in one transaction. Each record's outcome, in order. `audit` runs in the
    /// same transaction, after the records and before the commit, so the batch and its audit
    /// entry are durable together or not at all.
    pub fn ingest(
        &self,
        tenant: &str,
        records: &[StoredRecord],
        audit: impl FnOnce(&Connection, &[StoreOutcome]) -> Result<(), NodeError>,
    ) -> Result<Vec<StoreOutcome>, NodeError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let now = now();
        let mut outcomes = Vec::with_capacity(records.len());
        {
            let mut claim = tx.prepare_cached(
                "INSERT OR IGNORE INTO ingest_keys (tenant, idempotency_key, kind, ingested_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut subject = tx.prepare_cached(
                "INSERT INTO subjects (tenant, external_id, country, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (tenant, external_id) DO UPDATE SET country = excluded.country, updated_at = excluded.updated_at",
            )?;
            let mut pii = tx.prepare_cached(
                "INSERT OR REPLACE INTO subject_pii (tenant, external_id, full_name, email, phone, postal_code, language, birth_year)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut interaction = tx.prepare_cached(
                "INSERT OR REPLACE INTO interactions (tenant, interaction_id, subject_id, country, channel, direction, started_at,
                   ended_at, handle_time, outcome, agent_team, recorded, survey_id, nps, csat, ces)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            let mut text = tx.prepare_cached(
                "INSERT OR REPLACE INTO interaction_text (tenant, interaction_id, comment) VALUES (?1, ?2, ?3)",
            )?;
            let mut drop_text = tx.prepare_cached(
                "DELETE FROM interaction_text WHERE tenant = ?1 AND interaction_id = ?2",
            )?;
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
                        pii.execute(params![
                            tenant,
                            s.external_id,
                            s.full_name,
                            s.email,
                            s.phone,
                            s.postal_code,
                            s.language,
                            s.birth_year
                        ])?;
                    }
                    RecordBody::Interaction(i) => {
                        let survey = i.survey.as_ref();
                        interaction.execute(params![
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
                        ])?;
                        match survey.filter(|s| !s.comment.is_empty()) {
                            Some(s) => {
                                text.execute(params![tenant, i.interaction_id, s.comment])?
                            }
                            None => drop_text.execute(params![tenant, i.interaction_id])?,
                        };
                    }
                }
                outcomes.push(StoreOutcome::Stored);
            }
        }
        audit(&tx, &outcomes)?;
        tx.commit()?;
        Ok(outcomes)
    }

    /// Charges `milli` thousandths of epsilon to `tenant`'s budget for today (UTC), whose total
    /// is `budget_milli`, atomically: either the whole charge fits and is durable, or nothing
    /// changes.
    pub fn charge_epsilon(
        &self,
        tenant: &str,
        milli: u32,
        budget_milli: u64,
    ) -> Result<Charge, NodeError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let day: String = tx.query_row("SELECT date('now')", [], |r| r.get(0))?;
        let spent: u64 = tx
            .query_row(
                "SELECT spent_milli FROM privacy_budget WHERE tenant = ?1 AND day = ?2",
                params![tenant, day],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v.max(0) as u64)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                e => Err(e),
            })?;
        let remaining = budget_milli.saturating_sub(spent);
        if u64::from(milli) > remaining {
            return Ok(Charge::Exhausted {
                remaining_milli: remaining,
            });
        }
        tx.execute(
            "INSERT INTO privacy_budget (tenant, day, spent_milli) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, day) DO UPDATE SET spent_milli = spent_milli + excluded.spent_milli",
            params![tenant, day, milli],
        )?;
        tx.commit()?;
        Ok(Charge::Charged {
            remaining_milli: remaining - u64::from(milli),
        })
    }

    /// Runs `f` in one write transaction: committed when `f` succeeds, rolled back otherwise.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` with a read-only connection from the pool.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }
}
