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
//! again for those references and gets the suppressions back ([`crate::backup::restore`]).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use crate::{
    db::{Connection, Dialect, OptionalExtension, params},
    storage::Backend,
};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::NodeError;

const NONCE_LEN: usize = 24;

/// Length of a subject reference, in hex digits.
pub const REFERENCE_LEN: usize = 32;

fn random<const N: usize>() -> Result<[u8; N], NodeError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| NodeError::Internal(format!("randomness: {e}")))?;
    Ok(out)
}

fn seal(cipher: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
    let nonce = random::<NONCE_LEN>()?;
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| NodeError::Internal("encryption failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(cipher: &XChaCha20Poly1305, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
    if blob.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).ok()?;
    cipher.decrypt(&nonce, Payload { msg: ct, aad }).ok()
}

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

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS subject_keys (
        tenant      TEXT NOT NULL,
        lookup      BLOB NOT NULL,
        reference   TEXT NOT NULL,
        wrapped     BLOB NOT NULL,
        external_id BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
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

/// The key vault: the subject index and wrapped data keys.
pub struct Vault {
    /// Keys the external-id lookups: derived from the KEK, so a lookup names no one without it.
    lookup_key: [u8; 32],
    conn: Mutex<Connection>,
    kek: XChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault { kek: <redacted> }")
    }
}

impl Vault {
    /// Opens (creating if needed) the vault at `at` (a SQLite file, or a PostgreSQL database
    /// apart from the data's) with the region's KEK. A vault of the earlier layout (data keys
    /// by external id) is refused while it holds keys.
    pub fn open(at: &Backend, kek: &[u8; 32]) -> Result<Self, NodeError> {
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
        conn.transaction(|tx| {
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
                Dialect::Sqlite => tx.execute_batch(SCHEMA),
                Dialect::Postgres => tx.execute_batch(&crate::pg_schema::translate(SCHEMA)),
            }
        })?;
        Ok(Self {
            lookup_key: derive("domicile/v1/subject-lookup", kek),
            conn: Mutex::new(conn),
            kek: XChaCha20Poly1305::new_from_slice(kek).expect("32-byte key"),
        })
    }

    /// Opens the key vault of the node configured by `config`, with its KEK (for operator
    /// commands and tests that read a node's files).
    pub fn open_for(config: &crate::config::NodeConfig) -> Result<Self, NodeError> {
        Self::open(&config.key_vault_backend(), &crate::node::load_kek(config)?)
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
        wrapped: &[u8],
    ) -> Result<SubjectKey, NodeError> {
        let raw = open(&self.kek, &wrap_aad(tenant, &reference), wrapped).ok_or_else(|| {
            NodeError::Internal(
                "a data key does not open with this KEK (wrong key-encryption key?)".into(),
            )
        })?;
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
        const GET: &str =
            "SELECT reference, wrapped FROM subject_keys WHERE tenant = ?1 AND lookup = ?2";
        self.with(|tx| {
            let mut out = HashMap::with_capacity(external_ids.len());
            let now = domicile_proto::domain::unix_now();
            let mut get = tx.prepare_cached(GET)?;
            for external in external_ids {
                let lookup = self.lookup(tenant, external);
                let found: Option<(String, Vec<u8>)> = get
                    .query_row(params![tenant, lookup.as_slice()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let key = match found {
                    Some((reference, wrapped)) => self.unwrap_key(tenant, reference, &wrapped)?,
                    None if create => {
                        let raw = random::<32>()?;
                        let reference = hex::encode(random::<{ REFERENCE_LEN / 2 }>()?);
                        let key = SubjectKey::new(reference, &raw);
                        let wrapped = seal(&self.kek, &wrap_aad(tenant, &key.reference), &raw)?;
                        let sealed = key.seal(
                            &external_id_aad(tenant, &key.reference),
                            external.as_bytes(),
                        )?;
                        let made = tx.execute(
                            "INSERT OR IGNORE INTO subject_keys
                               (tenant, lookup, reference, wrapped, external_id, created_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![
                                tenant,
                                lookup.as_slice(),
                                key.reference,
                                wrapped,
                                sealed,
                                now
                            ],
                        )?;
                        if made == 1 {
                            key
                        } else {
                            // Another replica made this subject first: use theirs.
                            let (reference, wrapped): (String, Vec<u8>) = get
                                .query_row(params![tenant, lookup.as_slice()], |r| {
                                    Ok((r.get(0)?, r.get(1)?))
                                })?;
                            self.unwrap_key(tenant, reference, &wrapped)?
                        }
                    }
                    None => continue,
                };
                out.insert((*external).to_owned(), key);
            }
            Ok(out)
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
            let mut get = tx.prepare_cached(
                "SELECT wrapped FROM subject_keys WHERE tenant = ?1 AND reference = ?2",
            )?;
            let mut out = HashMap::with_capacity(references.len());
            for reference in references {
                let wrapped: Option<Vec<u8>> = get
                    .query_row(params![tenant, reference], |r| r.get(0))
                    .optional()?;
                if let Some(w) = wrapped {
                    out.insert(
                        (*reference).to_owned(),
                        self.unwrap_key(tenant, (*reference).to_owned(), &w)?,
                    );
                }
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
        let row: Option<(Vec<u8>, Vec<u8>)> = self.with(|tx| {
            tx.query_opt(
                "SELECT wrapped, external_id FROM subject_keys WHERE tenant = ?1 AND reference = ?2",
                params![tenant, reference],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        let Some((wrapped, sealed)) = row else {
            return Ok(None);
        };
        let key = self.unwrap_key(tenant, reference.to_owned(), &wrapped)?;
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
                "DELETE FROM subject_keys WHERE tenant = ?1 AND reference = ?2",
                params![tenant, reference],
            )?;
            let now = domicile_proto::domain::unix_now();
            tx.execute(
                "INSERT OR IGNORE INTO erased_references (tenant, reference, erased_at)
                 VALUES (?1, ?2, ?3)",
                params![tenant, reference, now],
            )?;
            for s in suppressions {
                tx.execute(
                    "INSERT INTO kept_suppressions
                       (tenant, identifier, purpose, channel, state, since_day)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
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
                    "SELECT 1 FROM erased_references WHERE tenant = ?1 AND reference = ?2",
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
        let dir = tempfile::tempdir().unwrap();
        let at = Backend::Sqlite(dir.path().join("keys.sqlite"));
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
        // A vault opened with another KEK cannot unwrap the keys.
        drop(vault);
        let wrong = Vault::open(&at, &[4; 32]).unwrap();
        assert!(wrong.key("acme", &s2.reference).is_err());
        assert!(wrong.find("acme", "s2").unwrap().is_none(), "nor find them");
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
