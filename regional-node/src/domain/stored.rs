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

use std::collections::{BTreeSet, HashMap, HashSet};

use domicile_proto::domain::{Interaction, Subject};

use crate::{
    domain::rollup::{Delta, Facts},
    error::NodeError,
    store::{
        Store,
        db::{Connection, Dialect, Pipeline, Statement, params},
        vault::{SubjectKey, comment_aad, interaction_id_aad, profile_aad},
    },
};

/// The tables of subjects, their personal fields, interactions, comments and idempotency keys.
pub const SCHEMA_SQLITE: &str = r#"
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

/// The same tables for PostgreSQL (`BIGINT` integers, `BYTEA` bytes, identity columns); the
/// triggers are PL/pgSQL, in [`crate::domain::schema`]. The store contract test checks that
/// both engines end up with the same tables, columns, keys and indexes.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS subjects (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    country     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, external_id)
);

CREATE TABLE IF NOT EXISTS subject_pii (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    profile     BYTEA NOT NULL,
    has_contact BIGINT NOT NULL,
    PRIMARY KEY (tenant, external_id)
);

CREATE TABLE IF NOT EXISTS subject_pii_history (
    tenant      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    replaced_at BIGINT NOT NULL,
    profile     BYTEA NOT NULL
);

CREATE INDEX IF NOT EXISTS subject_pii_history_by_subject ON subject_pii_history (tenant, external_id);

CREATE TABLE IF NOT EXISTS interactions (
    tenant         TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    country        TEXT NOT NULL,
    channel        BIGINT NOT NULL,
    direction      BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    handle_time    BIGINT NOT NULL,
    outcome        TEXT NOT NULL,
    agent_team     TEXT NOT NULL,
    recorded       BIGINT NOT NULL,
    survey_id      TEXT,
    nps            BIGINT,
    csat           BIGINT,
    ces            BIGINT,
    sealed_id      BYTEA,
    PRIMARY KEY (tenant, interaction_id)
);

CREATE INDEX IF NOT EXISTS interactions_by_time ON interactions (tenant, started_at);

CREATE TABLE IF NOT EXISTS interaction_text (
    tenant         TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    comment        BYTEA NOT NULL,
    PRIMARY KEY (tenant, interaction_id)
);

CREATE TABLE IF NOT EXISTS ingest_keys (
    tenant          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            BIGINT NOT NULL,
    ingested_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);
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
pub struct BatchKeys(HashMap<String, SubjectKey>);

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
        "SELECT profile FROM subject_pii WHERE tenant = $1 AND external_id = $2",
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

/// Writes one batch's records in `tx`; each record's outcome, in order. SQLite writes record
/// by record (its statements run in-process); PostgreSQL writes a batch of
/// [`SET_BASED_FROM`] records or more set by set ([`store_batch_postgres`]), a round trip per
/// table rather than several per record.
fn store_batch(
    tx: &Connection,
    tenant: &str,
    records: &[StoredRecord],
    keys: &HashMap<String, SubjectKey>,
    now: i64,
) -> Result<Vec<StoreOutcome>, NodeError> {
    let mut rollups = Delta::default();
    // A few records cost about as many round trips either way, and the record-by-record
    // statements are simpler for PostgreSQL to plan.
    let set_based = tx.dialect() == Dialect::Postgres && records.len() >= SET_BASED_FROM;
    let outcomes = match set_based {
        false => {
            let mut claim = tx.prepare_cached(
                "INSERT INTO ingest_keys (tenant, idempotency_key, kind, ingested_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )?;
            let mut statements = RecordStatements::prepare(tx)?;
            let mut outcomes = Vec::with_capacity(records.len());
            for record in records {
                if claim.execute(params![
                    tenant,
                    record.idempotency_key,
                    kind_of(record),
                    now
                ])? == 0
                {
                    outcomes.push(StoreOutcome::Duplicate);
                    continue;
                }
                statements.write(tx, tenant, record, keys, now, &mut rollups)?;
                outcomes.push(StoreOutcome::Stored);
            }
            outcomes
        }
        true => store_batch_postgres(tx, tenant, records, keys, now, &mut rollups)?,
    };
    rollups.apply(tx)?;
    Ok(outcomes)
}

/// The batch size from which PostgreSQL writes set by set ([`store_batch_postgres`]).
const SET_BASED_FROM: usize = 8;

/// `ingest_keys.kind`: 1 a subject, 2 an interaction.
fn kind_of(record: &StoredRecord) -> i64 {
    match record.body {
        RecordBody::Subject(_) => 1,
        RecordBody::Interaction(_) => 2,
    }
}

fn key_of<'k>(
    keys: &'k HashMap<String, SubjectKey>,
    subject: &str,
) -> Result<&'k SubjectKey, NodeError> {
    keys.get(subject)
        .ok_or_else(|| NodeError::Internal("a data key is missing".into()))
}

/// A subject record's profile, sealed with its data key, and whether it has a contact.
fn sealed_profile(
    s: &Subject,
    keys: &HashMap<String, SubjectKey>,
    tenant: &str,
) -> Result<(Vec<u8>, bool), NodeError> {
    let profile = Profile {
        full_name: s.full_name.clone(),
        email: s.email.clone(),
        phone: s.phone.clone(),
        postal_code: s.postal_code.clone(),
        language: s.language.clone(),
        birth_year: s.birth_year.map(u32::from),
    };
    let sealed = profile.seal(key_of(keys, &s.external_id)?, tenant, &s.external_id)?;
    Ok((sealed, !s.email.is_empty() || !s.phone.is_empty()))
}

/// An interaction's comment sealed with its subject's data key, when it has one.
fn sealed_comment(
    i: &Interaction,
    keys: &HashMap<String, SubjectKey>,
    tenant: &str,
) -> Result<Option<Vec<u8>>, NodeError> {
    match i.survey.as_ref().filter(|s| !s.comment.is_empty()) {
        Some(s) => Ok(Some(key_of(keys, &i.subject_id)?.seal(
            &comment_aad(tenant, &i.interaction_id),
            s.comment.as_bytes(),
        )?)),
        None => Ok(None),
    }
}

/// What the rollups count of an interaction stored in `country`.
fn facts_of(tenant: &str, country: &str, i: &Interaction) -> Facts {
    let survey = i.survey.as_ref();
    Facts {
        tenant: tenant.to_owned(),
        subject: i.subject_id.clone(),
        country: country.to_owned(),
        channel: i.channel as i32,
        started_at: i.started_at,
        handle_time: i64::from(i.handle_time_seconds),
        nps: survey.and_then(|s| s.nps).map(i64::from),
        csat: survey.and_then(|s| s.csat).map(i64::from),
        ces: survey.and_then(|s| s.ces).map(i64::from),
    }
}

/// The statements that write one record whose idempotency key was just claimed, prepared once
/// per batch.
struct RecordStatements<'c> {
    subject: Statement<'c>,
    pii: Statement<'c>,
    new_interaction: Statement<'c>,
    replace_interaction: Statement<'c>,
    text: Statement<'c>,
    drop_text: Statement<'c>,
}

impl<'c> RecordStatements<'c> {
    fn prepare(tx: &'c Connection) -> Result<Self, NodeError> {
        Ok(Self {
            subject: tx.prepare_cached(
                "INSERT INTO subjects (tenant, external_id, country, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (tenant, external_id) DO UPDATE
                 SET country = excluded.country, updated_at = excluded.updated_at",
            )?,
            pii: tx.prepare_cached(
                "INSERT INTO subject_pii (tenant, external_id, profile, has_contact)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, external_id) DO UPDATE
                 SET profile = excluded.profile, has_contact = excluded.has_contact",
            )?,
            new_interaction: tx.prepare_cached(
                "INSERT INTO interactions (tenant, interaction_id, subject_id, country,
                   channel, direction, started_at, ended_at, handle_time, outcome, agent_team,
                   recorded, survey_id, nps, csat, ces, sealed_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
                 ON CONFLICT (tenant, interaction_id) DO NOTHING",
            )?,
            replace_interaction: tx.prepare_cached(
                "UPDATE interactions SET subject_id = $3, country = $4,
                   channel = $5, direction = $6, started_at = $7, ended_at = $8, handle_time = $9,
                   outcome = $10, agent_team = $11, recorded = $12, survey_id = $13, nps = $14,
                   csat = $15, ces = $16, sealed_id = $17
                 WHERE tenant = $1 AND interaction_id = $2",
            )?,
            text: tx.prepare_cached(
                "INSERT INTO interaction_text (tenant, interaction_id, subject_id, comment)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, interaction_id) DO UPDATE
                 SET subject_id = excluded.subject_id, comment = excluded.comment",
            )?,
            drop_text: tx.prepare_cached(
                "DELETE FROM interaction_text WHERE tenant = $1 AND interaction_id = $2",
            )?,
        })
    }

    /// Writes `record` (its idempotency key claimed) and counts it in `rollups`.
    fn write(
        &mut self,
        tx: &Connection,
        tenant: &str,
        record: &StoredRecord,
        keys: &HashMap<String, SubjectKey>,
        now: i64,
        rollups: &mut Delta,
    ) -> Result<(), NodeError> {
        match &record.body {
            RecordBody::Subject(s) => {
                self.subject
                    .execute(params![tenant, s.external_id, record.country, now])?;
                let (sealed, has_contact) = sealed_profile(s, keys, tenant)?;
                self.pii
                    .execute(params![tenant, s.external_id, sealed, has_contact])?;
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
                // A new interaction id is one insert; an existing one (sent again under a new
                // idempotency key) replaces the stored row, which leaves its cells.
                let replaced = self.new_interaction.execute(values)? == 0;
                if replaced {
                    rollups.remove_where(
                        tx,
                        "i.tenant = $1 AND i.interaction_id = $2",
                        params![tenant, i.interaction_id],
                    )?;
                    self.replace_interaction.execute(values)?;
                }
                rollups.add(tx, &facts_of(tenant, &record.country, i))?;
                match sealed_comment(i, keys, tenant)? {
                    Some(sealed) => self.text.execute(params![
                        tenant,
                        i.interaction_id,
                        i.subject_id,
                        sealed
                    ])?,
                    // A replaced interaction loses the comment it no longer has.
                    None if replaced => {
                        self.drop_text.execute(params![tenant, i.interaction_id])?
                    }
                    None => 0,
                };
            }
        }
        Ok(())
    }
}

/// A nullable array column of a set-based PostgreSQL statement.
type Column<T> = Vec<Option<T>>;

/// PostgreSQL: the batch in a few set-based statements (`unnest` of array parameters), so
/// that its cost is a handful of round trips, not several per record:
/// 1. every idempotency key claimed at once (`RETURNING` says which were new; a key twice in
///    the batch is new once);
/// 2. the new subjects and their profiles upserted at once (the last record of a subject wins,
///    as record by record);
/// 3. the new interactions inserted at once, their subjects' rollup numbers and tracking read
///    at once ([`Delta::prefetch`]), their comments written at once;
/// 4. an interaction whose id was already stored (sent again under a new idempotency key) is
///    replaced record by record, as on SQLite.
fn store_batch_postgres(
    tx: &Connection,
    tenant: &str,
    records: &[StoredRecord],
    keys: &HashMap<String, SubjectKey>,
    now: i64,
    rollups: &mut Delta,
) -> Result<Vec<StoreOutcome>, NodeError> {
    let idempotency: Column<String> = records
        .iter()
        .map(|r| Some(r.idempotency_key.clone()))
        .collect();
    let kinds: Column<i64> = records.iter().map(|r| Some(kind_of(r))).collect();
    let mut claimed: HashSet<String> = tx
        .prepare_cached(
            "INSERT INTO ingest_keys (tenant, idempotency_key, kind, ingested_at)
             SELECT $1, k, kind, $4 FROM unnest($2::text[], $3::bigint[]) AS t(k, kind)
             ON CONFLICT DO NOTHING RETURNING idempotency_key",
        )?
        .query_map(params![tenant, idempotency, kinds, now], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let outcomes: Vec<StoreOutcome> = records
        .iter()
        .map(|r| match claimed.remove(&r.idempotency_key) {
            true => StoreOutcome::Stored,
            false => StoreOutcome::Duplicate,
        })
        .collect();
    // The records to write, with their place in the batch.
    let stored = || {
        records
            .iter()
            .enumerate()
            .zip(&outcomes)
            .filter(|(_, o)| **o == StoreOutcome::Stored)
            .map(|(r, _)| r)
    };

    // Subjects: the last record of each.
    let mut subjects: HashMap<&str, (&StoredRecord, &Subject)> = HashMap::new();
    for (_, record) in stored() {
        if let RecordBody::Subject(s) = &record.body {
            subjects.insert(s.external_id.as_str(), (record, s));
        }
    }
    if !subjects.is_empty() {
        let (mut ids, mut countries, mut profiles, mut contacts) = (
            Column::new(),
            Column::new(),
            Column::new(),
            Column::<i64>::new(),
        );
        for (id, (record, s)) in &subjects {
            let (sealed, has_contact) = sealed_profile(s, keys, tenant)?;
            ids.push(Some((*id).to_owned()));
            countries.push(Some(record.country.clone()));
            profiles.push(Some(sealed));
            contacts.push(Some(i64::from(has_contact)));
        }
        // Both tables in one round trip.
        let mut pipeline = Pipeline::default();
        pipeline
            .push(
                "INSERT INTO subjects (tenant, external_id, country, created_at, updated_at)
                 SELECT $1, e, c, $4, $4 FROM unnest($2::text[], $3::text[]) AS t(e, c)
                 ON CONFLICT (tenant, external_id) DO UPDATE
                 SET country = excluded.country, updated_at = excluded.updated_at",
                params![tenant, ids, countries, now],
            )
            .push(
                "INSERT INTO subject_pii (tenant, external_id, profile, has_contact)
                 SELECT $1, e, p, h FROM unnest($2::text[], $3::bytea[], $4::bigint[])
                   AS t(e, p, h)
                 ON CONFLICT (tenant, external_id) DO UPDATE
                 SET profile = excluded.profile, has_contact = excluded.has_contact",
                params![tenant, ids, profiles, contacts],
            );
        tx.pipeline(&pipeline)?;
    }

    // Interactions: the first record of each id goes into the set insert; a later one in the
    // batch, or one whose id was stored before, is written record by record after it.
    let mut first: HashSet<&str> = HashSet::new();
    let mut batch: Vec<(usize, &StoredRecord, &Interaction)> = Vec::new();
    let mut later: Vec<(usize, &StoredRecord)> = Vec::new();
    for (n, record) in stored() {
        if let RecordBody::Interaction(i) = &record.body {
            if first.insert(i.interaction_id.as_str()) {
                batch.push((n, record, i));
            } else {
                later.push((n, record));
            }
        }
    }
    if !batch.is_empty() {
        let text = |f: &dyn Fn(&StoredRecord, &Interaction) -> Option<String>| -> Column<String> {
            batch.iter().map(|(_, r, i)| f(r, i)).collect()
        };
        let int = |f: &dyn Fn(&Interaction) -> Option<i64>| -> Column<i64> {
            batch.iter().map(|(_, _, i)| f(i)).collect()
        };
        let inserted: HashSet<String> = tx
            .prepare_cached(
                "INSERT INTO interactions (tenant, interaction_id, subject_id, country,
                   channel, direction, started_at, ended_at, handle_time, outcome, agent_team,
                   recorded, survey_id, nps, csat, ces, sealed_id)
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[],
                   $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[],
                   $11::text[], $12::bigint[], $13::text[], $14::bigint[], $15::bigint[],
                   $16::bigint[], $17::bytea[])
                 ON CONFLICT (tenant, interaction_id) DO NOTHING RETURNING interaction_id",
            )?
            .query_map(
                params![
                    tenant,
                    text(&|_, i| Some(i.interaction_id.clone())),
                    text(&|_, i| Some(i.subject_id.clone())),
                    text(&|r, _| Some(r.country.clone())),
                    int(&|i| Some(i64::from(i.channel as i32))),
                    int(&|i| Some(i64::from(i.direction as i32))),
                    int(&|i| Some(i.started_at)),
                    int(&|i| i.ended_at),
                    int(&|i| Some(i64::from(i.handle_time_seconds))),
                    text(&|_, i| Some(i.outcome.clone())),
                    text(&|_, i| Some(i.agent_team.clone())),
                    int(&|i| Some(i64::from(i.recorded))),
                    text(&|_, i| i.survey.as_ref().map(|s| s.survey_id.clone())),
                    int(&|i| i.survey.as_ref().and_then(|s| s.nps).map(i64::from)),
                    int(&|i| i.survey.as_ref().and_then(|s| s.csat).map(i64::from)),
                    int(&|i| i.survey.as_ref().and_then(|s| s.ces).map(i64::from)),
                    batch
                        .iter()
                        .map(|(_, r, _)| r.sealed_id.clone())
                        .collect::<Column<Vec<u8>>>(),
                ],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        let subjects: BTreeSet<&str> = batch
            .iter()
            .filter(|(_, _, i)| inserted.contains(&i.interaction_id))
            .map(|(_, _, i)| i.subject_id.as_str())
            .collect();
        rollups.prefetch(tx, tenant, &subjects)?;
        let (mut ids, mut owners, mut comments) = (Column::new(), Column::new(), Column::new());
        for &(n, record, i) in &batch {
            if !inserted.contains(&i.interaction_id) {
                later.push((n, record));
                continue;
            }
            rollups.add(tx, &facts_of(tenant, &record.country, i))?;
            if let Some(sealed) = sealed_comment(i, keys, tenant)? {
                ids.push(Some(i.interaction_id.clone()));
                owners.push(Some(i.subject_id.clone()));
                comments.push(Some(sealed));
            }
        }
        if !ids.is_empty() {
            tx.prepare_cached(
                "INSERT INTO interaction_text (tenant, interaction_id, subject_id, comment)
                 SELECT $1, i, s, c FROM unnest($2::text[], $3::text[], $4::bytea[]) AS t(i, s, c)
                 ON CONFLICT (tenant, interaction_id) DO UPDATE
                 SET subject_id = excluded.subject_id, comment = excluded.comment",
            )?
            .execute(params![tenant, ids, owners, comments])?;
        }
    }
    if !later.is_empty() {
        // In the batch's order, so that the last record of an interaction id wins.
        later.sort_by_key(|(n, _)| *n);
        let mut statements = RecordStatements::prepare(tx)?;
        for (_, record) in later {
            statements.write(tx, tenant, record, keys, now, rollups)?;
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use domicile_proto::{
        domain::Survey,
        pb::{Channel, Direction},
    };

    use super::*;
    use crate::testing::Databases;

    const TENANT: &str = "acme";

    fn subject(key: &str, id: &str, name: &str) -> StoredRecord {
        StoredRecord {
            idempotency_key: key.into(),
            sealed_id: None,
            country: "DE".into(),
            body: RecordBody::Subject(Subject {
                external_id: id.into(),
                full_name: name.into(),
                email: format!("{name}@example.org"),
                phone: String::new(),
                postal_code: String::new(),
                language: String::new(),
                birth_year: None,
            }),
        }
    }

    fn interaction(key: &str, id: &str, nps: u8, comment: &str) -> StoredRecord {
        StoredRecord {
            idempotency_key: key.into(),
            sealed_id: None,
            country: "DE".into(),
            body: RecordBody::Interaction(Interaction {
                interaction_id: id.into(),
                subject_id: "s1".into(),
                channel: Channel::Phone,
                direction: Direction::Inbound,
                started_at: 1_767_225_600 + 3_600 * i64::from(nps),
                ended_at: None,
                handle_time_seconds: 60,
                outcome: "resolved".into(),
                agent_team: "t".into(),
                recorded: false,
                survey: Some(Survey {
                    survey_id: "nps".into(),
                    nps: Some(nps),
                    csat: None,
                    ces: None,
                    comment: comment.into(),
                }),
            }),
        }
    }

    fn write(store: &Store, mut records: Vec<StoredRecord>) -> Vec<StoreOutcome> {
        let keys = key_records(store, TENANT, &mut records).unwrap();
        write_batch(store, TENANT, records, keys, 1_000, |_, _| Ok(())).unwrap()
    }

    /// Interactions (nps, has a comment), the subject's profile, the rollup cells (grain,
    /// bucket, subjects) and whether the cells equal those rebuilt from the rows.
    type State = (
        Vec<(i64, bool)>,
        Option<Profile>,
        Vec<(i64, i64, i64)>,
        bool,
    );

    /// Everything a batch leaves that the engines must agree on.
    fn state(store: &Store) -> State {
        store
            .write(|tx| {
                let rows = tx
                    .prepare(
                        "SELECT i.nps, EXISTS (SELECT 1 FROM interaction_text t
                           WHERE t.tenant = i.tenant AND t.interaction_id = i.interaction_id)
                         FROM interactions i ORDER BY i.nps",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<(i64, bool)>, _>>()?;
                let reference = store.vault().find(TENANT, "s1")?.unwrap().reference;
                let profile = profile(store, tx, TENANT, &reference)?;
                let cells = |tx: &Connection| -> Result<Vec<(i64, i64, i64)>, NodeError> {
                    tx.prepare(
                        "SELECT grain, bucket, subjects_count FROM rollup_cells ORDER BY 1, 2",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
                };
                let sums = |tx: &Connection| -> Result<Vec<Vec<u8>>, NodeError> {
                    tx.prepare("SELECT sums FROM rollup_cells ORDER BY grain, bucket")?
                        .query_map([], |r| r.get(0))?
                        .collect()
                };
                let maintained = (cells(tx)?, sums(tx)?);
                crate::domain::rollup::rebuild(tx)?;
                let rebuilt = maintained == (cells(tx)?, sums(tx)?);
                Err::<(), _>(NodeError::Internal(
                    serde_json::to_string(&(rows, profile, maintained.0, rebuilt)).unwrap(),
                ))
            })
            .map(|()| unreachable!())
            .unwrap_or_else(|e| {
                let NodeError::Internal(json) = e else {
                    panic!("{e}")
                };
                serde_json::from_str(&json).unwrap()
            })
    }

    /// The set-based PostgreSQL write (batches of `SET_BASED_FROM` records or more) and SQLite's
    /// record-by-record write agree on what a batch
    /// with repeats does: a repeated idempotency key is a duplicate, the last record of a
    /// subject or of an interaction id wins (a comment it no longer has goes), an id stored by
    /// an earlier batch is replaced, and the rollup cells equal those rebuilt from the rows.
    #[test]
    fn repeats_in_and_across_batches_land_the_same_on_both_engines() {
        let dbs = Databases::new();
        let mut states = Vec::new();
        for backend in dbs.both() {
            let store = dbs.store(&backend);
            // Other interactions make each batch large enough for PostgreSQL's set-based write.
            let fill = |batch: &str, mut records: Vec<StoredRecord>| {
                for n in 0..SET_BASED_FROM {
                    let id = format!("{batch}-{n}");
                    records.push(interaction(&format!("k{id}"), &format!("f{id}"), 10, ""));
                }
                records
            };
            let first = write(
                &store,
                fill(
                    "a",
                    vec![
                        subject("k1", "s1", "ada"),
                        interaction("k2", "x1", 3, "slow"),
                        subject("k3", "s1", "grace"),
                        interaction("k4", "x1", 4, ""),
                        interaction("k5", "x2", 5, "ok"),
                        interaction("k5", "x2", 6, "again"),
                    ],
                ),
            );
            use StoreOutcome::{Duplicate as D, Stored as S};
            assert_eq!(first[..6], [S, S, S, S, S, D], "{backend:?}");
            let second = write(
                &store,
                fill(
                    "b",
                    vec![
                        interaction("k5", "x2", 7, ""),
                        interaction("k6", "x2", 8, "changed"),
                        interaction("k7", "x3", 9, ""),
                    ],
                ),
            );
            assert_eq!(second[..3], [D, S, S], "{backend:?}");
            assert!(first[6..].iter().chain(&second[3..]).all(|o| *o == S));
            let (rows, profile, cells, rebuilt) = state(&store);
            let fillers = vec![(10, false); 2 * SET_BASED_FROM];
            assert_eq!(
                rows,
                [vec![(4, false), (8, true), (9, false)], fillers].concat(),
                "{backend:?}"
            );
            assert_eq!(profile.unwrap().full_name, "grace", "{backend:?}");
            assert!(
                rebuilt,
                "{backend:?}: maintained cells differ from rebuilt ones"
            );
            states.push(cells);
        }
        assert_eq!(states[0], states[1], "the engines' cells differ");
    }
}
