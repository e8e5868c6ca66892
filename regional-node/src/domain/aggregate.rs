//! Partial aggregates of one region, with small groups suppressed before anything leaves.
//!
//! The query runs as one SQL `GROUP BY` over the analytical columns only (never the personal
//! tables) and yields mergeable statistics per group (see `domicile_proto::merge`). A group with
//! fewer than *k* distinct subjects is dropped here, at the node, and only counted. *k* counts
//! distinct subjects, never rows; a group of one country meets that country's *k*, a group that
//! mixes countries meets the largest *k* of the region.
//!
//! Under differential privacy ([`crate::privacy::dp`]) each subject's contributions are bounded first
//! (its first `L` interactions in time order), handle times are clamped, every released
//! statistic gets discrete Laplace noise, and the *noisy* distinct-subject count decides which
//! groups meet *k*.

use crate::store::db::{Connection, Dialect, Query};
use domicile_proto::{
    domain::AggregateSpec,
    merge::NPS_BUCKETS,
    pb::{AggregateStats, Channel, Dimension, GroupKey},
};

use crate::{
    domain::partial::{Partial, Rules, release},
    error::NodeError,
};

/// The SQL expression of a dimension, or `None` for the region (a constant at a node).
fn dimension_sql(d: Dimension, dialect: Dialect) -> Option<&'static str> {
    match (d, dialect) {
        (Dimension::Country, _) => Some("country"),
        (Dimension::Channel, _) => Some("channel"),
        (Dimension::Month, Dialect::Sqlite) => Some("strftime('%Y-%m', started_at, 'unixepoch')"),
        (Dimension::Day, Dialect::Sqlite) => Some("strftime('%Y-%m-%d', started_at, 'unixepoch')"),
        (Dimension::Month, Dialect::Postgres) => {
            Some("to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM')")
        }
        (Dimension::Day, Dialect::Postgres) => {
            Some("to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
        }
        (Dimension::Region | Dimension::Unspecified, _) => None,
    }
}

/// Runs `spec` for `tenant` over `conn`, suppressing groups below *k* distinct subjects: from
/// the rollups when the rules allow ([`crate::domain::rollup`]), otherwise over the rows.
pub fn run(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    spec: &AggregateSpec,
    mut rules: Rules<'_>,
) -> Result<Partial, NodeError> {
    match crate::domain::rollup::run(conn, region_id, tenant, spec, &mut rules)? {
        Some(partial) => Ok(partial),
        None => run_over_rows(conn, region_id, tenant, spec, rules),
    }
}

/// Runs `spec` as one SQL `GROUP BY` over the rows.
pub fn run_over_rows(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    spec: &AggregateSpec,
    mut rules: Rules<'_>,
) -> Result<Partial, NodeError> {
    let dims: Vec<(Dimension, &str)> = spec
        .group_by
        .iter()
        .filter_map(|d| dimension_sql(*d, conn.dialect()).map(|sql| (*d, sql)))
        .collect();
    let bounds = rules
        .noise
        .as_ref()
        .map(|(plan, _)| (plan.max_contributions, plan.handle_time_bound))
        .or(rules.bounds);
    let handle_time = match bounds {
        Some((_, h)) => match conn.dialect() {
            Dialect::Sqlite => format!("MIN(handle_time, {h})"),
            Dialect::Postgres => format!("LEAST(handle_time, {h})"),
        },
        None => "handle_time".to_owned(),
    };
    let mut select = String::from("SELECT COUNT(*), COUNT(DISTINCT subject_id)");
    for score in 0..NPS_BUCKETS {
        select.push_str(&format!(", SUM(CASE WHEN nps = {score} THEN 1 ELSE 0 END)"));
    }
    select.push_str(&format!(
        ", COALESCE(SUM(csat), 0), COUNT(csat), COALESCE(SUM(ces), 0), COUNT(ces),\
         COALESCE(SUM({handle_time}), 0), SUM(CASE WHEN handle_time > 0 THEN 1 ELSE 0 END)"
    ));
    for (_, sql) in &dims {
        select.push_str(", ");
        select.push_str(sql);
    }
    // The country of each group, to pick its k: the grouped country, or (for mixed groups) a
    // constant that maps to the region's largest k.
    let country_col = dims.iter().position(|(d, _)| *d == Dimension::Country);
    let filter = |q: &mut Query<'_>| {
        q.push(" WHERE tenant = ").bind(tenant.to_owned());
        if let Some(start) = spec.start {
            q.push(" AND started_at >= ").bind(start);
        }
        if let Some(end) = spec.end {
            q.push(" AND started_at < ").bind(end);
        }
        if !spec.channels.is_empty() {
            q.push(" AND channel IN (")
                .bind_list(spec.channels.iter().map(|c| *c as i32))
                .push(")");
        }
        rules.gate.filter(q, "");
    };
    let mut q = Query::new(select);
    match bounds {
        // Contribution bound: each subject's first L interactions (in time order) only — per
        // day or month when grouped by one, so that one query bounds many releases as each
        // release alone would.
        Some((l, _)) => {
            let period = dims
                .iter()
                .find(|(d, _)| *d == Dimension::Day)
                .or_else(|| dims.iter().find(|(d, _)| *d == Dimension::Month))
                .map(|(_, sql)| format!(", {sql}"))
                .unwrap_or_default();
            q.push(&format!(
                " FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY subject_id{period} ORDER BY \
                 started_at, interaction_id) AS contribution FROM interactions"
            ));
            filter(&mut q);
            q.push(&format!(") AS bounded WHERE contribution <= {l}"));
        }
        None => {
            q.push(" FROM interactions");
            filter(&mut q);
        }
    }
    if !dims.is_empty() {
        let cols: Vec<String> = (0..dims.len()).map(|i| (i + 20).to_string()).collect();
        q.push(" GROUP BY ").push(&cols.join(", "));
    }

    let grouped_by_region = spec.group_by.contains(&Dimension::Region);
    let mut stmt = conn.prepare(q.sql())?;
    let mut rows = stmt.query(q.params())?;
    let mut partial = Partial {
        min_group_size: rules.k_mixed,
        ..Default::default()
    };
    while let Some(row) = rows.next()? {
        let get = |i: usize| -> Result<u64, NodeError> {
            Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0) as u64)
        };
        let interactions = get(0)?;
        if interactions == 0 {
            continue; // an ungrouped query over no rows still yields one row
        }
        let base = 2 + NPS_BUCKETS;
        let country: Option<String> = country_col.map(|i| row.get(base + 6 + i)).transpose()?;
        let mut nps_histogram = Vec::with_capacity(NPS_BUCKETS);
        for i in 0..NPS_BUCKETS {
            nps_histogram.push(get(2 + i)?);
        }
        let stats = AggregateStats {
            interactions,
            distinct_subjects: get(1)?,
            nps_histogram,
            csat_sum: get(base)?,
            csat_responses: get(base + 1)?,
            ces_sum: get(base + 2)?,
            ces_responses: get(base + 3)?,
            handle_time_sum_seconds: get(base + 4)?,
            handle_time_count: get(base + 5)?,
        };
        let mut key = GroupKey::default();
        if grouped_by_region {
            key.region_id = region_id.to_owned();
        }
        for (i, (dim, _)) in dims.iter().enumerate() {
            let col = base + 6 + i;
            match dim {
                Dimension::Country => key.country = row.get(col)?,
                Dimension::Channel => {
                    let raw: i64 = row.get(col)?;
                    key.channel = Channel::try_from(raw as i32).map_or(0, |c| c as i32);
                }
                Dimension::Month | Dimension::Day => key.period = row.get(col)?,
                Dimension::Region | Dimension::Unspecified => {}
            }
        }
        release(&mut rules, &mut partial, country.as_deref(), stats, key);
    }
    Ok(partial)
}
