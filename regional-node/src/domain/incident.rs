//! Breach incidents: this region's part — how many subjects are affected per country and data
//! category (never who), and the notification deadline from the country policy.
//!
//! A subject counts as affected in a category when the region held data of that category about
//! them before the end of the exposure window: a profile created before it, an interaction (or
//! survey answer, or comment) that took place before it, a consent entry recorded before it.
//! The list of who, with contact details for notifying them, is only served in-country
//! ([`subjects`], on the `LocalNode` listener).

use crate::store::db::{Connection, OptionalExtension, params};
use domicile_proto::{
    domain::IncidentSpec,
    domain::whole_seconds as ts,
    pb::{AffectedCount, DataCategory, Incident, IncidentSubject, RegionIncident, TimeRange},
};

use crate::{domain::policy::PolicySet, error::NodeError, store::Store};

/// The incident table; created with the rest of the schema.
pub const SCHEMA_SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS incidents (
    tenant          TEXT NOT NULL,
    incident_id     TEXT NOT NULL,
    reported_at     INTEGER NOT NULL,
    detected_at     INTEGER NOT NULL,
    window_start    INTEGER NOT NULL,
    window_end      INTEGER NOT NULL,
    categories      TEXT NOT NULL,
    description     TEXT NOT NULL,
    deadline        INTEGER NOT NULL,
    policy_versions TEXT NOT NULL,
    counts          TEXT NOT NULL,
    PRIMARY KEY (tenant, incident_id)
) WITHOUT ROWID;
"#;

/// The same tables for PostgreSQL (`BIGINT` integers, `BYTEA` bytes, identity columns); the
/// triggers are PL/pgSQL, in [`crate::domain::schema`]. The store contract test checks that
/// both engines end up with the same tables, columns, keys and indexes.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS incidents (
    tenant          TEXT NOT NULL,
    incident_id     TEXT NOT NULL,
    reported_at     BIGINT NOT NULL,
    detected_at     BIGINT NOT NULL,
    window_start    BIGINT NOT NULL,
    window_end      BIGINT NOT NULL,
    categories      TEXT NOT NULL,
    description     TEXT NOT NULL,
    deadline        BIGINT NOT NULL,
    policy_versions TEXT NOT NULL,
    counts          TEXT NOT NULL,
    PRIMARY KEY (tenant, incident_id)
);
"#;

/// `(subject_id, country)` rows of subjects with data of `category` stored before `?2`, for
/// tenant `?1`.
fn affected_sql(category: DataCategory) -> &'static str {
    match category {
        DataCategory::Profile => {
            "SELECT s.external_id AS subject_id, s.country AS country FROM subjects s
             JOIN subject_pii p ON p.tenant = s.tenant AND p.external_id = s.external_id
             WHERE s.tenant = $1 AND s.created_at < $2"
        }
        DataCategory::ContactDetails => {
            "SELECT s.external_id AS subject_id, s.country AS country FROM subjects s
             JOIN subject_pii p ON p.tenant = s.tenant AND p.external_id = s.external_id
             WHERE s.tenant = $1 AND s.created_at < $2 AND p.has_contact = 1"
        }
        DataCategory::Interactions => {
            "SELECT subject_id, country FROM interactions WHERE tenant = $1 AND started_at < $2"
        }
        DataCategory::SurveyAnswers => {
            "SELECT subject_id, country FROM interactions WHERE tenant = $1 AND started_at < $2
             AND (nps IS NOT NULL OR csat IS NOT NULL OR ces IS NOT NULL)"
        }
        DataCategory::Comments => {
            "SELECT i.subject_id AS subject_id, i.country AS country FROM interactions i
             JOIN interaction_text t ON t.tenant = i.tenant AND t.interaction_id = i.interaction_id
             WHERE i.tenant = $1 AND i.started_at < $2"
        }
        // The country of a consent-only subject is the one of the policy it was recorded under.
        DataCategory::ConsentRecords => {
            "SELECT subject_id, substr(policy_version, 1, 2) AS country FROM consent_ledger
             WHERE tenant = $1 AND recorded_at < $2"
        }
        DataCategory::Unspecified => "SELECT '' AS subject_id, '' AS country WHERE 0",
    }
}

/// What the region's policies allow an incident report to release: the coarsest rounding,
/// the widest period and the fewest reports per day of its countries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// Counts are rounded up to a multiple of this.
    pub granularity: u64,
    /// Windows are widened to whole periods of this many seconds.
    pub period: i64,
    /// Reports per tenant per UTC day.
    pub per_day: u64,
}

impl Release {
    /// The strictest rules of `policies`.
    pub fn of(policies: &PolicySet) -> Self {
        let rules = || policies.iter().map(|p| &p.incidents);
        Self {
            granularity: rules()
                .map(|r| u64::from(*r.count_granularity.get_ref()))
                .max()
                .unwrap_or(10),
            period: rules()
                .map(|r| i64::from(*r.window_seconds.get_ref()))
                .max()
                .unwrap_or(3600),
            per_day: rules()
                .map(|r| u64::from(*r.max_reports_per_day.get_ref()))
                .min()
                .unwrap_or(20),
        }
    }

    /// `[start, end)` widened to whole periods.
    pub fn align(&self, start: i64, end: i64) -> (i64, i64) {
        let p = self.period;
        (
            start.div_euclid(p) * p,
            end.div_euclid(p) * p + if end.rem_euclid(p) == 0 { 0 } else { p },
        )
    }

    /// `counts` rounded up to the granularity, as they may cross the border.
    pub fn round(&self, counts: Vec<AffectedCount>) -> Vec<AffectedCount> {
        let g = self.granularity.max(1);
        counts
            .into_iter()
            .map(|c| AffectedCount {
                subjects: c.subjects.div_ceil(g) * g,
                ..c
            })
            .collect()
    }
}

/// Reports the tenant filed in this region since the start of the UTC day of `now`.
pub fn reports_today(tx: &Connection, tenant: &str, now: i64) -> Result<u64, NodeError> {
    let day = now.div_euclid(86_400) * 86_400;
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM incidents WHERE tenant = $1 AND reported_at >= $2",
        params![tenant, day],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// Counts this region's affected subjects and records its part of the incident, in the
/// caller's transaction. The window is widened to whole policy periods first; the counts are
/// stored exactly (for the in-country listener) and returned rounded ([`Release`]).
/// `now`: the node's time, when the report is received.
pub fn report(
    tx: &Connection,
    policies: &PolicySet,
    region_id: &str,
    incident_id: &str,
    spec: &IncidentSpec,
    now: i64,
) -> Result<RegionIncident, NodeError> {
    let release = Release::of(policies);
    let (start, end) = release.align(spec.start, spec.end);
    let spec = &IncidentSpec {
        start,
        end,
        ..spec.clone()
    };
    let mut affected = Vec::new();
    for category in &spec.categories {
        let mut stmt = tx.prepare(&format!(
            "SELECT country, COUNT(DISTINCT subject_id) FROM ({}) AS a
             GROUP BY country ORDER BY country",
            affected_sql(*category)
        ))?;
        let rows = stmt.query_map(params![spec.tenant.as_str(), spec.end], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (country, n) = row?;
            affected.push(AffectedCount {
                country,
                category: *category as i32,
                subjects: n as u64,
            });
        }
    }
    let detected = spec.detected_at.unwrap_or(now);
    let hours = policies
        .iter()
        .map(|p| *p.deadlines.breach_notification_hours.get_ref())
        .min()
        .unwrap_or(72);
    let deadline = detected + i64::from(hours) * 3_600;
    let mut part = RegionIncident {
        region_id: region_id.to_owned(),
        affected,
        deadline: Some(ts(deadline)),
        policy_versions: policies.labels(),
    };
    let counts: Vec<(String, i32, u64)> = part
        .affected
        .iter()
        .map(|a| (a.country.clone(), a.category, a.subjects))
        .collect();
    let categories: Vec<i32> = spec.categories.iter().map(|c| *c as i32).collect();
    tx.execute(
        "INSERT INTO incidents (tenant, incident_id, reported_at, detected_at, window_start,
           window_end, categories, description, deadline, policy_versions, counts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        params![
            spec.tenant.as_str(),
            incident_id,
            now,
            detected,
            spec.start,
            spec.end,
            serde_json::to_string(&categories).unwrap_or_default(),
            spec.description,
            deadline,
            serde_json::to_string(&part.policy_versions).unwrap_or_default(),
            serde_json::to_string(&counts).unwrap_or_default(),
        ],
    )
    .map_err(|e| match e {
        NodeError::Storage(db) if db.is_unique_violation() => {
            NodeError::FailedPrecondition("incident_id: already reported".into())
        }
        e => e,
    })?;
    part.affected = release.round(part.affected);
    Ok(part)
}

/// The affected counts as stored (`[[country, category, subjects], …]`).
pub(crate) fn stored_counts(json: &str) -> Result<Vec<AffectedCount>, NodeError> {
    let counts: Vec<(String, i32, u64)> = serde_json::from_str(json)
        .map_err(|_| NodeError::Internal("an incident's stored counts are corrupt".into()))?;
    Ok(counts
        .into_iter()
        .map(|(country, category, subjects)| AffectedCount {
            country,
            category,
            subjects,
        })
        .collect())
}

/// The stored incident with this region's part (its exact counts: round them with
/// [`Release::round`] before they leave the region), or `None`.
pub fn get(
    conn: &Connection,
    tenant: &str,
    incident_id: &str,
) -> Result<Option<Incident>, NodeError> {
    let row = conn
        .query_row(
            "SELECT detected_at, window_start, window_end, categories, description, deadline,
                    policy_versions, counts, incident_id
             FROM incidents WHERE tenant = $1 AND incident_id = $2",
            params![tenant, incident_id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            },
        )
        .optional()?;
    let Some((detected, start, end, categories, description, deadline, versions, counts)) = row
    else {
        return Ok(None);
    };
    Ok(Some(Incident {
        incident_id: incident_id.to_owned(),
        tenant_id: tenant.to_owned(),
        window: Some(TimeRange {
            start: Some(ts(start)),
            end: Some(ts(end)),
        }),
        categories: serde_json::from_str(&categories).unwrap_or_default(),
        description,
        detected_at: Some(ts(detected)),
        regions: vec![RegionIncident {
            region_id: String::new(), // filled by the caller, which knows its region
            affected: stored_counts(&counts)?,
            deadline: Some(ts(deadline)),
            policy_versions: serde_json::from_str(&versions).unwrap_or_default(),
        }],
        deadline: Some(ts(deadline)),
        seconds_left: 0,
        status: 0,
        totals: Vec::new(),
    }))
}

/// Who is affected, with contact details (decrypted), for notifying them. In-country only.
pub fn subjects(
    conn: &Connection,
    store: &Store,
    tenant: &str,
    incident_id: &str,
) -> Result<Option<Vec<IncidentSubject>>, NodeError> {
    let row = conn
        .query_row(
            "SELECT window_end, categories FROM incidents WHERE tenant = $1 AND incident_id = $2",
            params![tenant, incident_id],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?;
    let Some((end, categories)) = row else {
        return Ok(None);
    };
    let categories: Vec<i32> = serde_json::from_str(&categories).unwrap_or_default();
    let union = categories
        .iter()
        .filter_map(|c| DataCategory::try_from(*c).ok())
        .map(affected_sql)
        .collect::<Vec<_>>()
        .join(" UNION ");
    let mut stmt = conn.prepare(&format!(
        "SELECT a.subject_id, MIN(a.country) FROM ({union}) AS a
         GROUP BY a.subject_id ORDER BY a.subject_id"
    ))?;
    let ids: Vec<(String, String)> = stmt
        .query_map(params![tenant, end], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for (reference, country) in ids {
        // Rows are kept by reference; the notification needs the customer's id.
        let Some(external_id) = store.vault().external_id(tenant, &reference)? else {
            continue;
        };
        let profile =
            crate::domain::stored::profile(store, conn, tenant, &reference)?.unwrap_or_default();
        out.push(IncidentSubject {
            external_id,
            country,
            full_name: profile.full_name,
            email: profile.email,
            phone: profile.phone,
            language: profile.language,
        });
    }
    out.sort_by(|a, b| a.external_id.cmp(&b.external_id));
    Ok(Some(out))
}
