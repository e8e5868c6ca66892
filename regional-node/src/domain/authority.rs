//! The tenant DPO's authority, checked at the node: the DPO keys the region's operator
//! registered per tenant, and the nonces already used.
//!
//! Requests that act on a person's whole record (access, portability, erasure, legal holds,
//! incident reports) carry a `DpoSignature` ([`domicile_proto::trust`]). The gateway's word that
//! a caller is the DPO counts for nothing here: the node verifies the signature against the
//! keys in `dpo_keys_file`, refuses a signed time outside the accepted window, and records each
//! nonce so that a replayed request is refused — across restarts and across the replicas of one
//! region, since the nonces live in the region's database.
//!
//! `dpo_keys_file` (TOML) is read at start and again whenever it changes on disk, so an
//! operator registers or revokes a key without a restart:
//!
//! ```toml
//! [[key]]
//! tenant = "acme"
//! public_key = "3b6a27bc…"   # 64 hex characters, from `domicile dpo keygen`
//! label = "acme DPO office"  # optional, for the operator
//! ```

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use domicile_proto::trust::{
    DPO_SIGNATURE_MAX_AGE_SECONDS, VerifiedDpo, dpo_key_id, parse_public_key,
};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::{
    error::NodeError,
    store::db::{Connection, params},
};

/// The nonce table; created with the rest of the schema.
pub const SCHEMA_SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS dpo_nonces (
    key_id  TEXT NOT NULL,
    nonce   BLOB NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dpo_nonces_by_time ON dpo_nonces (seen_at);
"#;

/// The same tables for PostgreSQL (`BIGINT` integers, `BYTEA` bytes, identity columns); the
/// triggers are PL/pgSQL, in [`crate::domain::schema`]. The store contract test checks that
/// both engines end up with the same tables, columns, keys and indexes.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS dpo_nonces (
    key_id  TEXT NOT NULL,
    nonce   BYTEA NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, nonce)
);

CREATE INDEX IF NOT EXISTS dpo_nonces_by_time ON dpo_nonces (seen_at);
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    tenant: String,
    public_key: String,
    #[serde(default)]
    #[allow(dead_code)] // For the operator reading the file.
    label: String,
}

/// (tenant, key id) → key.
type KeyMap = HashMap<(String, String), VerifyingKey>;

/// What was read from the file, and when it was last modified.
#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    keys: KeyMap,
}

/// The registered DPO keys; see the module documentation.
#[derive(Debug)]
pub struct DpoKeys {
    path: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Parses a keys file, naming the entry at fault.
fn parse(path: &Path) -> Result<KeyMap, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("dpo_keys_file: {}: {e}", path.display()))?;
    let file: KeysFile =
        toml::from_str(&text).map_err(|e| format!("dpo_keys_file: {}: {e}", path.display()))?;
    let mut keys = HashMap::new();
    for (i, k) in file.key.iter().enumerate() {
        if domicile_proto::domain::TenantId::parse(&k.tenant, "tenant").is_err() {
            return Err(format!("dpo_keys_file: key[{i}].tenant: not a tenant id"));
        }
        let key = parse_public_key(&k.public_key)
            .map_err(|e| format!("dpo_keys_file: key[{i}].public_key: {e}"))?;
        keys.insert((k.tenant.clone(), dpo_key_id(&key)), key);
    }
    Ok(keys)
}

impl DpoKeys {
    /// Reads `path` (none: no DPO key is registered, and every request that needs one is
    /// refused). An unreadable or invalid file stops the start.
    pub fn open(path: Option<&Path>) -> Result<Self, String> {
        let loaded = match path {
            Some(p) => Loaded {
                stamp: stamp(p),
                keys: parse(p)?,
            },
            None => Loaded::default(),
        };
        Ok(Self {
            path: path.map(Path::to_path_buf),
            loaded: Mutex::new(loaded),
        })
    }

    /// The key `key_id` registered for `tenant`, re-reading the file if it changed. A file
    /// that became invalid keeps the keys read before (and logs why).
    pub fn lookup(&self, tenant: &str, key_id: &str) -> Option<VerifyingKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path {
            let now = stamp(path);
            if now != loaded.stamp {
                match parse(path) {
                    Ok(keys) => {
                        tracing::info!(keys = keys.len(), "dpo_keys_file reloaded");
                        *loaded = Loaded { stamp: now, keys };
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "dpo_keys_file changed but cannot be read; keeping the keys read before");
                        loaded.stamp = now;
                    }
                }
            }
        }
        loaded
            .keys
            .get(&(tenant.to_owned(), key_id.to_owned()))
            .copied()
    }

    /// How many keys are registered.
    pub fn len(&self) -> usize {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len()
    }

    /// True when no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records `verified`'s nonce as used at `now`, in the caller's transaction; `false` when it
/// was used before (a replay). Nonces older than the accepted signing window are forgotten on
/// the way: a signature that old is refused as stale anyway.
pub fn use_nonce(tx: &Connection, verified: &VerifiedDpo, now: i64) -> Result<bool, NodeError> {
    tx.execute(
        "DELETE FROM dpo_nonces WHERE seen_at < $1",
        params![now - 2 * DPO_SIGNATURE_MAX_AGE_SECONDS],
    )?;
    let inserted = tx.execute(
        "INSERT INTO dpo_nonces (key_id, nonce, seen_at) VALUES ($1, $2, $3)
         ON CONFLICT (key_id, nonce) DO NOTHING",
        params![verified.key_id.as_str(), verified.nonce.as_slice(), now],
    )?;
    Ok(inserted == 1)
}
