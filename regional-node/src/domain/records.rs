//! Pseudonymised records: interactions as they may leave the region.
//!
//! Each row is read with the subject's profile, then turned into a
//! [`PseudonymisedInteraction`]: the subject and interaction ids become keyed pseudonyms
//! ([`crate::privacy::pseudonym`]), quasi-identifiers are generalised as the country policy says (birth
//! year to its decade or dropped, timestamps truncated to the hour or day, postal code to its
//! prefix, language to its primary subtag), and the comment is redacted ([`crate::privacy::redact`])
//! with the subject's own name. The message type has no field for a name, e-mail, phone or id.

use crate::store::db::{Connection, Query};
use domicile_proto::{domain::RecordSpec, pb::PseudonymisedInteraction};

use crate::{
    domain::consent::Gate,
    domain::policy::{BirthYear, PolicySet},
    domain::stored::Profile,
    error::NodeError,
    privacy::pseudonym::{Kind, Pseudonymiser},
    privacy::redact::Redactor,
    store::vault::{SubjectKey, Vault, comment_aad},
};

/// Records per streamed message.
pub const BATCH: usize = 256;
/// Subjects whose data keys a stream keeps unwrapped at a time.
const KEY_CACHE: usize = 4_096;

/// What one region may release and how.
pub struct Release<'a> {
    /// The region id.
    pub region_id: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// Countries whose records may leave (`pseudonymised` policy).
    pub countries: &'a [String],
    /// The policies.
    pub policies: &'a PolicySet,
    /// The region's pseudonymiser.
    pub pseudonyms: &'a Pseudonymiser,
    /// The key vault, to decrypt profiles and comments.
    pub vault: &'a Vault,
    /// The consent condition of the purpose, applied to columns `i.*`.
    pub consent: Gate,
}

/// Streams `spec`'s records in time order to `emit`, `BATCH` at a time; stops early (without
/// error) when `emit` returns false. Returns the number of records emitted.
pub fn run(
    conn: &Connection,
    release: &Release<'_>,
    spec: &RecordSpec,
    mut emit: impl FnMut(Vec<PseudonymisedInteraction>) -> bool,
) -> Result<u64, NodeError> {
    let mut q = Query::new(
        "SELECT i.interaction_id, i.subject_id, i.country, i.channel, i.direction, i.started_at,
                i.handle_time, i.outcome, i.agent_team, i.recorded, i.survey_id, i.nps, i.csat,
                i.ces, t.comment, p.profile
         FROM interactions i
         LEFT JOIN interaction_text t ON t.tenant = i.tenant AND t.interaction_id = i.interaction_id
         LEFT JOIN subject_pii p ON p.tenant = i.tenant AND p.external_id = i.subject_id
         WHERE i.tenant = ",
    );
    q.bind(release.tenant)
        .push(" AND i.country IN (")
        .bind_list(release.countries)
        .push(")");
    if let Some(start) = spec.start {
        q.push(" AND i.started_at >= ").bind(start);
    }
    if let Some(end) = spec.end {
        q.push(" AND i.started_at < ").bind(end);
    }
    if !spec.channels.is_empty() {
        q.push(" AND i.channel IN (")
            .bind_list(spec.channels.iter().map(|c| *c as i32))
            .push(")");
    }
    release.consent.filter(&mut q, "i.");
    q.push(" ORDER BY i.started_at, i.interaction_id LIMIT ")
        .bind(i64::from(spec.limit));

    let mut stmt = conn.prepare(q.sql())?;
    let mut rows = stmt.query(q.params())?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut emitted = 0u64;
    let mut keys: std::collections::HashMap<String, Option<SubjectKey>> =
        std::collections::HashMap::new();
    while let Some(row) = rows.next()? {
        let interaction_id: String = row.get(0)?;
        let subject_id: String = row.get(1)?;
        let country: String = row.get(2)?;
        let Some(policy) = release.policies.get(&country) else {
            continue; // the IN clause only admits the node's countries
        };
        let border = &policy.border;
        let started_at: i64 = row.get(5)?;
        let sealed_comment: Option<Vec<u8>> = row.get(14)?;
        let sealed_profile: Option<Vec<u8>> = row.get(15)?;
        // Rows are in time order, so subjects recur: keep their keys for the stream.
        if !keys.contains_key(&subject_id) {
            if keys.len() >= KEY_CACHE {
                keys.clear();
            }
            let key = release.vault.key(release.tenant, &subject_id)?;
            keys.insert(subject_id.clone(), key);
        }
        let key = keys.get(&subject_id).and_then(Option::as_ref);
        let profile = match (key, &sealed_profile) {
            (Some(k), Some(blob)) => Profile::open(k, release.tenant, &subject_id, blob),
            _ => None,
        }
        .unwrap_or_default();
        let comment = match (key, &sealed_comment) {
            (Some(k), Some(blob)) => k
                .open(&comment_aad(release.tenant, &interaction_id), blob)
                .and_then(|c| String::from_utf8(c).ok()),
            _ => None,
        };
        let names: Vec<&str> = [profile.full_name.as_str()]
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect();
        let comment_redacted = comment
            .map(|c| Redactor::for_country(&country).redact(&c, &names).text)
            .unwrap_or_default();
        let prefix = usize::from(*border.postal_code_prefix.get_ref());
        let postal_prefix: String = profile
            .postal_code
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(prefix)
            .collect::<String>()
            .to_ascii_uppercase();
        batch.push(PseudonymisedInteraction {
            subject_pseudonym: release.pseudonyms.pseudonym(
                Kind::Subject,
                release.tenant,
                spec.purpose,
                &subject_id,
            ),
            interaction_pseudonym: release.pseudonyms.pseudonym(
                Kind::Interaction,
                release.tenant,
                spec.purpose,
                &interaction_id,
            ),
            region_id: release.region_id.to_owned(),
            country,
            channel: row.get(3)?,
            direction: row.get(4)?,
            started_at: Some(domicile_proto::domain::whole_seconds(
                border.timestamps.truncate(started_at),
            )),
            handle_time_seconds: row.get(6)?,
            outcome: row.get(7)?,
            agent_team: row.get(8)?,
            recorded: row.get(9)?,
            survey_id: row.get::<_, Option<String>>(10)?.unwrap_or_default(),
            nps: row.get(11)?,
            csat: row.get(12)?,
            ces: row.get(13)?,
            comment_redacted,
            birth_decade: match (border.birth_year, profile.birth_year) {
                (BirthYear::Decade, Some(y)) if y > 0 => y / 10 * 10,
                _ => 0,
            },
            postal_prefix,
            language: primary_subtag(&profile.language),
        });
        if batch.len() == BATCH {
            let n = batch.len() as u64;
            // Only what was handed on counts as released.
            if !emit(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))) {
                return Ok(emitted);
            }
            emitted += n;
        }
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        if emit(batch) {
            emitted += n;
        }
    }
    Ok(emitted)
}

/// The primary language subtag, lower case, when it is 2 or 3 letters ("de-DE" → "de").
fn primary_subtag(tag: &str) -> String {
    let primary = tag.split(['-', '_']).next().unwrap_or("");
    if (2..=3).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_alphabetic()) {
        primary.to_ascii_lowercase()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::primary_subtag;

    #[test]
    fn language_keeps_the_primary_subtag_only() {
        assert_eq!(primary_subtag("de-DE"), "de");
        assert_eq!(primary_subtag("pt_BR"), "pt");
        assert_eq!(primary_subtag(""), "");
        assert_eq!(primary_subtag("x-klingon-1"), "");
    }
}
