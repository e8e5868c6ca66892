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
//! ([`crate::aggregate`]). Both paths give the same answer; a property test holds them to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use domicile_proto::{
    domain::{MAX_TIMESTAMP, MIN_TIMESTAMP},
    merge::NPS_BUCKETS,
    pb::{AggregateStats, Channel, Dimension, GroupKey},
};
use roaring::RoaringBitmap;
use rusqlite::{Connection, OptionalExtension, ToSql, params, params_from_iter};

use crate::{
    aggregate::{Partial, Rules, release},
    error::NodeError,
};

/// Tables of the rollups (schema version 4).
pub const SCHEMA: &str = r#"
CREATE INDEX IF NOT EXISTS interactions_by_subject ON interactions (tenant, subject_id);
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
"#;

const DAY: i64 = 86_400;

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

/// The civil date (year, month, day) of a day number.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// The month number (months since 1970-01) of a day number.
fn month_of_day(day: i64) -> i64 {
    let (y, m, _) = civil_from_days(day);
    (y - 1970) * 12 + m - 1
}

/// The first day of a month number.
fn first_day(month: i64) -> i64 {
    days_from_civil(1970 + month.div_euclid(12), month.rem_euclid(12) + 1, 1)
}

/// `YYYY-MM`, as SQLite's `strftime('%Y-%m')` writes it.
fn month_label(month: i64) -> String {
    format!(
        "{:04}-{:02}",
        1970 + month.div_euclid(12),
        month.rem_euclid(12) + 1
    )
}

/// `YYYY-MM-DD`, as SQLite's `strftime('%Y-%m-%d')` writes it.
fn day_label(day: i64) -> String {
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
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
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
}

/// Changes to the cells made by one transaction; [`Delta::apply`] writes them before its
/// commit.
#[derive(Debug, Default)]
pub struct Delta {
    tenants: BTreeMap<String, TenantDelta>,
}

impl TenantDelta {
    /// The number of a subject, made when missing.
    fn number(&mut self, tx: &Connection, tenant: &str, subject: &str) -> Result<u32, NodeError> {
        if let Some(n) = self.numbers.get(subject) {
            return Ok(*n);
        }
        let found: Option<i64> = tx
            .prepare_cached("SELECT n FROM subject_numbers WHERE tenant = ?1 AND subject_id = ?2")?
            .query_row(params![tenant, subject], |r| r.get(0))
            .optional()?;
        let n = match found {
            Some(n) => n,
            None => {
                tx.prepare_cached(
                    "INSERT INTO subject_numbers (tenant, subject_id) VALUES (?1, ?2)",
                )?
                .execute(params![tenant, subject])?;
                tx.last_insert_rowid()
            }
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

    /// Counts a stored interaction.
    pub fn add(&mut self, tx: &Connection, f: &Facts) -> Result<(), NodeError> {
        let delta = self.tenant(&f.tenant);
        let n = delta.number(tx, &f.tenant, &f.subject)?;
        let sums = sums_of(f.handle_time, f.nps, f.csat, f.ces);
        for key in CellKey::both(f)? {
            let cell = delta.cells.entry(key).or_default();
            cell.sums.add(&sums, 1);
            cell.added.insert(n);
        }
        Ok(())
    }

    /// Takes out an interaction about to be deleted or replaced.
    pub fn remove(&mut self, tx: &Connection, f: &Facts) -> Result<(), NodeError> {
        let delta = self.tenant(&f.tenant);
        let n = delta.number(tx, &f.tenant, &f.subject)?;
        let sums = sums_of(f.handle_time, f.nps, f.csat, f.ces);
        for key in CellKey::both(f)? {
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
        args: &[&dyn ToSql],
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
            "SELECT EXISTS (SELECT 1 FROM interactions WHERE tenant = ?1 AND subject_id = ?2)",
        )?;
        let mut gone = BTreeSet::new();
        for subject in &self.losing {
            if !any_left.query_row(params![tenant, subject], |r| r.get::<_, bool>(0))? {
                gone.insert(subject.as_str());
            }
        }
        let mut load = tx.prepare_cached(
            "SELECT sums, subjects FROM rollup_cells
             WHERE tenant = ?1 AND grain = ?2 AND bucket = ?3 AND country = ?4 AND channel = ?5",
        )?;
        let mut still_in = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM interactions WHERE tenant = ?1 AND subject_id = ?2
             AND country = ?3 AND channel = ?4 AND started_at >= ?5 AND started_at < ?6)",
        )?;
        let mut store = tx.prepare_cached(
            "INSERT INTO rollup_cells (tenant, grain, bucket, country, channel, sums, subjects_count, subjects)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (tenant, grain, bucket, country, channel) DO UPDATE
             SET sums = excluded.sums, subjects_count = excluded.subjects_count, subjects = excluded.subjects",
        )?;
        let mut drop_cell = tx.prepare_cached(
            "DELETE FROM rollup_cells
             WHERE tenant = ?1 AND grain = ?2 AND bucket = ?3 AND country = ?4 AND channel = ?5",
        )?;
        for (key, delta) in self.cells {
            let id = params![
                tenant,
                key.grain as i64,
                key.bucket,
                key.country(),
                key.channel
            ];
            let stored: Option<(Vec<u8>, Vec<u8>)> = load
                .query_row(id, |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
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
        let mut forget =
            tx.prepare_cached("DELETE FROM subject_numbers WHERE tenant = ?1 AND subject_id = ?2")?;
        for subject in gone {
            forget.execute(params![tenant, subject])?;
        }
        Ok(())
    }
}

fn decode_bitmap(blob: &[u8]) -> Result<RoaringBitmap, NodeError> {
    RoaringBitmap::deserialize_from(blob)
        .map_err(|_| NodeError::Internal("a rollup cell is corrupt".into()))
}

/// Rebuilds every cell from the rows (a migration from a database without rollups).
pub fn rebuild(tx: &Connection) -> Result<(), NodeError> {
    tx.execute_batch("DELETE FROM rollup_cells; DELETE FROM subject_numbers;")?;
    let mut delta = Delta::default();
    let facts: Vec<Facts> = tx
        .prepare(&format!("SELECT {FACT_COLUMNS} FROM interactions AS i"))?
        .query_map([], Facts::from_row)?
        .collect::<Result<_, _>>()?;
    for f in &facts {
        delta.add(tx, f)?;
    }
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
    if rules.noise.is_some() {
        return Ok(None);
    }
    let Some((dropped_sql, dropped_args)) = rules.gate.dropped_subjects() else {
        return Ok(None);
    };
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
        let mut cells = conn.prepare_cached(
            "SELECT rowid, bucket, country, channel, sums, subjects_count FROM rollup_cells
             WHERE tenant = ?1 AND grain = ?2 AND bucket >= ?3 AND bucket < ?4",
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
    let (condition, condition_args) = rules.gate.condition("i.");
    let mut channels_sql = String::new();
    if !spec.channels.is_empty() {
        channels_sql = format!(
            " AND i.channel IN ({})",
            spec.channels
                .iter()
                .map(|c| (*c as i32).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let select = format!(
        "SELECT i.country, i.channel, i.started_at, i.handle_time, i.nps, i.csat, i.ces, n.n, \
         ({condition}) FROM interactions i JOIN subject_numbers n \
         ON n.tenant = i.tenant AND n.subject_id = i.subject_id \
         WHERE i.tenant = ? AND i.started_at >= ? AND i.started_at < ?{channels_sql}"
    );
    let mut read_rows = |extra: &str,
                         from: i64,
                         to: i64,
                         extra_args: &[Box<dyn ToSql>],
                         edge: bool|
     -> Result<(), NodeError> {
        if from >= to {
            return Ok(());
        }
        let mut args: Vec<&dyn ToSql> = condition_args.iter().map(|a| a.as_ref()).collect();
        args.extend([&tenant as &dyn ToSql, &from, &to]);
        args.extend(extra_args.iter().map(|a| a.as_ref()));
        let mut stmt = conn.prepare_cached(&format!("{select}{extra}"))?;
        let mut rows = stmt.query(params_from_iter(args))?;
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
        read_rows("", from, to, &[], true)?;
    }
    if d0 < d1 {
        read_rows(
            &format!(" AND i.subject_id IN ({dropped_sql})"),
            d0 * DAY,
            d1 * DAY,
            &dropped_args,
            false,
        )?;
    }

    let mut bitmap = conn.prepare_cached("SELECT subjects FROM rollup_cells WHERE rowid = ?1")?;
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
        aggregate::run_over_rows,
        consent::Gate,
        policy::PolicySet,
        storage::{RecordBody, SqliteStore, StoredRecord},
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

    fn ingest(store: &SqliteStore, rows: &[Row]) {
        let records: Vec<StoredRecord> = rows
            .iter()
            .enumerate()
            .map(
                |(i, (id, subject, country, channel, offset, handle, nps, csat))| StoredRecord {
                    idempotency_key: format!("k-{}-{i}", rand::random::<u64>()),
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
        store.ingest(TENANT, &records, |_, _| Ok(())).unwrap();
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

    fn sorted(mut p: Partial) -> Partial {
        p.groups.sort_by_key(|g| format!("{:?}", g.key));
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Cells maintained through ingest, replacement, erasure and retention equal cells built
        /// from the rows, and every aggregate from the cells equals the same aggregate over the
        /// rows, under consent changes and restrictions.
        #[test]
        fn cells_answer_exactly_as_the_rows(
            batches in proptest::collection::vec(proptest::collection::vec(row(), 1..40), 1..4),
            states in proptest::collection::vec((0u8..25, 0usize..5), 0..10),
            restricted in proptest::collection::btree_set(0u8..25, 0..3),
            erased in proptest::collection::btree_set(0u8..25, 0..3),
            retention_cut in proptest::option::of(0i64..(75 * DAY)),
            queries in proptest::collection::vec((
                proptest::sample::subsequence(vec![Dimension::Country, Dimension::Channel, Dimension::Month, Dimension::Day, Dimension::Region], 0..=3),
                proptest::option::of(prop_oneof![(0i64..80).prop_map(|d| d * DAY), -DAY..(80 * DAY)]),
                proptest::option::of(prop_oneof![(0i64..80).prop_map(|d| d * DAY), -DAY..(80 * DAY)]),
                proptest::sample::subsequence(vec![Channel::Phone, Channel::Email, Channel::Chat], 0..=2),
                1u32..4,
            ), 1..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("n.db"), &dir.path().join("v.db"), &[7; 32]).unwrap();
            for batch in &batches {
                ingest(&store, batch);
            }
            let state_of = [ConsentState::Objected, ConsentState::Withdrawn, ConsentState::Refused, ConsentState::Granted, ConsentState::None];
            store.write(|tx| {
                for (subject, state) in &states {
                    tx.execute(
                        "INSERT OR REPLACE INTO consent_state (tenant, subject_id, purpose, channel, state, seq, since, policy_version)
                         VALUES (?1, ?2, ?3, 0, ?4, 1, 0, 'v')",
                        params![TENANT, format!("s-{subject}"), Purpose::CxAnalytics as i32, state_of[*state] as i32],
                    )?;
                }
                for subject in &restricted {
                    tx.execute(
                        "INSERT INTO subject_flags (tenant, subject_id, restricted) VALUES (?1, ?2, 1)",
                        params![TENANT, format!("s-{subject}")],
                    )?;
                }
                for subject in &erased {
                    crate::rights::erase(tx, TENANT, &format!("s-{subject}"))?;
                }
                if let Some(cut) = retention_cut {
                    let mut delta = Delta::default();
                    let expired = "i.country = ?1 AND i.started_at < ?2";
                    let args = params!["FR", BASE + cut];
                    delta.remove_where(tx, expired, args)?;
                    tx.execute(&format!("DELETE FROM interactions AS i WHERE {expired}"), args)?;
                    delta.apply(tx)?;
                }
                Ok(())
            }).unwrap();
            // Maintained cells equal rebuilt ones.
            store.write(|tx| {
                let maintained = cells(tx);
                rebuild(tx)?;
                assert_eq!(maintained, cells(tx));
                Err::<(), _>(NodeError::Internal("roll back the rebuild".into()))
            }).unwrap_err();

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
                    k_by_country: [("DE".to_owned(), k), ("FR".to_owned(), k + 1)].into(),
                    k_mixed: k + 1,
                    noise: None,
                    gate: Gate::new(&policies, Purpose::CxAnalytics, TENANT),
                };
                let (from_cells, from_rows) = store.read(|conn| {
                    let cells = run(conn, "eu", TENANT, &spec, &mut rules())?.expect("eligible for cells");
                    Ok((cells, run_over_rows(conn, "eu", TENANT, &spec, rules())?))
                }).unwrap();
                let (from_cells, from_rows) = (sorted(from_cells), sorted(from_rows));
                prop_assert_eq!(&from_cells.groups, &from_rows.groups, "spec {:?}", spec);
                prop_assert_eq!(from_cells.suppressed, from_rows.suppressed);
            }
        }
    }

    #[test]
    fn opt_in_purposes_and_noise_read_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("n.db"), &dir.path().join("v.db"), &[7; 32])
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
