//! Records at rest: the subject and interaction tables, a batch's ids rewritten into their
//! stored forms, and the batch write itself (group-committed by the store, with the rollups'
//! cells in the same transaction).
//!
//! Personal fields live in their own tables (`subject_pii`, `interaction_text`), apart from the
//! analytical columns, encrypted with the subject's data key. No id in this database is a
//! customer's: `external_id` and `subject_id` columns hold the subject's *reference* (random,
//! mapped to the external id only by the key vault), `interaction_id` and `idempotency_key`
//! hold keyed forms that only the subject's data key recomputes ([`crate::store::vault`]).
//! Every table is keyed by tenant first: no query can reach across tenants.

use domicile_proto::domain::{Interaction, Subject};

use crate::{
    domain::rollup::Facts,
    error::NodeError,
    store::{
        Store,
        db::{Connection, params},
        vault::{SubjectKey, comment_aad, interaction_id_aad, profile_aad},
    },
};

/// The tables of subjects, their personal fields, interactions, comments and idempotency keys.
pub const SCHEMA: &str = r#"
-- `external_id` (here and below) holds the subject's reference, not the customer's id.
CREATE TABLE IF NOT EXISTS subjects (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    country     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, external_id)
) WITHOUT ROWID;

-- Personal data of a subject, kept apart from the analytical columns and encrypted with the
-- subject's data key (see vault.rs). `has_contact` (an e-mail or phone is on file) is the one
-- fact about it kept in clear, for incident counts.
CREATE TABLE IF NOT EXISTS subject_pii (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    profile     BLOB NOT NULL,
    has_contact INTEGER NOT NULL,
    PRIMARY KEY (tenant, external_id)
) WITHOUT ROWID;

-- Earlier versions of rectified profiles, encrypted like the profile.
CREATE TABLE IF NOT EXISTS subject_pii_history (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    replaced_at INTEGER NOT NULL,
    profile     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS subject_pii_history_by_subject ON subject_pii_history (tenant, external_id);

-- `interaction_id` is the stored form of the id (the reference and a keyed hash);
-- `sealed_id` the clear id, encrypted with the subject's data key, for access exports.
CREATE TABLE IF NOT EXISTS interactions (
    tenant         TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    country        TEXT NOT NULL,
    channel        INTEGER NOT NULL,
    direction      INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    handle_time    INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    agent_team     TEXT NOT NULL,
    recorded       INTEGER NOT NULL,
    survey_id      TEXT,
    nps            INTEGER,
    csat           INTEGER,
    ces            INTEGER,
    sealed_id      BLOB,
    PRIMARY KEY (tenant, interaction_id)
);
CREATE INDEX IF NOT EXISTS interactions_by_time ON interactions (tenant, started_at);

-- Free text is personal data: kept apart and encrypted with the subject's data key.
CREATE TABLE IF NOT EXISTS interaction_text (
    tenant         TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    comment        BLOB NOT NULL,
    PRIMARY KEY (tenant, interaction_id)
) WITHOUT ROWID;

-- Idempotency: one row per accepted (tenant, idempotency key), the key in its stored form
-- (the subject's reference and a keyed hash), so an erasure deletes its subject's by range.
CREATE TABLE IF NOT EXISTS ingest_keys (
    tenant          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    ingested_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
) WITHOUT ROWID;
"#;

/// A subject's personal fields, stored encrypted as one JSON document.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Full name.
    pub full_name: String,
    /// E-mail address.
    pub email: String,
    /// Phone number.
    pub phone: String,
    /// Postal code.
    pub postal_code: String,
    /// Preferred language.
    pub language: String,
    /// Year of birth.
    pub birth_year: Option<u32>,
}

impl Profile {
    /// Encrypts the profile for `subject` (a reference) of `tenant` with its data key.
    pub fn seal(
        &self,
        key: &SubjectKey,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<u8>, NodeError> {
        let json = serde_json::to_vec(self).map_err(|e| NodeError::Internal(e.to_string()))?;
        key.seal(&profile_aad(tenant, subject), &json)
    }

    /// Decrypts a stored profile; `None` when it does not open (shredded key or tampering).
    pub fn open(key: &SubjectKey, tenant: &str, subject: &str, blob: &[u8]) -> Option<Self> {
        let json = key.open(&profile_aad(tenant, subject), blob)?;
        serde_json::from_slice(&json).ok()
    }
}

/// A record ready to store: validated and with its routing metadata. Its ids are the clear
/// ones until [`key_records`] rewrites them into their stored forms.
#[derive(Debug)]
pub struct StoredRecord {
    /// Idempotency key.
    pub idempotency_key: String,
    /// An interaction's clear id, sealed with the subject's data key (set by
    /// [`key_records`]).
    pub sealed_id: Option<Vec<u8>>,
    /// Subject country.
    pub country: String,
    /// The record.
    pub body: RecordBody,
}

/// The content of a record to store.
#[derive(Debug)]
pub enum RecordBody {
    /// A profile.
    Subject(Subject),
    /// A touchpoint.
    Interaction(Interaction),
}

impl StoredRecord {
    /// The record's subject: its external id, or its reference once keyed.
    pub fn subject(&self) -> &str {
        match &self.body {
            RecordBody::Subject(s) => &s.external_id,
            RecordBody::Interaction(i) => &i.subject_id,
        }
    }
}

/// The data keys of a batch's subjects, by reference ([`key_records`]).
#[derive(Debug, Default)]
pub struct BatchKeys(std::collections::HashMap<String, SubjectKey>);

/// What storing one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored.
    Stored,
    /// Its idempotency key was seen before; nothing changed.
    Duplicate,
}

/// A subject's decrypted profile, if stored and its key is alive.
pub fn profile(
    store: &Store,
    conn: &Connection,
    tenant: &str,
    subject: &str,
) -> Result<Option<Profile>, NodeError> {
    let blob: Option<Vec<u8>> = conn.query_opt(
        "SELECT profile FROM subject_pii WHERE tenant = ?1 AND external_id = ?2",
        params![tenant, subject],
        |r| r.get(0),
    )?;
    let (Some(blob), Some(key)) = (blob, store.vault().key(tenant, subject)?) else {
        return Ok(None);
    };
    Ok(Profile::open(&key, tenant, subject, &blob))
}

/// Rewrites a batch's ids into their stored forms, in place: each subject's external id
/// becomes its reference (made, with its data key, for subjects not seen before),
/// interaction ids and idempotency keys their keyed forms, and an interaction's clear id
/// is sealed. Returns the subjects' keys, by reference, for [`write_batch`]. The keys are
/// made in the vault's own transaction: a key made for a batch that then fails is harmless,
/// a record stored without its key would not be.
pub fn key_records<'a>(
    store: &Store,
    tenant: &str,
    records: impl IntoIterator<Item = &'a mut StoredRecord>,
) -> Result<BatchKeys, NodeError> {
    let records: Vec<&mut StoredRecord> = records.into_iter().collect();
    let externals: std::collections::BTreeSet<&str> = records.iter().map(|r| r.subject()).collect();
    let mut by_external = store.vault().resolve(tenant, &externals, true)?;
    for record in records {
        let key = by_external
            .get(record.subject())
            .ok_or_else(|| NodeError::Internal("a data key is missing".into()))?;
        record.idempotency_key = key.stored_id("idempotency", &record.idempotency_key);
        match &mut record.body {
            RecordBody::Subject(s) => s.external_id.clone_from(&key.reference),
            RecordBody::Interaction(i) => {
                let stored = key.stored_id("interaction", &i.interaction_id);
                record.sealed_id = Some(key.seal(
                    &interaction_id_aad(tenant, &stored),
                    i.interaction_id.as_bytes(),
                )?);
                i.interaction_id = stored;
                i.subject_id.clone_from(&key.reference);
            }
        }
    }
    Ok(BatchKeys(
        by_external
            .drain()
            .map(|(_, k)| (k.reference.clone(), k))
            .collect(),
    ))
}

/// Stores a batch whose ids [`key_records`] rewrote, group-committed with the
/// batches that arrive while the previous commit is being written
/// ([`Store::write_grouped`]). Each record's outcome, in order. `audit` runs in the same
/// transaction, after the records, so the batch and its audit entry are durable together
/// or not at all; the outcomes are returned once they are durable. `now` stamps the rows.
pub fn write_batch(
    store: &Store,
    tenant: &str,
    records: Vec<StoredRecord>,
    keys: BatchKeys,
    now: i64,
    audit: impl FnOnce(&Connection, &[StoreOutcome]) -> Result<(), NodeError> + Send + 'static,
) -> Result<Vec<StoreOutcome>, NodeError> {
    let tenant = tenant.to_owned();
    store.write_grouped(move |tx| {
        let outcomes = store_batch(tx, &tenant, &records, &keys.0, now)?;
        audit(tx, &outcomes)?;
        Ok(outcomes)
    })
}

/// Writes one batch's records in `tx`; each record's outcome, in order.
fn store_batch(
    tx: &Connection,
    tenant: &str,
    records: &[StoredRecord],
    keys: &std::collections::HashMap<String, SubjectKey>,
    now: i64,
) -> Result<Vec<StoreOutcome>, NodeError> {
    let key_of = |subject: &str| {
        keys.get(subject)
            .ok_or_else(|| NodeError::Internal("a data key is missing".into()))
    };
    let mut outcomes = Vec::with_capacity(records.len());
    let mut rollups = crate::domain::rollup::Delta::default();
    {
        const CLAIM: &str = "INSERT OR IGNORE INTO ingest_keys (tenant, idempotency_key, kind, ingested_at) VALUES (?1, ?2, ?3, ?4)";
        const SUBJECT: &str = "INSERT INTO subjects (tenant, external_id, country, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (tenant, external_id) DO UPDATE SET country = excluded.country, updated_at = excluded.updated_at";
        const PII: &str = "INSERT INTO subject_pii (tenant, external_id, profile, has_contact)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, external_id) DO UPDATE SET profile = excluded.profile, has_contact = excluded.has_contact";
        const NEW_INTERACTION: &str =
            "INSERT INTO interactions (tenant, interaction_id, subject_id, country,
               channel, direction, started_at, ended_at, handle_time, outcome, agent_team, recorded,
               survey_id, nps, csat, ces, sealed_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT (tenant, interaction_id) DO NOTHING";
        const REPLACE_INTERACTION: &str = "UPDATE interactions SET subject_id = ?3, country = ?4,
               channel = ?5, direction = ?6, started_at = ?7, ended_at = ?8, handle_time = ?9,
               outcome = ?10, agent_team = ?11, recorded = ?12, survey_id = ?13, nps = ?14,
               csat = ?15, ces = ?16, sealed_id = ?17
             WHERE tenant = ?1 AND interaction_id = ?2";
        const TEXT: &str = "INSERT INTO interaction_text (tenant, interaction_id, subject_id, comment)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, interaction_id) DO UPDATE SET subject_id = excluded.subject_id, comment = excluded.comment";
        const DROP_TEXT: &str =
            "DELETE FROM interaction_text WHERE tenant = ?1 AND interaction_id = ?2";
        // Prepared once per batch (on SQLite; PostgreSQL's connection caches its own).
        let mut claim = tx.prepare_cached(CLAIM)?;
        let mut subject = tx.prepare_cached(SUBJECT)?;
        let mut pii = tx.prepare_cached(PII)?;
        let mut new_interaction = tx.prepare_cached(NEW_INTERACTION)?;
        let mut replace_interaction = tx.prepare_cached(REPLACE_INTERACTION)?;
        let mut text = tx.prepare_cached(TEXT)?;
        let mut drop_text = tx.prepare_cached(DROP_TEXT)?;
        for record in records {
            let kind = match record.body {
                RecordBody::Subject(_) => 1,
                RecordBody::Interaction(_) => 2,
            };
            if claim.execute(params![tenant, record.idempotency_key, kind, now])? == 0 {
                outcomes.push(StoreOutcome::Duplicate);
                continue;
            }
            match &record.body {
                RecordBody::Subject(s) => {
                    subject.execute(params![tenant, s.external_id, record.country, now])?;
                    let profile = Profile {
                        full_name: s.full_name.clone(),
                        email: s.email.clone(),
                        phone: s.phone.clone(),
                        postal_code: s.postal_code.clone(),
                        language: s.language.clone(),
                        birth_year: s.birth_year.map(u32::from),
                    };
                    let sealed = profile.seal(key_of(&s.external_id)?, tenant, &s.external_id)?;
                    let has_contact = !s.email.is_empty() || !s.phone.is_empty();
                    pii.execute(params![tenant, s.external_id, sealed, has_contact])?;
                }
                RecordBody::Interaction(i) => {
                    let survey = i.survey.as_ref();
                    let values = params![
                        tenant,
                        i.interaction_id,
                        i.subject_id,
                        record.country,
                        i.channel as i32,
                        i.direction as i32,
                        i.started_at,
                        i.ended_at,
                        i.handle_time_seconds,
                        i.outcome,
                        i.agent_team,
                        i.recorded,
                        survey.map(|s| s.survey_id.as_str()),
                        survey.and_then(|s| s.nps),
                        survey.and_then(|s| s.csat),
                        survey.and_then(|s| s.ces),
                        record.sealed_id,
                    ];
                    // A new interaction id is one insert; an existing one (sent again under
                    // a new idempotency key) replaces the stored row, which leaves its cells.
                    let replaced = new_interaction.execute(values)? == 0;
                    if replaced {
                        rollups.remove_where(
                            tx,
                            "i.tenant = ?1 AND i.interaction_id = ?2",
                            params![tenant, i.interaction_id],
                        )?;
                        replace_interaction.execute(values)?;
                    }
                    rollups.add(
                        tx,
                        &Facts {
                            tenant: tenant.to_owned(),
                            subject: i.subject_id.clone(),
                            country: record.country.clone(),
                            channel: i.channel as i32,
                            started_at: i.started_at,
                            handle_time: i64::from(i.handle_time_seconds),
                            nps: survey.and_then(|s| s.nps).map(i64::from),
                            csat: survey.and_then(|s| s.csat).map(i64::from),
                            ces: survey.and_then(|s| s.ces).map(i64::from),
                        },
                    )?;
                    match survey.filter(|s| !s.comment.is_empty()) {
                        Some(s) => {
                            let sealed = key_of(&i.subject_id)?.seal(
                                &comment_aad(tenant, &i.interaction_id),
                                s.comment.as_bytes(),
                            )?;
                            text.execute(params![tenant, i.interaction_id, i.subject_id, sealed])?
                        }
                        // A replaced interaction loses the comment it no longer has.
                        None if replaced => drop_text.execute(params![tenant, i.interaction_id])?,
                        None => 0,
                    };
                }
            }
            outcomes.push(StoreOutcome::Stored);
        }
    }
    rollups.apply(tx)?;
    Ok(outcomes)
}
