//! The region's report for the console (`RegionalNode.GetRegionOverview`): counts, ids the
//! system made, and parameters, read from the audit log, the request, incident and consent
//! tables. Nothing in it identifies a person: no subject id, no free text, no value of a
//! record.

use crate::store::db::{Connection, Dialect, params};
use domicile_proto::{
    domain::whole_seconds as ts,
    pb::{
        ConsentCount, IncidentSummary, OpenSubjectRequest, PrivacyBudget, Purpose, ReleaseBucket,
        ReleaseKind, SubjectRequestCount,
    },
};

use crate::error::NodeError;

/// Most open requests and incidents listed.
pub const MAX_LISTED: usize = 100;

/// Releases from `since` on, in buckets of `bucket` seconds (> 0), per bucket, purpose and kind,
/// from the audit entries that every release writes before it leaves.
pub fn releases(
    conn: &Connection,
    tenant: &str,
    since: i64,
    bucket: i64,
) -> Result<Vec<ReleaseBucket>, NodeError> {
    let entries = "FROM audit_log
         WHERE tenant = $1 AND kind IN ('release_aggregate', 'release_records') AND at >= $2";
    // A field of the entry's JSON details, as `ty`, and where the entries come from. PostgreSQL
    // parses each entry's details once, in the subquery (`OFFSET 0` keeps it from being folded
    // into the outer query, which would parse them once per field: 2.6 times slower).
    let postgres = conn.dialect() == Dialect::Postgres;
    let field = |name: &str, ty: &str| {
        if postgres {
            format!("CAST(d ->> '{name}' AS {ty})")
        } else {
            format!("json_extract(details, '$.{name}')")
        }
    };
    let from = if postgres {
        format!("FROM (SELECT at, CAST(details AS jsonb) AS d {entries} OFFSET 0) AS r")
    } else {
        entries.to_owned()
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT (at - $2) / $3, {}, {}, COUNT(*), SUM({}), SUM({}), SUM({}), SUM({})
         {from} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        field("purpose", "TEXT"),
        field("kind", "TEXT"),
        field("groups_released", "BIGINT"),
        field("groups_suppressed", "BIGINT"),
        field("rows_released", "BIGINT"),
        field("epsilon", "DOUBLE PRECISION"),
    ))?;
    let rows = stmt.query_map(params![tenant, since, bucket], |r| {
        Ok(ReleaseBucket {
            start: Some(ts(since + r.get::<_, i64>(0)? * bucket)),
            purpose: Purpose::from_str_name(&r.get::<_, Option<String>>(1)?.unwrap_or_default())
                .unwrap_or_default() as i32,
            kind: ReleaseKind::from_str_name(&r.get::<_, Option<String>>(2)?.unwrap_or_default())
                .unwrap_or_default() as i32,
            releases: r.get::<_, i64>(3)?.max(0) as u64,
            groups_released: r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
            groups_suppressed: r.get::<_, Option<i64>>(5)?.unwrap_or(0).max(0) as u64,
            rows_released: r.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0) as u64,
            epsilon: r.get::<_, Option<f64>>(7)?.unwrap_or(0.0),
        })
    })?;
    rows.collect::<Result<_, _>>()
}

/// The tenant's privacy budget for the current month of data, against `budget_milli`
/// thousandths per month of data (docs/privacy-model.md).
pub fn budget(
    conn: &Connection,
    tenant: &str,
    budget_milli: u64,
    now: i64,
) -> Result<PrivacyBudget, NodeError> {
    let month = crate::domain::rollup::month_of_day(now.div_euclid(86_400));
    let spent = crate::domain::release::spent(conn, tenant, month)?;
    Ok(PrivacyBudget {
        daily_epsilon: 0.0,
        spent: spent as f64 / 1000.0,
        remaining: budget_milli.saturating_sub(spent) as f64 / 1000.0,
        epsilon_per_month: budget_milli as f64 / 1000.0,
        month: crate::domain::rollup::month_label(month),
    })
}

/// Subject requests per kind and status, with how many of each are open past their due date,
/// and the open ones (not entirely fulfilled), earliest due first, with their total.
pub fn subject_requests(
    conn: &Connection,
    tenant: &str,
    now: i64,
) -> Result<(Vec<SubjectRequestCount>, Vec<OpenSubjectRequest>, u64), NodeError> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, status, COUNT(*),
                SUM(CASE WHEN completed_at IS NULL AND due_at < $2 THEN 1 ELSE 0 END)
         FROM subject_requests WHERE tenant = $1 GROUP BY kind, status ORDER BY kind, status",
    )?;
    let counts = stmt
        .query_map(params![tenant, now], |r| {
            Ok(SubjectRequestCount {
                kind: r.get(0)?,
                status: r.get(1)?,
                count: r.get::<_, i64>(2)?.max(0) as u64,
                overdue: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT request_id, kind, status, submitted_at, due_at FROM subject_requests
         WHERE tenant = $1 AND completed_at IS NULL ORDER BY due_at, request_id LIMIT $2",
    )?;
    let open = stmt
        .query_map(params![tenant, MAX_LISTED as i64], |r| {
            Ok(OpenSubjectRequest {
                request_id: r.get(0)?,
                kind: r.get(1)?,
                status: r.get(2)?,
                submitted_at: Some(ts(r.get(3)?)),
                due_at: Some(ts(r.get(4)?)),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let total: i64 = conn.query_row(
        "SELECT COUNT(*) FROM subject_requests WHERE tenant = $1 AND completed_at IS NULL",
        params![tenant],
        |r| r.get(0),
    )?;
    Ok((counts, open, total.max(0) as u64))
}

/// The tenant's incidents, most recently detected first, without their descriptions.
pub fn incidents(
    conn: &Connection,
    tenant: &str,
    release: crate::domain::incident::Release,
) -> Result<Vec<IncidentSummary>, NodeError> {
    let mut stmt = conn.prepare_cached(
        "SELECT incident_id, detected_at, deadline, categories, counts FROM incidents
         WHERE tenant = $1 ORDER BY detected_at DESC, incident_id LIMIT $2",
    )?;
    let rows = stmt.query_map(params![tenant, MAX_LISTED as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (incident_id, detected, deadline, categories, counts) = row?;
        out.push(IncidentSummary {
            incident_id,
            detected_at: Some(ts(detected)),
            deadline: Some(ts(deadline)),
            categories: serde_json::from_str(&categories).map_err(|_| {
                NodeError::Internal("an incident's stored categories are corrupt".into())
            })?,
            // Rounded as in `GetIncident`: the overview crosses the border too.
            affected: release.round(crate::domain::incident::stored_counts(&counts)?),
        });
    }
    Ok(out)
}

/// Grouped by the whole policy version, which follows the `consent_state_counts` index: one
/// scan of it, in order. `consents` adds up the few versions of a country.
const CONSENT_COUNTS: &str = "SELECT policy_version, purpose, channel, state, COUNT(*)
     FROM consent_state WHERE tenant = $1
     GROUP BY policy_version, purpose, channel, state";

/// Subjects per country, purpose, channel and current consent state. The country is that of
/// the policy the state was recorded under ("DE@2026-11-01"), so consents recorded before any
/// record of the subject arrived count too.
pub fn consents(conn: &Connection, tenant: &str) -> Result<Vec<ConsentCount>, NodeError> {
    let mut stmt = conn.prepare_cached(CONSENT_COUNTS)?;
    let mut counts = std::collections::BTreeMap::<(String, i32, i32, i32), u64>::new();
    let rows = stmt.query_map(params![tenant], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i32>(1)?,
            r.get::<_, i32>(2)?,
            r.get::<_, i32>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (version, purpose, channel, state, subjects) = row?;
        let country = crate::domain::policy::CountryPolicy::country_of_label(&version);
        *counts
            .entry((country.to_owned(), purpose, channel, state))
            .or_default() += subjects.max(0) as u64;
    }
    Ok(counts
        .into_iter()
        .map(
            |((country, purpose, channel, state), subjects)| ConsentCount {
                country,
                purpose,
                channel,
                state,
                subjects,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Databases;

    fn state(conn: &Connection, tenant: &str, subject: usize, version: &str, state: i32) {
        conn.execute(
            "INSERT INTO consent_state
                 (tenant, subject_id, purpose, channel, state, seq, since, policy_version)
             VALUES ($1, $2, 2, 1, $3, 1, 0, $4)",
            params![tenant, format!("s{subject}"), state, version],
        )
        .unwrap();
    }

    #[test]
    fn consent_counts_add_up_a_countrys_policy_versions_per_tenant() {
        let dbs = Databases::new();
        for backend in dbs.both() {
            let store = dbs.store(&backend);
            store
                .write(|tx| {
                    for i in 0..5 {
                        state(tx, "t", i, "DE@2026-01-01", 1);
                    }
                    for i in 5..8 {
                        state(tx, "t", i, "DE@2026-11-01", 1);
                    }
                    state(tx, "t", 8, "DE@2026-11-01", 3);
                    state(tx, "t", 9, "FR@2026-11-01", 1);
                    state(tx, "other", 10, "DE@2026-11-01", 1);
                    Ok(())
                })
                .unwrap();
            let counts = store.read(|c| consents(c, "t")).unwrap();
            let seen: Vec<(&str, i32, u64)> = counts
                .iter()
                .map(|c| (c.country.as_str(), c.state, c.subjects))
                .collect();
            assert_eq!(
                seen,
                [("DE", 1, 8), ("DE", 3, 1), ("FR", 1, 1)],
                "{backend:?}"
            );
            assert!(counts.iter().all(|c| c.purpose == 2 && c.channel == 1));
        }
    }

    #[test]
    fn consent_counts_read_the_index_alone_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(
            &crate::store::Backend::Sqlite(dir.path().join("data.sqlite")),
            &crate::store::Backend::Sqlite(dir.path().join("vault.sqlite")),
            &[7; 32],
            &crate::domain::schema::SCHEMA,
        )
        .unwrap();
        let plan: Vec<String> = store
            .read(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {CONSENT_COUNTS}"))?;
                let rows = stmt.query_map(params!["t"], |r| r.get::<_, String>(3))?;
                rows.collect::<Result<_, _>>()
            })
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("USING COVERING INDEX consent_state_counts (tenant=?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
