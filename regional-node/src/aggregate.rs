//! Partial aggregates of one region, with small groups suppressed before anything leaves.
//!
//! The query runs as one SQL `GROUP BY` over the analytical columns only (never the personal
//! tables) and yields mergeable statistics per group (see `domicile_proto::merge`). A group with
//! fewer than *k* distinct subjects is dropped here, at the node, and only counted.

use domicile_proto::{
    domain::AggregateSpec,
    merge::NPS_BUCKETS,
    pb::{AggregateStats, Channel, Dimension, GroupKey, PartialGroup},
};
use rusqlite::{Connection, ToSql};

use crate::error::NodeError;

/// A region's answer before it is put on the wire.
#[derive(Debug, Default, Clone)]
pub struct Partial {
    /// Released groups, each with at least `min_group_size` distinct subjects.
    pub groups: Vec<PartialGroup>,
    /// Number of groups withheld.
    pub suppressed: u64,
    /// The k applied.
    pub min_group_size: u32,
}

/// The SQL expression of a dimension, or `None` for the region (a constant at a node).
fn dimension_sql(d: Dimension) -> Option<&'static str> {
    match d {
        Dimension::Country => Some("country"),
        Dimension::Channel => Some("channel"),
        Dimension::Month => Some("strftime('%Y-%m', started_at, 'unixepoch')"),
        Dimension::Day => Some("strftime('%Y-%m-%d', started_at, 'unixepoch')"),
        Dimension::Region | Dimension::Unspecified => None,
    }
}

/// Runs `spec` for `tenant` over `conn`, suppressing groups below `k` distinct subjects.
pub fn run(
    conn: &Connection,
    region_id: &str,
    tenant: &str,
    spec: &AggregateSpec,
    k: u32,
) -> Result<Partial, NodeError> {
    let dims: Vec<(Dimension, &str)> = spec
        .group_by
        .iter()
        .filter_map(|d| dimension_sql(*d).map(|sql| (*d, sql)))
        .collect();
    let mut select = String::from("SELECT COUNT(*), COUNT(DISTINCT subject_id)");
    for score in 0..NPS_BUCKETS {
        select.push_str(&format!(", SUM(CASE WHEN nps = {score} THEN 1 ELSE 0 END)"));
    }
    select.push_str(
        ", COALESCE(SUM(csat), 0), COUNT(csat), COALESCE(SUM(ces), 0), COUNT(ces),\
         COALESCE(SUM(handle_time), 0), SUM(CASE WHEN handle_time > 0 THEN 1 ELSE 0 END)",
    );
    for (_, sql) in &dims {
        select.push_str(", ");
        select.push_str(sql);
    }
    select.push_str(" FROM interactions WHERE tenant = ?");
    let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(tenant.to_owned())];
    if let Some(start) = spec.start {
        select.push_str(" AND started_at >= ?");
        args.push(Box::new(start));
    }
    if let Some(end) = spec.end {
        select.push_str(" AND started_at < ?");
        args.push(Box::new(end));
    }
    if !spec.channels.is_empty() {
        let marks = vec!["?"; spec.channels.len()].join(", ");
        select.push_str(&format!(" AND channel IN ({marks})"));
        for c in &spec.channels {
            args.push(Box::new(*c as i32));
        }
    }
    if !dims.is_empty() {
        let cols: Vec<String> = (0..dims.len()).map(|i| (i + 20).to_string()).collect();
        select.push_str(" GROUP BY ");
        select.push_str(&cols.join(", "));
    }

    let grouped_by_region = spec.group_by.contains(&Dimension::Region);
    let mut stmt = conn.prepare(&select)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())))?;
    let mut partial = Partial {
        min_group_size: k,
        ..Default::default()
    };
    while let Some(row) = rows.next()? {
        let get = |i: usize| -> rusqlite::Result<u64> {
            Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0) as u64)
        };
        let interactions = get(0)?;
        if interactions == 0 {
            continue; // an ungrouped query over no rows still yields one row
        }
        let distinct_subjects = get(1)?;
        if distinct_subjects < u64::from(k) {
            partial.suppressed += 1;
            continue;
        }
        let mut nps_histogram = Vec::with_capacity(NPS_BUCKETS);
        for i in 0..NPS_BUCKETS {
            nps_histogram.push(get(2 + i)?);
        }
        if nps_histogram.iter().all(|n| *n == 0) {
            nps_histogram.clear();
        }
        let base = 2 + NPS_BUCKETS;
        let stats = AggregateStats {
            interactions,
            distinct_subjects,
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
        partial.groups.push(PartialGroup {
            key: Some(key),
            stats: Some(stats),
        });
    }
    Ok(partial)
}
