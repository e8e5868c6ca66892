//! The region's report for the console (`RegionalNode.GetRegionOverview`): counts, ids the
//! system made, and parameters, read from the audit log, the request, incident and consent
//! tables. Nothing in it identifies a person: no subject id, no free text, no value of a
//! record.

use crate::store::db::{Connection, params};
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
/// from the audit entries that every release writes before it leaves (their counts, kept in
/// `release_stats` as each entry is appended).
pub fn releases(
    conn: &Connection,
    tenant: &str,
    since: i64,
    bucket: i64,
) -> Result<Vec<ReleaseBucket>, NodeError> {
    // The counts each release's audit entry holds, kept in columns as it was appended.
    let mut stmt = conn.prepare_cached(
        "SELECT (at - $2) / $3, purpose, kind, COUNT(*), SUM(groups_released),
                SUM(groups_suppressed), SUM(rows_released), SUM(epsilon)
         FROM release_stats WHERE tenant = $1 AND at >= $2
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )?;
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
        "SELECT r.kind, r.status, COUNT(*),
                SUM(CASE WHEN r.completed_at IS NULL AND r.due_at < $2
                          AND (c.paused_since IS NULL OR r.due_at < c.paused_since)
                         THEN 1 ELSE 0 END)
         FROM subject_requests r
         LEFT JOIN subject_cases c ON c.tenant = r.tenant AND c.request_id = r.request_id
         WHERE r.tenant = $1 GROUP BY r.kind, r.status ORDER BY r.kind, r.status",
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

/// Per policy version, from the counts the triggers on `consent_state` keep: a few rows, not
/// one per subject.
const CONSENT_COUNTS: &str = "SELECT policy_version, purpose, channel, state, subjects
     FROM consent_counts WHERE tenant = $1 AND subjects > 0";

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

    /// Runs schema migration 10 (the counts the console reads) in `tx`.
    fn migration_10(tx: &Connection) -> Result<(), NodeError> {
        crate::domain::schema::MIGRATIONS
            .iter()
            .find(|m| m.version == 10)
            .map(|m| (m.apply)(tx))
            .expect("migration 10")
    }

    /// A policy version, purpose, channel, state and count of subjects.
    type CountRow = (String, i64, i64, i64, i64);

    /// The counts kept by the triggers equal a count of `consent_state` after inserts, updates
    /// (a state and a policy version changing, an upsert) and deletes, on both engines; and
    /// migration 10 counts what was stored before it the same way.
    #[test]
    fn consent_counts_follow_every_change_and_the_migration_recounts() {
        let dbs = Databases::new();
        for backend in dbs.both() {
            let store = dbs.store(&backend);
            let recount = |c: &Connection| -> Result<Vec<CountRow>, NodeError> {
                c.query_map(
                    "SELECT policy_version, purpose, channel, state, COUNT(*) FROM consent_state
                     WHERE tenant = 't' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
            };
            let kept = |c: &Connection| -> Result<Vec<CountRow>, NodeError> {
                c.query_map(
                    "SELECT policy_version, purpose, channel, state, subjects FROM consent_counts
                     WHERE tenant = 't' AND subjects > 0 ORDER BY 1, 2, 3, 4",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
            };
            store
                .write(|tx| {
                    for i in 0..20 {
                        state(tx, "t", i, "DE@2026-01-01", 1 + (i % 3) as i32);
                    }
                    state(tx, "other", 99, "DE@2026-01-01", 1);
                    tx.execute(
                        "UPDATE consent_state SET state = 4 WHERE tenant = 't' AND subject_id IN ('s1', 's2')",
                        params![],
                    )?;
                    tx.execute(
                        "UPDATE consent_state SET policy_version = 'DE@2026-11-01'
                         WHERE tenant = 't' AND subject_id = 's3'",
                        params![],
                    )?;
                    tx.execute(
                        "INSERT INTO consent_state
                             (tenant, subject_id, purpose, channel, state, seq, since, policy_version)
                         VALUES ('t', 's4', 2, 1, 3, 2, 0, 'DE@2026-11-01')
                         ON CONFLICT (tenant, subject_id, purpose, channel)
                         DO UPDATE SET state = excluded.state, seq = excluded.seq,
                                       policy_version = excluded.policy_version",
                        params![],
                    )?;
                    tx.execute(
                        "DELETE FROM consent_state WHERE tenant = 't' AND subject_id IN ('s5', 's6')",
                        params![],
                    )?;
                    Ok(())
                })
                .unwrap();
            let (want, got) = store.read(|c| Ok((recount(c)?, kept(c)?))).unwrap();
            assert_eq!(got, want, "{backend:?}");
            assert_eq!(want.iter().map(|r| r.4).sum::<i64>(), 18, "{backend:?}");
            // Wrong counts (as a database of schema 9 has none) are recounted by migration 10.
            store
                .write(|tx| {
                    tx.execute("UPDATE consent_counts SET subjects = 1000", params![])?;
                    migration_10(tx)
                })
                .unwrap();
            let (want, got) = store.read(|c| Ok((recount(c)?, kept(c)?))).unwrap();
            assert_eq!(got, want, "{backend:?} after the migration");
        }
    }

    /// Releases appended to the audit log are charted from `release_stats` as their entries'
    /// JSON says; migration 10 fills it from releases logged before it.
    #[test]
    fn releases_are_charted_from_their_audit_entries_and_recounted_by_the_migration() {
        use crate::domain::audit::{AuditLog, Entry, Kind};
        let dbs = Databases::new();
        for backend in dbs.both() {
            let store = dbs.store(&backend);
            let clock = domicile_ops::clock::ManualClock::at(10_000);
            let log =
                AuditLog::new("eu", &[9; 32], 1_000).with_clock(std::sync::Arc::new(clock.clone()));
            store
                .write(|tx| {
                    for (i, kind) in [
                        Kind::ReleaseAggregate,
                        Kind::ReleaseRecords,
                        Kind::IngestBatch,
                    ]
                    .into_iter()
                    .cycle()
                    .take(9)
                    .enumerate()
                    {
                        clock.advance(100);
                        log.append(
                            tx,
                            Entry {
                                kind,
                                tenant: "t",
                                subject: None,
                                details: serde_json::json!({
                                    "purpose": "PURPOSE_ANALYTICS",
                                    "kind": "RELEASE_KIND_AGGREGATE",
                                    "groups_released": i,
                                    "groups_suppressed": 1,
                                    "rows_released": 2 * i,
                                    "epsilon": 0.25,
                                }),
                            },
                        )?;
                    }
                    Ok(())
                })
                .unwrap();
            let chart = |store: &crate::store::Store| {
                store
                    .read(|c| releases(c, "t", 10_000, 1_000))
                    .unwrap()
                    .into_iter()
                    .map(|b| {
                        (
                            b.releases,
                            b.groups_released,
                            b.groups_suppressed,
                            b.rows_released,
                            b.epsilon,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            // Entries 0, 1, 3, 4, 6, 7 are releases, at 10,100 … 10,900: one bucket.
            let want = vec![(6, 21, 6, 42, 1.5)];
            assert_eq!(chart(&store), want, "{backend:?}");
            store
                .write(|tx| {
                    tx.execute("DELETE FROM release_stats", params![])?;
                    migration_10(tx)
                })
                .unwrap();
            assert_eq!(chart(&store), want, "{backend:?} after the migration");
        }
    }
}
