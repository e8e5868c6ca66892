//! Data-subject rights at the node: access and portability (exports sealed to the requester),
//! rectification (a sealed patch, with history), erasure by crypto-shredding under legal holds,
//! restriction and objection; legal holds and their release.
//!
//! Every request gets a receipt with its due date from the country policy and is audited under
//! the subject's audit pseudonym. A region that holds nothing about the subject answers
//! `NOT_FOUND`, so a gateway asking every region hears only from the home region.

use crate::store::db::{Connection, OptionalExtension, params};
use domicile_proto::{
    domain::whole_seconds as ts,
    pb::{HeldData, TimeRange},
};

use crate::{domain::consent, error::NodeError};

/// The rights tables; created with the rest of the schema.
pub const SCHEMA_SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS subject_requests (
    tenant         TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    kind           INTEGER NOT NULL,
    status         INTEGER NOT NULL,
    submitted_at   INTEGER NOT NULL,
    due_at         INTEGER NOT NULL,
    completed_at   INTEGER,
    policy_version TEXT NOT NULL,
    held           TEXT NOT NULL,
    PRIMARY KEY (tenant, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subject_requests_by_subject ON subject_requests (tenant, subject_id);

CREATE TABLE IF NOT EXISTS legal_holds (
    tenant      TEXT NOT NULL,
    hold_id     TEXT NOT NULL,
    subject_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    range_start INTEGER,
    range_end   INTEGER,
    placed_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    released_at INTEGER,
    PRIMARY KEY (tenant, hold_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS legal_holds_by_subject ON legal_holds (tenant, subject_id);

-- Subjects whose processing is restricted (Art. 18) or held for an unfinished erasure.
CREATE TABLE IF NOT EXISTS subject_flags (
    tenant          TEXT NOT NULL,
    subject_id      TEXT NOT NULL,
    restricted      INTEGER NOT NULL DEFAULT 0,
    erasure_pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, subject_id)
) WITHOUT ROWID;

-- Erasures answered whose interactions, comments and idempotency keys are still being deleted
-- (`node::purge`): one row per subject reference until its last row is gone.
CREATE TABLE IF NOT EXISTS erasure_purges (
    tenant     TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    queued_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, subject_id)
) WITHOUT ROWID;
"#;

/// The same tables for PostgreSQL (`BIGINT` integers, `BYTEA` bytes, identity columns); the
/// triggers are PL/pgSQL, in [`crate::domain::schema`]. The store contract test checks that
/// both engines end up with the same tables, columns, keys and indexes.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS subject_requests (
    tenant         TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    kind           BIGINT NOT NULL,
    status         BIGINT NOT NULL,
    submitted_at   BIGINT NOT NULL,
    due_at         BIGINT NOT NULL,
    completed_at   BIGINT,
    policy_version TEXT NOT NULL,
    held           TEXT NOT NULL,
    PRIMARY KEY (tenant, request_id)
);

CREATE INDEX IF NOT EXISTS subject_requests_by_subject ON subject_requests (tenant, subject_id);

CREATE TABLE IF NOT EXISTS legal_holds (
    tenant      TEXT NOT NULL,
    hold_id     TEXT NOT NULL,
    subject_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    range_start BIGINT,
    range_end   BIGINT,
    placed_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (tenant, hold_id)
);

CREATE INDEX IF NOT EXISTS legal_holds_by_subject ON legal_holds (tenant, subject_id);

CREATE TABLE IF NOT EXISTS subject_flags (
    tenant          TEXT NOT NULL,
    subject_id      TEXT NOT NULL,
    restricted      BIGINT NOT NULL DEFAULT 0,
    erasure_pending BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, subject_id)
);

CREATE TABLE IF NOT EXISTS erasure_purges (
    tenant     TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    queued_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, subject_id)
);
"#;
/// An active legal hold.
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    pub(crate) id: String,
    pub(crate) reason: String,
    pub(crate) range: Option<(i64, i64)>,
    pub(crate) expires_at: i64,
}

pub(crate) fn active_holds(
    conn: &Connection,
    tenant: &str,
    subject: &str,
    now: i64,
) -> Result<Vec<Hold>, NodeError> {
    let mut stmt = conn.prepare_cached(
        "SELECT hold_id, reason, range_start, range_end, expires_at FROM legal_holds
         WHERE tenant = $1 AND subject_id = $2 AND released_at IS NULL AND expires_at > $3
         ORDER BY hold_id",
    )?;
    let rows = stmt.query_map(params![tenant, subject, now], |r| {
        let start: Option<i64> = r.get(2)?;
        let end: Option<i64> = r.get(3)?;
        Ok(Hold {
            id: r.get(0)?,
            reason: r.get(1)?,
            range: start.zip(end),
            expires_at: r.get(4)?,
        })
    })?;
    rows.collect::<Result<_, _>>()
}

/// Whether the region holds anything about the subject.
pub(crate) fn knows(conn: &Connection, tenant: &str, subject: &str) -> Result<bool, NodeError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM subjects WHERE tenant = $1 AND external_id = $2)
             OR EXISTS (SELECT 1 FROM interactions WHERE tenant = $1 AND subject_id = $2)
             OR EXISTS (SELECT 1 FROM consent_state WHERE tenant = $1 AND subject_id = $2)",
        params![tenant, subject],
        |r| r.get(0),
    )
}

pub(crate) fn stored_country(
    conn: &Connection,
    tenant: &str,
    subject: &str,
) -> Result<Option<String>, NodeError> {
    conn.query_row(
        "SELECT country FROM subjects WHERE tenant = $1 AND external_id = $2
             UNION ALL SELECT country FROM interactions WHERE tenant = $1 AND subject_id = $2
             LIMIT 1",
        params![tenant, subject],
        |r| r.get(0),
    )
    .optional()
}

pub(crate) fn set_flag(
    conn: &Connection,
    tenant: &str,
    subject: &str,
    column: &str,
) -> Result<(), NodeError> {
    conn.execute(
        &format!(
            "INSERT INTO subject_flags (tenant, subject_id, {column}) VALUES ($1, $2, 1)
             ON CONFLICT (tenant, subject_id) DO UPDATE SET {column} = 1"
        ),
        params![tenant, subject],
    )?;
    Ok(())
}

/// What erasing did.
pub(crate) struct Erased {
    pub(crate) complete: bool,
    pub(crate) held: Vec<HeldData>,
    pub(crate) interactions_deleted: usize,
    /// The interactions were queued for the purge worker rather than deleted
    /// ([`Purge::Queued`]); `interactions_deleted` counts them.
    pub(crate) queued: bool,
    /// The suppressions the erasure kept, for the vault to remember.
    pub(crate) suppressions: Vec<crate::store::vault::KeptSuppression>,
}

/// When a complete erasure deletes the subject's interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purge {
    /// In the erasure's transaction (a restore's `erase-again`, and erasures that keep some
    /// interactions under a hold).
    Now,
    /// After the answer, by the node's purge worker (`node::purge`): the erasure's
    /// transaction queues the subject in `erasure_purges` instead, and reads of interactions
    /// wait until the queue is empty.
    Queued,
}

/// Deletes what no active hold keeps, in the caller's transaction. When nothing is held the
/// erasure is complete and the caller destroys the data key after the commit; with
/// [`Purge::Queued`], the interactions, their comments and the idempotency keys are left to
/// [`purge_step`].
/// `suppress_as`: the subject's suppression ids ([`Node::suppression_ids`]) when its country
/// policy keeps a suppression after erasure, empty otherwise.
pub(crate) fn erase(
    tx: &Connection,
    tenant: &str,
    subject: &str,
    suppress_as: &[String],
    now: i64,
    purge: Purge,
) -> Result<Erased, NodeError> {
    let holds = active_holds(tx, tenant, subject, now)?;
    let count_in = |range: Option<(i64, i64)>| -> Result<u64, NodeError> {
        let (start, end) = range.unwrap_or((i64::MIN, i64::MAX));
        Ok(tx.query_row(
            "SELECT COUNT(*) FROM interactions WHERE tenant = $1 AND subject_id = $2
             AND started_at >= $3 AND started_at < $4",
            params![tenant, subject, start, end],
            |r| r.get::<_, i64>(0),
        )? as u64)
    };
    let mut held = Vec::with_capacity(holds.len());
    for h in &holds {
        held.push(HeldData {
            hold_id: h.id.clone(),
            reason: h.reason.clone(),
            expires_at: Some(ts(h.expires_at)),
            whole_subject: h.range.is_none(),
            interactions: h.range.map(|(s, e)| TimeRange {
                start: Some(ts(s)),
                end: Some(ts(e)),
            }),
            interactions_kept: count_in(h.range)?,
        });
    }
    if holds.iter().any(|h| h.range.is_none()) {
        set_flag(tx, tenant, subject, "erasure_pending")?;
        return Ok(Erased {
            complete: false,
            held,
            interactions_deleted: 0,
            queued: false,
            suppressions: Vec::new(),
        });
    }
    let kept = holds
        .iter()
        .filter_map(|h| h.range)
        .map(|(s, e)| format!("(started_at >= {s} AND started_at < {e})"))
        .collect::<Vec<_>>();
    let not_kept = if kept.is_empty() {
        String::new()
    } else {
        format!(" AND NOT ({})", kept.join(" OR "))
    };
    let queued = kept.is_empty() && purge == Purge::Queued;
    // Interactions outside every held range go, with their comments: now, or queued.
    let interactions_deleted = if queued {
        tx.execute(
            "INSERT INTO erasure_purges (tenant, subject_id, queued_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, subject_id) DO NOTHING",
            params![tenant, subject, now],
        )?;
        count_in(None)? as usize
    } else {
        let comments = if kept.is_empty() {
            "DELETE FROM interaction_text WHERE tenant = $1 AND subject_id = $2".to_owned()
        } else {
            format!(
                "DELETE FROM interaction_text WHERE tenant = $1 AND interaction_id IN (
                   SELECT interaction_id FROM interactions WHERE tenant = $1 AND subject_id = $2{not_kept})"
            )
        };
        tx.execute(&comments, params![tenant, subject])?;
        crate::domain::rollup::delete_interactions(
            tx,
            &format!("i.tenant = $1 AND i.subject_id = $2{not_kept}"),
            params![tenant, subject],
        )?
    };
    for table in ["subject_pii", "subject_pii_history", "subjects"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE tenant = $1 AND external_id = $2"),
            params![tenant, subject],
        )?;
    }
    // Exports kept for the requester to fetch again go with the rest.
    tx.execute(
        "DELETE FROM subject_exports WHERE tenant = $1 AND subject_id = $2",
        params![tenant, subject],
    )?;
    let suppressions = consent::suppress(tx, tenant, subject, suppress_as)?;
    tx.execute("INSERT INTO erasure_guard (active) VALUES (1)", [])?;
    tx.execute(
        "DELETE FROM consent_ledger WHERE tenant = $1 AND subject_id = $2",
        params![tenant, subject],
    )?;
    tx.execute("DELETE FROM erasure_guard", [])?;
    for table in ["consent_state", "consent_tokens"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE tenant = $1 AND subject_id = $2"),
            params![tenant, subject],
        )?;
    }
    crate::domain::followup::forget_subject(tx, tenant, subject, now)?;
    let complete = kept.is_empty();
    if complete {
        tx.execute(
            "DELETE FROM subject_flags WHERE tenant = $1 AND subject_id = $2",
            params![tenant, subject],
        )?;
        if !queued {
            forget_rows(tx, tenant, subject)?;
        }
    } else {
        set_flag(tx, tenant, subject, "erasure_pending")?;
    }
    Ok(Erased {
        complete,
        held,
        interactions_deleted,
        queued,
        suppressions,
    })
}

/// The last of a complete erasure: the subject's tracking, the idempotency keys of its
/// records (stored under its reference, so deleted by range) and its place in the purge queue
/// (a copy restored from the middle of a purge has one).
fn forget_rows(tx: &Connection, tenant: &str, subject: &str) -> Result<(), NodeError> {
    for table in ["tracked_subjects", "erasure_purges"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE tenant = $1 AND subject_id = $2"),
            params![tenant, subject],
        )?;
    }
    let (start, end) = crate::store::vault::stored_id_range(subject);
    tx.execute(
        "DELETE FROM ingest_keys WHERE tenant = $1 AND idempotency_key >= $2
         AND idempotency_key < $3",
        params![tenant, start, end],
    )?;
    Ok(())
}

/// Interactions a purge deletes per transaction: small enough that ingest and the next
/// erasure wait for the writer a few milliseconds at most, large enough that a subject with
/// 10,000 interactions takes twenty commits.
pub(crate) const PURGE_CHUNK: i64 = 500;

/// The subject queued first in `erasure_purges`, if any.
pub(crate) fn next_purge(conn: &Connection) -> Result<Option<(String, String)>, NodeError> {
    conn.query_row(
        "SELECT tenant, subject_id FROM erasure_purges ORDER BY queued_at, tenant, subject_id
         LIMIT 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Erasures queued and not yet purged.
pub(crate) fn queued_purges(conn: &Connection) -> Result<u64, NodeError> {
    Ok(
        conn.query_row("SELECT COUNT(*) FROM erasure_purges", params![], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// One step of a queued erasure, in the caller's transaction: the subject's comments, then
/// about `chunk` of its interactions ([`PURGE_CHUNK`] in the node), oldest first (with the rollup cells, through
/// [`crate::domain::rollup::delete_interactions`]); once none is left, its tracking, its
/// idempotency keys and its place in the queue. Returns the interactions deleted and whether
/// the subject is done.
pub(crate) fn purge_step(
    tx: &Connection,
    tenant: &str,
    subject: &str,
    chunk: i64,
) -> Result<(usize, bool), NodeError> {
    tx.execute(
        "DELETE FROM interaction_text WHERE tenant = $1 AND subject_id = $2",
        params![tenant, subject],
    )?;
    // The start time of the chunk's last row, by the subject's index; ties past the chunk go
    // with it.
    let last: Option<i64> = tx
        .query_row(
            "SELECT started_at FROM interactions WHERE tenant = $1 AND subject_id = $2
             ORDER BY started_at LIMIT 1 OFFSET $3",
            params![tenant, subject, chunk.max(1) - 1],
            |r| r.get(0),
        )
        .optional()?;
    let deleted = match last {
        Some(last) => crate::domain::rollup::delete_interactions(
            tx,
            "i.tenant = $1 AND i.subject_id = $2 AND i.started_at <= $3",
            params![tenant, subject, last],
        )?,
        None => crate::domain::rollup::delete_interactions(
            tx,
            "i.tenant = $1 AND i.subject_id = $2",
            params![tenant, subject],
        )?,
    };
    if last.is_some() {
        return Ok((deleted, false));
    }
    forget_rows(tx, tenant, subject)?;
    Ok((deleted, true))
}

/// Takes an erased subject's old page images out of SQLite's write-ahead log once the erasure
/// has committed ([`crate::store::Store::scrub_after_erasure`]). The erasure stands either way: a failure here
/// is logged, and the next erasure or the automatic checkpoint does it.
pub(crate) fn scrub(store: &crate::store::Store) {
    match store.scrub_after_erasure() {
        Ok(true) => {}
        Ok(false) => tracing::info!(
            "after an erasure, a reader kept WAL frames; the next checkpoint takes them"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "after an erasure, the WAL checkpoint failed")
        }
    }
}
