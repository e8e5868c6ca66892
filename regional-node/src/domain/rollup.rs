//! Rollups: aggregates answered from cells maintained at ingest, not from a scan of every row.
//!
//! A cell holds the sums of one tenant's interactions of one country and channel over one UTC
//! day or one calendar month, and the exact set of their subjects as a roaring bitmap of
//! subject numbers (`subject_numbers`, dense integers local to this database). Every change to
//! `interactions` — ingest, a replaced interaction, erasure, retention — updates the cells in
//! the same transaction through a [`Delta`], so cells and rows never disagree.
//!
//! A query ([`run`]) reads whole months from month cells, whole days from day cells, and the
//! partial days at the ends of its range from the rows. The consent gate still applies row by
//! row: when every country's rule only drops listed subjects (opt-out, or no consent needed),
//! the rows of those few subjects are read and their dropped rows taken out of the sums and
//! subject sets. Queries that need every row — differential privacy (contributions bounded per
//! subject) or opt-in rules (only listed subjects kept) — run as SQL over the rows instead
//! ([`crate::domain::aggregate`]). Both paths give the same answer; a property test holds them to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::store::db::{
    Connection, Dialect, OptionalExtension, Query, ToValue, params, params_from_iter,
};
use domicile_proto::{
    domain::{MAX_TIMESTAMP, MIN_TIMESTAMP},
    merge::NPS_BUCKETS,
    pb::{AggregateStats, Channel, Dimension, GroupKey},
};
use roaring::RoaringBitmap;

use crate::{
    domain::partial::{Partial, Rules, release},
    error::NodeError,
};

/// Tables of the rollups (schema version 4); see [`schema`].
const TABLES: &str = r#"
CREATE INDEX IF NOT EXISTS interactions_by_subject ON interactions (tenant, subject_id, started_at);
CREATE INDEX IF NOT EXISTS interaction_text_by_subject ON interaction_text (tenant, subject_id);

-- Dense numbers for the subjects of `interactions`, for the bitmaps of the cells. A number is
-- dropped with the subject's last interaction.
CREATE TABLE IF NOT EXISTS subject_numbers (
    n          INTEGER PRIMARY KEY,
    tenant     TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    UNIQUE (tenant, subject_id)
);

-- grain 1: `bucket` is a UTC day (days since 1970-01-01); grain 2: a month (months since
-- 1970-01). `sums` is `Sums::encode`; `subjects` a serialized roaring bitmap of numbers.
CREATE TABLE IF NOT EXISTS rollup_cells (
    tenant         TEXT NOT NULL,
    grain          INTEGER NOT NULL,
    bucket         INTEGER NOT NULL,
    country        TEXT NOT NULL,
    channel        INTEGER NOT NULL,
    sums           BLOB NOT NULL,
    subjects_count INTEGER NOT NULL,
    subjects       BLOB NOT NULL,
    UNIQUE (tenant, grain, bucket, country, channel)
);

-- The same sums per subject and month (no subject sets), clustered by subject, for the subjects
-- in `tracked_subjects` only: what the consent gate takes out for the few subjects it drops is
-- read here, a few rows per subject, rather than from every interaction of theirs. Columns
-- follow `Sums::fields`.
CREATE TABLE IF NOT EXISTS subject_cells (
    tenant     TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    bucket     INTEGER NOT NULL,
    country    TEXT NOT NULL,
    channel    INTEGER NOT NULL,
    interactions INTEGER NOT NULL,
    nps0 INTEGER NOT NULL, nps1 INTEGER NOT NULL, nps2 INTEGER NOT NULL, nps3 INTEGER NOT NULL,
    nps4 INTEGER NOT NULL, nps5 INTEGER NOT NULL, nps6 INTEGER NOT NULL, nps7 INTEGER NOT NULL,
    nps8 INTEGER NOT NULL, nps9 INTEGER NOT NULL, nps10 INTEGER NOT NULL,
    csat_sum INTEGER NOT NULL, csat_responses INTEGER NOT NULL,
    ces_sum INTEGER NOT NULL, ces_responses INTEGER NOT NULL,
    handle_time_sum INTEGER NOT NULL, handle_time_count INTEGER NOT NULL,
    PRIMARY KEY (tenant, subject_id, bucket, country, channel)
) WITHOUT ROWID;

-- Subjects some purpose's gate may drop: a refusal, withdrawal or objection on file for any
-- purpose, or a restriction or pending erasure. Triggers (see `schema`) add a subject, with
-- its subject cells built from its rows, the moment it first qualifies.
CREATE TABLE IF NOT EXISTS tracked_subjects (
    tenant     TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    PRIMARY KEY (tenant, subject_id)
) WITHOUT ROWID;
"#;

/// The consent states that make a subject droppable under some purpose's gate, as SQL.
fn dropping_states() -> String {
    use domicile_proto::pb::ConsentState as S;
    format!(
        "{}, {}, {}",
        S::Refused as i32,
        S::Withdrawn as i32,
        S::Objected as i32
    )
}

/// Who is tracked: the subjects that qualify now (a rebuild starts from this).
fn qualifying() -> String {
    format!(
        "SELECT tenant, subject_id FROM consent_state WHERE state IN ({})
         UNION SELECT tenant, subject_id FROM subject_flags WHERE restricted = 1 OR erasure_pending = 1",
        dropping_states()
    )
}

/// The aggregate columns of `subject_cells` over a subject's interactions, in `SUMS_COLUMNS`
/// order.
fn subject_sums_sql() -> String {
    [
        "COUNT(*)".to_owned(),
        (0..NPS_BUCKETS)
            .map(|b| format!("SUM(CASE WHEN nps = {b} THEN 1 ELSE 0 END)"))
            .collect::<Vec<_>>()
            .join(", "),
        "COALESCE(SUM(csat), 0), COUNT(csat), COALESCE(SUM(ces), 0), COUNT(ces), \
         SUM(handle_time), SUM(CASE WHEN handle_time > 0 THEN 1 ELSE 0 END)"
            .to_owned(),
    ]
    .join(", ")
}

/// The month number of `started_at`, in SQL of `dialect`.
fn month_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "(CAST(strftime('%Y', started_at, 'unixepoch') AS INTEGER) - 1970) * 12 \
             + CAST(strftime('%m', started_at, 'unixepoch') AS INTEGER) - 1"
        }
        Dialect::Postgres => {
            "(CAST(EXTRACT(YEAR FROM to_timestamp(started_at) AT TIME ZONE 'UTC') AS BIGINT) - 1970) * 12 \
             + CAST(EXTRACT(MONTH FROM to_timestamp(started_at) AT TIME ZONE 'UTC') AS BIGINT) - 1"
        }
    }
}

/// The tables whose rows make a subject tracked, and the condition on the new row.
fn tracking_conditions() -> [(&'static str, String); 2] {
    [
        (
            "consent_state",
            format!("NEW.state IN ({})", dropping_states()),
        ),
        (
            "subject_flags",
            "NEW.restricted = 1 OR NEW.erasure_pending = 1".to_owned(),
        ),
    ]
}

/// The rollup schema (SQLite): tables, and the triggers that track a subject when it first
/// qualifies.
pub fn schema() -> String {
    let sums = subject_sums_sql();
    let month = month_sql(Dialect::Sqlite);
    let mut sql = TABLES.to_owned();
    for (table, when) in tracking_conditions() {
        for event in ["INSERT", "UPDATE"] {
            sql.push_str(&format!(
                "CREATE TRIGGER IF NOT EXISTS track_{table}_{event} AFTER {event} ON {table}
                 WHEN ({when}) AND NOT EXISTS (SELECT 1 FROM tracked_subjects
                     WHERE tenant = NEW.tenant AND subject_id = NEW.subject_id)
                 BEGIN
                   INSERT INTO subject_cells (tenant, subject_id, bucket, country, channel, {SUMS_COLUMNS})
                     SELECT tenant, subject_id, {month}, country, channel, {sums}
                     FROM interactions WHERE tenant = NEW.tenant AND subject_id = NEW.subject_id
                     GROUP BY 3, 4, 5;
                   INSERT INTO tracked_subjects (tenant, subject_id) VALUES (NEW.tenant, NEW.subject_id);
                 END;\n"
            ));
        }
    }
    sql
}

/// The same tracking triggers for PostgreSQL (PL/pgSQL). The claim on `tracked_subjects`
/// comes first, so that two replicas tracking one subject at once build its cells once.
pub fn pg_triggers() -> String {
    let sums = subject_sums_sql();
    let month = month_sql(Dialect::Postgres);
    let mut sql = String::new();
    for (table, when) in tracking_conditions() {
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION domicile_track_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF {when} THEN
                 INSERT INTO tracked_subjects (tenant, subject_id) VALUES (NEW.tenant, NEW.subject_id)
                   ON CONFLICT DO NOTHING;
                 IF FOUND THEN
                   INSERT INTO subject_cells (tenant, subject_id, bucket, country, channel, {SUMS_COLUMNS})
                     SELECT tenant, subject_id, {month}, country, channel, {sums}
                     FROM interactions WHERE tenant = NEW.tenant AND subject_id = NEW.subject_id
                     GROUP BY 1, 2, 3, 4, 5;
                 END IF;
               END IF;
               RETURN NULL;
             END $$;
             CREATE OR REPLACE TRIGGER track_{table} AFTER INSERT OR UPDATE ON {table}
               FOR EACH ROW EXECUTE FUNCTION domicile_track_{table}();\n"
        ));
    }
    sql
}

/// Adds a delta to a subject cell (made when missing): tenant, subject, bucket, country,
/// channel, then the `SUMS_COLUMNS` values.
static ADD_SUBJECT_CELL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let updates: Vec<String> = SUMS_COLUMNS
        .split(", ")
        .map(|c| format!("{c} = subject_cells.{c} + excluded.{c}"))
        .collect();
    let marks: Vec<String> = (6..6 + SUMS_FIELDS).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO subject_cells (tenant, subject_id, bucket, country, channel, {SUMS_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, {})
         ON CONFLICT (tenant, subject_id, bucket, country, channel) DO UPDATE SET {}",
        marks.join(", "),
        updates.join(", ")
    )
});

/// The sums columns of `subject_cells`, in `Sums::fields` order.
const SUMS_COLUMNS: &str = "interactions, nps0, nps1, nps2, nps3, nps4, nps5, nps6, nps7, nps8, \
    nps9, nps10, csat_sum, csat_responses, ces_sum, ces_responses, handle_time_sum, \
    handle_time_count";

pub(crate) const DAY: i64 = 86_400;

/// The span of time one cell covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Grain {
    Day = 1,
    Month = 2,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

use domicile_proto::domain::civil_from_days;

/// The month number (months since 1970-01) of a day number.
pub(crate) fn month_of_day(day: i64) -> i64 {
    let (y, m, _) = civil_from_days(day);
    (y - 1970) * 12 + m - 1
}

/// The first day of a month number.
pub(crate) fn first_day(month: i64) -> i64 {
    days_from_civil(1970 + month.div_euclid(12), month.rem_euclid(12) + 1, 1)
}

/// `YYYY-MM`, as SQLite's `strftime('%Y-%m')` writes it.
pub(crate) fn month_label(month: i64) -> String {
    format!(
        "{:04}-{:02}",
        1970 + month.div_euclid(12),
        month.rem_euclid(12) + 1
    )
}

/// `YYYY-MM-DD`, as SQLite's `strftime('%Y-%m-%d')` writes it.
pub fn day_label(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The sums of a set of interactions. Signed, so that a removal is a negative delta.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sums {
    interactions: i64,
    nps: [i64; NPS_BUCKETS],
    csat_sum: i64,
    csat_responses: i64,
    ces_sum: i64,
    ces_responses: i64,
    handle_time_sum: i64,
    handle_time_count: i64,
}

const SUMS_FIELDS: usize = NPS_BUCKETS + 7;

impl Sums {
    fn fields(&self) -> [i64; SUMS_FIELDS] {
        let mut out = [0; SUMS_FIELDS];
        out[0] = self.interactions;
        out[1..=NPS_BUCKETS].copy_from_slice(&self.nps);
        out[NPS_BUCKETS + 1..].copy_from_slice(&[
            self.csat_sum,
            self.csat_responses,
            self.ces_sum,
            self.ces_responses,
            self.handle_time_sum,
            self.handle_time_count,
        ]);
        out
    }

    fn from_fields(f: [i64; SUMS_FIELDS]) -> Self {
        let b = NPS_BUCKETS + 1;
        let mut nps = [0; NPS_BUCKETS];
        nps.copy_from_slice(&f[1..b]);
        Self {
            interactions: f[0],
            nps,
            csat_sum: f[b],
            csat_responses: f[b + 1],
            ces_sum: f[b + 2],
            ces_responses: f[b + 3],
            handle_time_sum: f[b + 4],
            handle_time_count: f[b + 5],
        }
    }

    /// Adds `sign` (±1) times `other`.
    fn add(&mut self, other: &Sums, sign: i64) {
        let mut f = self.fields();
        for (a, b) in f.iter_mut().zip(other.fields()) {
            *a += sign * b;
        }
        *self = Self::from_fields(f);
    }

    /// Reads `SUMS_COLUMNS` starting at column `first`.
    fn from_row(row: &crate::store::db::Row<'_>, first: usize) -> Result<Self, NodeError> {
        let mut f = [0; SUMS_FIELDS];
        for (i, v) in f.iter_mut().enumerate() {
            *v = row.get(first + i)?;
        }
        Ok(Self::from_fields(f))
    }

    fn encode(&self) -> Vec<u8> {
        self.fields().iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn decode(blob: &[u8]) -> Result<Self, NodeError> {
        if blob.len() != SUMS_FIELDS * 8 {
            return Err(NodeError::Internal("a rollup cell is corrupt".into()));
        }
        let mut f = [0; SUMS_FIELDS];
        for (v, chunk) in f.iter_mut().zip(blob.chunks_exact(8)) {
            *v = i64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        }
        Ok(Self::from_fields(f))
    }

    fn stats(&self, distinct_subjects: u64) -> AggregateStats {
        let u = |v: i64| v.max(0) as u64;
        AggregateStats {
            interactions: u(self.interactions),
            distinct_subjects,
            nps_histogram: self.nps.iter().map(|v| u(*v)).collect(),
            csat_sum: u(self.csat_sum),
            csat_responses: u(self.csat_responses),
            ces_sum: u(self.ces_sum),
            ces_responses: u(self.ces_responses),
            handle_time_sum_seconds: u(self.handle_time_sum),
            handle_time_count: u(self.handle_time_count),
        }
    }
}

/// The analytical facts of one interaction.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Tenant.
    pub tenant: String,
    /// The subject's external id.
    pub subject: String,
    /// Country.
    pub country: String,
    /// Channel (wire value).
    pub channel: i32,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// Handle time, seconds.
    pub handle_time: i64,
    /// NPS answer.
    pub nps: Option<i64>,
    /// CSAT answer.
    pub csat: Option<i64>,
    /// CES answer.
    pub ces: Option<i64>,
}

/// The columns [`Facts`] are read from, on `interactions` aliased `i`.
const FACT_COLUMNS: &str = "i.tenant, i.subject_id, i.country, i.channel, i.started_at, i.handle_time, i.nps, i.csat, i.ces";

impl Facts {
    fn from_row(row: &crate::store::db::Row<'_>) -> Result<Self, NodeError> {
        Ok(Self {
            tenant: row.get(0)?,
            subject: row.get(1)?,
            country: row.get(2)?,
            channel: row.get(3)?,
            started_at: row.get(4)?,
            handle_time: row.get(5)?,
            nps: row.get(6)?,
            csat: row.get(7)?,
            ces: row.get(8)?,
        })
    }
}

/// The sums of one interaction.
fn sums_of(handle_time: i64, nps: Option<i64>, csat: Option<i64>, ces: Option<i64>) -> Sums {
    let mut s = Sums {
        interactions: 1,
        handle_time_sum: handle_time,
        handle_time_count: i64::from(handle_time > 0),
        ..Default::default()
    };
    if let Some(bucket) = nps
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n < NPS_BUCKETS)
    {
        s.nps[bucket] = 1;
    }
    if let Some(v) = csat {
        (s.csat_sum, s.csat_responses) = (v, 1);
    }
    if let Some(v) = ces {
        (s.ces_sum, s.ces_responses) = (v, 1);
    }
    s
}

/// A cell of one tenant: copyable, so that counting a row allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct CellKey {
    grain: Grain,
    bucket: i64,
    /// ISO 3166-1 alpha-2, as validated at ingest.
    country: [u8; 2],
    channel: i32,
}

impl CellKey {
    fn both(f: &Facts) -> Result<[CellKey; 2], NodeError> {
        let country: [u8; 2] =
            f.country.as_bytes().try_into().map_err(|_| {
                NodeError::Internal("a stored country code is not two letters".into())
            })?;
        let day = f.started_at.div_euclid(DAY);
        let key = |grain, bucket| CellKey {
            grain,
            bucket,
            country,
            channel: f.channel,
        };
        Ok([key(Grain::Day, day), key(Grain::Month, month_of_day(day))])
    }

    fn country(&self) -> &str {
        std::str::from_utf8(&self.country).unwrap_or("??")
    }

    /// The Unix-seconds range of the cell.
    fn range(&self) -> (i64, i64) {
        match self.grain {
            Grain::Day => (self.bucket * DAY, (self.bucket + 1) * DAY),
            Grain::Month => (
                first_day(self.bucket) * DAY,
                first_day(self.bucket + 1) * DAY,
            ),
        }
    }
}

/// A stored cell as read back: grain, bucket, country, channel, sums, subjects.
type StoredCell = (i64, i64, String, i64, Vec<u8>, Vec<u8>);

/// Cells to write in one statement (PostgreSQL), as array columns.
#[derive(Default)]
struct CellRows {
    grain: Vec<Option<i64>>,
    bucket: Vec<Option<i64>>,
    country: Vec<Option<String>>,
    channel: Vec<Option<i64>>,
    sums: Vec<Option<Vec<u8>>>,
    count: Vec<Option<i64>>,
    subjects: Vec<Option<Vec<u8>>>,
}

impl CellRows {
    fn push(&mut self, key: &CellKey, sums: Vec<u8>, count: i64, subjects: Vec<u8>) {
        self.grain.push(Some(key.grain as i64));
        self.bucket.push(Some(key.bucket));
        self.country.push(Some(key.country().to_owned()));
        self.channel.push(Some(i64::from(key.channel)));
        self.sums.push(Some(sums));
        self.count.push(Some(count));
        self.subjects.push(Some(subjects));
    }
}

#[derive(Debug, Default)]
struct CellDelta {
    sums: Sums,
    added: RoaringBitmap,
    /// Subjects that lost an interaction here, by number: they leave the cell unless another
    /// of their interactions is still in it.
    removed: BTreeMap<u32, String>,
}

/// The changes of one tenant.
#[derive(Debug, Default)]
struct TenantDelta {
    cells: BTreeMap<CellKey, CellDelta>,
    /// Numbers looked up or made in this transaction.
    numbers: HashMap<String, u32>,
    /// Subjects that lost an interaction: their number goes with their last one.
    losing: BTreeSet<String>,
    /// Per tracked subject, month, country and channel.
    subject_cells: BTreeMap<(String, i64, [u8; 2], i32), Sums>,
    /// Whether a subject is tracked, as looked up in this transaction.
    tracked: HashMap<String, bool>,
}

/// Changes to the cells made by one transaction; [`Delta::apply`] writes them before its
/// commit.
#[derive(Debug, Default)]
pub struct Delta {
    tenants: BTreeMap<String, TenantDelta>,
}

impl TenantDelta {
    /// Whether `subject` has subject cells to keep.
    fn is_tracked(
        &mut self,
        tx: &Connection,
        tenant: &str,
        subject: &str,
    ) -> Result<bool, NodeError> {
        if let Some(t) = self.tracked.get(subject) {
            return Ok(*t);
        }
        let t: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM tracked_subjects WHERE tenant = $1 AND subject_id = $2)",
            )?
            .query_row(params![tenant, subject], |r| r.get(0))?;
        self.tracked.insert(subject.to_owned(), t);
        Ok(t)
    }

    /// Adds `sign` × `sums` to the subject cell of `f`, when its subject is tracked.
    fn subject_cell(
        &mut self,
        tx: &Connection,
        f: &Facts,
        month: CellKey,
        sums: &Sums,
        sign: i64,
    ) -> Result<(), NodeError> {
        if self.is_tracked(tx, &f.tenant, &f.subject)? {
            self.subject_cells
                .entry((
                    f.subject.clone(),
                    month.bucket,
                    month.country,
                    month.channel,
                ))
                .or_default()
                .add(sums, sign);
        }
        Ok(())
    }

    /// The number of a subject, made when missing.
    fn number(&mut self, tx: &Connection, tenant: &str, subject: &str) -> Result<u32, NodeError> {
        if let Some(n) = self.numbers.get(subject) {
            return Ok(*n);
        }
        let found: Option<i64> = tx
            .prepare_cached("SELECT n FROM subject_numbers WHERE tenant = $1 AND subject_id = $2")?
            .query_row(params![tenant, subject], |r| r.get(0))
            .optional()?;
        let n = match found {
            Some(n) => n,
            // SQLite's RETURNING runs through a temporary table; its rowid is at hand.
            None => match tx.as_sqlite() {
                Some(c) => {
                    tx.prepare_cached(
                        "INSERT INTO subject_numbers (tenant, subject_id) VALUES ($1, $2)",
                    )?
                    .execute(params![tenant, subject])?;
                    c.last_insert_rowid()
                }
                None => tx.query_row(
                    "INSERT INTO subject_numbers (tenant, subject_id) VALUES ($1, $2) RETURNING n",
                    params![tenant, subject],
                    |r| r.get(0),
                )?,
            },
        };
        let n = u32::try_from(n)
            .map_err(|_| NodeError::Internal("more than 2^32 subjects in one database".into()))?;
        self.numbers.insert(subject.to_owned(), n);
        Ok(n)
    }
}

impl Delta {
    fn tenant(&mut self, tenant: &str) -> &mut TenantDelta {
        if !self.tenants.contains_key(tenant) {
            self.tenants
                .insert(tenant.to_owned(), TenantDelta::default());
        }
        self.tenants.get_mut(tenant).expect("inserted above")
    }

    /// Looks up the numbers of `subjects` (making the missing ones) and whether each is
    /// tracked, in a few set-based statements (PostgreSQL: arrays), so that [`Delta::add`]
    /// then asks the database nothing per interaction.
    pub fn prefetch(
        &mut self,
        tx: &Connection,
        tenant: &str,
        subjects: &BTreeSet<&str>,
    ) -> Result<(), NodeError> {
        let delta = self.tenant(tenant);
        let wanted: Vec<Option<String>> = subjects
            .iter()
            .filter(|s| !delta.numbers.contains_key(**s))
            .map(|s| Some((*s).to_owned()))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        fn found(
            tx: &Connection,
            numbers: &mut HashMap<String, u32>,
            sql: &str,
            args: &[&dyn ToValue],
        ) -> Result<(), NodeError> {
            let rows: Vec<(String, i64)> = tx
                .prepare_cached(sql)?
                .query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (subject, n) in rows {
                let n = u32::try_from(n).map_err(|_| {
                    NodeError::Internal("more than 2^32 subjects in one database".into())
                })?;
                numbers.insert(subject, n);
            }
            Ok(())
        }
        const KNOWN: &str = "SELECT subject_id, n FROM subject_numbers
             WHERE tenant = $1 AND subject_id = ANY($2::text[])";
        found(tx, &mut delta.numbers, KNOWN, params![tenant, wanted])?;
        // Only the missing ones are inserted: a conflicting insert would still spend a number.
        let missing: Vec<Option<String>> = wanted
            .iter()
            .filter(|s| s.as_ref().is_some_and(|s| !delta.numbers.contains_key(s)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            found(
                tx,
                &mut delta.numbers,
                "INSERT INTO subject_numbers (tenant, subject_id)
                 SELECT $1, s FROM unnest($2::text[]) AS t(s)
                 ON CONFLICT DO NOTHING RETURNING subject_id, n",
                params![tenant, missing],
            )?;
            // Made meanwhile by another replica's transaction: read those.
            let raced: Vec<Option<String>> = missing
                .into_iter()
                .filter(|s| s.as_ref().is_some_and(|s| !delta.numbers.contains_key(s)))
                .collect();
            if !raced.is_empty() {
                found(tx, &mut delta.numbers, KNOWN, params![tenant, raced])?;
            }
        }
        let tracked: Vec<String> = tx
            .prepare_cached(
                "SELECT subject_id FROM tracked_subjects
                 WHERE tenant = $1 AND subject_id = ANY($2::text[])",
            )?
            .query_map(params![tenant, wanted], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for s in wanted.into_iter().flatten() {
            delta.tracked.insert(s, false);
        }
        for s in tracked {
            delta.tracked.insert(s, true);
        }
        Ok(())
    }

    /// Counts a stored interaction.
    pub fn add(&mut self, tx: &Connection, f: &Facts) -> Result<(), NodeError> {
        let delta = self.tenant(&f.tenant);
        let n = delta.number(tx, &f.tenant, &f.subject)?;
        let sums = sums_of(f.handle_time, f.nps, f.csat, f.ces);
        let keys = CellKey::both(f)?;
        for key in keys {
            let cell = delta.cells.entry(key).or_default();
            cell.sums.add(&sums, 1);
            cell.added.insert(n);
        }
        delta.subject_cell(tx, f, keys[1], &sums, 1)?;
        Ok(())
    }

    /// Takes out an interaction about to be deleted or replaced.
    fn remove(&mut self, tx: &Connection, f: &Facts) -> Result<(), NodeError> {
        let delta = self.tenant(&f.tenant);
        let n = delta.number(tx, &f.tenant, &f.subject)?;
        let sums = sums_of(f.handle_time, f.nps, f.csat, f.ces);
        let keys = CellKey::both(f)?;
        delta.subject_cell(tx, f, keys[1], &sums, -1)?;
        for key in keys {
            let cell = delta.cells.entry(key).or_default();
            cell.sums.add(&sums, -1);
            cell.removed.entry(n).or_insert_with(|| f.subject.clone());
        }
        if !delta.losing.contains(&f.subject) {
            delta.losing.insert(f.subject.clone());
        }
        Ok(())
    }

    /// Takes out every interaction `i` matching `condition` (SQL on `interactions AS i`, with
    /// `args`), before the caller deletes or replaces them. Returns how many.
    pub fn remove_where(
        &mut self,
        tx: &Connection,
        condition: &str,
        args: &[&dyn ToValue],
    ) -> Result<usize, NodeError> {
        let sql = format!("SELECT {FACT_COLUMNS} FROM interactions AS i WHERE {condition}");
        let facts: Vec<Facts> = tx
            .prepare_cached(&sql)?
            .query_map(args, Facts::from_row)?
            .collect::<Result<_, _>>()?;
        for f in &facts {
            self.remove(tx, f)?;
        }
        Ok(facts.len())
    }

    /// Writes the changed cells. Runs in the transaction that changed the rows, after them.
    pub fn apply(self, tx: &Connection) -> Result<(), NodeError> {
        for (tenant, delta) in self.tenants {
            delta.apply(tx, &tenant)?;
        }
        Ok(())
    }
}

impl TenantDelta {
    fn apply(self, tx: &Connection, tenant: &str) -> Result<(), NodeError> {
        // Subjects with no interaction left (an erasure) leave every cell without a check each.
        let mut any_left = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM interactions WHERE tenant = $1 AND subject_id = $2)",
        )?;
        let mut gone = BTreeSet::new();
        for subject in &self.losing {
            if !any_left.query_row(params![tenant, subject], |r| r.get::<_, bool>(0))? {
                gone.insert(subject.as_str());
            }
        }
        let mut load = tx.prepare_cached(
            "SELECT sums, subjects FROM rollup_cells
             WHERE tenant = $1 AND grain = $2 AND bucket = $3 AND country = $4 AND channel = $5",
        )?;
        let mut still_in = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM interactions WHERE tenant = $1 AND subject_id = $2
             AND country = $3 AND channel = $4 AND started_at >= $5 AND started_at < $6)",
        )?;
        let mut store = tx.prepare_cached(
            "INSERT INTO rollup_cells (tenant, grain, bucket, country, channel, sums, subjects_count, subjects)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, grain, bucket, country, channel) DO UPDATE
             SET sums = excluded.sums, subjects_count = excluded.subjects_count, subjects = excluded.subjects",
        )?;
        let mut drop_cell = tx.prepare_cached(
            "DELETE FROM rollup_cells
             WHERE tenant = $1 AND grain = $2 AND bucket = $3 AND country = $4 AND channel = $5",
        )?;
        // PostgreSQL: every cell the transaction touched read in one statement and written in
        // one, rather than a round trip each way per cell.
        let postgres = tx.dialect() == Dialect::Postgres;
        let mut preloaded = HashMap::new();
        if postgres && !self.cells.is_empty() {
            let keys: Vec<&CellKey> = self.cells.keys().collect();
            let rows: Vec<StoredCell> = tx
                .prepare_cached(
                    "SELECT c.grain, c.bucket, c.country, c.channel, c.sums, c.subjects
                     FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[])
                       AS k(grain, bucket, country, channel)
                     JOIN rollup_cells c ON c.tenant = $1 AND c.grain = k.grain
                       AND c.bucket = k.bucket AND c.country = k.country
                       AND c.channel = k.channel",
                )?
                .query_map(
                    params![
                        tenant,
                        keys.iter()
                            .map(|k| Some(k.grain as i64))
                            .collect::<Vec<_>>(),
                        keys.iter().map(|k| Some(k.bucket)).collect::<Vec<_>>(),
                        keys.iter()
                            .map(|k| Some(k.country().to_owned()))
                            .collect::<Vec<_>>(),
                        keys.iter()
                            .map(|k| Some(i64::from(k.channel)))
                            .collect::<Vec<_>>(),
                    ],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )?
                .collect::<Result<_, _>>()?;
            for (grain, bucket, country, channel, sums, subjects) in rows {
                preloaded.insert((grain, bucket, country, channel), (sums, subjects));
            }
        }
        let mut upserts = CellRows::default();
        for (key, delta) in self.cells {
            let id = params![
                tenant,
                key.grain as i64,
                key.bucket,
                key.country(),
                key.channel
            ];
            let stored: Option<(Vec<u8>, Vec<u8>)> = if postgres {
                preloaded.remove(&(
                    key.grain as i64,
                    key.bucket,
                    key.country().to_owned(),
                    i64::from(key.channel),
                ))
            } else {
                load.query_row(id, |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
            };
            let (mut sums, mut subjects) = match stored {
                Some((sums, subjects)) => (Sums::decode(&sums)?, decode_bitmap(&subjects)?),
                None => (Sums::default(), RoaringBitmap::new()),
            };
            sums.add(&delta.sums, 1);
            subjects |= delta.added;
            let (start, end) = key.range();
            for (n, subject) in &delta.removed {
                if gone.contains(subject.as_str()) {
                    subjects.remove(*n);
                    continue;
                }
                let kept: bool = still_in.query_row(
                    params![tenant, subject, key.country(), key.channel, start, end],
                    |r| r.get(0),
                )?;
                if !kept {
                    subjects.remove(*n);
                }
            }
            if sums.interactions <= 0 {
                drop_cell.execute(id)?;
                continue;
            }
            let mut blob = Vec::with_capacity(subjects.serialized_size());
            subjects
                .serialize_into(&mut blob)
                .map_err(|e| NodeError::Internal(e.to_string()))?;
            if postgres {
                upserts.push(&key, sums.encode(), subjects.len() as i64, blob);
                continue;
            }
            store.execute(params![
                tenant,
                key.grain as i64,
                key.bucket,
                key.country(),
                key.channel,
                sums.encode(),
                subjects.len() as i64,
                blob
            ])?;
        }
        if !upserts.grain.is_empty() {
            tx.prepare_cached(
                "INSERT INTO rollup_cells (tenant, grain, bucket, country, channel, sums,
                   subjects_count, subjects)
                 SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                   $6::bytea[], $7::bigint[], $8::bytea[])
                 ON CONFLICT (tenant, grain, bucket, country, channel) DO UPDATE
                 SET sums = excluded.sums, subjects_count = excluded.subjects_count,
                     subjects = excluded.subjects",
            )?
            .execute(params![
                tenant,
                upserts.grain,
                upserts.bucket,
                upserts.country,
                upserts.channel,
                upserts.sums,
                upserts.count,
                upserts.subjects
            ])?;
        }
        let mut add_subject_cell = tx.prepare_cached(&ADD_SUBJECT_CELL)?;
        let mut drop_empty = tx.prepare_cached(
            "DELETE FROM subject_cells WHERE tenant = $1 AND subject_id = $2 AND bucket = $3
             AND country = $4 AND channel = $5 AND interactions <= 0",
        )?;
        for ((subject, bucket, country, channel), sums) in &self.subject_cells {
            if *sums == Sums::default() {
                continue;
            }
            let country = std::str::from_utf8(country).unwrap_or("??");
            let head: [&dyn ToValue; 5] = [&tenant, subject, bucket, &country, channel];
            let fields = sums.fields();
            let values: Vec<&dyn ToValue> = head
                .into_iter()
                .chain(fields.iter().map(|v| v as &dyn ToValue))
                .collect();
            add_subject_cell.execute(params_from_iter(values))?;
            if sums.interactions < 0 {
                drop_empty.execute(params![tenant, subject, bucket, country, channel])?;
            }
        }
        let mut forget =
            tx.prepare_cached("DELETE FROM subject_numbers WHERE tenant = $1 AND subject_id = $2")?;
        // A subject whose last interaction went stays tracked only while it still qualifies.
        let mut untrack = tx.prepare_cached(&format!(
            "DELETE FROM tracked_subjects WHERE tenant = $1 AND subject_id = $2
             AND ($1, $2) NOT IN ({})",
            qualifying()
        ))?;
        for subject in gone {
            forget.execute(params![tenant, subject])?;
            untrack.execute(params![tenant, subject])?;
        }
        Ok(())
    }
}

fn decode_bitmap(blob: &[u8]) -> Result<RoaringBitmap, NodeError> {
    RoaringBitmap::deserialize_from(blob)
        .map_err(|_| NodeError::Internal("a rollup cell is corrupt".into()))
}

/// Deletes the interactions `i` matching `condition` (SQL on `interactions AS i`, with `args`)
/// and takes them out of the cells, in the caller's transaction. Returns how many. Every
/// deletion of interactions goes through here, so cells never count a deleted row.
pub fn delete_interactions(
    tx: &Connection,
    condition: &str,
    args: &[&dyn ToValue],
) -> Result<usize, NodeError> {
    let mut delta = Delta::default();
    delta.remove_where(tx, condition, args)?;
    let deleted = tx.execute(
        &format!("DELETE FROM interactions AS i WHERE {condition}"),
        args,
    )?;
    delta.apply(tx)?;
    Ok(deleted)
}

/// Rebuilds every cell from the rows (a migration from a database without rollups). Tracked
/// subjects stay tracked (tracking is never withdrawn while a subject has interactions), and
/// every subject that qualifies now is tracked too.
pub fn rebuild(tx: &Connection) -> Result<(), NodeError> {
    tx.execute_batch(
        "DELETE FROM rollup_cells; DELETE FROM subject_numbers; DELETE FROM subject_cells;",
    )?;
    // `WHERE true`: SQLite reads an `ON CONFLICT` after a bare `SELECT … FROM` as a join.
    tx.execute_batch(&format!(
        "INSERT INTO tracked_subjects SELECT * FROM ({}) AS q WHERE true ON CONFLICT DO NOTHING",
        qualifying()
    ))?;
    let mut delta = Delta::default();
    // Streamed on SQLite: the rows are never all in memory, only the cells.
    tx.query_each(
        &format!("SELECT {FACT_COLUMNS} FROM interactions AS i"),
        [],
        |row| {
            delta.add(tx, &Facts::from_row(row)?)?;
            Ok(true)
        },
    )?;
    delta.apply(tx)
}

/// The key of a group: the grouped dimensions' values, empty where not grouped.
#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Group {
    country: String,
    channel: i32,
    period: String,
}

/// A group being summed.
#[derive(Debug, Default)]
struct Acc {
    sums: Sums,
    /// Cells summed in: row id and subject count.
    cells: Vec<(i64, u64)>,
    /// Subjects of the rows read at the ends of the range.
    edge: RoaringBitmap,
    /// Subjects the gate may drop that have rows in the cells summed in...
    dropped_any: RoaringBitmap,
    /// ...and those of them with a row the gate keeps.
    dropped_kept: RoaringBitmap,
}

/// What a query groups by.
struct Dims {
    country: bool,
    channel: bool,
    month: bool,
    day: bool,
}

impl Dims {
    fn group(&self, country: &str, channel: i32, day: Option<i64>, month: i64) -> Group {
        Group {
            country: if self.country {
                country.to_owned()
            } else {
                String::new()
            },
            channel: if self.channel { channel } else { 0 },
            period: match (self.day, self.month, day) {
                (true, _, Some(d)) => day_label(d),
                (false, true, _) => month_label(month),
                _ => String::new(),
            },
        }
    }
}

/// Runs `spec` for `tenant` from the cells, when the rules allow it: no noise, and a gate that
/// only drops listed subjects. `None` when they do not; the caller then reads the rows.
pub fn run(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    spec: &domicile_proto::domain::AggregateSpec,
    rules: &mut Rules<'_>,
) -> Result<Option<Partial>, NodeError> {
    if rules.noise.is_some() || rules.bounds.is_some() {
        return Ok(None);
    }
    if !rules.gate.drops_listed_only() {
        return Ok(None);
    }
    let has = |d| spec.group_by.contains(&d);
    let dims = Dims {
        country: has(Dimension::Country),
        channel: has(Dimension::Channel),
        month: has(Dimension::Month),
        day: has(Dimension::Day),
    };
    // Every stored row lies in [MIN_TIMESTAMP, MAX_TIMESTAMP): clamping changes nothing.
    let start = spec.start.unwrap_or(MIN_TIMESTAMP).max(MIN_TIMESTAMP);
    let end = spec.end.unwrap_or(MAX_TIMESTAMP).min(MAX_TIMESTAMP);
    let channel_ok =
        |c: i32| spec.channels.is_empty() || spec.channels.iter().any(|x| *x as i32 == c);

    // Whole days [d0, d1) come from cells; the rest of [start, end) from rows.
    let d0 = start.div_euclid(DAY) + i64::from(start.rem_euclid(DAY) != 0);
    let d1 = end.div_euclid(DAY);
    let mut groups: BTreeMap<Group, Acc> = BTreeMap::new();
    let mut edges = Vec::new();
    // Seconds covered by day cells, and the months covered by month cells.
    let mut day_spans = Vec::new();
    let mut month_span = None;
    if d0 < d1 {
        let mut spans = Vec::new(); // (grain, first bucket, end bucket)
        let (m0, m1) = (
            month_of_day(d0) + i64::from(first_day(month_of_day(d0)) != d0),
            month_of_day(d1),
        );
        if !dims.day && m0 < m1 {
            spans.push((Grain::Day, d0, first_day(m0)));
            spans.push((Grain::Month, m0, m1));
            spans.push((Grain::Day, first_day(m1), d1));
        } else {
            spans.push((Grain::Day, d0, d1));
        }
        for (grain, from, to) in &spans {
            match grain {
                Grain::Day => day_spans.push((from * DAY, to * DAY)),
                Grain::Month => month_span = Some((*from, *to)),
            }
        }
        let mut cells = conn.prepare_cached(
            "SELECT rowid, bucket, country, channel, sums, subjects_count FROM rollup_cells
             WHERE tenant = $1 AND grain = $2 AND bucket >= $3 AND bucket < $4",
        )?;
        for (grain, from, to) in spans.into_iter().filter(|(_, f, t)| f < t) {
            let mut rows = cells.query(params![tenant, grain as i64, from, to])?;
            while let Some(row) = rows.next()? {
                let channel: i32 = row.get(3)?;
                if !channel_ok(channel) {
                    continue;
                }
                let bucket: i64 = row.get(1)?;
                let country: String = row.get(2)?;
                let group = match grain {
                    Grain::Day => dims.group(&country, channel, Some(bucket), month_of_day(bucket)),
                    Grain::Month => dims.group(&country, channel, None, bucket),
                };
                let acc = groups.entry(group).or_default();
                acc.sums.add(&Sums::decode(&row.get::<_, Vec<u8>>(4)?)?, 1);
                acc.cells.push((row.get(0)?, row.get::<_, i64>(5)? as u64));
            }
        }
        edges.push((start, d0 * DAY));
        edges.push((d1 * DAY, end));
    } else {
        edges.push((start, end));
    }

    // Rows: every row at the ends of the range, and the rows of droppable subjects inside.
    let channels = |q: &mut Query<'_>, col: &str| {
        if !spec.channels.is_empty() {
            q.push(&format!(" AND {col}.channel IN ("))
                .bind_list(spec.channels.iter().map(|c| *c as i32))
                .push(")");
        }
    };
    let gate = &rules.gate;
    // The index is named: by time for the ends of the range, by subject for the subjects the
    // gate may drop (the planner, left alone, may scan the whole range for the latter).
    let mut read_rows = |from: i64, to: i64, edge: bool| -> Result<(), NodeError> {
        if from >= to {
            return Ok(());
        }
        let index = if edge {
            "interactions_by_time"
        } else {
            "interactions_by_subject"
        };
        // PostgreSQL's planner takes no index hints.
        let index = match conn.dialect() {
            Dialect::Sqlite => format!("INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        };
        let mut q = Query::new(
            "SELECT i.country, i.channel, i.started_at, i.handle_time, i.nps, i.csat, i.ces, \
             n.n, (",
        );
        gate.condition(&mut q, "i.");
        q.push(&format!(
            ") FROM interactions i {index} JOIN subject_numbers n \
             ON n.tenant = i.tenant AND n.subject_id = i.subject_id WHERE i.tenant = "
        ))
        .bind(tenant)
        .push(" AND i.started_at >= ")
        .bind(from)
        .push(" AND i.started_at < ")
        .bind(to);
        channels(&mut q, "i");
        if !edge {
            q.push(" AND i.subject_id IN (");
            gate.dropped_subjects(&mut q);
            q.push(")");
        }
        let mut stmt = conn.prepare_cached(q.sql())?;
        let mut rows = stmt.query(q.params())?;
        while let Some(row) = rows.next()? {
            let country: String = row.get(0)?;
            let day = row.get::<_, i64>(2)?.div_euclid(DAY);
            let group = dims.group(&country, row.get(1)?, Some(day), month_of_day(day));
            let sums = sums_of(row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?);
            let n: u32 = row.get(7)?;
            let kept: bool = row.get(8)?;
            let acc = groups.entry(group).or_default();
            match (edge, kept) {
                (true, true) => {
                    acc.sums.add(&sums, 1);
                    acc.edge.insert(n);
                }
                (true, false) => {}
                (false, kept) => {
                    acc.dropped_any.insert(n);
                    if kept {
                        acc.dropped_kept.insert(n);
                    } else {
                        acc.sums.add(&sums, -1);
                    }
                }
            }
        }
        Ok(())
    };
    for (from, to) in edges {
        read_rows(from, to, true)?;
    }
    for (from, to) in day_spans {
        read_rows(from, to, false)?;
    }
    if let Some((m0, m1)) = month_span {
        // The droppable subjects' months, from their own cells.
        let mut q = Query::new("SELECT c.bucket, c.country, c.channel, n.n, (");
        gate.condition(&mut q, "c.");
        q.push(&format!(
            "), {} FROM subject_cells c JOIN subject_numbers n \
             ON n.tenant = c.tenant AND n.subject_id = c.subject_id WHERE c.tenant = ",
            SUMS_COLUMNS
                .split(", ")
                .map(|c| format!("c.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(tenant)
        .push(" AND c.subject_id IN (");
        gate.dropped_subjects(&mut q);
        q.push(") AND c.bucket >= ")
            .bind(m0)
            .push(" AND c.bucket < ")
            .bind(m1);
        channels(&mut q, "c");
        let mut stmt = conn.prepare_cached(q.sql())?;
        let mut rows = stmt.query(q.params())?;
        while let Some(row) = rows.next()? {
            let country: String = row.get(1)?;
            let group = dims.group(&country, row.get(2)?, None, row.get(0)?);
            let n: u32 = row.get(3)?;
            let kept: bool = row.get(4)?;
            let acc = groups.entry(group).or_default();
            acc.dropped_any.insert(n);
            if kept {
                acc.dropped_kept.insert(n);
            } else {
                acc.sums.add(&Sums::from_row(&row, 5)?, -1);
            }
        }
    }

    let mut bitmap = conn.prepare_cached("SELECT subjects FROM rollup_cells WHERE rowid = $1")?;
    let mut partial = Partial {
        min_group_size: rules.k_mixed,
        ..Default::default()
    };
    for (group, acc) in groups {
        if acc.sums.interactions <= 0 {
            continue;
        }
        let distinct = match acc.cells.as_slice() {
            [(_, count)] if acc.edge.is_empty() => {
                count.saturating_sub(acc.dropped_any.len()) + acc.dropped_kept.len()
            }
            cells => {
                let mut all = acc.edge;
                let mut inside = RoaringBitmap::new();
                for (rowid, _) in cells {
                    let blob: Vec<u8> = bitmap.query_row([rowid], |r| r.get(0))?;
                    inside |= decode_bitmap(&blob)?;
                }
                inside -= acc.dropped_any;
                all |= inside;
                all |= acc.dropped_kept;
                all.len()
            }
        };
        let mut key = GroupKey::default();
        if spec.group_by.contains(&Dimension::Region) {
            key.region_id = region_id.to_owned();
        }
        key.channel = Channel::try_from(group.channel).map_or(0, |c| c as i32);
        key.period = group.period;
        let country = dims.country.then_some(group.country.as_str());
        key.country = group.country.clone();
        release(rules, &mut partial, country, acc.sums.stats(distinct), key);
    }
    Ok(Some(partial))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use domicile_proto::{
        domain::{AggregateSpec, Interaction, Survey},
        pb::{ConsentState, Direction, Purpose},
    };
    use proptest::prelude::*;

    use super::*;
    use crate::{
        domain::aggregate::run_over_rows,
        domain::consent::Gate,
        domain::policy::PolicySet,
        domain::stored::{RecordBody, StoredRecord},
        store::{Backend, Store},
    };

    const TENANT: &str = "acme";
    const COUNTRIES: [&str; 3] = ["DE", "FR", "US"];
    /// 2026-01-01T00:00:00Z.
    const BASE: i64 = 1_767_225_600;

    #[test]
    fn civil_dates_round_trip_and_match_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(day_label(20_415), "2025-11-23");
        for day in (MIN_TIMESTAMP / DAY)..(MAX_TIMESTAMP / DAY) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            let month = month_of_day(day);
            assert!(first_day(month) <= day && day < first_day(month + 1));
        }
        assert_eq!(month_label(month_of_day(20_415)), "2025-11");
    }

    #[test]
    fn sums_encode_round_trip() {
        let s = sums_of(120, Some(9), Some(4), None);
        assert_eq!(Sums::decode(&s.encode()).unwrap(), s);
        assert!(Sums::decode(&[0; 3]).is_err());
    }

    /// One generated interaction: (id, subject, country, channel, offset s, handle, nps, csat).
    type Row = (u8, u8, usize, i32, i64, u32, Option<u8>, Option<u8>);

    fn row() -> impl Strategy<Value = Row> {
        (
            0u8..120,
            0u8..25,
            0usize..3,
            1i32..=4,
            0i64..(75 * DAY),
            prop_oneof![Just(0u32), 1u32..900],
            proptest::option::of(0u8..=10),
            proptest::option::of(1u8..=5),
        )
    }

    fn ingest(store: &Store, rows: &[Row]) {
        let mut records: Vec<StoredRecord> = rows
            .iter()
            .enumerate()
            .map(
                |(i, (id, subject, country, channel, offset, handle, nps, csat))| StoredRecord {
                    idempotency_key: format!("k-{}-{i}", rand::random::<u64>()),
                    sealed_id: None,
                    country: COUNTRIES[*country].to_owned(),
                    body: RecordBody::Interaction(Interaction {
                        interaction_id: format!("i-{id}"),
                        subject_id: format!("s-{subject}"),
                        channel: Channel::try_from(*channel).unwrap(),
                        direction: Direction::Inbound,
                        started_at: BASE + offset,
                        ended_at: None,
                        handle_time_seconds: *handle,
                        outcome: "resolved".into(),
                        agent_team: "t".into(),
                        recorded: false,
                        survey: (nps.is_some() || csat.is_some()).then(|| Survey {
                            survey_id: "nps".into(),
                            nps: *nps,
                            csat: *csat,
                            ces: nps.map(|n| n % 7 + 1),
                            comment: String::new(),
                        }),
                    }),
                },
            )
            .collect();
        let keys = crate::domain::stored::key_records(store, TENANT, &mut records).unwrap();
        crate::domain::stored::write_batch(store, TENANT, records, keys, 0, |_, _| Ok(())).unwrap();
    }

    /// Every cell, with its subjects by id rather than number.
    /// A cell as compared: grain, bucket, country, channel, sums, count, subject ids.
    type Cell = (i64, i64, String, i32, Vec<u8>, i64, BTreeSet<String>);

    fn cells(tx: &Connection) -> BTreeSet<Cell> {
        let names: HashMap<u32, String> = tx
            .prepare("SELECT n, subject_id FROM subject_numbers")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tx.prepare("SELECT grain, bucket, country, channel, sums, subjects_count, subjects FROM rollup_cells")
            .unwrap()
            .query_map([], |r| {
                let bitmap = decode_bitmap(&r.get::<_, Vec<u8>>(6)?).unwrap();
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    bitmap.iter().map(|n| names[&n].clone()).collect(),
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Every subject cell: key and sums.
    fn subject_cells(tx: &Connection) -> Vec<(String, i64, String, i32, Vec<i64>)> {
        tx.prepare(&format!(
            "SELECT subject_id, bucket, country, channel, {SUMS_COLUMNS} FROM subject_cells \
             ORDER BY 1, 2, 3, 4"
        ))
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                Sums::from_row(r, 4)?.fields().to_vec(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn sorted(mut p: Partial) -> Partial {
        p.groups.sort_by_key(|g| format!("{:?}", g.key));
        p
    }

    /// A case of [`cells_answer_exactly_as_the_rows`]: ingested batches, late rows, consent
    /// states, restrictions, erasures, a retention cut, and queries.
    type Case = (
        Vec<Vec<Row>>,
        Vec<Row>,
        Vec<(u8, usize)>,
        BTreeSet<u8>,
        BTreeSet<u8>,
        Option<i64>,
        Vec<(Vec<Dimension>, Option<i64>, Option<i64>, Vec<Channel>, u32)>,
    );

    fn case() -> impl Strategy<Value = Case> {
        (
            proptest::collection::vec(proptest::collection::vec(row(), 1..40), 1..4),
            proptest::collection::vec(row(), 0..20),
            proptest::collection::vec((0u8..25, 0usize..5), 0..10),
            proptest::collection::btree_set(0u8..25, 0..3),
            proptest::collection::btree_set(0u8..25, 0..3),
            proptest::option::of(0i64..(75 * DAY)),
            proptest::collection::vec(
                (
                    proptest::sample::subsequence(
                        vec![
                            Dimension::Country,
                            Dimension::Channel,
                            Dimension::Month,
                            Dimension::Day,
                            Dimension::Region,
                        ],
                        0..=3,
                    ),
                    proptest::option::of(prop_oneof![
                        (0i64..80).prop_map(|d| d * DAY),
                        -DAY..(80 * DAY)
                    ]),
                    proptest::option::of(prop_oneof![
                        (0i64..80).prop_map(|d| d * DAY),
                        -DAY..(80 * DAY)
                    ]),
                    proptest::sample::subsequence(
                        vec![Channel::Phone, Channel::Email, Channel::Chat],
                        0..=2,
                    ),
                    1u32..4,
                ),
                1..6,
            ),
        )
    }

    /// Cells maintained through ingest, replacement, erasure and retention equal cells built
    /// from the rows, and every aggregate from the cells equals the same aggregate over the
    /// rows, under consent changes and restrictions.
    fn cells_answer_exactly_as_the_rows(store: &Store, case: Case) -> Result<(), TestCaseError> {
        let (batches, late, states, restricted, erased, retention_cut, queries) = case;
        for batch in &batches {
            ingest(store, batch);
        }
        let state_of = [
            ConsentState::Objected,
            ConsentState::Withdrawn,
            ConsentState::Refused,
            ConsentState::Granted,
            ConsentState::None,
        ];
        store.write(|tx| {
            for (subject, state) in &states {
                tx.execute(
                    "INSERT INTO consent_state (tenant, subject_id, purpose, channel, state, seq, since, policy_version)
                     VALUES ($1, $2, $3, 0, $4, 1, 0, 'v')
                     ON CONFLICT (tenant, subject_id, purpose, channel) DO UPDATE SET state = excluded.state",
                    params![TENANT, format!("s-{subject}"), Purpose::CxAnalytics as i32, state_of[*state] as i32],
                )?;
            }
            for subject in &restricted {
                tx.execute(
                    "INSERT INTO subject_flags (tenant, subject_id, restricted) VALUES ($1, $2, 1)",
                    params![TENANT, format!("s-{subject}")],
                )?;
            }
            for subject in &erased {
                crate::domain::rights::erase(tx, TENANT, &format!("s-{subject}"), &[], 0)?;
            }
            if let Some(cut) = retention_cut {
                delete_interactions(tx, "i.country = $1 AND i.started_at < $2", params!["FR", BASE + cut])?;
            }
            Ok(())
        }).unwrap();
        // Interactions arriving after the consent changes (some for tracked subjects).
        if !late.is_empty() {
            ingest(store, &late);
        }
        // Maintained cells equal rebuilt ones.
        store
            .write(|tx| {
                let tracked = |tx: &Connection| -> Vec<String> {
                    tx.prepare("SELECT subject_id FROM tracked_subjects ORDER BY 1")
                        .unwrap()
                        .query_map([], |r| r.get(0))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect()
                };
                let maintained = (cells(tx), subject_cells(tx), tracked(tx));
                rebuild(tx)?;
                assert_eq!(maintained, (cells(tx), subject_cells(tx), tracked(tx)));
                Err::<(), _>(NodeError::Internal("roll back the rebuild".into()))
            })
            .unwrap_err();

        let policies = PolicySet::load(None, &COUNTRIES.map(String::from)).unwrap();
        for (group_by, start, end, channels, k) in queries {
            let spec = AggregateSpec {
                purpose: Purpose::CxAnalytics,
                metrics: Vec::new(),
                group_by,
                start: start.map(|s| BASE + s),
                end: end.map(|e| BASE + e),
                channels,
                min_group_size: k,
                epsilon: None,
            };
            let rules = || Rules {
                bounds: None,
                k_by_country: [("DE".to_owned(), k), ("FR".to_owned(), k + 1)].into(),
                k_mixed: k + 1,
                noise: None,
                gate: Gate::new(&policies, Purpose::CxAnalytics, TENANT),
            };
            let (from_cells, from_rows) = store
                .read(|conn| {
                    let cells =
                        run(conn, "eu", TENANT, &spec, &mut rules())?.expect("eligible for cells");
                    Ok((cells, run_over_rows(conn, "eu", TENANT, &spec, rules())?))
                })
                .unwrap();
            let (from_cells, from_rows) = (sorted(from_cells), sorted(from_rows));
            prop_assert_eq!(&from_cells.groups, &from_rows.groups, "spec {:?}", spec);
            prop_assert_eq!(from_cells.suppressed, from_rows.suppressed);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn cells_answer_exactly_as_the_rows_on_sqlite(case in case()) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&Backend::Sqlite(dir.path().join("n.db")), &Backend::Sqlite(dir.path().join("v.db")), &[7; 32], &crate::domain::schema::SCHEMA).unwrap();
            cells_answer_exactly_as_the_rows(&store, case)?;
        }
    }

    /// The same property on PostgreSQL (its triggers track subjects, its SQL reads the rows):
    /// fewer cases, one cluster, a database per case.
    #[test]
    fn cells_answer_exactly_as_the_rows_on_postgres() {
        let dbs = crate::testing::Databases::new();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 24,
            ..ProptestConfig::default()
        });
        runner
            .run(&case(), |case| {
                cells_answer_exactly_as_the_rows(&dbs.store(&dbs.postgres()), case)
            })
            .unwrap();
    }

    /// Releases are made many buckets at a time (`release::ensure_all`): one bounded query
    /// grouped by day must give each day exactly what that day's bounded query alone gives —
    /// each subject's first `L` interactions *of that day*, not of the whole range.
    fn bounded_by_day_equals_each_day_alone(store: &Store) {
        // Subject s-1 has 8 interactions on each of days 0 and 1; L = 5.
        let rows: Vec<Row> = (0..16u8)
            .map(|i| {
                let day = i64::from(i / 8);
                (
                    i,
                    1,
                    0,
                    1,
                    day * DAY + i64::from(i) * 60,
                    4_000,
                    Some(i % 11),
                    None,
                )
            })
            .chain((16..40u8).map(|i| {
                let at = i64::from(i) * 7_919;
                (
                    i,
                    i % 6,
                    usize::from(i % 3),
                    1 + i32::from(i % 4),
                    at,
                    30,
                    None,
                    Some(i % 5 + 1),
                )
            }))
            .collect();
        ingest(store, &rows);
        let policies = PolicySet::load(None, &COUNTRIES.map(String::from)).unwrap();
        let rules = || Rules {
            bounds: Some((5, 3_600)),
            k_by_country: BTreeMap::new(),
            k_mixed: 0,
            noise: None,
            gate: Gate::new(&policies, Purpose::CxAnalytics, TENANT),
        };
        let spec = |group_by: Vec<Dimension>, start: i64, end: i64| AggregateSpec {
            purpose: Purpose::CxAnalytics,
            metrics: Vec::new(),
            group_by,
            start: Some(start),
            end: Some(end),
            channels: Vec::new(),
            min_group_size: 0,
            epsilon: None,
        };
        let days = 4;
        let together = store
            .read(|c| {
                run_over_rows(
                    c,
                    "eu",
                    TENANT,
                    &spec(
                        vec![Dimension::Country, Dimension::Channel, Dimension::Day],
                        BASE,
                        BASE + days * DAY,
                    ),
                    rules(),
                )
            })
            .unwrap();
        let mut alone = Vec::new();
        for day in 0..days {
            let (start, end) = (BASE + day * DAY, BASE + (day + 1) * DAY);
            let partial = store
                .read(|c| {
                    run_over_rows(
                        c,
                        "eu",
                        TENANT,
                        &spec(vec![Dimension::Country, Dimension::Channel], start, end),
                        rules(),
                    )
                })
                .unwrap();
            for mut g in partial.groups {
                g.key.as_mut().unwrap().period = day_label(start / DAY);
                alone.push(g);
            }
        }
        let key = |g: &domicile_proto::pb::PartialGroup| format!("{:?}", g.key);
        let (mut together, mut alone) = (together.groups, alone);
        together.sort_by_key(key);
        alone.sort_by_key(key);
        assert_eq!(together, alone);
        // The bound applied per day: 5 of s-1's 8 (each clamped to 3,600 s) on each of days 0
        // and 1 in (DE, channel 1); the other rows add at most 24 × 30 s.
        let s1_days: Vec<u64> = together
            .iter()
            .filter(|g| {
                let k = g.key.as_ref().unwrap();
                k.country == "DE" && k.channel == 1 && k.period <= day_label(BASE / DAY + 1)
            })
            .map(|g| g.stats.as_ref().unwrap().handle_time_sum_seconds)
            .collect();
        assert_eq!(s1_days.len(), 2);
        assert!(
            s1_days.iter().all(|s| (5 * 3_600..6 * 3_600).contains(s)),
            "{s1_days:?}"
        );
    }

    #[test]
    fn bounded_by_day_equals_each_day_alone_on_both_backends() {
        let dbs = crate::testing::Databases::new();
        for backend in dbs.both() {
            bounded_by_day_equals_each_day_alone(&dbs.store(&backend));
        }
    }

    #[test]
    fn rebuilt_cells_equal_the_incremental_ones_and_an_old_populated_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (db, vault) = (dir.path().join("n.db"), dir.path().join("v.db"));
        let rows: Vec<Row> = (0..60)
            .map(|i| {
                (
                    i,
                    i % 7,
                    (i % 3) as usize,
                    1 + (i % 4) as i32,
                    i64::from(i) * 40_000,
                    60,
                    Some(i % 11),
                    None,
                )
            })
            .collect();
        let store = Store::open(
            &Backend::Sqlite(db.clone()),
            &Backend::Sqlite(vault.clone()),
            &[7; 32],
            &crate::domain::schema::SCHEMA,
        )
        .unwrap();
        ingest(&store, &rows);
        let expected = store.read(|c| Ok(cells(c))).unwrap();
        assert!(!expected.is_empty());
        // What migration 4 runs: the cells built again from the stored rows.
        store.write(rebuild).unwrap();
        assert_eq!(store.read(|c| Ok(cells(c))).unwrap(), expected);
        // A version-3 database with rows holds customer ids in clear: migration 8 refuses it
        // rather than leave them, and leaves it as it was.
        store
            .write(|tx| {
                tx.execute_batch(
                    "DROP TABLE rollup_cells; DROP TABLE subject_numbers; PRAGMA user_version = 3;",
                )
            })
            .unwrap();
        drop(store);
        let e = Store::open(
            &Backend::Sqlite(db.clone()),
            &Backend::Sqlite(vault.clone()),
            &[7; 32],
            &crate::domain::schema::SCHEMA,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot convert them"), "{e}");
        let version: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
    }

    #[test]
    fn opt_in_purposes_and_noise_read_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Backend::Sqlite(dir.path().join("n.db")),
            &Backend::Sqlite(dir.path().join("v.db")),
            &[7; 32],
            &crate::domain::schema::SCHEMA,
        )
        .unwrap();
        let policies = PolicySet::load(None, &COUNTRIES.map(String::from)).unwrap();
        let spec = AggregateSpec {
            purpose: Purpose::CxSurvey,
            metrics: Vec::new(),
            group_by: vec![Dimension::Country],
            start: None,
            end: None,
            channels: Vec::new(),
            min_group_size: 0,
            epsilon: None,
        };
        let mut rules = Rules {
            bounds: None,
            k_by_country: BTreeMap::new(),
            k_mixed: 2,
            noise: None,
            gate: Gate::new(&policies, Purpose::CxSurvey, TENANT),
        };
        // DE's cx_survey rule is opt-in: only listed subjects are kept.
        let answer = store
            .read(|conn| run(conn, "eu", TENANT, &spec, &mut rules))
            .unwrap();
        assert!(answer.is_none());
    }
}
