//! Encryption at rest and the subject index: a data key per subject, wrapped by the region's
//! key-encryption key (KEK), kept in a key vault apart from the data.
//!
//! The data database never holds a subject's external id. A subject is known there by a
//! *subject reference*: 32 random hex digits, made the first time the subject is seen. The
//! vault maps `HMAC(KEK-derived key, tenant ‖ external id)` to that reference, the subject's
//! wrapped data key and its external id sealed under that key. Everything else that could link
//! rows to the person is derived from the data key: interaction ids and idempotency keys are
//! stored as `reference ‖ HMAC(data-key-derived key, value)` ([`SubjectKey::stored_id`]), and
//! the clear interaction id is sealed. Every personal field (the profile) and every free-text
//! comment is stored as `nonce(24) ‖ XChaCha20-Poly1305(data key, aad, plaintext)`, with an AAD
//! naming what the ciphertext is and whose, so a ciphertext moved to another row does not open.
//!
//! Erasure deletes the subject's vault row (crypto-shredding): a copy or backup of the *data*
//! file taken before the erasure then holds a reference that nothing maps to an external id,
//! keyed ids nobody can recompute, and ciphertexts nobody can open. Backups of the vault itself
//! must follow the same retention as erasures (or not be taken): that is the operator's side of
//! the contract (docs/erasure.md).
//!
//! The vault also remembers which references were erased (tombstones) and the suppressions
//! those erasures kept: a data file restored from a backup taken before an erasure is erased
//! again for those references and gets the suppressions back ([`crate::node::backup::restore`]).

use domicile_ops::clock::SharedClock;
use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use crate::{
    config::Backend,
    store::db::{Connection, Dialect, OptionalExtension, Row, params},
};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{
    error::NodeError,
    store::kek::{Kek, open, random, seal},
};

/// Length of a subject reference, in hex digits.
pub const REFERENCE_LEN: usize = 32;

/// HMAC-SHA256 of NUL-separated `parts` under `key`.
fn keyed(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
        mac.update(&[0]);
    }
    mac.finalize().into_bytes().into()
}

/// A key derived from `secret` for one use, named by `label`.
fn derive(label: &str, secret: &[u8]) -> [u8; 32] {
    Sha256::digest([label.as_bytes(), b"\0", secret].concat()).into()
}

/// One subject's data key, with its reference.
pub struct SubjectKey {
    /// The subject's reference: what the data database knows it by.
    pub reference: String,
    cipher: XChaCha20Poly1305,
    /// Keys the stored forms of the subject's ids.
    ids: [u8; 32],
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey { key: <redacted> }")
    }
}

impl SubjectKey {
    fn new(reference: String, raw: &[u8]) -> Self {
        Self {
            reference,
            cipher: XChaCha20Poly1305::new_from_slice(raw).expect("32-byte key"),
            ids: derive("domicile/v1/stored-ids", raw),
        }
    }

    /// Encrypts `plaintext` bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
        seal(&self.cipher, aad, plaintext)
    }

    /// Decrypts a blob from [`SubjectKey::seal`]; `None` when it does not open with this key
    /// and AAD.
    pub fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
        open(&self.cipher, aad, blob)
    }

    /// The stored form of one of the subject's ids (`what`: `interaction`, `idempotency`):
    /// the reference followed by 32 hex digits of HMAC under a key derived from the data key.
    /// Deterministic while the key lives (so duplicates are found), meaningless once it is
    /// destroyed; all of a subject's stored ids share the reference as a prefix
    /// ([`stored_id_range`]).
    pub fn stored_id(&self, what: &str, value: &str) -> String {
        let mac = keyed(&self.ids, &[what.as_bytes(), value.as_bytes()]);
        let mut out = String::with_capacity(2 * REFERENCE_LEN);
        out.push_str(&self.reference);
        out.push_str(&hex::encode(&mac[..16]));
        out
    }
}

/// The bounds `[start, end)` of the stored ids of the subject `reference`
/// ([`SubjectKey::stored_id`]), for range deletes.
pub fn stored_id_range(reference: &str) -> (String, String) {
    (format!("{reference}0"), format!("{reference}g"))
}

/// The AAD of a subject's profile.
pub fn profile_aad(tenant: &str, subject: &str) -> Vec<u8> {
    format!("domicile/v1/profile\0{tenant}\0{subject}").into_bytes()
}

/// The AAD of an interaction's comment.
pub fn comment_aad(tenant: &str, interaction: &str) -> Vec<u8> {
    format!("domicile/v1/comment\0{tenant}\0{interaction}").into_bytes()
}

/// The AAD of an interaction's sealed clear id.
pub fn interaction_id_aad(tenant: &str, interaction: &str) -> Vec<u8> {
    format!("domicile/v1/interaction-id\0{tenant}\0{interaction}").into_bytes()
}

fn external_id_aad(tenant: &str, reference: &str) -> Vec<u8> {
    format!("domicile/v1/external-id\0{tenant}\0{reference}").into_bytes()
}

fn wrap_aad(tenant: &str, reference: &str) -> Vec<u8> {
    format!("domicile/v1/subject-key\0{tenant}\0{reference}").into_bytes()
}

/// A suppression an erasure kept (consent.rs `suppressions` row), remembered by the vault so
/// that a restore of a copy from before the erasure gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSuppression {
    /// The suppression id (a keyed hash).
    pub identifier: String,
    /// Purpose, as its wire number.
    pub purpose: i32,
    /// Channel, as its wire number.
    pub channel: i32,
    /// The consent state it stands for, as its wire number.
    pub state: i32,
    /// The day (Unix days) the state began.
    pub since_day: i64,
}

const SCHEMA_SQLITE: &str = "CREATE TABLE IF NOT EXISTS kek_checks (
        kek_id     TEXT NOT NULL PRIMARY KEY,
        lookup_key BLOB NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS subject_keys (
        tenant      TEXT NOT NULL,
        lookup      BLOB NOT NULL,
        reference   TEXT NOT NULL,
        wrapped     BLOB NOT NULL,
        external_id BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
        kek_id      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (tenant, lookup)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX IF NOT EXISTS subject_keys_by_reference ON subject_keys (tenant, reference);
    CREATE TABLE IF NOT EXISTS erased_references (
        tenant    TEXT NOT NULL,
        reference TEXT NOT NULL,
        erased_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, reference)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS kept_suppressions (
        tenant     TEXT NOT NULL,
        identifier TEXT NOT NULL,
        purpose    INTEGER NOT NULL,
        channel    INTEGER NOT NULL,
        state      INTEGER NOT NULL,
        since_day  INTEGER NOT NULL,
        PRIMARY KEY (tenant, identifier, purpose, channel)
    ) WITHOUT ROWID;";

/// The same tables in PostgreSQL's terms (`BIGINT`, `BYTEA`).
const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS kek_checks (
    kek_id     TEXT NOT NULL PRIMARY KEY,
    lookup_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS subject_keys (
    tenant      TEXT NOT NULL,
    lookup      BYTEA NOT NULL,
    reference   TEXT NOT NULL,
    wrapped     BYTEA NOT NULL,
    external_id BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    kek_id      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, lookup)
);

CREATE UNIQUE INDEX IF NOT EXISTS subject_keys_by_reference ON subject_keys (tenant, reference);

CREATE TABLE IF NOT EXISTS erased_references (
    tenant    TEXT NOT NULL,
    reference TEXT NOT NULL,
    erased_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, reference)
);

CREATE TABLE IF NOT EXISTS kept_suppressions (
    tenant     TEXT NOT NULL,
    identifier TEXT NOT NULL,
    purpose    BIGINT NOT NULL,
    channel    BIGINT NOT NULL,
    state      BIGINT NOT NULL,
    since_day  BIGINT NOT NULL,
    PRIMARY KEY (tenant, identifier, purpose, channel)
);
"#;

/// A subject's key made for [`Vault::resolve`], with what the vault stores of it.
struct NewKey {
    key: SubjectKey,
    wrapped: Vec<u8>,
    sealed: Vec<u8>,
}

/// The key vault: the subject index and wrapped data keys.
pub struct Vault {
    /// Keys the external-id lookups; kept in the vault wrapped by the KEK, so a lookup names
    /// no one without it.
    lookup_key: [u8; 32],
    conn: Mutex<Connection>,
    /// The KEK that wraps new keys, and its id in the vault.
    kek: (Kek, String),
    /// During a rotation, the KEK being replaced, and its id.
    previous: Option<(Kek, String)>,
    /// Stamps new keys and tombstones: the node's clock ([`Vault::with_clock`]).
    clock: SharedClock,
}

/// What a KEK's check value (its wrapped copy of the lookup key) is bound to.
fn check_aad(kek_id: &str) -> Vec<u8> {
    format!("domicile/v1/vault-lookup-key\0{kek_id}").into_bytes()
}

fn kek_mismatch(which: &str) -> NodeError {
    NodeError::Internal(format!(
        "{which} does not match this key vault: no KEK check value in it opens with that key \
         (a wrong kek_file, kek_env or token key, or a vault of another region?). Refusing to \
         start before touching data; during a rotation, configure the old key as [previous_kek]"
    ))
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault { kek: <redacted> }")
    }
}

impl Vault {
    /// Opens (creating if needed) the vault at `at` (a SQLite file, or a PostgreSQL database
    /// apart from the data's) with the region's KEK. A vault of the earlier layout (data keys
    /// by external id) is refused while it holds keys; so is a KEK that does not match.
    pub fn open(at: &Backend, kek: impl Into<Kek>) -> Result<Self, NodeError> {
        Self::open_rotating(at, kek.into(), None)
    }

    /// [`Vault::open`] during a KEK rotation: keys wrapped by `previous` still open, and the
    /// new KEK is registered (its check value) if the vault does not know it yet.
    pub fn open_rotating(at: &Backend, kek: Kek, previous: Option<Kek>) -> Result<Self, NodeError> {
        crate::store::postgres::warn_if_plaintext(at, "the key vault");
        let conn = match at {
            Backend::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)?;
                // Deleted keys are overwritten in the file, and no WAL keeps old pages around.
                conn.pragma_update(None, "secure_delete", "ON")?;
                conn.pragma_update(None, "journal_mode", "DELETE")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                Connection::sqlite(conn)
            }
            Backend::Postgres(_) => at.connect_read_write()?,
        };
        let (lookup_key, kek_id, previous_id) = conn.transaction(|tx| {
            if tx.dialect() == Dialect::Postgres {
                // Replicas opening one vault together take turns.
                tx.lock(0x646f_6d69_0002)?;
            }
            let old = match tx.dialect() {
                Dialect::Sqlite => tx.query_opt(
                    "SELECT 1 FROM sqlite_master WHERE name = 'data_keys'",
                    params![],
                    |_| Ok(()),
                )?,
                Dialect::Postgres => tx.query_opt(
                    "SELECT 1 WHERE to_regclass('data_keys') IS NOT NULL",
                    params![],
                    |_| Ok(()),
                )?,
            };
            if old.is_some() {
                let keys: i64 =
                    tx.query_row("SELECT COUNT(*) FROM data_keys", params![], |r| r.get(0))?;
                if keys > 0 {
                    return Err(NodeError::Internal(
                        "the key vault holds data keys of the earlier layout (by external id); \
                         this release keeps subjects by reference and cannot convert them in \
                         place (docs/erasure.md, upgrading)"
                            .into(),
                    ));
                }
                tx.execute_batch("DROP TABLE data_keys; DROP TABLE IF EXISTS erased_subjects;")?;
            }
            match tx.dialect() {
                Dialect::Sqlite => tx.execute_batch(SCHEMA_SQLITE)?,
                Dialect::Postgres => tx.execute_batch(SCHEMA_POSTGRES)?,
            }
            let has_kek_id = match tx.dialect() {
                Dialect::Sqlite => tx.query_opt(
                    "SELECT 1 FROM pragma_table_info('subject_keys') WHERE name = 'kek_id'",
                    params![],
                    |_| Ok(()),
                )?,
                Dialect::Postgres => tx.query_opt(
                    "SELECT 1 FROM information_schema.columns
                     WHERE table_name = 'subject_keys' AND column_name = 'kek_id'",
                    params![],
                    |_| Ok(()),
                )?,
            };
            if has_kek_id.is_none() {
                tx.execute_batch(
                    "ALTER TABLE subject_keys ADD COLUMN kek_id TEXT NOT NULL DEFAULT ''",
                )?;
            }
            Self::check_keks(tx, &kek, previous.as_ref())
        })?;
        Ok(Self {
            lookup_key,
            conn: Mutex::new(conn),
            kek: (kek, kek_id),
            previous: previous.zip(previous_id),
            clock: domicile_ops::clock::system(),
        })
    }

    /// The same vault stamping new keys and tombstones with `clock`'s time (the node's).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Finds the KEKs among the vault's check values (registering the current one at a
    /// vault's first open, or when a rotation starts): the lookup key, the current KEK's id
    /// and the previous KEK's.
    fn check_keks(
        tx: &Connection,
        kek: &Kek,
        previous: Option<&Kek>,
    ) -> Result<([u8; 32], String, Option<String>), NodeError> {
        let checks: Vec<(String, Vec<u8>)> = tx.query_map(
            "SELECT kek_id, lookup_key FROM kek_checks ORDER BY created_at",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let find = |k: &Kek| -> Result<Option<(String, [u8; 32])>, NodeError> {
            for (id, wrapped) in &checks {
                if let Some(clear) = k.unwrap(&check_aad(id), wrapped)? {
                    let lookup = <[u8; 32]>::try_from(clear.as_slice()).map_err(|_| {
                        NodeError::Internal("a KEK check value has the wrong length".into())
                    })?;
                    return Ok(Some((id.clone(), lookup)));
                }
            }
            Ok(None)
        };
        let register = |k: &Kek, lookup: &[u8; 32]| -> Result<String, NodeError> {
            let id = hex::encode(random::<8>()?);
            tx.execute(
                "INSERT INTO kek_checks (kek_id, lookup_key, created_at) VALUES ($1, $2, $3)",
                params![
                    id,
                    k.wrap(&check_aad(&id), lookup)?,
                    // When the KEK was first seen: the system's time (the vault opens before
                    // the node's clock is handed to it).
                    domicile_ops::clock::system().now()
                ],
            )?;
            Ok(id)
        };
        let current = find(kek)?;
        let previous_found = match previous {
            Some(p) => Some(find(p)?.ok_or_else(|| kek_mismatch("previous_kek"))?),
            None => None,
        };
        let previous_id = previous_found.as_ref().map(|(id, _)| id.clone());
        if let Some((id, lookup)) = current {
            return Ok((lookup, id, previous_id));
        }
        if let Some((_, lookup)) = previous_found {
            // A rotation starts: the new KEK gets its own check value over the same lookup key.
            let id = register(kek, &lookup)?;
            return Ok((lookup, id, previous_id));
        }
        if !checks.is_empty() {
            return Err(kek_mismatch("the key-encryption key"));
        }
        // A vault's first open with check values: a new vault, or one whose keys all predate
        // them (and were wrapped by the one KEK it had, which must be this one).
        let one: Option<(String, String, Vec<u8>)> = tx.query_opt(
            "SELECT tenant, reference, wrapped FROM subject_keys LIMIT 1",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let lookup = match (&one, kek.legacy_lookup()) {
            (None, Some(legacy)) => legacy,
            (None, None) => random::<32>()?,
            (Some((tenant, reference, wrapped)), Some(legacy)) => {
                if kek.unwrap(&wrap_aad(tenant, reference), wrapped)?.is_none() {
                    return Err(kek_mismatch("the key-encryption key"));
                }
                legacy
            }
            (Some(_), None) => {
                return Err(NodeError::Internal(
                    "this key vault's keys were wrapped by a KEK held in memory; move them into \
                     the token with a rotation (docs/operations.md, Key custody)"
                        .into(),
                ));
            }
        };
        let id = register(kek, &lookup)?;
        tx.execute(
            "UPDATE subject_keys SET kek_id = $1 WHERE kek_id = ''",
            params![id],
        )?;
        Ok((lookup, id, None))
    }

    /// Opens the key vault of the node configured by `config`, with its KEK (and, during a
    /// rotation, its previous KEK), for the node, operator commands and tests.
    pub fn open_for(config: &crate::config::NodeConfig) -> Result<Self, NodeError> {
        Self::open_rotating(
            &config.key_vault_backend(),
            Kek::open(config)?,
            Kek::open_previous(config)?,
        )
    }

    /// Re-wraps up to `limit` subject keys not yet wrapped by the current KEK (during a
    /// rotation), each batch in one transaction, so that a rotation stopped anywhere resumes
    /// where it was. The number re-wrapped; 0 when none is left.
    pub fn rewrap(&self, limit: usize) -> Result<usize, NodeError> {
        let (kek, kek_id) = &self.kek;
        self.with(|tx| {
            /// A vault row to re-wrap: tenant, lookup, its KEK's id, reference, wrapped key.
            type Row = (String, Vec<u8>, String, String, Vec<u8>);
            let rows: Vec<Row> = tx.query_map(
                "SELECT tenant, lookup, kek_id, reference, wrapped FROM subject_keys
                 WHERE kek_id <> $1 LIMIT $2",
                params![kek_id, limit as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
            for (tenant, lookup, old_id, reference, wrapped) in &rows {
                let aad = wrap_aad(tenant, reference);
                let raw = self.unwrap_with(old_id, &aad, wrapped)?;
                tx.execute(
                    "UPDATE subject_keys SET wrapped = $1, kek_id = $2
                     WHERE tenant = $3 AND lookup = $4 AND kek_id = $5",
                    params![
                        kek.wrap(&aad, &raw)?,
                        kek_id,
                        tenant,
                        lookup.as_slice(),
                        old_id
                    ],
                )?;
            }
            Ok(rows.len())
        })
    }

    /// How many subject keys are wrapped by another KEK than the current one.
    pub fn to_rewrap(&self) -> Result<i64, NodeError> {
        self.with(|tx| {
            tx.query_row(
                "SELECT COUNT(*) FROM subject_keys WHERE kek_id <> $1",
                params![self.kek.1],
                |r| r.get(0),
            )
        })
    }

    /// Once nothing is left to re-wrap: forgets the other KEKs' check values, so that the
    /// old KEK no longer opens the vault at all. The number forgotten.
    pub fn retire_other_keks(&self) -> Result<usize, NodeError> {
        self.with(|tx| {
            let left: i64 = tx.query_row(
                "SELECT COUNT(*) FROM subject_keys WHERE kek_id <> $1",
                params![self.kek.1],
                |r| r.get(0),
            )?;
            if left > 0 {
                return Err(NodeError::Internal(format!(
                    "{left} subject keys are still wrapped by the previous KEK"
                )));
            }
            tx.execute(
                "DELETE FROM kek_checks WHERE kek_id <> $1",
                params![self.kek.1],
            )
        })
    }

    /// The raw data key in `wrapped`, by the KEK `kek_id` names.
    fn unwrap_with(&self, kek_id: &str, aad: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, NodeError> {
        let kek = if *kek_id == self.kek.1 {
            &self.kek.0
        } else if let Some((previous, id)) = &self.previous
            && id == kek_id
        {
            previous
        } else {
            return Err(NodeError::Internal(format!(
                "a subject key is wrapped by a KEK this node is not given (check id {kek_id}): \
                 configure it as [previous_kek] and finish the rotation"
            )));
        };
        kek.unwrap(aad, wrapped)?.ok_or_else(|| {
            NodeError::Internal(
                "a data key does not open with its KEK (a damaged or moved vault row?)".into(),
            )
        })
    }

    fn lookup(&self, tenant: &str, external_id: &str) -> [u8; 32] {
        keyed(
            &self.lookup_key,
            &[tenant.as_bytes(), external_id.as_bytes()],
        )
    }

    fn unwrap_key(
        &self,
        tenant: &str,
        reference: String,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<SubjectKey, NodeError> {
        let raw = self.unwrap_with(kek_id, &wrap_aad(tenant, &reference), wrapped)?;
        Ok(SubjectKey::new(reference, &raw))
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, NodeError>) -> Result<T, NodeError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_closed() {
            return Err(NodeError::Internal(
                "the key vault's connection is closed".into(),
            ));
        }
        conn.transaction(f)
    }

    /// The keys of the subjects with `external_ids`, by external id; with `create`, subjects
    /// not seen before get a reference and a key (in one vault transaction), otherwise they
    /// are absent from the map.
    pub fn resolve(
        &self,
        tenant: &str,
        external_ids: &BTreeSet<&str>,
        create: bool,
    ) -> Result<HashMap<String, SubjectKey>, NodeError> {
        self.with(|tx| match tx.dialect() {
            Dialect::Sqlite => self.resolve_each(tx, tenant, external_ids, create),
            Dialect::Postgres => self.resolve_set(tx, tenant, external_ids, create),
        })
    }

    /// [`Vault::resolve`] subject by subject: SQLite's statements run in-process, so one per
    /// subject costs microseconds.
    fn resolve_each(
        &self,
        tx: &Connection,
        tenant: &str,
        external_ids: &BTreeSet<&str>,
        create: bool,
    ) -> Result<HashMap<String, SubjectKey>, NodeError> {
        const GET: &str =
            "SELECT reference, kek_id, wrapped FROM subject_keys WHERE tenant = $1 AND lookup = $2";
        let mut out = HashMap::with_capacity(external_ids.len());
        let now = self.clock.now();
        let mut get = tx.prepare_cached(GET)?;
        for external in external_ids {
            let lookup = self.lookup(tenant, external);
            let found: Option<(String, String, Vec<u8>)> = get
                .query_row(params![tenant, lookup.as_slice()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let key = match found {
                Some((reference, kek_id, wrapped)) => {
                    self.unwrap_key(tenant, reference, &kek_id, &wrapped)?
                }
                None if create => {
                    let new = self.new_key(tenant, external)?;
                    let made = tx.execute(
                        "INSERT INTO subject_keys
                           (tenant, lookup, reference, wrapped, external_id, created_at, kek_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                        params![
                            tenant,
                            lookup.as_slice(),
                            new.key.reference,
                            new.wrapped,
                            new.sealed,
                            now,
                            self.kek.1
                        ],
                    )?;
                    if made == 1 {
                        new.key
                    } else {
                        // Another process made this subject first: use theirs.
                        let (reference, kek_id, wrapped): (String, String, Vec<u8>) = get
                            .query_row(params![tenant, lookup.as_slice()], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                            })?;
                        self.unwrap_key(tenant, reference, &kek_id, &wrapped)?
                    }
                }
                None => continue,
            };
            out.insert((*external).to_owned(), key);
        }
        Ok(out)
    }

    /// [`Vault::resolve`] set by set, for PostgreSQL, where each statement is a round trip:
    /// every subject looked up in one statement, every new one inserted in one more, and the
    /// few another replica made meanwhile read in a third.
    fn resolve_set(
        &self,
        tx: &Connection,
        tenant: &str,
        external_ids: &BTreeSet<&str>,
        create: bool,
    ) -> Result<HashMap<String, SubjectKey>, NodeError> {
        let by_lookup: HashMap<[u8; 32], &str> = external_ids
            .iter()
            .map(|e| (self.lookup(tenant, e), *e))
            .collect();
        let mut out = HashMap::with_capacity(external_ids.len());
        let read = |lookups: Vec<Option<Vec<u8>>>,
                    out: &mut HashMap<String, SubjectKey>|
         -> Result<(), NodeError> {
            tx.query_each(
                "SELECT lookup, reference, kek_id, wrapped FROM subject_keys
                 WHERE tenant = $1 AND lookup = ANY(CAST($2 AS BYTEA[]))",
                params![tenant, lookups],
                |r| {
                    let lookup: Vec<u8> = r.get(0)?;
                    let external = <[u8; 32]>::try_from(lookup.as_slice())
                        .ok()
                        .and_then(|l| by_lookup.get(&l))
                        .ok_or_else(|| NodeError::Internal("a lookup not asked for".into()))?;
                    let key = self.unwrap_key(
                        tenant,
                        r.get(1)?,
                        &r.get::<_, String>(2)?,
                        &r.get::<_, Vec<u8>>(3)?,
                    )?;
                    out.insert((*external).to_owned(), key);
                    Ok(true)
                },
            )
        };
        read(
            by_lookup.keys().map(|l| Some(l.to_vec())).collect(),
            &mut out,
        )?;
        if !create || out.len() == by_lookup.len() {
            return Ok(out);
        }
        // In lookup order: replicas inserting overlapping subjects at once then take the rows'
        // locks in the same order, and wait for each other instead of deadlocking.
        let mut made: std::collections::BTreeMap<[u8; 32], (&str, NewKey)> =
            std::collections::BTreeMap::new();
        for (lookup, external) in &by_lookup {
            if !out.contains_key(*external) {
                made.insert(*lookup, (external, self.new_key(tenant, external)?));
            }
        }
        let column = |f: &dyn Fn(&[u8; 32], &NewKey) -> Vec<u8>| -> Vec<Option<Vec<u8>>> {
            made.iter().map(|(l, (_, k))| Some(f(l, k))).collect()
        };
        let references: Vec<Option<String>> = made
            .values()
            .map(|(_, k)| Some(k.key.reference.clone()))
            .collect();
        let inserted: Vec<Vec<u8>> = tx.query_map(
            "INSERT INTO subject_keys
               (tenant, lookup, reference, wrapped, external_id, created_at, kek_id)
             SELECT $1, l, r, w, e, $6, $7
             FROM unnest(CAST($2 AS BYTEA[]), CAST($3 AS TEXT[]), CAST($4 AS BYTEA[]),
                         CAST($5 AS BYTEA[])) AS u(l, r, w, e)
             ON CONFLICT DO NOTHING RETURNING lookup",
            params![
                tenant,
                column(&|l, _| l.to_vec()),
                references,
                column(&|_, k| k.wrapped.clone()),
                column(&|_, k| k.sealed.clone()),
                self.clock.now(),
                self.kek.1
            ],
            |r| r.get(0),
        )?;
        for lookup in inserted {
            if let Some((external, new)) = <[u8; 32]>::try_from(lookup.as_slice())
                .ok()
                .and_then(|l| made.remove(&l))
            {
                out.insert(external.to_owned(), new.key);
            }
        }
        if !made.is_empty() {
            // Another replica made these subjects first: use theirs.
            read(made.keys().map(|l| Some(l.to_vec())).collect(), &mut out)?;
        }
        Ok(out)
    }

    /// A new subject's key: a fresh reference and data key, the key wrapped by the KEK, the
    /// external id sealed under the key.
    fn new_key(&self, tenant: &str, external: &str) -> Result<NewKey, NodeError> {
        let raw = random::<32>()?;
        let reference = hex::encode(random::<{ REFERENCE_LEN / 2 }>()?);
        let key = SubjectKey::new(reference, &raw);
        let wrapped = self.kek.0.wrap(&wrap_aad(tenant, &key.reference), &raw)?;
        let sealed = key.seal(
            &external_id_aad(tenant, &key.reference),
            external.as_bytes(),
        )?;
        Ok(NewKey {
            key,
            wrapped,
            sealed,
        })
    }

    /// The key of the subject with `external_id`, if the vault knows it.
    pub fn find(&self, tenant: &str, external_id: &str) -> Result<Option<SubjectKey>, NodeError> {
        Ok(self
            .resolve(tenant, &BTreeSet::from([external_id]), false)?
            .remove(external_id))
    }

    /// The keys of the subjects `references`, by reference (those the vault holds).
    pub fn keys(
        &self,
        tenant: &str,
        references: &BTreeSet<&str>,
    ) -> Result<HashMap<String, SubjectKey>, NodeError> {
        self.with(|tx| {
            let mut out = HashMap::with_capacity(references.len());
            let mut found = |r: &Row<'_>| -> Result<bool, NodeError> {
                let reference: String = r.get(0)?;
                let key = self.unwrap_key(
                    tenant,
                    reference.clone(),
                    &r.get::<_, String>(1)?,
                    &r.get::<_, Vec<u8>>(2)?,
                )?;
                out.insert(reference, key);
                Ok(true)
            };
            match tx.dialect() {
                Dialect::Sqlite => {
                    let mut get = tx.prepare_cached(
                        "SELECT reference, kek_id, wrapped FROM subject_keys
                         WHERE tenant = $1 AND reference = $2",
                    )?;
                    for reference in references {
                        get.query_each(params![tenant, reference], &mut found)?;
                    }
                }
                // One round trip for them all.
                Dialect::Postgres => tx.query_each(
                    "SELECT reference, kek_id, wrapped FROM subject_keys
                     WHERE tenant = $1 AND reference = ANY(CAST($2 AS TEXT[]))",
                    params![
                        tenant,
                        references
                            .iter()
                            .map(|r| Some((*r).to_owned()))
                            .collect::<Vec<_>>()
                    ],
                    &mut found,
                )?,
            }
            Ok(out)
        })
    }

    /// The key of the subject `reference`, if it has one.
    pub fn key(&self, tenant: &str, reference: &str) -> Result<Option<SubjectKey>, NodeError> {
        Ok(self
            .keys(tenant, &BTreeSet::from([reference]))?
            .remove(reference))
    }

    /// The external id of the subject `reference`, while its key lives.
    pub fn external_id(&self, tenant: &str, reference: &str) -> Result<Option<String>, NodeError> {
        let row: Option<(String, Vec<u8>, Vec<u8>)> = self.with(|tx| {
            tx.query_opt(
                "SELECT kek_id, wrapped, external_id FROM subject_keys
                 WHERE tenant = $1 AND reference = $2",
                params![tenant, reference],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })?;
        let Some((kek_id, wrapped, sealed)) = row else {
            return Ok(None);
        };
        let key = self.unwrap_key(tenant, reference.to_owned(), &kek_id, &wrapped)?;
        let clear = key
            .open(&external_id_aad(tenant, reference), &sealed)
            .ok_or_else(|| NodeError::Internal("a sealed external id does not open".into()))?;
        String::from_utf8(clear)
            .map(Some)
            .map_err(|_| NodeError::Internal("a sealed external id is not UTF-8".into()))
    }

    /// Destroys the subject `reference`'s key and index entry, leaves a tombstone for the
    /// reference and keeps `suppressions` (those its erasure made), in one vault transaction.
    /// True when there was a key.
    pub fn destroy(
        &self,
        tenant: &str,
        reference: &str,
        suppressions: &[KeptSuppression],
    ) -> Result<bool, NodeError> {
        let n = self.with(|tx| {
            let n = tx.execute(
                "DELETE FROM subject_keys WHERE tenant = $1 AND reference = $2",
                params![tenant, reference],
            )?;
            let now = self.clock.now();
            tx.execute(
                "INSERT INTO erased_references (tenant, reference, erased_at)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                params![tenant, reference, now],
            )?;
            for s in suppressions {
                tx.execute(
                    "INSERT INTO kept_suppressions
                       (tenant, identifier, purpose, channel, state, since_day)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (tenant, identifier, purpose, channel) DO UPDATE
                     SET state = excluded.state, since_day = excluded.since_day",
                    params![
                        tenant,
                        s.identifier,
                        s.purpose,
                        s.channel,
                        s.state,
                        s.since_day
                    ],
                )?;
            }
            Ok(n)
        })?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.dialect() == Dialect::Postgres {
            // The deleted row's bytes leave the table's pages at the next vacuum: now, rather
            // than whenever autovacuum comes (see docs/erasure.md on the vault).
            conn.execute_batch("VACUUM subject_keys")?;
        }
        Ok(n > 0)
    }

    /// Whether the subject `reference` was erased (its key destroyed) in this vault.
    pub fn was_erased(&self, tenant: &str, reference: &str) -> Result<bool, NodeError> {
        self.with(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT 1 FROM erased_references WHERE tenant = $1 AND reference = $2",
                    params![tenant, reference],
                    |_| Ok(()),
                )?
                .is_some())
        })
    }

    /// The suppressions erasures kept, with their tenants.
    pub fn kept_suppressions(&self) -> Result<Vec<(String, KeptSuppression)>, NodeError> {
        self.with(|tx| {
            tx.query_map(
                "SELECT tenant, identifier, purpose, channel, state, since_day
                 FROM kept_suppressions ORDER BY tenant",
                params![],
                |r| {
                    Ok((
                        r.get(0)?,
                        KeptSuppression {
                            identifier: r.get(1)?,
                            purpose: r.get(2)?,
                            channel: r.get(3)?,
                            state: r.get(4)?,
                            since_day: r.get(5)?,
                        },
                    ))
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_known_by_reference_and_shredded() {
        let dbs = crate::testing::Databases::new();
        for data in dbs.both() {
            known_by_reference_and_shredded(&dbs.vault(&data));
        }
    }

    fn known_by_reference_and_shredded(at: &Backend) {
        let at = at.clone();
        let vault = Vault::open(&at, &[3; 32]).unwrap();
        assert!(vault.find("acme", "s1").unwrap().is_none());
        let keys = vault
            .resolve("acme", &BTreeSet::from(["s1", "s2"]), true)
            .unwrap();
        let (s1, s2) = (&keys["s1"], &keys["s2"]);
        assert_eq!(s1.reference.len(), REFERENCE_LEN);
        assert!(!s1.reference.contains("s1"));
        assert_ne!(s1.reference, s2.reference);
        let blob = s1.seal(b"aad", b"secret").unwrap();
        assert_eq!(s1.open(b"aad", &blob).unwrap(), b"secret");
        assert!(s1.open(b"other", &blob).is_none(), "bound to its AAD");
        assert!(s2.open(b"aad", &blob).is_none(), "one key per subject");
        // Stored ids: deterministic per subject, prefixed by the reference, unrelated across
        // subjects.
        let id = s1.stored_id("interaction", "i-1");
        assert_eq!(id, s1.stored_id("interaction", "i-1"));
        assert!(id.starts_with(&s1.reference) && !id.contains("i-1"));
        assert_ne!(id, s2.stored_id("interaction", "i-1"));
        assert_ne!(id, s1.stored_id("idempotency", "i-1"));
        let (start, end) = stored_id_range(&s1.reference);
        assert!(start.as_str() <= id.as_str() && id.as_str() < end.as_str());
        // The same subject and key come back by external id and by reference…
        let again = vault.find("acme", "s1").unwrap().unwrap();
        assert_eq!(again.reference, s1.reference);
        assert_eq!(again.open(b"aad", &blob).unwrap(), b"secret");
        let by_ref = vault.key("acme", &s1.reference).unwrap().unwrap();
        assert_eq!(by_ref.stored_id("interaction", "i-1"), id);
        assert_eq!(
            vault.external_id("acme", &s1.reference).unwrap().as_deref(),
            Some("s1")
        );
        assert!(vault.find("other", "s1").unwrap().is_none(), "per tenant");
        // …until it is destroyed.
        let kept = KeptSuppression {
            identifier: "abc".into(),
            purpose: 1,
            channel: 0,
            state: 3,
            since_day: 20_000,
        };
        assert!(!vault.was_erased("acme", &s1.reference).unwrap());
        assert!(
            vault
                .destroy("acme", &s1.reference, std::slice::from_ref(&kept))
                .unwrap()
        );
        assert!(vault.find("acme", "s1").unwrap().is_none());
        assert!(vault.key("acme", &s1.reference).unwrap().is_none());
        assert!(vault.external_id("acme", &s1.reference).unwrap().is_none());
        assert!(vault.was_erased("acme", &s1.reference).unwrap());
        assert!(!vault.was_erased("acme", &s2.reference).unwrap());
        assert_eq!(
            vault.kept_suppressions().unwrap(),
            vec![("acme".to_owned(), kept)]
        );
        // Seen again, the same person is a new subject, unrelated to the erased one.
        let fresh = vault.find("acme", "s1").unwrap();
        assert!(fresh.is_none());
        let fresh = vault
            .resolve("acme", &BTreeSet::from(["s1"]), true)
            .unwrap();
        assert_ne!(fresh["s1"].reference, s1.reference);
        // Another KEK does not open the vault at all: refused before any key is read.
        drop(vault);
        let e = Vault::open(&at, &[4; 32]).unwrap_err().to_string();
        assert!(e.contains("does not match this key vault"), "{e}");
        // The right one still does.
        let again = Vault::open(&at, &[3; 32]).unwrap();
        assert!(again.key("acme", &s2.reference).unwrap().is_some());
    }

    /// Two replicas (two vault connections) making overlapping new subjects at once agree on
    /// every key: one makes each subject, the other reads it back; none is made twice, and
    /// neither fails (PostgreSQL inserts a batch's keys in lookup order, so they wait for
    /// each other rather than deadlock).
    #[test]
    fn replicas_making_the_same_subjects_at_once_agree_on_their_keys() {
        let dbs = crate::testing::Databases::new();
        for data in dbs.both() {
            let at = dbs.vault(&data);
            let (a, b) = (
                Vault::open(&at, &[3; 32]).unwrap(),
                Vault::open(&at, &[3; 32]).unwrap(),
            );
            let ids: Vec<String> = (0..300).map(|i| format!("c-{i}")).collect();
            let set = |r: std::ops::Range<usize>| -> BTreeSet<&str> {
                ids[r].iter().map(String::as_str).collect()
            };
            for round in 0..3 {
                let tenant = format!("t{round}");
                let (ka, kb) = std::thread::scope(|s| {
                    let ha = s.spawn(|| a.resolve(&tenant, &set(0..200), true));
                    let hb = s.spawn(|| b.resolve(&tenant, &set(100..300), true));
                    (ha.join().unwrap().unwrap(), hb.join().unwrap().unwrap())
                });
                assert_eq!((ka.len(), kb.len()), (200, 200), "{data:?}");
                for id in &ids[100..200] {
                    assert_eq!(ka[id].reference, kb[id].reference, "{data:?} {id}");
                }
                let all = a.resolve(&tenant, &set(0..300), false).unwrap();
                assert_eq!(all.len(), 300, "{data:?}");
                for (id, key) in ka.iter().chain(&kb) {
                    assert_eq!(all[id].reference, key.reference, "{data:?} {id}");
                }
                // And by reference, all at once.
                let refs: BTreeSet<&str> = all.values().map(|k| k.reference.as_str()).collect();
                let by_ref = b.keys(&tenant, &refs).unwrap();
                assert_eq!(by_ref.len(), 300, "{data:?}");
                let made: i64 = a
                    .with(|c| {
                        c.query_row(
                            "SELECT COUNT(*) FROM subject_keys WHERE tenant = $1",
                            params![tenant],
                            |r| r.get(0),
                        )
                    })
                    .unwrap();
                assert_eq!(made, 300, "{data:?}: no subject made twice");
            }
        }
    }

    #[test]
    fn a_vault_from_before_check_values_is_checked_against_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let at = Backend::Sqlite(dir.path().join("keys.sqlite"));
        let reference = {
            let vault = Vault::open(&at, &[3; 32]).unwrap();
            vault
                .resolve("acme", &BTreeSet::from(["c-1"]), true)
                .unwrap()
                .remove("c-1")
                .unwrap()
                .reference
        };
        // Make it look like a vault of the previous release: no check values, no KEK ids.
        let raw = rusqlite::Connection::open(dir.path().join("keys.sqlite")).unwrap();
        raw.execute_batch("DROP TABLE kek_checks; ALTER TABLE subject_keys DROP COLUMN kek_id;")
            .unwrap();
        drop(raw);
        // A wrong KEK is refused (it opens none of the vault's keys) and changes nothing…
        let e = Vault::open(&at, &[4; 32]).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // …and the right one opens it, finds the subject and keeps a check value from then on.
        let vault = Vault::open(&at, &[3; 32]).unwrap();
        let found = vault.find("acme", "c-1").unwrap().unwrap();
        assert_eq!(found.reference, reference);
        drop(vault);
        assert!(Vault::open(&at, &[4; 32]).is_err());
    }

    #[test]
    fn a_rotation_rewraps_every_key_resumably_and_retires_the_old_kek() {
        let dir = tempfile::tempdir().unwrap();
        let at = Backend::Sqlite(dir.path().join("keys.sqlite"));
        let (old, new) = ([3u8; 32], [5u8; 32]);
        let ids: Vec<String> = (0..25).map(|i| format!("c-{i}")).collect();
        let before: HashMap<String, String> = {
            let vault = Vault::open(&at, &old).unwrap();
            let set: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
            vault
                .resolve("acme", &set, true)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.reference))
                .collect()
        };
        // The new KEK alone is refused: the vault does not know it yet.
        assert!(Vault::open(&at, &new).is_err());
        let rotating =
            || Vault::open_rotating(&at, Kek::from(&new), Some(Kek::from(&old))).unwrap();
        let vault = rotating();
        assert_eq!(vault.to_rewrap().unwrap(), 25);
        // Keys open under either KEK while the rotation runs, and new ones use the new KEK.
        assert!(vault.find("acme", "c-3").unwrap().is_some());
        vault
            .resolve("acme", &BTreeSet::from(["c-new"]), true)
            .unwrap();
        assert_eq!(vault.rewrap(10).unwrap(), 10);
        // Stopped here (a crash, a restart): the next run resumes with what is left.
        drop(vault);
        let vault = rotating();
        assert_eq!(vault.to_rewrap().unwrap(), 15);
        assert!(
            vault.retire_other_keks().is_err(),
            "not while keys are left"
        );
        while vault.rewrap(10).unwrap() > 0 {}
        assert_eq!(vault.to_rewrap().unwrap(), 0);
        assert_eq!(vault.retire_other_keks().unwrap(), 1);
        drop(vault);
        // Now only the new KEK opens the vault, and every subject keeps its reference.
        let e = Vault::open(&at, &old).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        let vault = Vault::open(&at, &new).unwrap();
        for (id, reference) in &before {
            assert_eq!(
                &vault.find("acme", id).unwrap().unwrap().reference,
                reference
            );
            assert_eq!(
                vault.external_id("acme", reference).unwrap().as_deref(),
                Some(id.as_str())
            );
        }
        assert!(vault.find("acme", "c-new").unwrap().is_some());
    }

    #[test]
    fn a_vault_of_the_earlier_layout_is_refused_while_it_holds_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sqlite");
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE data_keys (tenant TEXT, subject_id TEXT, wrapped BLOB, created_at INTEGER);
             INSERT INTO data_keys VALUES ('acme', 'c-1', x'00', 0);",
        )
        .unwrap();
        let e = Vault::open(&Backend::Sqlite(path.clone()), &[3; 32]).unwrap_err();
        assert!(e.to_string().contains("earlier layout"), "{e}");
        old.execute_batch("DELETE FROM data_keys").unwrap();
        drop(old);
        Vault::open(&Backend::Sqlite(path), &[3; 32]).unwrap();
    }
}
