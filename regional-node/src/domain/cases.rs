//! Subject requests as cases: where each stands, its deadline, its history, and the queue.
//!
//! A request's row in `subject_requests` holds its kind, status and due date (the receipt);
//! its case (`subject_cases`) what the steps need: the federation-wide id, the export's
//! recipient while it waits for verification, the verification, the pause, the extension and
//! the refusal; its history (`subject_request_events`) one row per step. A request is *open*
//! while `completed_at` is unset; a refusal closes it as a completion does.
//!
//! The rules of the steps ([`next`]) and of the deadline ([`Deadline`]) are pure functions;
//! the node (`node::rights`) loads a case, asks them, and writes what they decide.

use domicile_proto::{
    domain::whole_seconds as ts,
    pb::{
        HeldData, IdentityVerification, SealedExport, SubjectRequestEvent, SubjectRequestKind,
        SubjectRequestQueueCounts, SubjectRequestReceipt, SubjectRequestStatus, TimeRange,
    },
    rights::{CaseQuery, PageStart, Step},
};

use crate::{
    domain::policy::Period,
    error::NodeError,
    store::db::{Connection, OptionalExtension, params},
};

/// The case tables; created with the rest of the schema.
pub const SCHEMA_SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS subject_cases (
    tenant           TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    federation_id    TEXT,
    recipient        BLOB,
    verification     TEXT,
    paused_since     INTEGER,
    extension_reason TEXT,
    refusal_reason   TEXT,
    PRIMARY KEY (tenant, request_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS subject_cases_by_federation_id
    ON subject_cases (tenant, federation_id) WHERE federation_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS subject_request_events (
    tenant     TEXT NOT NULL,
    request_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    action     TEXT NOT NULL,
    status     INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    principal  TEXT NOT NULL,
    PRIMARY KEY (tenant, request_id, seq)
) WITHOUT ROWID;

-- Access and portability exports, sealed to the requester, fetchable until they expire.
CREATE TABLE IF NOT EXISTS subject_exports (
    tenant           TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    encapsulated_key BLOB NOT NULL,
    ciphertext       BLOB NOT NULL,
    schema           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subject_exports_by_expiry ON subject_exports (expires_at);
CREATE INDEX IF NOT EXISTS subject_exports_by_subject ON subject_exports (tenant, subject_id);

-- The queue: open requests by due date.
CREATE INDEX IF NOT EXISTS subject_requests_open
    ON subject_requests (tenant, due_at, request_id) WHERE completed_at IS NULL;
CREATE INDEX IF NOT EXISTS subject_requests_by_due
    ON subject_requests (tenant, due_at, request_id);
"#;

/// The same tables for PostgreSQL.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS subject_cases (
    tenant           TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    federation_id    TEXT,
    recipient        BYTEA,
    verification     TEXT,
    paused_since     BIGINT,
    extension_reason TEXT,
    refusal_reason   TEXT,
    PRIMARY KEY (tenant, request_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS subject_cases_by_federation_id
    ON subject_cases (tenant, federation_id) WHERE federation_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS subject_request_events (
    tenant     TEXT NOT NULL,
    request_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    action     TEXT NOT NULL,
    status     BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    principal  TEXT NOT NULL,
    PRIMARY KEY (tenant, request_id, seq)
);

CREATE TABLE IF NOT EXISTS subject_exports (
    tenant           TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    encapsulated_key BYTEA NOT NULL,
    ciphertext       BYTEA NOT NULL,
    schema           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    PRIMARY KEY (tenant, request_id)
);
CREATE INDEX IF NOT EXISTS subject_exports_by_expiry ON subject_exports (expires_at);
CREATE INDEX IF NOT EXISTS subject_exports_by_subject ON subject_exports (tenant, subject_id);

CREATE INDEX IF NOT EXISTS subject_requests_open
    ON subject_requests (tenant, due_at, request_id) WHERE completed_at IS NULL;
CREATE INDEX IF NOT EXISTS subject_requests_by_due
    ON subject_requests (tenant, due_at, request_id);
"#;

/// Migration 12: a case and a history for every request made before cases existed (each was
/// fulfilled when it was received).
pub fn migrate(tx: &Connection) -> Result<(), NodeError> {
    tx.execute_batch(
        "INSERT INTO subject_cases (tenant, request_id)
         SELECT tenant, request_id FROM subject_requests WHERE true
         ON CONFLICT (tenant, request_id) DO NOTHING;
         INSERT INTO subject_request_events
           (tenant, request_id, seq, at, action, status, actor, reason, principal)
         SELECT tenant, request_id, 1, submitted_at, 'received', status, '', '', '' FROM subject_requests
         WHERE true ON CONFLICT (tenant, request_id, seq) DO NOTHING;",
    )?;
    Ok(())
}

/// Seconds in a day.
const DAY: i64 = 86_400;
/// "Due soon" in the queue counts: within this many seconds.
pub const DUE_SOON_SECONDS: i64 = 7 * DAY;

/// A case as the steps see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The region's request id.
    pub request_id: String,
    /// The subject's reference.
    pub subject: String,
    /// The right.
    pub kind: SubjectRequestKind,
    /// Where it stands.
    pub status: SubjectRequestStatus,
    /// Received, Unix seconds.
    pub submitted_at: i64,
    /// Due (extension and past pauses included), Unix seconds.
    pub due_at: i64,
    /// Completed or refused, Unix seconds.
    pub closed_at: Option<i64>,
    /// The policy, "CC@version".
    pub policy_version: String,
    /// Paused since, while waiting for the subject where the policy pauses.
    pub paused_since: Option<i64>,
    /// Why it was extended.
    pub extension_reason: Option<String>,
    /// Why it was refused.
    pub refusal_reason: Option<String>,
    /// The export's recipient, kept while an access or portability request waits.
    pub recipient: Option<Vec<u8>>,
    /// The verification, once made.
    pub verification: Option<IdentityVerification>,
    /// The federation-wide id.
    pub federation_id: Option<String>,
}

impl Case {
    /// Whether the request is still open.
    pub fn is_open(&self) -> bool {
        self.closed_at.is_none()
    }

    /// The due date as of `now`: a paused case's moves on with the pause.
    pub fn due_as_of(&self, now: i64) -> i64 {
        self.due_at + self.paused_since.map_or(0, |p| (now - p).max(0))
    }

    /// Open and past due at `now`.
    pub fn is_overdue(&self, now: i64) -> bool {
        self.is_open() && self.due_as_of(now) < now
    }

    /// The receipt (without export or history).
    pub fn receipt(&self, region: &str, now: i64) -> SubjectRequestReceipt {
        let completed = matches!(self.status, SubjectRequestStatus::Completed);
        SubjectRequestReceipt {
            request_id: self.request_id.clone(),
            region_id: region.to_owned(),
            kind: self.kind as i32,
            status: self.status as i32,
            submitted_at: Some(ts(self.submitted_at)),
            due_at: Some(ts(self.due_at)),
            completed_at: self.closed_at.filter(|_| completed).map(ts),
            held: Vec::new(),
            export: None,
            policy_version: self.policy_version.clone(),
            federation_request_id: self.federation_id.clone().unwrap_or_default(),
            verification: self.verification.clone(),
            extension_reason: self.extension_reason.clone().unwrap_or_default(),
            refusal_reason: self.refusal_reason.clone().unwrap_or_default(),
            paused_since: self.paused_since.map(ts),
            overdue: self.is_overdue(now),
            events: Vec::new(),
            signature: Vec::new(),
            export_expires_at: None,
        }
    }
}

/// What the policy of a case's country says about its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The time to answer.
    pub period: Period,
    /// The extension allowed, if any.
    pub extension: Option<Period>,
    /// Whether waiting for the subject pauses the clock.
    pub pauses: bool,
}

/// What a step does to a case, as [`next`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The status after.
    pub status: SubjectRequestStatus,
    /// The due date after.
    pub due_at: i64,
    /// The pause after.
    pub paused_since: Option<i64>,
    /// Closed at (a refusal).
    pub closed_at: Option<i64>,
}

/// Whether `step` may be taken on `case` at `now` under `deadline`, and what it changes; a
/// refusal says why not (`FAILED_PRECONDITION`). Verifying an IN_PROGRESS case again is
/// allowed: it retries a fulfilment that did not finish.
pub fn next(case: &Case, step: &Step, deadline: &Deadline, now: i64) -> Result<Change, NodeError> {
    use SubjectRequestStatus as S;
    let refuse = |why: String| Err(NodeError::FailedPrecondition(why));
    let status = case.status;
    let name = status.as_str_name();
    // Ending a pause: the due date moves on by its length.
    let resumed = case.due_as_of(now);
    match step {
        Step::Verify(_) => match status {
            S::Received | S::AwaitingSubject | S::InProgress => Ok(Change {
                status: S::InProgress,
                due_at: resumed,
                paused_since: None,
                closed_at: None,
            }),
            _ => refuse(format!("a request that is {name} cannot be verified")),
        },
        Step::AwaitSubject(_) => match status {
            S::Received => Ok(Change {
                status: S::AwaitingSubject,
                due_at: case.due_at,
                paused_since: deadline.pauses.then_some(now),
                closed_at: None,
            }),
            _ => refuse(format!(
                "only a RECEIVED request can wait for the subject; this one is {name}"
            )),
        },
        Step::Extend(_) => {
            let Some(extension) = deadline.extension else {
                return refuse(format!(
                    "the policy {} allows no extension",
                    case.policy_version
                ));
            };
            if !case.is_open() {
                return refuse(format!("a request that is {name} cannot be extended"));
            }
            if case.extension_reason.is_some() {
                return refuse("the deadline was extended already; it can be only once".into());
            }
            if case.is_overdue(now) {
                return refuse(
                    "the request is overdue: an extension is given before the deadline".into(),
                );
            }
            Ok(Change {
                status,
                due_at: extension.after(case.due_at),
                paused_since: case.paused_since,
                closed_at: None,
            })
        }
        // IN_PROGRESS too: a fulfilment that cannot finish (the subject erased meanwhile) is
        // closed with a reason rather than left open.
        Step::Refuse(_) => match status {
            S::Received | S::AwaitingSubject | S::InProgress => Ok(Change {
                status: S::Refused,
                due_at: resumed,
                paused_since: None,
                closed_at: Some(now),
            }),
            _ => refuse(format!("a request that is {name} cannot be refused")),
        },
    }
}

/// The columns [`load`] and [`page`] read, in order.
const CASE_COLUMNS: &str = "r.request_id, r.subject_id, r.kind, r.status, r.submitted_at, r.due_at,
    r.completed_at, r.policy_version, c.paused_since, c.extension_reason, c.refusal_reason,
    c.recipient, c.verification, c.federation_id";

fn case_of(r: &crate::store::db::Row<'_>) -> Result<Case, NodeError> {
    let verification: Option<String> = r.get(12)?;
    Ok(Case {
        request_id: r.get(0)?,
        subject: r.get(1)?,
        kind: SubjectRequestKind::try_from(r.get::<_, i32>(2)?)
            .unwrap_or(SubjectRequestKind::Unspecified),
        status: SubjectRequestStatus::try_from(r.get::<_, i32>(3)?)
            .unwrap_or(SubjectRequestStatus::Unspecified),
        submitted_at: r.get(4)?,
        due_at: r.get(5)?,
        closed_at: r.get(6)?,
        policy_version: r.get(7)?,
        paused_since: r.get(8)?,
        extension_reason: r.get(9)?,
        refusal_reason: r.get(10)?,
        recipient: r.get(11)?,
        verification: verification.as_deref().and_then(verification_from_json),
        federation_id: r.get(13)?,
    })
}

/// A case by its region request id.
pub fn load(conn: &Connection, tenant: &str, request_id: &str) -> Result<Option<Case>, NodeError> {
    conn.query_row(
        &format!(
            "SELECT {CASE_COLUMNS} FROM subject_requests r
                 LEFT JOIN subject_cases c ON c.tenant = r.tenant AND c.request_id = r.request_id
                 WHERE r.tenant = $1 AND r.request_id = $2"
        ),
        params![tenant, request_id],
        case_of,
    )
    .optional()
}

/// A case by its federation-wide id.
pub fn by_federation_id(
    conn: &Connection,
    tenant: &str,
    federation_id: &str,
) -> Result<Option<Case>, NodeError> {
    conn.query_row(
        &format!(
            "SELECT {CASE_COLUMNS} FROM subject_cases c
                 JOIN subject_requests r ON r.tenant = c.tenant AND r.request_id = c.request_id
                 WHERE c.tenant = $1 AND c.federation_id = $2"
        ),
        params![tenant, federation_id],
        case_of,
    )
    .optional()
}

/// A verification as the case keeps it (JSON; no personal data by contract).
fn verification_json(v: &IdentityVerification) -> String {
    serde_json::json!({
        "method": v.method,
        "evidence_reference": v.evidence_reference,
        "verified_by": v.verified_by,
        "verified_at": v.verified_at.as_ref().map(|t| t.seconds),
    })
    .to_string()
}

fn verification_from_json(text: &str) -> Option<IdentityVerification> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(IdentityVerification {
        method: i32::try_from(v["method"].as_i64()?).ok()?,
        evidence_reference: v["evidence_reference"].as_str()?.to_owned(),
        verified_by: v["verified_by"].as_str()?.to_owned(),
        verified_at: v["verified_at"].as_i64().map(ts),
    })
}

/// Inserts a new request: its receipt row, its case and its first event.
pub fn insert(tx: &Connection, tenant: &str, case: &Case, actor: &str) -> Result<(), NodeError> {
    tx.execute(
        "INSERT INTO subject_requests (tenant, request_id, subject_id, kind, status,
           submitted_at, due_at, completed_at, policy_version, held)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '[]')",
        params![
            tenant,
            case.request_id,
            case.subject,
            case.kind as i32,
            case.status as i32,
            case.submitted_at,
            case.due_at,
            case.closed_at,
            case.policy_version
        ],
    )?;
    tx.execute(
        "INSERT INTO subject_cases (tenant, request_id, federation_id, recipient, verification)
         VALUES ($1, $2, $3, $4, $5)",
        params![
            tenant,
            case.request_id,
            case.federation_id,
            case.recipient,
            case.verification.as_ref().map(verification_json)
        ],
    )?;
    event(
        tx,
        tenant,
        &case.request_id,
        case.submitted_at,
        "received",
        SubjectRequestStatus::Received,
        actor,
        "",
    )
}

/// Appends one event to a request's history.
#[allow(clippy::too_many_arguments)]
pub fn event(
    tx: &Connection,
    tenant: &str,
    request_id: &str,
    at: i64,
    action: &str,
    status: SubjectRequestStatus,
    actor: &str,
    reason: &str,
) -> Result<(), NodeError> {
    tx.execute(
        "INSERT INTO subject_request_events
           (tenant, request_id, seq, at, action, status, actor, reason, principal)
         VALUES ($1, $2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM subject_request_events
                          WHERE tenant = $1 AND request_id = $2), $3, $4, $5, $6, $7, $8)",
        params![
            tenant,
            request_id,
            at,
            action,
            status as i32,
            actor,
            reason,
            crate::domain::audit::principal_of_call()
        ],
    )?;
    Ok(())
}

/// Writes what a step changed (status, due date, pause, closing) and its reason.
pub fn apply(
    tx: &Connection,
    tenant: &str,
    case: &Case,
    step: &Step,
    change: &Change,
    now: i64,
) -> Result<(), NodeError> {
    tx.execute(
        "UPDATE subject_requests SET status = $1, due_at = $2, completed_at = $3
         WHERE tenant = $4 AND request_id = $5",
        params![
            change.status as i32,
            change.due_at,
            change.closed_at,
            tenant,
            case.request_id
        ],
    )?;
    // A pause's length is already in the due date the step moved (`Change::due_at`).
    tx.execute(
        "UPDATE subject_cases SET paused_since = $1 WHERE tenant = $2 AND request_id = $3",
        params![change.paused_since, tenant, case.request_id],
    )?;
    match step {
        Step::Verify(v) => {
            tx.execute(
                "UPDATE subject_cases SET verification = $1 WHERE tenant = $2 AND request_id = $3",
                params![
                    verification_json(&v.recorded_at(now)),
                    tenant,
                    case.request_id
                ],
            )?;
        }
        Step::Extend(reason) => {
            tx.execute(
                "UPDATE subject_cases SET extension_reason = $1 WHERE tenant = $2 AND request_id = $3",
                params![reason, tenant, case.request_id],
            )?;
        }
        Step::Refuse(reason) => {
            tx.execute(
                "UPDATE subject_cases SET refusal_reason = $1, recipient = NULL
                 WHERE tenant = $2 AND request_id = $3",
                params![reason, tenant, case.request_id],
            )?;
        }
        Step::AwaitSubject(_) => {}
    }
    Ok(())
}

/// The data legal holds kept from an erasure, as its receipt lists it (stored as JSON in
/// `subject_requests.held`; requests from before schema 12 stored the hold ids alone).
fn held_json(held: &[HeldData]) -> String {
    serde_json::Value::Array(
        held.iter()
            .map(|h| {
                serde_json::json!({
                    "hold_id": h.hold_id,
                    "reason": h.reason,
                    "expires_at": h.expires_at.as_ref().map(|t| t.seconds),
                    "whole_subject": h.whole_subject,
                    "start": h.interactions.as_ref().and_then(|r| r.start.as_ref()).map(|t| t.seconds),
                    "end": h.interactions.as_ref().and_then(|r| r.end.as_ref()).map(|t| t.seconds),
                    "kept": h.interactions_kept,
                })
            })
            .collect(),
    )
    .to_string()
}

/// What [`held_json`] stored (or a bare hold id, as before schema 12).
pub fn held(conn: &Connection, tenant: &str, request_id: &str) -> Result<Vec<HeldData>, NodeError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT held FROM subject_requests WHERE tenant = $1 AND request_id = $2",
            params![tenant, request_id],
            |r| r.get(0),
        )
        .optional()?;
    let items: Vec<serde_json::Value> = text
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    Ok(items
        .iter()
        .map(|v| match v {
            serde_json::Value::String(id) => HeldData {
                hold_id: id.clone(),
                ..Default::default()
            },
            v => HeldData {
                hold_id: v["hold_id"].as_str().unwrap_or_default().to_owned(),
                reason: v["reason"].as_str().unwrap_or_default().to_owned(),
                expires_at: v["expires_at"].as_i64().map(ts),
                whole_subject: v["whole_subject"].as_bool().unwrap_or_default(),
                interactions: match (v["start"].as_i64(), v["end"].as_i64()) {
                    (Some(s), Some(e)) => Some(TimeRange {
                        start: Some(ts(s)),
                        end: Some(ts(e)),
                    }),
                    _ => None,
                },
                interactions_kept: v["kept"].as_u64().unwrap_or_default(),
            },
        })
        .collect())
}

/// Records a fulfilment's end: status, completion time, the holds that keep data, and the
/// export's recipient forgotten.
pub fn fulfilled(
    tx: &Connection,
    tenant: &str,
    request_id: &str,
    status: SubjectRequestStatus,
    completed_at: Option<i64>,
    held: &[HeldData],
) -> Result<(), NodeError> {
    tx.execute(
        "UPDATE subject_requests SET status = $1, completed_at = $2, held = $3
         WHERE tenant = $4 AND request_id = $5",
        params![
            status as i32,
            completed_at,
            held_json(held),
            tenant,
            request_id
        ],
    )?;
    tx.execute(
        "UPDATE subject_cases SET recipient = NULL WHERE tenant = $1 AND request_id = $2",
        params![tenant, request_id],
    )?;
    Ok(())
}

/// Keeps a fulfilled request's sealed export until `expires_at`.
pub fn store_export(
    tx: &Connection,
    tenant: &str,
    request_id: &str,
    subject: &str,
    export: &SealedExport,
    now: i64,
    expires_at: i64,
) -> Result<(), NodeError> {
    tx.execute(
        "INSERT INTO subject_exports (tenant, request_id, subject_id, encapsulated_key,
           ciphertext, schema, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        params![
            tenant,
            request_id,
            subject,
            export.encapsulated_key,
            export.ciphertext,
            export.schema,
            now,
            expires_at
        ],
    )?;
    Ok(())
}

/// A request's export and when it expires, if it is still kept.
pub fn export(
    conn: &Connection,
    tenant: &str,
    request_id: &str,
) -> Result<Option<(SealedExport, i64)>, NodeError> {
    conn.query_row(
        "SELECT encapsulated_key, ciphertext, schema, expires_at FROM subject_exports
         WHERE tenant = $1 AND request_id = $2",
        params![tenant, request_id],
        |r| {
            Ok((
                SealedExport {
                    encapsulated_key: r.get(0)?,
                    ciphertext: r.get(1)?,
                    schema: r.get(2)?,
                },
                r.get(3)?,
            ))
        },
    )
    .optional()
}

/// When a request's export expires, if it is still kept.
pub fn export_expiry(
    conn: &Connection,
    tenant: &str,
    request_id: &str,
) -> Result<Option<i64>, NodeError> {
    conn.query_row(
        "SELECT expires_at FROM subject_exports WHERE tenant = $1 AND request_id = $2",
        params![tenant, request_id],
        |r| r.get(0),
    )
    .optional()
}

/// Deletes the exports expired at `now`; returns (tenant, request id, subject) of each.
pub fn destroy_expired_exports(
    tx: &Connection,
    now: i64,
) -> Result<Vec<(String, String, String)>, NodeError> {
    let expired: Vec<(String, String, String)> = tx.query_map(
        "SELECT tenant, request_id, subject_id FROM subject_exports WHERE expires_at <= $1",
        params![now],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    tx.execute(
        "DELETE FROM subject_exports WHERE expires_at <= $1",
        params![now],
    )?;
    Ok(expired)
}

/// A request's history, oldest first.
pub fn events(
    conn: &Connection,
    tenant: &str,
    request_id: &str,
) -> Result<Vec<SubjectRequestEvent>, NodeError> {
    conn.query_map(
        "SELECT at, action, status, actor, reason, principal FROM subject_request_events
         WHERE tenant = $1 AND request_id = $2 ORDER BY seq",
        params![tenant, request_id],
        |r| {
            Ok(SubjectRequestEvent {
                at: Some(ts(r.get(0)?)),
                action: r.get(1)?,
                status: r.get(2)?,
                actor: r.get(3)?,
                reason: r.get(4)?,
                principal: r.get(5)?,
            })
        },
    )
}

/// One page of the queue: up to `query.page_size` cases after `start`, by (due date, id).
///
/// The due date compared is the stored one; a paused case's moves on while it is paused, so
/// the page shows it by its due date when it was paused, and the overdue and due-soon filters
/// count it only if it was already late then (it is not late while the tenant waits).
pub fn page(
    conn: &Connection,
    tenant: &str,
    query: &CaseQuery,
    start: &PageStart,
    now: i64,
) -> Result<Vec<Case>, NodeError> {
    let statuses: Vec<String> = query
        .statuses
        .iter()
        .map(|s| (*s as i32).to_string())
        .collect();
    let only_open = query
        .statuses
        .iter()
        .all(|s| domicile_proto::rights::OPEN_STATUSES.contains(s));
    let mut filter = format!("r.status IN ({})", statuses.join(", "));
    if only_open {
        // Lets the planner use the queue's partial index.
        filter.push_str(" AND r.completed_at IS NULL");
    }
    let sql = format!(
        "SELECT {CASE_COLUMNS} FROM subject_requests r
         LEFT JOIN subject_cases c ON c.tenant = r.tenant AND c.request_id = r.request_id
         WHERE r.tenant = $1 AND (r.due_at, r.request_id) > ($2, $3) AND {filter}
           AND ($4 = 0 OR (r.completed_at IS NULL AND r.due_at < $5
                           AND (c.paused_since IS NULL OR r.due_at < c.paused_since)))
           AND ($6 = 0 OR r.due_at < $7)
         ORDER BY r.due_at, r.request_id LIMIT $8"
    );
    conn.query_map(
        &sql,
        params![
            tenant,
            start.due_at,
            start.request_id,
            i64::from(query.overdue_only),
            now,
            i64::from(query.due_within_days),
            now + i64::from(query.due_within_days) * DAY,
            i64::from(query.page_size)
        ],
        case_of,
    )
}

/// Counts the open requests, those due within 7 days and those overdue, at `now`; `filter`
/// narrows the rows (its parameters from `$3` on, after `params`' `now` and `now + 7 days`).
fn queue_counts(
    conn: &Connection,
    filter: &str,
    params: impl crate::store::db::Params,
) -> Result<(u64, u64, u64), NodeError> {
    let (open, soon, overdue): (i64, i64, i64) = conn.query_row(
        &format!(
            "SELECT COUNT(*),
                    COALESCE(SUM(CASE WHEN r.due_at >= $1 AND r.due_at < $2
                                       AND c.paused_since IS NULL THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN r.due_at < $1
                                       AND (c.paused_since IS NULL OR r.due_at < c.paused_since)
                                      THEN 1 ELSE 0 END), 0)
             FROM subject_requests r
             LEFT JOIN subject_cases c ON c.tenant = r.tenant AND c.request_id = r.request_id
             WHERE r.completed_at IS NULL{filter}"
        ),
        params,
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let n = |x: i64| u64::try_from(x).unwrap_or(0);
    Ok((n(open), n(soon), n(overdue)))
}

/// The queue's counts for one tenant in one region: open, due within 7 days, overdue.
pub fn counts(
    conn: &Connection,
    tenant: &str,
    region: &str,
    now: i64,
) -> Result<SubjectRequestQueueCounts, NodeError> {
    let (open, due_within_7_days, overdue) = queue_counts(
        conn,
        " AND r.tenant = $3",
        params![now, now + DUE_SOON_SECONDS, tenant],
    )?;
    Ok(SubjectRequestQueueCounts {
        region_id: region.to_owned(),
        open,
        due_within_7_days,
        overdue,
    })
}

/// The queue's counts over every tenant (the node's metrics): open, due within 7 days,
/// overdue.
pub fn totals(conn: &Connection, now: i64) -> Result<(u64, u64, u64), NodeError> {
    queue_counts(conn, "", params![now, now + DUE_SOON_SECONDS])
}

#[cfg(test)]
mod tests {
    use super::*;
    use domicile_proto::rights::Verification;

    /// 2027-01-31T10:00:00Z.
    const JAN_31: i64 = 1_801_389_600;

    fn day(y: i64, m: i64, d: i64) -> i64 {
        domicile_proto::domain::days_from_civil(y, m, d) * DAY + 10 * 3600
    }

    #[test]
    fn months_count_by_the_calendar_and_end_on_the_last_day_when_the_month_is_short() {
        assert_eq!(JAN_31, day(2027, 1, 31));
        let month = Period { months: 1, days: 0 };
        assert_eq!(month.after(day(2027, 1, 31)), day(2027, 2, 28));
        assert_eq!(month.after(day(2028, 1, 31)), day(2028, 2, 29));
        assert_eq!(month.after(day(2027, 1, 15)), day(2027, 2, 15));
        assert_eq!(month.after(day(2027, 12, 5)), day(2028, 1, 5));
        let three = Period { months: 3, days: 0 };
        assert_eq!(three.after(day(2027, 11, 30)), day(2028, 2, 29));
        let days = Period {
            months: 0,
            days: 45,
        };
        assert_eq!(days.after(day(2027, 1, 31)), day(2027, 3, 17));
        assert_eq!(days.describe(), "45 days");
        assert_eq!(month.describe(), "1 month");
        assert_eq!(three.describe(), "3 months");
    }

    fn case(status: SubjectRequestStatus) -> Case {
        Case {
            request_id: "eu-de.sr-00".into(),
            subject: "s".into(),
            kind: SubjectRequestKind::Access,
            status,
            submitted_at: JAN_31,
            due_at: day(2027, 2, 28),
            closed_at: None,
            policy_version: "DE@1".into(),
            paused_since: None,
            extension_reason: None,
            refusal_reason: None,
            recipient: None,
            verification: None,
            federation_id: None,
        }
    }

    const GDPR: Deadline = Deadline {
        period: Period { months: 1, days: 0 },
        extension: Some(Period { months: 2, days: 0 }),
        pauses: true,
    };

    fn verify() -> Step {
        Step::Verify(Verification {
            method: domicile_proto::pb::VerificationMethod::DocumentCheck,
            evidence_reference: "t-1".into(),
            verified_by: "agent".into(),
        })
    }

    #[test]
    fn a_pause_moves_the_deadline_by_its_length_and_only_where_the_policy_pauses() {
        use SubjectRequestStatus as S;
        let received = case(S::Received);
        let asked = JAN_31 + 2 * DAY;
        let wait = next(&received, &Step::AwaitSubject("id".into()), &GDPR, asked).unwrap();
        assert_eq!(wait.status, S::AwaitingSubject);
        assert_eq!(wait.paused_since, Some(asked));
        let waiting = Case {
            status: wait.status,
            paused_since: wait.paused_since,
            ..received.clone()
        };
        // Ten days later the subject answers: due ten days later than it was.
        let answered = asked + 10 * DAY;
        assert_eq!(waiting.due_as_of(answered), received.due_at + 10 * DAY);
        assert!(!waiting.is_overdue(received.due_at + DAY));
        let go = next(&waiting, &verify(), &GDPR, answered).unwrap();
        assert_eq!(
            (go.status, go.due_at),
            (S::InProgress, received.due_at + 10 * DAY)
        );
        assert_eq!(go.paused_since, None);
        // A policy that does not pause: waiting changes the status, not the clock.
        let ccpa = Deadline {
            pauses: false,
            ..GDPR
        };
        let wait = next(&received, &Step::AwaitSubject("id".into()), &ccpa, asked).unwrap();
        assert_eq!(wait.paused_since, None);
        assert_eq!(wait.due_at, received.due_at);
    }

    #[test]
    fn an_extension_is_once_before_the_deadline_and_only_where_allowed() {
        use SubjectRequestStatus as S;
        let open = case(S::Received);
        let extend = Step::Extend("complex".into());
        let ext = next(&open, &extend, &GDPR, JAN_31 + DAY).unwrap();
        // Two further months from the original due date (Feb 28 → Apr 28).
        assert_eq!(ext.due_at, day(2027, 4, 28));
        let again = Case {
            extension_reason: Some("complex".into()),
            due_at: ext.due_at,
            ..open.clone()
        };
        assert!(matches!(
            next(&again, &extend, &GDPR, JAN_31 + DAY),
            Err(NodeError::FailedPrecondition(_))
        ));
        let late = open.due_at + 1;
        assert!(next(&open, &extend, &GDPR, late).is_err());
        let none = Deadline {
            extension: None,
            ..GDPR
        };
        assert!(next(&open, &extend, &none, JAN_31).is_err());
        let done = Case {
            status: S::Completed,
            closed_at: Some(JAN_31),
            ..open
        };
        assert!(next(&done, &extend, &GDPR, JAN_31).is_err());
    }

    #[test]
    fn every_status_allows_only_its_steps() {
        use SubjectRequestStatus as S;
        let steps = [
            verify(),
            Step::AwaitSubject("r".into()),
            Step::Extend("r".into()),
            Step::Refuse("r".into()),
        ];
        // (status, closed, [verify, await, extend, refuse] allowed)
        let table = [
            (S::Received, false, [true, true, true, true]),
            (S::AwaitingSubject, false, [true, false, true, true]),
            (S::InProgress, false, [true, false, true, true]),
            (S::PartiallyCompleted, false, [false, false, true, false]),
            (S::Completed, true, [false, false, false, false]),
            (S::Refused, true, [false, false, false, false]),
        ];
        for (status, closed, allowed) in table {
            let c = Case {
                closed_at: closed.then_some(JAN_31),
                ..case(status)
            };
            for (step, ok) in steps.iter().zip(allowed) {
                assert_eq!(
                    next(&c, step, &GDPR, JAN_31 + DAY).is_ok(),
                    ok,
                    "{status:?} {step:?}"
                );
            }
        }
        let refused = next(&case(S::Received), &Step::Refuse("r".into()), &GDPR, JAN_31).unwrap();
        assert_eq!(refused.closed_at, Some(JAN_31));
    }
}
