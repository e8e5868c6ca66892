//! Encryption at rest: a data key per subject, wrapped by the region's key-encryption key (KEK),
//! kept in a key vault apart from the data.
//!
//! Every personal field (the profile) and every free-text comment is stored as
//! `nonce(24) ‖ XChaCha20-Poly1305(data key, aad, plaintext)`, with an AAD naming what the
//! ciphertext is and whose, so a ciphertext moved to another row does not open. Data keys live
//! in their own database (the vault: a SQLite file with `secure_delete` on and a rollback
//! journal, or a PostgreSQL database of its own for replicas on several machines), wrapped by
//! the KEK, which comes from a file or an environment variable and is never written elsewhere.
//!
//! Erasure destroys the subject's data key (crypto-shredding): a copy or backup of the *data*
//! file taken before the erasure no longer opens for that subject, because the key it needs is
//! gone from the vault. Backups of the vault itself must follow the same retention as erasures
//! (or not be taken): that is the operator's side of the contract.
//!
//! The vault also remembers who was erased, as keyed hashes (tombstones): a data file restored
//! from a backup taken before an erasure is erased again for those subjects
//! ([`crate::backup::restore`]), so their analytical rows do not come back either.

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

/// One subject's data key.
pub struct DataKey(XChaCha20Poly1305);

impl DataKey {
    /// Encrypts `plaintext` bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
        seal(&self.0, aad, plaintext)
    }

    /// Decrypts a blob from [`DataKey::seal`]; `None` when it does not open with this key and
    /// AAD.
    pub fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
        open(&self.0, aad, blob)
    }
}

/// The AAD of a subject's profile.
pub fn profile_aad(tenant: &str, subject: &str) -> Vec<u8> {
    format!("domicile/v1/profile\0{tenant}\0{subject}").into_bytes()
}

/// The AAD of an interaction's comment.
pub fn comment_aad(tenant: &str, interaction: &str) -> Vec<u8> {
    format!("domicile/v1/comment\0{tenant}\0{interaction}").into_bytes()
}

fn wrap_aad(tenant: &str, subject: &str) -> Vec<u8> {
    format!("domicile/v1/data-key\0{tenant}\0{subject}").into_bytes()
}

/// The key vault: wrapped data keys, one per subject.
pub struct Vault {
    /// Keys the tombstones: derived from the KEK, so a tombstone names no one without it.
    tombstone_key: [u8; 32],
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
    /// apart from the data's) with the region's KEK.
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
        let tables = "CREATE TABLE IF NOT EXISTS data_keys (
                tenant     TEXT NOT NULL,
                subject_id TEXT NOT NULL,
                wrapped    BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (tenant, subject_id)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS erased_subjects (
                tombstone BLOB PRIMARY KEY,
                erased_at INTEGER NOT NULL
            ) WITHOUT ROWID;";
        match conn.dialect() {
            Dialect::Sqlite => conn.execute_batch(tables)?,
            Dialect::Postgres => {
                // Replicas opening one vault together take turns.
                conn.transaction(|tx| {
                    tx.lock(0x646f_6d69_0002)?;
                    tx.execute_batch(&crate::pg_schema::translate(tables))
                })?;
            }
        }
        let mut tombstone_key = [0u8; 32];
        tombstone_key.copy_from_slice(&Sha256::digest(
            [b"domicile/v1/tombstone\0".as_slice(), kek].concat(),
        ));
        Ok(Self {
            tombstone_key,
            conn: Mutex::new(conn),
            kek: XChaCha20Poly1305::new_from_slice(kek).expect("32-byte key"),
        })
    }

    fn unwrap_key(
        &self,
        tenant: &str,
        subject: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, NodeError> {
        let key = open(&self.kek, &wrap_aad(tenant, subject), wrapped).ok_or_else(|| {
            NodeError::Internal(
                "a data key does not open with this KEK (wrong key-encryption key?)".into(),
            )
        })?;
        Ok(DataKey(
            XChaCha20Poly1305::new_from_slice(&key).expect("32-byte key"),
        ))
    }

    /// The data keys of `subjects`; with `create`, missing ones are made (in one vault
    /// transaction), otherwise they are absent from the map.
    pub fn keys(
        &self,
        tenant: &str,
        subjects: &BTreeSet<&str>,
        create: bool,
    ) -> Result<HashMap<String, DataKey>, NodeError> {
        let tx = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if tx.is_closed() {
            return Err(NodeError::Internal(
                "the key vault's connection is closed".into(),
            ));
        }
        tx.transaction(|tx| self.keys_in(tx, tenant, subjects, create))
    }

    fn keys_in(
        &self,
        tx: &Connection,
        tenant: &str,
        subjects: &BTreeSet<&str>,
        create: bool,
    ) -> Result<HashMap<String, DataKey>, NodeError> {
        const GET: &str = "SELECT wrapped FROM data_keys WHERE tenant = ?1 AND subject_id = ?2";
        let mut out = HashMap::with_capacity(subjects.len());
        let now = domicile_proto::domain::unix_now();
        for subject in subjects {
            let wrapped: Option<Vec<u8>> = tx
                .query_row(GET, params![tenant, subject], |r| r.get(0))
                .optional()?;
            let key = match wrapped {
                Some(w) => self.unwrap_key(tenant, subject, &w)?,
                None if create => {
                    let raw = random::<32>()?;
                    let wrapped = seal(&self.kek, &wrap_aad(tenant, subject), &raw)?;
                    let made = tx.execute(
                        "INSERT OR IGNORE INTO data_keys (tenant, subject_id, wrapped, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![tenant, subject, wrapped, now],
                    )?;
                    if made == 1 {
                        DataKey(XChaCha20Poly1305::new_from_slice(&raw).expect("32-byte key"))
                    } else {
                        // Another replica made this subject's key first: use theirs.
                        let w: Vec<u8> =
                            tx.query_row(GET, params![tenant, subject], |r| r.get(0))?;
                        self.unwrap_key(tenant, subject, &w)?
                    }
                }
                None => continue,
            };
            out.insert((*subject).to_owned(), key);
        }
        Ok(out)
    }

    /// The data key of one subject, if it has one.
    pub fn key(&self, tenant: &str, subject: &str) -> Result<Option<DataKey>, NodeError> {
        Ok(self
            .keys(tenant, &BTreeSet::from([subject]), false)?
            .remove(subject))
    }

    /// Destroys a subject's data key and leaves a tombstone for it, in one vault transaction.
    /// True when there was a key.
    pub fn destroy(&self, tenant: &str, subject: &str) -> Result<bool, NodeError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let n = conn.transaction(|tx| {
            let n = tx.execute(
                "DELETE FROM data_keys WHERE tenant = ?1 AND subject_id = ?2",
                params![tenant, subject],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO erased_subjects (tombstone, erased_at) VALUES (?1, ?2)",
                params![
                    self.tombstone(tenant, subject).as_slice(),
                    domicile_proto::domain::unix_now()
                ],
            )?;
            Ok(n)
        })?;
        if conn.dialect() == Dialect::Postgres {
            // The deleted row's bytes leave the table's pages at the next vacuum: now, rather
            // than whenever autovacuum comes (see docs/operations.md on the vault's WAL).
            conn.execute_batch("VACUUM data_keys")?;
        }
        Ok(n > 0)
    }

    /// The tombstone of a subject: HMAC-SHA256 keyed by the KEK-derived key.
    fn tombstone(&self, tenant: &str, subject: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.tombstone_key)
            .expect("HMAC takes any key length");
        mac.update(tenant.as_bytes());
        mac.update(&[0]);
        mac.update(subject.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether the subject was erased (its key destroyed) in this vault.
    pub fn was_erased(&self, tenant: &str, subject: &str) -> Result<bool, NodeError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn
            .query_row(
                "SELECT 1 FROM erased_subjects WHERE tombstone = ?1",
                params![self.tombstone(tenant, subject).as_slice()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_seal_and_are_shredded() {
        let dir = tempfile::tempdir().unwrap();
        let at = Backend::Sqlite(dir.path().join("keys.sqlite"));
        let vault = Vault::open(&at, &[3; 32]).unwrap();
        let keys = vault
            .keys("acme", &BTreeSet::from(["s1", "s2"]), true)
            .unwrap();
        let blob = keys["s1"].seal(b"aad", b"secret").unwrap();
        assert_eq!(keys["s1"].open(b"aad", &blob).unwrap(), b"secret");
        assert!(
            keys["s1"].open(b"other", &blob).is_none(),
            "bound to its AAD"
        );
        assert!(
            keys["s2"].open(b"aad", &blob).is_none(),
            "one key per subject"
        );
        // The same key comes back from the vault…
        let again = vault.key("acme", "s1").unwrap().unwrap();
        assert_eq!(again.open(b"aad", &blob).unwrap(), b"secret");
        // …until it is destroyed.
        assert!(!vault.was_erased("acme", "s1").unwrap());
        assert!(vault.destroy("acme", "s1").unwrap());
        assert!(vault.key("acme", "s1").unwrap().is_none());
        // …and the vault remembers the erasure, for restores, by a keyed hash only.
        assert!(vault.was_erased("acme", "s1").unwrap());
        assert!(!vault.was_erased("acme", "s2").unwrap());
        assert!(!vault.was_erased("other", "s1").unwrap());
        // A vault opened with another KEK cannot unwrap the keys.
        drop(vault);
        let wrong = Vault::open(&at, &[4; 32]).unwrap();
        assert!(wrong.key("acme", "s2").is_err());
    }
}
