//! Differentially private releases: noisy cells made once, answers by summing them
//! (docs/privacy-model.md).
//!
//! A *cell* is one tenant's interactions of one country and one channel over one closed UTC
//! day or calendar month, for one purpose. A *release* is every cell of one (tenant, purpose,
//! grain, bucket) — every country of the region and every channel, empty ones too — made the
//! first time an answer needs it, with each subject's contribution bounded and discrete
//! Laplace noise on every statistic, then stored and never made again. Answers sum stored
//! cells: the same cell always has the same value, totals are the sums of their parts, and a
//! repeated query costs nothing. The accountant ([`charge`]) charges each release once, to the
//! month of data it covers, and refuses a release past that month's budget.

use std::collections::BTreeMap;

use domicile_proto::{
    domain::{AggregateSpec, Epsilon},
    merge::NPS_BUCKETS,
    pb::{AggregateStats, Channel, Dimension, GroupKey, PartialGroup, Purpose},
};
use rand::RngCore;

use crate::{
    domain::consent::Gate,
    domain::partial::{Partial, Rules},
    domain::policy::ReleaseRules,
    domain::rollup::{DAY, day_label, first_day, month_label, month_of_day},
    error::NodeError,
    store::db::{Connection, OptionalExtension, params},
};

/// Tables of the releases and the accountant (schema version 6).
pub const SCHEMA_SQLITE: &str = r#"
-- One row per release made: which cells, what it cost, charged to which month of data.
CREATE TABLE IF NOT EXISTS dp_releases (
    tenant        TEXT NOT NULL,
    purpose       INTEGER NOT NULL,
    grain         INTEGER NOT NULL,
    bucket        INTEGER NOT NULL,
    epsilon_milli INTEGER NOT NULL,
    data_month    INTEGER NOT NULL,
    made_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant, purpose, grain, bucket)
);

-- The noisy cells of each release: `stats` is an `AggregateStats` (protobuf), already noised
-- and clamped at zero. Never updated.
CREATE TABLE IF NOT EXISTS dp_release_cells (
    tenant  TEXT NOT NULL,
    purpose INTEGER NOT NULL,
    grain   INTEGER NOT NULL,
    bucket  INTEGER NOT NULL,
    country TEXT NOT NULL,
    channel INTEGER NOT NULL,
    stats   BLOB NOT NULL,
    PRIMARY KEY (tenant, purpose, grain, bucket, country, channel)
);

-- The accountant: epsilon spent per tenant and month of data (months since 1970-01).
CREATE TABLE IF NOT EXISTS dp_budget (
    tenant      TEXT NOT NULL,
    data_month  INTEGER NOT NULL,
    spent_milli INTEGER NOT NULL,
    PRIMARY KEY (tenant, data_month)
);
"#;

/// The same tables for PostgreSQL (`BIGINT` integers, `BYTEA` bytes, identity columns); the
/// triggers are PL/pgSQL, in [`crate::domain::schema`]. The store contract test checks that
/// both engines end up with the same tables, columns, keys and indexes.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS dp_releases (
    tenant        TEXT NOT NULL,
    purpose       BIGINT NOT NULL,
    grain         BIGINT NOT NULL,
    bucket        BIGINT NOT NULL,
    epsilon_milli BIGINT NOT NULL,
    data_month    BIGINT NOT NULL,
    made_at       BIGINT NOT NULL,
    PRIMARY KEY (tenant, purpose, grain, bucket)
);

CREATE TABLE IF NOT EXISTS dp_release_cells (
    tenant  TEXT NOT NULL,
    purpose BIGINT NOT NULL,
    grain   BIGINT NOT NULL,
    bucket  BIGINT NOT NULL,
    country TEXT NOT NULL,
    channel BIGINT NOT NULL,
    stats   BYTEA NOT NULL,
    PRIMARY KEY (tenant, purpose, grain, bucket, country, channel)
);

CREATE TABLE IF NOT EXISTS dp_budget (
    tenant      TEXT NOT NULL,
    data_month  BIGINT NOT NULL,
    spent_milli BIGINT NOT NULL,
    PRIMARY KEY (tenant, data_month)
);
"#;

/// The most buckets one answer may cover (two years of days).
pub const MAX_BUCKETS: i64 = 731;

/// The span of time a cell covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grain {
    /// A UTC day (`bucket`: days since 1970-01-01).
    Day = 1,
    /// A calendar month (`bucket`: months since 1970-01).
    Month = 2,
}

impl Grain {
    /// The release's name in attestations and audit entries: `day:2026-11-05`, `month:2026-11`.
    pub fn id(self, bucket: i64) -> String {
        match self {
            Self::Day => format!("day:{}", day_label(bucket)),
            Self::Month => format!("month:{}", month_label(bucket)),
        }
    }

    /// The month of data a bucket belongs to.
    pub fn data_month(self, bucket: i64) -> i64 {
        match self {
            Self::Day => month_of_day(bucket),
            Self::Month => bucket,
        }
    }

    /// Unix seconds `[start, end)` of a bucket.
    pub fn span(self, bucket: i64) -> (i64, i64) {
        match self {
            Self::Day => (bucket * DAY, (bucket + 1) * DAY),
            Self::Month => (first_day(bucket) * DAY, first_day(bucket + 1) * DAY),
        }
    }
}

/// Which releases an answer reads: buckets `[from, to)` of one grain, all closed at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Days when the answer is grouped by day, months otherwise.
    pub grain: Grain,
    /// First bucket.
    pub from: i64,
    /// End bucket (exclusive).
    pub to: i64,
}

impl Plan {
    /// The plan for `spec` at `now`: its time range widened to whole buckets, cut at the last
    /// closed one, and starting no earlier than `oldest` (before it, retention has removed
    /// every interaction) — nor, by day without a start, more than [`MAX_BUCKETS`] days back. `Err` names the field when the range covers too many buckets.
    pub fn new(spec: &AggregateSpec, now: i64, oldest: i64) -> Result<Self, NodeError> {
        let start = spec.start.unwrap_or(oldest).max(oldest);
        let end = spec.end.unwrap_or(now).min(now);
        let (grain, from, to) = if spec.group_by.contains(&Dimension::Day) {
            let today = now.div_euclid(DAY);
            let from = start.div_euclid(DAY);
            let to = (end.div_euclid(DAY) + i64::from(end.rem_euclid(DAY) != 0)).min(today);
            // Without a start, the last MAX_BUCKETS days (a retention may be longer): only
            // a range the caller chose is refused for its length.
            let from = if spec.start.is_none() {
                from.max(to - MAX_BUCKETS)
            } else {
                from
            };
            (Grain::Day, from, to)
        } else {
            let this_month = month_of_day(now.div_euclid(DAY));
            let from = month_of_day(start.div_euclid(DAY));
            let last = end - 1;
            let to = (month_of_day(last.div_euclid(DAY)) + 1).min(this_month);
            (Grain::Month, from, to)
        };
        let to = to.max(from);
        if to - from > MAX_BUCKETS {
            return Err(crate::error::NodeError::from(
                domicile_proto::error::Violations::one(
                    "query.time_range",
                    format!(
                        "across the border an answer covers at most {MAX_BUCKETS} days or months"
                    ),
                ),
            ));
        }
        Ok(Self { grain, from, to })
    }

    /// Unix seconds up to which the answer's data goes (the end of its last closed bucket).
    pub fn released_through(&self) -> i64 {
        self.grain
            .span(self.to - 1)
            .1
            .max(self.grain.span(self.from).0)
    }
}

/// Whether every release of `plan` exists already: then an answer needs no write at all (the
/// dashboard's steady state).
pub fn all_made(
    conn: &Connection,
    tenant: &str,
    purpose: Purpose,
    plan: &Plan,
) -> Result<bool, NodeError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM dp_releases
         WHERE tenant = $1 AND purpose = $2 AND grain = $3 AND bucket >= $4 AND bucket < $5",
        params![
            tenant,
            purpose as i32,
            plan.grain as i32,
            plan.from,
            plan.to
        ],
        |r| r.get(0),
    )?;
    Ok(n == plan.to - plan.from)
}

/// What a new release cost, for the audit log and the attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// The release's name ([`Grain::id`]).
    pub id: String,
    /// Its epsilon, in thousandths.
    pub epsilon_milli: u32,
    /// The month of data charged.
    pub data_month: i64,
    /// What is left of that month's budget, in thousandths.
    pub remaining_milli: u64,
}

/// The refusal of a release past its month's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The month of data, `YYYY-MM`.
    pub month: String,
    /// Left of its budget, in thousandths.
    pub remaining_milli: u64,
    /// The budget, in thousandths.
    pub budget_milli: u64,
    /// What the release needed, in thousandths.
    pub requested_milli: u32,
}

/// Charges `milli` to `tenant`'s budget for `data_month`: the spent total after, or `None`
/// when it would pass `budget_milli` (nothing charged then).
pub fn charge(
    tx: &Connection,
    tenant: &str,
    data_month: i64,
    milli: u32,
    budget_milli: u64,
) -> Result<Option<u64>, NodeError> {
    if u64::from(milli) > budget_milli {
        return Ok(None);
    }
    let spent: Option<i64> = tx.query_opt(
        "INSERT INTO dp_budget (tenant, data_month, spent_milli) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, data_month) DO UPDATE
         SET spent_milli = dp_budget.spent_milli + excluded.spent_milli
         WHERE dp_budget.spent_milli + excluded.spent_milli <= $4
         RETURNING spent_milli",
        params![tenant, data_month, milli, budget_milli as i64],
        |r| r.get(0),
    )?;
    Ok(spent.map(|s| s.max(0) as u64))
}

/// Epsilon spent on `tenant`'s data of `data_month`, in thousandths.
pub fn spent(conn: &Connection, tenant: &str, data_month: i64) -> Result<u64, NodeError> {
    let spent: Option<i64> = conn
        .query_row(
            "SELECT spent_milli FROM dp_budget WHERE tenant = $1 AND data_month = $2",
            params![tenant, data_month],
            |r| r.get(0),
        )
        .optional()?;
    Ok(spent.unwrap_or(0).max(0) as u64)
}

/// The channels every release has a cell for.
fn channels() -> impl Iterator<Item = Channel> {
    (1..=8).filter_map(|c| Channel::try_from(c).ok())
}

/// Weights of the statistic families in a release's epsilon (out of [`WEIGHT_TOTAL`]): volume
/// and distinct subjects, which decide what is shown and where *k* applies, get the most.
const WEIGHTS: Weights = Weights {
    interactions: 3,
    subjects: 3,
    nps: 2,
    csat_sum: 1,
    csat_count: 1,
    ces_sum: 1,
    ces_count: 1,
    handle_sum: 1,
    handle_count: 1,
};
const WEIGHT_TOTAL: u32 = 14;

struct Weights {
    interactions: u32,
    subjects: u32,
    nps: u32,
    csat_sum: u32,
    csat_count: u32,
    ces_sum: u32,
    ces_count: u32,
    handle_sum: u32,
    handle_count: u32,
}

/// `value` plus noise for a family of weight `w` (of [`WEIGHT_TOTAL`]) and L1 sensitivity
/// `sensitivity` under a release of `epsilon`: `(epsilon · w / total)`-DP. Not clamped: a
/// stored cell keeps its signed value, so that sums of many cells stay unbiased; answers are
/// clamped once, at the end ([`Cell::into_stats`]).
fn noised(rng: &mut dyn RngCore, epsilon: Epsilon, w: u32, sensitivity: u64, value: u64) -> i64 {
    // P(y) ∝ exp(-|y| ε_w / Δ) with ε_w = (milli / 1000) · (w / total): exact rationals.
    let y = crate::privacy::dp::discrete_laplace(
        rng,
        u64::from(epsilon.milli()) * u64::from(w),
        u64::from(Epsilon::SCALE) * u64::from(WEIGHT_TOTAL) * sensitivity.max(1),
    );
    i64::try_from(value).unwrap_or(i64::MAX).saturating_add(y)
}

/// [`noised`] for a signed exact value.
fn noised_signed(
    rng: &mut dyn RngCore,
    epsilon: Epsilon,
    w: u32,
    sensitivity: u64,
    value: i64,
) -> i64 {
    noised(rng, epsilon, w, sensitivity, 0).saturating_add(value)
}

/// The statistics of a cell (or a sum of cells) as signed noisy values, in the order
/// interactions, distinct subjects, the 11 NPS buckets, CSAT sum (centred: score − 3) and
/// count, CES sum (centred: score − 4) and count, handle-time sum and count. Stored as 19 little-endian `i64`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cell(pub [i64; CELL_VALUES]);

/// Values in a [`Cell`].
pub const CELL_VALUES: usize = 2 + NPS_BUCKETS + 6;

impl Cell {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Cell) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.0.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// From stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeError> {
        if bytes.len() != CELL_VALUES * 8 {
            return Err(NodeError::Internal(
                "a stored release cell is corrupt".into(),
            ));
        }
        let mut out = [0i64; CELL_VALUES];
        for (v, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *v = i64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        Ok(Self(out))
    }

    /// As statistics for the wire: every value below zero set to zero (post-processing: a
    /// count or a sum cannot be negative), a histogram of zeros left empty, and the centred
    /// CSAT and CES sums moved back to their scales and kept within them (a mean between 1
    /// and 5, or 1 and 7).
    pub fn into_stats(self) -> AggregateStats {
        let v = |i: usize| self.0[i].max(0) as u64;
        // Stored centred (score − 3 for CSAT, score − 4 for CES): half the sensitivity.
        let uncentre = |sum: i64, count: u64, centre: i64, low: i64, high: i64| -> u64 {
            let count = count as i64;
            (sum.saturating_add(centre.saturating_mul(count)))
                .clamp(low.saturating_mul(count), high.saturating_mul(count))
                .max(0) as u64
        };
        let mut nps_histogram: Vec<u64> = (2..2 + NPS_BUCKETS).map(v).collect();
        if nps_histogram.iter().all(|n| *n == 0) {
            nps_histogram.clear();
        }
        let base = 2 + NPS_BUCKETS;
        AggregateStats {
            interactions: v(0),
            distinct_subjects: v(1),
            nps_histogram,
            csat_sum: uncentre(self.0[base], v(base + 1), 3, 1, 5),
            csat_responses: v(base + 1),
            ces_sum: uncentre(self.0[base + 2], v(base + 3), 4, 1, 7),
            ces_responses: v(base + 3),
            handle_time_sum_seconds: v(base + 4),
            handle_time_count: v(base + 5),
        }
    }
}

/// `stats` (exact, contributions bounded by `l`, handle times by `h`) with noise on every
/// family.
fn noise_cell(
    rng: &mut dyn RngCore,
    epsilon: Epsilon,
    l: u64,
    h: u64,
    stats: &AggregateStats,
) -> Cell {
    let w = &WEIGHTS;
    let mut out = [0i64; CELL_VALUES];
    out[0] = noised(rng, epsilon, w.interactions, l, stats.interactions);
    // A subject is in at most min(L, 8) cells of a release.
    out[1] = noised(rng, epsilon, w.subjects, l.min(8), stats.distinct_subjects);
    // One answer moves one bucket: the histogram as a whole has sensitivity L.
    for b in 0..NPS_BUCKETS {
        let exact = stats.nps_histogram.get(b).copied().unwrap_or(0);
        out[2 + b] = noised(rng, epsilon, w.nps, l, exact);
    }
    let base = 2 + NPS_BUCKETS;
    // Scores centred on the middle of their scale before noise: CSAT 1–5 as −2..2, CES 1–7
    // as −3..3, so one subject moves a sum by at most 2L or 3L rather than 5L or 7L.
    let centred = |sum: u64, count: u64, centre: i64| sum as i64 - centre * count as i64;
    out[base] = noised_signed(
        rng,
        epsilon,
        w.csat_sum,
        2 * l,
        centred(stats.csat_sum, stats.csat_responses, 3),
    );
    out[base + 1] = noised(rng, epsilon, w.csat_count, l, stats.csat_responses);
    out[base + 2] = noised_signed(
        rng,
        epsilon,
        w.ces_sum,
        3 * l,
        centred(stats.ces_sum, stats.ces_responses, 4),
    );
    out[base + 3] = noised(rng, epsilon, w.ces_count, l, stats.ces_responses);
    out[base + 4] = noised(
        rng,
        epsilon,
        w.handle_sum,
        h * l,
        stats.handle_time_sum_seconds,
    );
    out[base + 5] = noised(rng, epsilon, w.handle_count, l, stats.handle_time_count);
    Cell(out)
}

/// Makes every release of `plan` for (`tenant`, `purpose`) that does not exist yet: claims
/// each, charges the accountant, computes every cell of `countries` × every channel with
/// bounded contributions (per subject and bucket, as each release alone would) and noise, and
/// stores them, all in `tx`. The exact values of all the missing buckets come from one grouped
/// query, so that a first answer over two years of days costs one scan, not 731. Returns what
/// was made (nothing when everything existed); `Err(Exhausted)` inside `Ok` when a month's
/// budget does not allow a release (the caller then rolls `tx` back).
#[allow(clippy::too_many_arguments)]
pub fn ensure_all(
    tx: &Connection,
    region_id: &str,
    countries: &[String],
    tenant: &str,
    purpose: Purpose,
    gate: Gate,
    rules: ReleaseRules,
    plan: &Plan,
    now: i64,
    rng: &mut dyn RngCore,
) -> Result<Result<Vec<Made>, Exhausted>, NodeError> {
    let grain = plan.grain;
    let milli = match grain {
        Grain::Day => rules.day_milli,
        Grain::Month => rules.month_milli,
    };
    let mut made = Vec::new();
    for bucket in plan.from..plan.to {
        let data_month = grain.data_month(bucket);
        // The claim: concurrent callers wait here for the first to commit, then find it made.
        let claimed = tx.execute(
            "INSERT INTO dp_releases (tenant, purpose, grain, bucket, epsilon_milli, data_month, made_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            params![
                tenant,
                purpose as i32,
                grain as i32,
                bucket,
                milli,
                data_month,
                now
            ],
        )?;
        if claimed == 0 {
            continue;
        }
        let Some(spent) = charge(tx, tenant, data_month, milli, rules.budget_milli)? else {
            return Ok(Err(Exhausted {
                month: month_label(data_month),
                remaining_milli: rules
                    .budget_milli
                    .saturating_sub(spent(tx, tenant, data_month)?),
                budget_milli: rules.budget_milli,
                requested_milli: milli,
            }));
        };
        made.push((
            bucket,
            Made {
                id: grain.id(bucket),
                epsilon_milli: milli,
                data_month,
                remaining_milli: rules.budget_milli.saturating_sub(spent),
            },
        ));
    }
    let (Some((first, _)), Some((last, _))) = (made.first(), made.last()) else {
        return Ok(Ok(Vec::new()));
    };
    let (start, end) = (grain.span(*first).0, grain.span(*last).1);
    let period = match grain {
        Grain::Day => Dimension::Day,
        Grain::Month => Dimension::Month,
    };
    let spec = AggregateSpec {
        purpose,
        metrics: Vec::new(),
        group_by: vec![Dimension::Country, Dimension::Channel, period],
        start: Some(start),
        end: Some(end),
        channels: Vec::new(),
        min_group_size: 0,
        epsilon: None,
    };
    // The pass sorts every row of the months it releases (the contribution bound's window,
    // then the groups): on the writer's connection, with a small cache for the sorts' sake.
    let exact = tx.with_cache_kib(crate::store::SORT_CACHE_KIB, |tx| {
        crate::domain::aggregate::run_over_rows(
            tx,
            region_id,
            tenant,
            &spec,
            Rules {
                k_by_country: BTreeMap::new(),
                k_mixed: 0,
                noise: None,
                bounds: Some((rules.max_contributions, rules.handle_time_bound)),
                gate,
            },
        )
    })?;
    let mut by_cell: BTreeMap<(String, String, i32), AggregateStats> = BTreeMap::new();
    for g in exact.groups {
        let key = g.key.unwrap_or_default();
        by_cell.insert(
            (key.period, key.country, key.channel),
            g.stats.unwrap_or_default(),
        );
    }
    let epsilon = Epsilon::from_milli(milli);
    let (l, h) = (
        u64::from(rules.max_contributions),
        u64::from(rules.handle_time_bound),
    );
    let mut insert = tx.prepare_cached(
        "INSERT INTO dp_release_cells (tenant, purpose, grain, bucket, country, channel, stats)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )?;
    let empty = AggregateStats::default();
    for (bucket, _) in &made {
        let label = match grain {
            Grain::Day => day_label(*bucket),
            Grain::Month => month_label(*bucket),
        };
        for country in countries {
            for channel in channels() {
                let exact = by_cell
                    .get(&(label.clone(), country.clone(), channel as i32))
                    .unwrap_or(&empty);
                let cell = noise_cell(rng, epsilon, l, h, exact);
                insert.execute(params![
                    tenant,
                    purpose as i32,
                    grain as i32,
                    bucket,
                    country,
                    channel as i32,
                    cell.encode()
                ])?;
            }
        }
    }
    Ok(Ok(made.into_iter().map(|(_, m)| m).collect()))
}

/// One release an answer was derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Its name ([`Grain::id`]).
    pub id: String,
    /// Its epsilon.
    pub epsilon: f64,
}

/// Answers `spec` from the stored releases of `plan` (which must all exist): the cells summed
/// per group, groups whose noisy distinct-subject figure (summed over their cells) is below *k*
/// withheld.
pub fn answer(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    spec: &AggregateSpec,
    plan: &Plan,
    k_by_country: &BTreeMap<String, u32>,
    k_mixed: u32,
) -> Result<(Partial, Vec<Source>), NodeError> {
    let has = |d| spec.group_by.contains(&d);
    // (country, channel, period) → the cells' sum and the group's one country (`None` when it
    // mixes countries).
    type Groups = BTreeMap<(String, i32, String), (Cell, Option<String>)>;
    let mut groups = Groups::new();
    let mut stmt = conn.prepare_cached(
        "SELECT bucket, country, channel, stats FROM dp_release_cells
         WHERE tenant = $1 AND purpose = $2 AND grain = $3 AND bucket >= $4 AND bucket < $5",
    )?;
    let mut rows = stmt.query(params![
        tenant,
        spec.purpose as i32,
        plan.grain as i32,
        plan.from,
        plan.to
    ])?;
    while let Some(row) = rows.next()? {
        let bucket: i64 = row.get(0)?;
        let country: String = row.get(1)?;
        let channel: i32 = row.get(2)?;
        if !spec.channels.is_empty() && !spec.channels.iter().any(|c| *c as i32 == channel) {
            continue;
        }
        let cell = Cell::decode(&row.get::<_, Vec<u8>>(3)?)?;
        let period = match (plan.grain, has(Dimension::Day), has(Dimension::Month)) {
            (Grain::Day, true, _) => day_label(bucket),
            (Grain::Day, false, true) => month_label(month_of_day(bucket)),
            (Grain::Month, _, true) => month_label(bucket),
            _ => String::new(),
        };
        let group = (
            if has(Dimension::Country) {
                country.clone()
            } else {
                String::new()
            },
            if has(Dimension::Channel) { channel } else { 0 },
            period,
        );
        let entry = groups
            .entry(group)
            .or_insert_with(|| (Cell::default(), Some(country.clone())));
        entry.0.add(&cell);
        if entry.1.as_deref() != Some(country.as_str()) {
            entry.1 = None; // the group mixes countries
        }
    }
    let mut partial = Partial {
        min_group_size: k_mixed,
        ..Default::default()
    };
    for ((country, channel, period), (cell, group_country)) in groups {
        let k = group_country
            .as_deref()
            .and_then(|c| k_by_country.get(c).copied())
            .unwrap_or(k_mixed);
        let stats = cell.into_stats();
        if stats.distinct_subjects < u64::from(k) || stats.interactions == 0 {
            partial.suppressed += 1;
            continue;
        }
        let key = GroupKey {
            region_id: if has(Dimension::Region) {
                region_id.to_owned()
            } else {
                String::new()
            },
            country,
            channel,
            period,
        };
        partial.groups.push(PartialGroup {
            key: Some(key),
            stats: Some(stats),
        });
    }
    let mut sources = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT bucket, epsilon_milli FROM dp_releases
         WHERE tenant = $1 AND purpose = $2 AND grain = $3 AND bucket >= $4 AND bucket < $5
         ORDER BY bucket",
    )?;
    let mut rows = stmt.query(params![
        tenant,
        spec.purpose as i32,
        plan.grain as i32,
        plan.from,
        plan.to
    ])?;
    while let Some(row) = rows.next()? {
        let bucket: i64 = row.get(0)?;
        let milli: i64 = row.get(1)?;
        sources.push(Source {
            id: plan.grain.id(bucket),
            epsilon: milli as f64 / 1000.0,
        });
    }
    Ok((partial, sources))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn spec(group_by: &[Dimension], start: Option<i64>, end: Option<i64>) -> AggregateSpec {
        AggregateSpec {
            purpose: Purpose::CxAnalytics,
            metrics: Vec::new(),
            group_by: group_by.to_vec(),
            start,
            end,
            channels: Vec::new(),
            min_group_size: 0,
            epsilon: None,
        }
    }

    /// 2026-12-05T13:00:00Z; October 2026 is month 681, 2026-10-01 day 20727.
    const NOW: i64 = 1_796_475_600;
    const OCT: i64 = 1_790_812_800;

    #[test]
    fn plans_widen_to_whole_closed_buckets() {
        // A range inside October, not grouped by day: the whole month.
        let p = Plan::new(
            &spec(&[], Some(OCT + 5 * DAY + 7), Some(OCT + 9 * DAY)),
            NOW,
            0,
        )
        .unwrap();
        assert_eq!((p.grain, p.from, p.to), (Grain::Month, 681, 682));
        assert_eq!(p.released_through(), OCT + 31 * DAY);
        // Up to now: the current month (December) is open and left out.
        let p = Plan::new(&spec(&[Dimension::Month], Some(OCT), None), NOW, 0).unwrap();
        assert_eq!((p.from, p.to), (681, 683));
        // By day: whole days, up to yesterday.
        let p = Plan::new(
            &spec(&[Dimension::Day], Some(OCT + 3_600), Some(NOW)),
            NOW,
            0,
        )
        .unwrap();
        assert_eq!((p.grain, p.from), (Grain::Day, OCT / DAY));
        assert_eq!(p.to, NOW / DAY);
        // Nothing before the oldest retained interaction.
        let p = Plan::new(&spec(&[], None, Some(NOW)), NOW, OCT).unwrap();
        assert_eq!(p.from, 681);
        // A range entirely in the open month: no bucket at all.
        let p = Plan::new(&spec(&[], Some(NOW - DAY), Some(NOW)), NOW, 0).unwrap();
        assert_eq!(p.from, p.to);
        // By day without a start, under a retention longer than two years: the last
        // MAX_BUCKETS days, not a refusal.
        let p = Plan::new(&spec(&[Dimension::Day], None, None), NOW, NOW - 1096 * DAY).unwrap();
        assert_eq!((p.from, p.to), (NOW / DAY - MAX_BUCKETS, NOW / DAY));
        // Too many days, asked for.
        let err = Plan::new(&spec(&[Dimension::Day], Some(0), Some(NOW)), NOW, 0).unwrap_err();
        assert!(err.to_string().contains("query.time_range"), "{err}");
    }

    #[test]
    fn release_ids_and_spans() {
        assert_eq!(Grain::Month.id(681), "month:2026-10");
        assert_eq!(Grain::Day.id(OCT / DAY), "day:2026-10-01");
        assert_eq!(Grain::Month.span(681), (OCT, OCT + 31 * DAY));
        assert_eq!(Grain::Day.data_month(OCT / DAY + 30), 681);
    }

    /// The noise a subtraction runs into: for the volume of a month release at the shipped
    /// policies (ε = 3, L = 5, weight 3 of 14), discrete Laplace of scale b = L·14/(3·ε) ≈ 7.8,
    /// standard deviation ≈ √2·b ≈ 11. Measured over 20,000 releases of one exact cell.
    #[test]
    fn the_noise_of_a_cell_matches_the_stated_scale() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let exact = AggregateStats {
            interactions: 3,
            distinct_subjects: 1,
            nps_histogram: vec![3],
            ..Default::default()
        };
        let eps = Epsilon::from_milli(3_000);
        let n = 20_000;
        let draws: Vec<Cell> = (0..n)
            .map(|_| noise_cell(&mut rng, eps, 5, 3_600, &exact))
            .collect();
        let b: f64 = 5.0 * 14.0 / (3.0 * 3.0);
        let p = (-1.0 / b).exp();
        // Symmetric around the exact 3, with P(|Y - 3| ≥ t) = 2 p^t / (1 + p).
        for t in [5i64, 10, 20] {
            let observed =
                draws.iter().filter(|d| (d.0[0] - 3).abs() >= t).count() as f64 / n as f64;
            let expected = 2.0 * p.powi(t as i32) / (1.0 + p);
            assert!(
                (observed - expected).abs() < 0.01 + 0.1 * expected,
                "t={t}: {observed} vs {expected}"
            );
        }
        let mean = draws.iter().map(|d| d.0[0] as f64).sum::<f64>() / n as f64;
        assert!((mean - 3.0).abs() < 0.3, "unbiased: {mean}");
        // Answers clamp at zero, once: a sum of cells stays unbiased until then.
        let mut sum = Cell::default();
        for d in &draws[..100] {
            sum.add(d);
        }
        assert!(sum.into_stats().interactions <= 100 * 3 + 400);
        let negative = draws
            .iter()
            .find(|d| d.0[0] < 0)
            .expect("some draws below zero");
        assert_eq!(negative.into_stats().interactions, 0);
        assert_eq!(Cell::decode(&negative.encode()).unwrap(), *negative);
        // Every family is noised.
        assert!(draws.iter().any(|d| d.0[13] != 0 && d.0[18] != 0));
    }
}
