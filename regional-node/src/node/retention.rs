//! Retention: deletes what the country policies no longer allow to keep, per data category,
//! skipping anything a legal hold keeps; ends expired holds (completing the erasures they
//! delayed). Runs daily while a node serves, and on demand (`domicile node sweep`). What it deleted
//! is counted and audited, never listed.

use crate::store::db::params;
use serde_json::json;

use crate::{
    domain::audit::{Entry, Kind},
    error::NodeError,
    node::Node,
};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Swept {
    /// Legal holds that expired and were ended.
    pub holds_expired: usize,
    /// Erasures those holds had delayed, now complete.
    pub erasures_completed: usize,
    /// Comments deleted (their interactions kept).
    pub comments_deleted: usize,
    /// Interactions deleted (with their comments).
    pub interactions_deleted: usize,
    /// Subjects erased for inactivity beyond the profile retention (data keys destroyed).
    pub subjects_erased: usize,
    /// Superseded consent-ledger entries deleted.
    pub consent_entries_deleted: usize,
    /// Subject-request exports whose time was up, destroyed.
    pub exports_destroyed: usize,
}

/// Rows of `interactions i` that no active hold keeps.
const NOT_HELD: &str = "NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.tenant = i.tenant
    AND h.subject_id = i.subject_id AND h.released_at IS NULL AND h.expires_at > $2
    AND (h.range_start IS NULL OR (i.started_at >= h.range_start AND i.started_at < h.range_end)))";

impl Node {
    /// Applies every country policy's retention now.
    pub fn sweep(&self) -> Result<Swept, NodeError> {
        let now = self.now();
        let (holds_expired, erasures_completed) = self.expire_holds()?;
        let mut swept = Swept {
            holds_expired,
            erasures_completed,
            ..Default::default()
        };
        let inner = &self.inner;
        let mut shredded: Vec<(String, String)> = Vec::new();
        inner.store.write(|tx| {
            for policy in inner.policies.iter() {
                let country = policy.country();
                let days = |d: u32| now - i64::from(d) * 86_400;
                let r = &policy.retention;
                swept.comments_deleted += tx.execute(
                    &format!(
                        "DELETE FROM interaction_text WHERE (tenant, interaction_id) IN (
                           SELECT i.tenant, i.interaction_id FROM interactions i
                           WHERE i.country = $1 AND i.started_at < $3 AND {NOT_HELD})"
                    ),
                    params![country, now, days(r.comments)],
                )?;
                tx.execute(
                    &format!(
                        "DELETE FROM interaction_text WHERE (tenant, interaction_id) IN (
                           SELECT i.tenant, i.interaction_id FROM interactions i
                           WHERE i.country = $1 AND i.started_at < $3 AND {NOT_HELD})"
                    ),
                    params![country, now, days(r.interactions)],
                )?;
                swept.interactions_deleted += crate::domain::rollup::delete_interactions(
                    tx,
                    &format!("i.country = $1 AND i.started_at < $3 AND {NOT_HELD}"),
                    params![country, now, days(r.interactions)],
                )?;
                // Profiles of subjects inactive beyond retention, with nothing left or held.
                let mut stmt = tx.prepare(
                    "SELECT s.tenant, s.external_id FROM subjects s
                     WHERE s.country = $1 AND s.updated_at < $3
                     AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.tenant = s.tenant AND i.subject_id = s.external_id)
                     AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.tenant = s.tenant AND h.subject_id = s.external_id
                                     AND h.released_at IS NULL AND h.expires_at > $2)",
                )?;
                let stale: Vec<(String, String)> = stmt
                    .query_map(params![country, now, days(r.profiles)], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?;
                drop(stmt);
                for (tenant, subject) in stale {
                    for table in ["subject_pii", "subject_pii_history", "subjects"] {
                        tx.execute(
                            &format!("DELETE FROM {table} WHERE tenant = $1 AND external_id = $2"),
                            params![tenant, subject],
                        )?;
                    }
                    swept.subjects_erased += 1;
                    // A subject whose consent is still on file keeps its reference (and key):
                    // the consent must still be found by its external id. Others are shredded.
                    let consent: Option<i64> = tx.query_opt(
                        "SELECT 1 FROM consent_state WHERE tenant = $1 AND subject_id = $2 LIMIT 1",
                        params![tenant, subject],
                        |r| r.get(0),
                    )?;
                    if consent.is_none() {
                        let (start, end) = crate::store::vault::stored_id_range(&subject);
                        tx.execute(
                            "DELETE FROM ingest_keys WHERE tenant = $1 AND idempotency_key >= $2
                             AND idempotency_key < $3",
                            params![tenant, start, end],
                        )?;
                        shredded.push((tenant, subject));
                    }
                }
                // Ledger entries past retention, except the ones that are a current state.
                tx.execute("INSERT INTO erasure_guard (active) VALUES (1)", [])?;
                swept.consent_entries_deleted += tx.execute(
                    "DELETE FROM consent_ledger AS l
                     WHERE substr(l.policy_version, 1, 2) = $1 AND l.recorded_at < $2
                     AND NOT EXISTS (SELECT 1 FROM consent_state c WHERE c.tenant = l.tenant
                                     AND c.subject_id = l.subject_id AND c.seq = l.seq)",
                    params![country, days(r.consent_ledger)],
                )?;
                tx.execute("DELETE FROM erasure_guard", [])?;
            }
            swept.exports_destroyed = self.destroy_expired_exports(tx, now)?;
            inner.audit.append(
                tx,
                Entry {
                    kind: Kind::RetentionSweep,
                    tenant: "",
                    subject: None,
                    details: json!(swept),
                },
            )?;
            Ok(())
        })?;
        for (tenant, subject) in &shredded {
            inner.store.vault().destroy(tenant, subject, &[])?;
        }
        if swept.interactions_deleted + swept.comments_deleted + swept.subjects_erased > 0 {
            crate::domain::rights::scrub(&inner.store);
        }
        tracing::info!(
            region = %inner.config.region_id,
            interactions = swept.interactions_deleted,
            comments = swept.comments_deleted,
            subjects = swept.subjects_erased,
            holds_expired = swept.holds_expired,
            "retention sweep"
        );
        Ok(swept)
    }
}
