//! The audit witness: the gateway keeps, per region, the latest audit checkpoint it verified,
//! and refuses a head that does not extend it.
//!
//! A node's audit log is hash-chained and its checkpoints are signed, but whoever can write the
//! node's database can rewrite the chain (no key is needed to recompute hashes) and let the node
//! sign a new head over it. Someone outside the node must remember what the head was. Each time
//! the gateway fetches a checkpoint (in the background every `audit_witness_seconds`, and on
//! `GetAuditCheckpoint`), it tells the node which entry it witnessed last (`known_seq`); the
//! node checks that its log still chains from that entry to the head and returns that entry's
//! hash as its log has it today. The head extends the witnessed one when:
//!
//! - the checkpoint's signature verifies with the key witnessed before (and the region's);
//! - it covers at least the witnessed entry (a shorter log was truncated or restored from an
//!   old copy);
//! - the entry's hash today is the one witnessed (otherwise the log was rewritten).
//!
//! Anything else is a **fork**: counted (`domicile_gateway_audit_forks_total`), flagged
//! (`domicile_gateway_audit_forked`), logged as an error, shown by the console, and answered as
//! `DATA_LOSS` by `GetAuditCheckpoint`. The witnessed head is kept; after a deliberate restore,
//! the operator removes the region's entry from the witness file to start again.
//!
//! What this cannot catch: a node *binary* modified to lie about `known_hash` (the node's
//! operator controls it). It catches edits to the database, rollbacks to old copies, and a
//! region presenting two different histories to the same witness.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use dashmap::DashMap;
use domicile_proto::{
    pb::{AuditCheckpoint, AuditWitness, AuditWitnessStatus},
    trust::verify_checkpoint,
};
use serde::{Deserialize, Serialize};

/// One witnessed head, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witnessed {
    /// The entry the checkpoint covers.
    pub seq: u64,
    /// hash(seq), hex.
    pub head_hash: String,
    /// When the region signed it (Unix seconds).
    pub at: i64,
    /// The region's audit key that signed it, hex.
    pub public_key: String,
    /// The signature, hex: the file is evidence on its own.
    pub signature: String,
}

/// The witness file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WitnessFile {
    version: u32,
    regions: BTreeMap<String, Witnessed>,
}

/// The gateway's audit witness; see the module documentation.
#[derive(Debug)]
pub struct Witness {
    path: Option<PathBuf>,
    heads: Mutex<BTreeMap<String, Witnessed>>,
    /// The latest verdict per region, for the console.
    pub(crate) last: DashMap<String, AuditWitness>,
}

impl Witness {
    /// The witness persisted at `path` (created on the first head), or one that forgets at
    /// restart. A file that cannot be read or parsed is an error: starting without it would
    /// accept any history.
    pub fn open(path: Option<&Path>) -> Result<Self, String> {
        let heads = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => {
                    let file: WitnessFile = serde_json::from_str(&text)
                        .map_err(|e| format!("audit_witness_file: {}: {e}", p.display()))?;
                    file.regions
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(format!("audit_witness_file: {}: {e}", p.display())),
            },
            None => {
                tracing::warn!(
                    "no audit_witness_file: the gateway's audit witness forgets the regions' heads at restart"
                );
                BTreeMap::new()
            }
        };
        Ok(Self {
            path: path.map(Path::to_path_buf),
            heads: Mutex::new(heads),
            last: DashMap::new(),
        })
    }

    /// The head witnessed for `region`, if any.
    pub fn witnessed(&self, region: &str) -> Option<Witnessed> {
        self.lock().get(region).cloned()
    }

    /// The latest verdict for `region` (unset before the first).
    pub fn last(&self, region: &str) -> Option<AuditWitness> {
        self.last.get(region).map(|w| w.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Witnessed>> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judges `checkpoint` (with the node's `known_hash` for the witnessed entry) against the
    /// head witnessed for `region`, and keeps it when it extends that head.
    pub fn judge(
        &self,
        region: &str,
        checkpoint: &AuditCheckpoint,
        known_hash: &[u8],
    ) -> AuditWitness {
        let mut heads = self.lock();
        let before = heads.get(region).cloned();
        let verdict = |status: AuditWitnessStatus, detail: String| AuditWitness {
            status: status as i32,
            witnessed_seq: before.as_ref().map_or(0, |w| w.seq),
            witnessed_hash: before
                .as_ref()
                .and_then(|w| hex::decode(&w.head_hash).ok())
                .unwrap_or_default(),
            detail,
        };
        let fork = |detail: String| verdict(AuditWitnessStatus::Fork, detail);
        if checkpoint.region_id != region {
            return fork(format!(
                "the checkpoint names another region ({:?})",
                checkpoint.region_id.chars().take(64).collect::<String>()
            ));
        }
        let key = hex::encode(&checkpoint.public_key);
        if !verify_checkpoint(checkpoint, &checkpoint.public_key) {
            return fork("the checkpoint's signature does not verify".into());
        }
        let status = match &before {
            None => AuditWitnessStatus::First,
            Some(w) if w.public_key != key => {
                return fork(format!(
                    "the region's audit key changed from {}… to {}…",
                    &w.public_key[..16],
                    &key[..16]
                ));
            }
            Some(w) if checkpoint.seq < w.seq => {
                return fork(format!(
                    "the log ends at entry {} but entry {} was witnessed: truncated, or restored from an older copy",
                    checkpoint.seq, w.seq
                ));
            }
            Some(w) if hex::encode(known_hash) != w.head_hash => {
                return fork(format!(
                    "entry {} no longer has the hash witnessed at {}: the log up to it was rewritten",
                    w.seq, w.at
                ));
            }
            Some(_) => AuditWitnessStatus::Extends,
        };
        let at = checkpoint.at.as_ref().map_or(0, |t| t.seconds);
        let now = Witnessed {
            seq: checkpoint.seq,
            head_hash: hex::encode(&checkpoint.head_hash),
            at,
            public_key: key,
            signature: hex::encode(&checkpoint.signature),
        };
        if before.as_ref().is_none_or(|w| w.seq != now.seq) {
            heads.insert(region.to_owned(), now);
            if let Err(e) = self.persist(&heads) {
                // The head is kept in memory; the next round writes again.
                tracing::error!(error = %e, "the audit witness file could not be written");
            }
        }
        verdict(status, String::new())
    }

    fn persist(&self, heads: &BTreeMap<String, Witnessed>) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = WitnessFile {
            version: 1,
            regions: heads.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn checkpoint(key: &SigningKey, seq: u64, head: [u8; 32]) -> AuditCheckpoint {
        let msg = domicile_proto::trust::checkpoint_message("eu-de", seq, 100, &head);
        AuditCheckpoint {
            region_id: "eu-de".into(),
            seq,
            at: Some(domicile_proto::domain::whole_seconds(100)),
            head_hash: head.to_vec(),
            signature: key.sign(&msg).to_bytes().to_vec(),
            public_key: key.verifying_key().to_bytes().to_vec(),
        }
    }

    fn status(w: &AuditWitness) -> AuditWitnessStatus {
        AuditWitnessStatus::try_from(w.status).unwrap()
    }

    #[test]
    fn heads_that_extend_are_kept_and_forks_are_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness.json");
        let key = SigningKey::from_bytes(&[5; 32]);
        let w = Witness::open(Some(&path)).unwrap();
        assert_eq!(
            status(&w.judge("eu-de", &checkpoint(&key, 10, [1; 32]), &[])),
            AuditWitnessStatus::First
        );
        // Extends: the node reports entry 10's hash unchanged.
        assert_eq!(
            status(&w.judge("eu-de", &checkpoint(&key, 20, [2; 32]), &[1; 32])),
            AuditWitnessStatus::Extends
        );
        // A restarted gateway remembers entry 20.
        let w = Witness::open(Some(&path)).unwrap();
        assert_eq!(w.witnessed("eu-de").unwrap().seq, 20);
        // Rewritten: entry 20's hash changed.
        let rewritten = w.judge("eu-de", &checkpoint(&key, 30, [3; 32]), &[9; 32]);
        assert_eq!(status(&rewritten), AuditWitnessStatus::Fork);
        assert!(
            rewritten.detail.contains("rewritten"),
            "{}",
            rewritten.detail
        );
        // Rolled back: a shorter log.
        let rolled = w.judge("eu-de", &checkpoint(&key, 15, [4; 32]), &[]);
        assert_eq!(status(&rolled), AuditWitnessStatus::Fork);
        assert!(rolled.detail.contains("truncated"), "{}", rolled.detail);
        // Another key, or a bad signature.
        let other = SigningKey::from_bytes(&[6; 32]);
        assert_eq!(
            status(&w.judge("eu-de", &checkpoint(&other, 40, [5; 32]), &[2; 32])),
            AuditWitnessStatus::Fork
        );
        let mut forged = checkpoint(&key, 40, [5; 32]);
        forged.head_hash = vec![6; 32];
        assert_eq!(
            status(&w.judge("eu-de", &forged, &[2; 32])),
            AuditWitnessStatus::Fork
        );
        // After all of that the witnessed head is still entry 20.
        assert_eq!(w.witnessed("eu-de").unwrap().seq, 20);
    }

    #[test]
    fn a_corrupt_witness_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(
            Witness::open(Some(&path))
                .unwrap_err()
                .contains("audit_witness_file")
        );
    }
}
