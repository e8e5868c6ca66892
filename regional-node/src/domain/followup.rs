//! Follow-up cases: the closed loop (followup.proto). A case is kept by the subject's
//! reference, like every other row; what crosses the border ([`FollowUp`]) has no personal
//! data and no principal.
//!
//! A subject pseudonym cannot be inverted, so the node resolves one by computing the pseudonym
//! under the request's purpose for each subject with an interaction inside the follow-up window
//! (the only subjects whose pseudonyms may still open a case) until one matches. That costs one
//! HMAC per recent subject, and only on `OpenFollowUp`.

use crate::store::db::{Connection, Query, params};
use domicile_proto::{
    consent::ConsentQuestion,
    domain::whole_seconds as ts,
    followup::is_open,
    pb::{Channel, FollowUp, FollowUpCounts, FollowUpPriority, FollowUpStatus, Purpose},
};

use crate::{
    domain::consent,
    domain::policy::CountryPolicy,
    domain::stored::Profile,
    error::NodeError,
    privacy::pseudonym::{Kind, Pseudonymiser},
};

/// The follow-up table; created with the rest of the schema. `channels` are the requested
/// ones (comma-separated enum numbers), `channel` the one allowed when the case was opened.
pub const SCHEMA_SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS follow_ups (
    tenant       TEXT NOT NULL,
    follow_up_id TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    country      TEXT NOT NULL,
    purpose      INTEGER NOT NULL,
    channels     TEXT NOT NULL,
    channel      INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    status       INTEGER NOT NULL,
    opened_at    INTEGER NOT NULL,
    due_at       INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, follow_up_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS follow_ups_by_subject ON follow_ups (tenant, subject_id);
"#;

/// The same tables for PostgreSQL (`BIGINT` integers, `BYTEA` bytes, identity columns); the
/// triggers are PL/pgSQL, in [`crate::domain::schema`]. The store contract test checks that
/// both engines end up with the same tables, columns, keys and indexes.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS follow_ups (
    tenant       TEXT NOT NULL,
    follow_up_id TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    country      TEXT NOT NULL,
    purpose      BIGINT NOT NULL,
    channels     TEXT NOT NULL,
    channel      BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    priority     BIGINT NOT NULL,
    status       BIGINT NOT NULL,
    opened_at    BIGINT NOT NULL,
    due_at       BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant, follow_up_id)
);

CREATE INDEX IF NOT EXISTS follow_ups_by_subject ON follow_ups (tenant, subject_id);
"#;

/// A stored case, with the subject's reference (which never leaves the node).
#[derive(Debug, Clone)]
pub struct Case {
    /// The case as it may cross the border (`overdue` as of the read).
    pub public: FollowUp,
    /// The subject's reference.
    pub subject: String,
    /// The requested channels, in order.
    pub channels: Vec<Channel>,
}

/// The subject (reference, country) whose pseudonym under `purpose` is `pseudonym`, among the
/// subjects with an interaction since `since` in one of `countries`.
pub fn resolve(
    conn: &Connection,
    pseudonyms: &Pseudonymiser,
    tenant: &str,
    purpose: Purpose,
    pseudonym: &str,
    since: i64,
    countries: &[String],
) -> Result<Option<(String, String)>, NodeError> {
    let mut found = None;
    conn.query_each(
        "SELECT subject_id, MIN(country) FROM interactions
         WHERE tenant = $1 AND started_at >= $2 GROUP BY subject_id",
        params![tenant, since],
        |row| {
            let subject: String = row.get(0)?;
            if pseudonyms.pseudonym(Kind::Subject, tenant, purpose, &subject) != pseudonym {
                return Ok(true);
            }
            let country: String = row.get(1)?;
            if countries.contains(&country) {
                found = Some((subject, country));
            }
            Ok(false)
        },
    )?;
    Ok(found)
}

const COLUMNS: &str = "follow_up_id, subject_id, country, purpose, channels, channel, reason, \
                       priority, status, opened_at, due_at, updated_at";

fn case_of(row: &crate::store::db::Row<'_>, region_id: &str, now: i64) -> Result<Case, NodeError> {
    let status: i32 = row.get(8)?;
    let due: i64 = row.get(10)?;
    let channels: String = row.get(4)?;
    let overdue = FollowUpStatus::try_from(status).is_ok_and(is_open) && due < now;
    Ok(Case {
        public: FollowUp {
            follow_up_id: row.get(0)?,
            region_id: region_id.to_owned(),
            country: row.get(2)?,
            purpose: row.get(3)?,
            channel: row.get(5)?,
            reason: row.get(6)?,
            priority: row.get(7)?,
            status,
            opened_at: Some(ts(row.get(9)?)),
            due_at: Some(ts(due)),
            updated_at: Some(ts(row.get(11)?)),
            overdue,
        },
        subject: row.get(1)?,
        channels: channels
            .split(',')
            .filter_map(|c| c.parse::<i32>().ok())
            .filter_map(|c| Channel::try_from(c).ok())
            .collect(),
    })
}

/// The open statuses, as a SQL list.
fn open_statuses() -> String {
    format!(
        "({}, {}, {})",
        FollowUpStatus::Open as i32,
        FollowUpStatus::Reached as i32,
        FollowUpStatus::NotReached as i32
    )
}

/// The cases `WHERE {filter}` (which may end with `ORDER BY` and `LIMIT`).
fn select(
    conn: &Connection,
    region_id: &str,
    now: i64,
    filter: impl FnOnce(&mut Query<'_>),
) -> Result<Vec<Case>, NodeError> {
    let mut q = Query::new(format!("SELECT {COLUMNS} FROM follow_ups WHERE "));
    filter(&mut q);
    let mut stmt = conn.prepare(q.sql())?;
    let mut rows = stmt.query(q.params())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(case_of(&row, region_id, now)?);
    }
    Ok(out)
}

/// The open case of `subject` for `purpose`, if any.
pub fn open_case_of(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    subject: &str,
    purpose: Purpose,
    now: i64,
) -> Result<Option<Case>, NodeError> {
    Ok(select(conn, region_id, now, |q| {
        q.push("tenant = ")
            .bind(tenant.to_owned())
            .push(" AND subject_id = ")
            .bind(subject.to_owned())
            .push(" AND purpose = ")
            .bind(purpose as i32)
            .push(&format!(
                " AND status IN {} ORDER BY opened_at LIMIT 1",
                open_statuses()
            ));
    })?
    .into_iter()
    .next())
}

/// What a new case is made of.
#[derive(Debug, Clone)]
pub struct NewCase<'a> {
    /// Its id.
    pub id: &'a str,
    /// The subject's reference.
    pub subject: &'a str,
    /// The subject's country.
    pub country: &'a str,
    /// The purpose.
    pub purpose: Purpose,
    /// The requested channels.
    pub channels: &'a [Channel],
    /// The channel allowed now.
    pub channel: Channel,
    /// The reason code.
    pub reason: &'a str,
    /// The priority.
    pub priority: FollowUpPriority,
}

/// Stores a new open case, opened `now`.
pub fn insert(
    tx: &Connection,
    tenant: &str,
    case: &NewCase<'_>,
    now: i64,
) -> Result<(), NodeError> {
    let channels = case
        .channels
        .iter()
        .map(|c| (*c as i32).to_string())
        .collect::<Vec<_>>()
        .join(",");
    tx.execute(
        &format!(
            "INSERT INTO follow_ups (tenant, {COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ),
        params![
            tenant,
            case.id,
            case.subject,
            case.country,
            case.purpose as i32,
            channels,
            case.channel as i32,
            case.reason,
            case.priority as i32,
            FollowUpStatus::Open as i32,
            now,
            now + domicile_proto::followup::due_in(case.priority),
            now,
        ],
    )?;
    Ok(())
}

/// One case, or `None`.
pub fn get(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    id: &str,
    now: i64,
) -> Result<Option<Case>, NodeError> {
    Ok(select(conn, region_id, now, |q| {
        q.push("tenant = ")
            .bind(tenant.to_owned())
            .push(" AND follow_up_id = ")
            .bind(id.to_owned());
    })?
    .into_iter()
    .next())
}

/// The tenant's cases (only `ids` when not empty; only open ones when `open_only`), most
/// recently opened first, or due soonest first when `by_due`; at most
/// [`domicile_proto::followup::MAX_LISTED`].
pub fn list(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    ids: &[String],
    open_only: bool,
    by_due: bool,
    now: i64,
) -> Result<Vec<FollowUp>, NodeError> {
    let order = if by_due {
        "due_at, follow_up_id"
    } else {
        "opened_at DESC, follow_up_id"
    };
    Ok(select(conn, region_id, now, |q| {
        q.push("tenant = ").bind(tenant.to_owned());
        if open_only {
            q.push(&format!(" AND status IN {}", open_statuses()));
        }
        if !ids.is_empty() {
            q.push(" AND follow_up_id IN (")
                .bind_list(ids.iter().cloned())
                .push(")");
        }
        q.push(&format!(
            " ORDER BY {order} LIMIT {}",
            domicile_proto::followup::MAX_LISTED
        ));
    })?
    .into_iter()
    .map(|c| c.public)
    .collect())
}

/// Sets a case's status at `now`.
pub fn set_status(
    tx: &Connection,
    tenant: &str,
    id: &str,
    status: FollowUpStatus,
    now: i64,
) -> Result<(), NodeError> {
    tx.execute(
        "UPDATE follow_ups SET status = $1, updated_at = $2 WHERE tenant = $3 AND follow_up_id = $4",
        params![status as i32, now, tenant, id],
    )?;
    Ok(())
}

/// An erasure: the subject's open cases are cancelled and every case forgets who it was for.
pub fn forget_subject(
    tx: &Connection,
    tenant: &str,
    subject: &str,
    now: i64,
) -> Result<(), NodeError> {
    tx.execute(
        "UPDATE follow_ups SET status = $1, updated_at = $2
         WHERE tenant = $3 AND subject_id = $4 AND status IN ($5, $6, $7)",
        params![
            FollowUpStatus::Cancelled as i32,
            now,
            tenant,
            subject,
            FollowUpStatus::Open as i32,
            FollowUpStatus::Reached as i32,
            FollowUpStatus::NotReached as i32,
        ],
    )?;
    tx.execute(
        "UPDATE follow_ups SET subject_id = '' WHERE tenant = $1 AND subject_id = $2",
        params![tenant, subject],
    )?;
    Ok(())
}

/// The tenant's cases counted for the console.
pub fn counts(conn: &Connection, tenant: &str, now: i64) -> Result<FollowUpCounts, NodeError> {
    let mut stmt = conn.prepare(
        "SELECT status, COUNT(*), SUM(CASE WHEN due_at < $2 THEN 1 ELSE 0 END)
         FROM follow_ups WHERE tenant = $1 GROUP BY status",
    )?;
    let mut rows = stmt.query(params![tenant, now])?;
    let mut counts = FollowUpCounts::default();
    while let Some(row) = rows.next()? {
        let status = FollowUpStatus::try_from(row.get::<_, i32>(0)?).unwrap_or_default();
        let n = row.get::<_, i64>(1)? as u64;
        let late = row.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64;
        match status {
            s if is_open(s) => {
                counts.open += n;
                counts.overdue += late;
            }
            FollowUpStatus::Resolved => counts.resolved += n,
            FollowUpStatus::Cancelled => counts.cancelled += n,
            _ => {}
        }
    }
    Ok(counts)
}

/// The address of `profile` on `channel`: the e-mail for e-mail, the phone for calls and
/// texts; empty for other channels or when none is on file.
pub(crate) fn address(profile: &Profile, channel: Channel) -> String {
    match channel {
        Channel::Email => profile.email.clone(),
        Channel::Phone | Channel::Sms => profile.phone.clone(),
        _ => String::new(),
    }
}

/// The first of `channels` on which `q`'s subject may be contacted for its purpose, or the
/// reasons per channel (no personal data in them) when none.
pub(crate) fn first_allowed(
    conn: &Connection,
    policy: &CountryPolicy,
    q: &mut ConsentQuestion,
    channels: &[Channel],
    suppressed_as: &[String],
) -> Result<Result<Channel, String>, NodeError> {
    let mut why = Vec::with_capacity(channels.len());
    for channel in channels {
        q.channel = *channel;
        let answer = consent::check(conn, policy, q, || suppressed_as.to_vec())?;
        if answer.allowed {
            return Ok(Ok(*channel));
        }
        let reasons: Vec<&str> = answer.reasons.iter().map(|r| r.detail.as_str()).collect();
        why.push(format!("{}: {}", channel.as_str_name(), reasons.join("; ")));
    }
    Ok(Err(why.join(" | ")))
}
