//! The tamper-evident audit log of a node: hash-chained entries and signed checkpoints.
//!
//! Every processing event that matters is appended in the same SQLite transaction as the action
//! it records ([`AuditLog::append`]); an entry's hash covers its predecessor's hash, its number
//! and its contents (the exact construction is documented in `audit.proto`). Checkpoints sign the
//! head with the region's Ed25519 audit key every `checkpoint_every` entries, every few minutes
//! while serving, and on request (`GetAuditCheckpoint`).
//!
//! [`verify`] walks the log and the checkpoints and names the first entry that was modified,
//! removed, reordered or truncated. Entries carry no direct identifier: subjects appear as
//! audit pseudonyms ([`crate::privacy::pseudonym`]), and details are counts and parameters.

use std::{collections::HashMap, fmt};

use crate::store::db::{Connection, OptionalExtension, params};
use domicile_proto::pb::{AuditCheckpoint, RegionRelease};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::NodeError;

/// The audit tables; created with the rest of the schema.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_log (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    tenant    TEXT NOT NULL,
    subject   TEXT,
    details   TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_subject ON audit_log (tenant, subject) WHERE subject IS NOT NULL;
-- The console's releases over time (`overview::releases`).
CREATE INDEX IF NOT EXISTS audit_by_kind ON audit_log (tenant, kind, at);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    signature BLOB NOT NULL
);
-- Checkpoints are evidence: removing the newest would let a rewritten tail pass `verify`.
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'the audit checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'the audit checkpoints are append-only'); END;
"#;

/// The advisory-lock key that serialises appends between replicas sharing one database.
const APPEND_LOCK: i64 = 0x646f_6d69_0003;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The node started, with its policies.
    NodeStart,
    /// A batch of sealed records was ingested.
    IngestBatch,
    /// Aggregates crossed the border.
    ReleaseAggregate,
    /// A pseudonymised record stream began.
    ReleaseRecordsStart,
    /// A pseudonymised record stream ended; the rows that left.
    ReleaseRecords,
    /// A consent ledger entry was appended.
    ConsentChange,
    /// An incident was reported.
    IncidentReported,
    /// Affected subjects of an incident were listed in-country.
    IncidentSubjectsListed,
    /// A data-subject request was fulfilled (access, portability, rectification, restriction,
    /// objection).
    SubjectRequest,
    /// A subject was erased (or partly, under a legal hold).
    Erasure,
    /// A legal hold was placed, released or expired.
    LegalHold,
    /// The retention sweeper deleted what the policies no longer allow to keep.
    RetentionSweep,
    /// The database was restored from a backup, and erased subjects were erased again.
    Restore,
    /// A request that needs the tenant DPO's signature was refused (missing, wrong, stale or
    /// replayed).
    DpoRefused,
    /// A differentially private release was made (its noisy cells stored) and charged.
    DpRelease,
    /// An exact aggregate was answered on the in-country listener.
    LocalAggregate,
    /// A follow-up was opened, refused, given an outcome or cancelled.
    FollowUp,
    /// A follow-up's subject was re-identified on the in-country listener, for its purpose.
    FollowUpReidentified,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 18] = [
        Kind::NodeStart,
        Kind::IngestBatch,
        Kind::ReleaseAggregate,
        Kind::ReleaseRecordsStart,
        Kind::ReleaseRecords,
        Kind::ConsentChange,
        Kind::IncidentReported,
        Kind::IncidentSubjectsListed,
        Kind::SubjectRequest,
        Kind::Erasure,
        Kind::LegalHold,
        Kind::RetentionSweep,
        Kind::Restore,
        Kind::DpoRefused,
        Kind::DpRelease,
        Kind::LocalAggregate,
        Kind::FollowUp,
        Kind::FollowUpReidentified,
    ];

    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeStart => "node_start",
            Self::IngestBatch => "ingest_batch",
            Self::ReleaseAggregate => "release_aggregate",
            Self::ReleaseRecordsStart => "release_records_start",
            Self::ReleaseRecords => "release_records",
            Self::ConsentChange => "consent_change",
            Self::IncidentReported => "incident_reported",
            Self::IncidentSubjectsListed => "incident_subjects_listed",
            Self::SubjectRequest => "subject_request",
            Self::Erasure => "erasure",
            Self::LegalHold => "legal_hold",
            Self::RetentionSweep => "retention_sweep",
            Self::Restore => "restore",
            Self::DpoRefused => "dpo_refused",
            Self::DpRelease => "dp_release",
            Self::LocalAggregate => "local_aggregate",
            Self::FollowUp => "follow_up",
            Self::FollowUpReidentified => "follow_up_reidentified",
        }
    }

    /// The data categories an activity of this kind touches, for records of processing.
    pub fn categories(self) -> &'static [&'static str] {
        match self {
            Self::NodeStart | Self::DpoRefused => &[],
            Self::IngestBatch => &[
                "profile",
                "contact_details",
                "interactions",
                "survey_answers",
                "comments",
            ],
            Self::ReleaseAggregate | Self::DpRelease | Self::LocalAggregate => {
                &["interactions", "survey_answers"]
            }
            Self::ReleaseRecordsStart | Self::ReleaseRecords => {
                &["interactions", "survey_answers", "comments", "profile"]
            }
            Self::ConsentChange => &["consent_records"],
            Self::IncidentReported => &[],
            Self::IncidentSubjectsListed | Self::FollowUpReidentified => {
                &["profile", "contact_details"]
            }
            Self::FollowUp => &["interactions", "consent_records"],
            Self::SubjectRequest
            | Self::Erasure
            | Self::LegalHold
            | Self::RetentionSweep
            | Self::Restore => &[
                "profile",
                "contact_details",
                "interactions",
                "survey_answers",
                "comments",
                "consent_records",
            ],
        }
    }
}

/// One entry to append.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// What it records.
    pub kind: Kind,
    /// The tenant ("" for node-wide events).
    pub tenant: &'a str,
    /// The subject's audit pseudonym, when the event concerns one subject.
    pub subject: Option<&'a str>,
    /// Counts and parameters as JSON; never a personal value. [`AuditLog::append`] adds
    /// `principal`: who caused the event (see [`principal_of_call`]).
    pub details: serde_json::Value,
}

/// The principal an entry is attributed to: the call's (the gateway's authenticated caller,
/// with `;dpo-key=<id>` for a DPO-signed request), or `node` for what the node does by itself
/// (start, sweeps, checkpoints).
pub fn principal_of_call() -> String {
    domicile_ops::principal::current().map_or_else(|| "node".to_owned(), |p| p.to_string())
}

/// hash(n) as documented in `audit.proto`.
pub fn entry_hash(
    prev: &[u8],
    seq: u64,
    at: i64,
    kind: &str,
    tenant: &str,
    subject: Option<&str>,
    details: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"domicile/v1/audit\0");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [kind, tenant, subject.unwrap_or(""), details] {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

pub use domicile_proto::trust::checkpoint_message;

/// The bytes a release signature covers.
pub fn release_message(release: &RegionRelease) -> Vec<u8> {
    let mut unsigned = release.clone();
    unsigned.signature.clear();
    let mut m = b"domicile/v1/release\0".to_vec();
    m.extend_from_slice(&unsigned.encode_to_vec());
    m
}

/// A node's audit log: its region, signing key and checkpoint cadence.
pub struct AuditLog {
    region_id: String,
    key: SigningKey,
    checkpoint_every: u64,
    /// Stamps entries and checkpoints: the node's clock.
    clock: domicile_ops::clock::SharedClock,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("region_id", &self.region_id)
            .field("checkpoint_every", &self.checkpoint_every)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// An audit log signing with the Ed25519 key whose 32-byte seed is `seed`.
    pub fn new(region_id: &str, seed: &[u8; 32], checkpoint_every: u64) -> Self {
        Self {
            region_id: region_id.to_owned(),
            key: SigningKey::from_bytes(seed),
            checkpoint_every: checkpoint_every.max(1),
            clock: domicile_ops::clock::system(),
        }
    }

    /// The log with entries stamped by `clock` (the node's).
    pub fn with_clock(mut self, clock: domicile_ops::clock::SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The public key that verifies checkpoints and releases.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Appends `entry` in the caller's transaction and returns its number; makes a checkpoint
    /// every `checkpoint_every` entries.
    pub fn append(&self, tx: &Connection, entry: Entry<'_>) -> Result<u64, NodeError> {
        // Replicas over one PostgreSQL database take turns at the head, until their commits.
        tx.lock(APPEND_LOCK)?;
        let last: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (prev_seq, prev_hash) = last.unwrap_or((0, vec![0; 32]));
        let seq = prev_seq as u64 + 1;
        let at = self.clock.now();
        let mut details = entry.details;
        if let serde_json::Value::Object(map) = &mut details {
            map.insert("principal".into(), principal_of_call().into());
        }
        let details = details.to_string();
        let hash = entry_hash(
            &prev_hash,
            seq,
            at,
            entry.kind.as_str(),
            entry.tenant,
            entry.subject,
            &details,
        );
        tx.execute(
            "INSERT INTO audit_log (seq, at, kind, tenant, subject, details, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            params![
                seq as i64,
                at,
                entry.kind.as_str(),
                entry.tenant,
                entry.subject,
                details,
                prev_hash,
                hash.as_slice()
            ],
        )?;
        if seq.is_multiple_of(self.checkpoint_every) {
            self.sign_head(tx, seq, at, &hash)?;
        }
        Ok(seq)
    }

    fn sign_head(
        &self,
        tx: &Connection,
        seq: u64,
        at: i64,
        head: &[u8],
    ) -> Result<AuditCheckpoint, NodeError> {
        let signature = self
            .key
            .sign(&checkpoint_message(&self.region_id, seq, at, head));
        tx.execute(
            "INSERT INTO audit_checkpoints (seq, at, head_hash, signature) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            params![seq as i64, at, head, signature.to_bytes().as_slice()],
        )?;
        Ok(AuditCheckpoint {
            region_id: self.region_id.clone(),
            seq,
            at: Some(domicile_proto::domain::whole_seconds(at)),
            head_hash: head.to_vec(),
            signature: signature.to_bytes().to_vec(),
            public_key: self.public_key().to_vec(),
        })
    }

    /// A checkpoint of the current head: the latest stored one if the head has not moved,
    /// otherwise a new one, stored.
    pub fn checkpoint(&self, tx: &Connection) -> Result<AuditCheckpoint, NodeError> {
        let head: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (seq, hash) = head.unwrap_or((0, vec![0; 32]));
        let stored: Option<(i64, Vec<u8>, Vec<u8>)> = tx
            .query_row(
                "SELECT at, head_hash, signature FROM audit_checkpoints WHERE seq = $1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match stored {
            Some((at, head_hash, signature)) => Ok(AuditCheckpoint {
                region_id: self.region_id.clone(),
                seq: seq as u64,
                at: Some(domicile_proto::domain::whole_seconds(at)),
                head_hash,
                signature,
                public_key: self.public_key().to_vec(),
            }),
            None => self.sign_head(tx, seq as u64, self.clock.now(), &hash),
        }
    }

    /// Signs a statement of the region's sealing key with the identity (audit) key.
    pub fn sign_statement(
        &self,
        statement: &domicile_proto::pb::SealingKeyStatement,
    ) -> domicile_proto::pb::SignedSealingKey {
        domicile_proto::trust::sign_statement(statement, &self.key)
    }

    /// Signs `release` (after its `audit_seq` is set).
    pub fn sign_release(&self, release: &mut RegionRelease) {
        release.signature = self.key.sign(&release_message(release)).to_bytes().to_vec();
    }
}

/// For a witness that saw entry `known` last: checks that the log from `known` to `head` still
/// chains (each entry's stored hash recomputes from its predecessor's), and returns entry
/// `known`'s hash (empty for 0 or past the head). A break is `Internal`: the node's own log is
/// damaged, and a witness must not be told otherwise.
pub fn chain_from(tx: &Connection, known: u64, head: u64) -> Result<Vec<u8>, NodeError> {
    if known == 0 || known > head {
        return Ok(Vec::new());
    }
    let mut stmt = tx.prepare(
        "SELECT seq, at, kind, tenant, subject, details, prev_hash, hash FROM audit_log
         WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![known as i64, head as i64])?;
    let mut known_hash = Vec::new();
    let mut prev: Option<Vec<u8>> = None;
    let mut expected = known;
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as u64;
        let (at, kind, tenant): (i64, String, String) = (r.get(1)?, r.get(2)?, r.get(3)?);
        let (subject, details): (Option<String>, String) = (r.get(4)?, r.get(5)?);
        let (prev_hash, hash): (Vec<u8>, Vec<u8>) = (r.get(6)?, r.get(7)?);
        let broken = seq != expected
            || prev.as_ref().is_some_and(|p| *p != prev_hash)
            || entry_hash(
                &prev_hash,
                seq,
                at,
                &kind,
                &tenant,
                subject.as_deref(),
                &details,
            )
            .as_slice()
                != hash.as_slice();
        if broken {
            return Err(NodeError::Internal(format!(
                "the audit log does not chain at entry {expected}: run `domicile audit verify`"
            )));
        }
        if seq == known {
            known_hash = hash.clone();
        }
        prev = Some(hash);
        expected += 1;
    }
    if expected != head + 1 {
        return Err(NodeError::Internal(format!(
            "the audit log is missing entry {expected}: run `domicile audit verify`"
        )));
    }
    Ok(known_hash)
}

/// Verifies a release signature with a region's audit public key.
pub fn verify_release(release: &RegionRelease, public_key: &[u8]) -> bool {
    let (Ok(key), Ok(sig)) = (
        <[u8; 32]>::try_from(public_key)
            .map_err(|_| ())
            .and_then(|k| VerifyingKey::from_bytes(&k).map_err(|_| ())),
        Signature::from_slice(&release.signature),
    ) else {
        return false;
    };
    key.verify(&release_message(release), &sig).is_ok()
}

/// How the log was tampered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tampering {
    /// The entry's contents no longer match its hash.
    Modified,
    /// The entry is missing (a gap in the numbering, or a broken link to it).
    Removed,
    /// The entry is intact but not where it was written.
    Reordered,
    /// The log ends before a signed checkpoint: this entry and the ones after it are gone.
    Truncated,
    /// The chain up to this checkpoint was rewritten: it no longer ends in the signed head.
    Rewritten,
    /// A checkpoint's signature does not verify with the region's key.
    ForgedCheckpoint,
    /// Entries exist but no signed checkpoint covers any of them: nothing proves they are the
    /// node's (checkpoints were removed, or the log was written without the node).
    Unwitnessed,
    /// The log does not extend a head obtained earlier (`--trusted-head`).
    Forked,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    /// The entry (or checkpoint) number.
    pub seq: u64,
    /// What happened to it.
    pub kind: Tampering,
    /// A sentence for the operator.
    pub detail: String,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {}: {:?}: {}", self.seq, self.kind, self.detail)
    }
}

/// What a clean verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signatures and heads verified.
    pub checkpoints: u64,
    /// The head hash.
    pub head: [u8; 32],
    /// Every entry's hash, by number.
    pub hashes: HashMap<u64, [u8; 32]>,
    /// The latest signed checkpoint (the head to keep, and pass as a trusted head next time).
    pub latest: Option<AuditCheckpoint>,
}

/// Walks the whole log and every checkpoint. `Ok` when intact; otherwise the first problem.
pub fn verify(
    conn: &Connection,
    region_id: &str,
    public_key: &[u8; 32],
) -> Result<Result<Verified, Tamper>, NodeError> {
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|e| NodeError::Internal(format!("audit public key: {e}")))?;
    type Row = (
        u64,
        i64,
        String,
        String,
        Option<String>,
        String,
        Vec<u8>,
        Vec<u8>,
    );
    let mut stmt = conn.prepare(
        "SELECT seq, at, kind, tenant, subject, details, prev_hash, hash FROM audit_log ORDER BY seq",
    )?;
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let by_hash: HashMap<&[u8], u64> = rows.iter().map(|r| (r.7.as_slice(), r.0)).collect();
    let mut hashes: HashMap<u64, [u8; 32]> = HashMap::with_capacity(rows.len());
    let mut prev = [0u8; 32];
    let mut expected = 1u64;
    for (seq, at, kind, tenant, subject, details, prev_hash, hash) in &rows {
        let fail =
            |seq: u64, kind: Tampering, detail: String| Ok(Err(Tamper { seq, kind, detail }));
        if *seq != expected {
            return fail(
                expected,
                Tampering::Removed,
                format!(
                    "missing: the log jumps from entry {} to {seq}",
                    expected - 1
                ),
            );
        }
        let recomputed = entry_hash(
            prev_hash,
            *seq,
            *at,
            kind,
            tenant,
            subject.as_deref(),
            details,
        );
        if prev_hash.as_slice() != prev {
            // It links to an entry that exists elsewhere in the log: it was moved.
            if let Some(after) = by_hash.get(prev_hash.as_slice()) {
                return fail(
                    *seq,
                    Tampering::Reordered,
                    format!("out of place: it was written right after what is now entry {after}"),
                );
            }
            return fail(
                *seq,
                Tampering::Removed,
                "its link to the previous entry is broken: an entry before it was removed or replaced"
                    .into(),
            );
        }
        if recomputed.as_slice() != hash.as_slice() {
            return fail(
                *seq,
                Tampering::Modified,
                "its contents no longer match its hash".into(),
            );
        }
        prev = recomputed;
        hashes.insert(*seq, recomputed);
        expected += 1;
    }
    let last = expected - 1;

    let mut stmt =
        conn.prepare("SELECT seq, at, head_hash, signature FROM audit_checkpoints ORDER BY seq")?;
    let checkpoints: Vec<(u64, i64, Vec<u8>, Vec<u8>)> = stmt
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut good_before = 0u64;
    for (seq, at, head, signature) in &checkpoints {
        let signed = Signature::from_slice(signature)
            .ok()
            .filter(|sig| {
                key.verify(&checkpoint_message(region_id, *seq, *at, head), sig)
                    .is_ok()
            })
            .is_some();
        if !signed {
            return Ok(Err(Tamper {
                seq: *seq,
                kind: Tampering::ForgedCheckpoint,
                detail: "the checkpoint's signature does not verify with the region's audit key"
                    .into(),
            }));
        }
        if *seq > last {
            return Ok(Err(Tamper {
                seq: last + 1,
                kind: Tampering::Truncated,
                detail: format!(
                    "the log ends at entry {last} but a signed checkpoint covers entry {seq}"
                ),
            }));
        }
        let actual = if *seq == 0 { [0; 32] } else { hashes[seq] };
        if actual.as_slice() != head.as_slice() {
            return Ok(Err(Tamper {
                seq: good_before + 1,
                kind: Tampering::Rewritten,
                detail: format!(
                    "entries {}..={seq} were rewritten: the chain no longer ends in the head signed at entry {seq}",
                    good_before + 1
                ),
            }));
        }
        good_before = *seq;
    }
    if last > 0 && checkpoints.iter().all(|c| c.0 == 0) {
        return Ok(Err(Tamper {
            seq: 1,
            kind: Tampering::Unwitnessed,
            detail: format!(
                "{last} entries and no signed checkpoint over any of them: checkpoints were removed, or the log was not written by the node"
            ),
        }));
    }
    let latest = checkpoints
        .last()
        .map(|(seq, at, head, signature)| AuditCheckpoint {
            region_id: region_id.to_owned(),
            seq: *seq,
            at: Some(domicile_proto::domain::whole_seconds(*at)),
            head_hash: head.clone(),
            signature: signature.clone(),
            public_key: public_key.to_vec(),
        });
    Ok(Ok(Verified {
        entries: last,
        checkpoints: checkpoints.len() as u64,
        head: prev,
        hashes,
        latest,
    }))
}

/// Checks that a verified log extends `trusted`, a checkpoint obtained earlier (from the
/// gateway's witness, or kept by the operator): signed by `public_key`, for `region_id`,
/// covering an entry the log still has, with the same hash.
pub fn extends(
    verified: &Verified,
    trusted: &AuditCheckpoint,
    region_id: &str,
    public_key: &[u8; 32],
) -> Result<(), Tamper> {
    let fail = |seq: u64, kind: Tampering, detail: String| Err(Tamper { seq, kind, detail });
    if trusted.region_id != region_id
        || !domicile_proto::trust::verify_checkpoint(trusted, public_key)
    {
        return fail(
            trusted.seq,
            Tampering::ForgedCheckpoint,
            "the trusted head is not a checkpoint of this region signed with its audit key".into(),
        );
    }
    if trusted.seq > verified.entries {
        return fail(
            verified.entries + 1,
            Tampering::Forked,
            format!(
                "the log ends at entry {} but the trusted head covers entry {}: truncated, or restored from an older copy",
                verified.entries, trusted.seq
            ),
        );
    }
    let actual = if trusted.seq == 0 {
        [0; 32]
    } else {
        verified.hashes[&trusted.seq]
    };
    if actual.as_slice() != trusted.head_hash.as_slice() {
        return fail(
            trusted.seq,
            Tampering::Forked,
            format!(
                "entry {} no longer has the trusted head's hash: the log up to it was rewritten (and its checkpoints with it)",
                trusted.seq
            ),
        );
    }
    Ok(())
}

/// Opens a node's database read-only, for the operator commands.
pub fn open_read_only(backend: &crate::store::Backend) -> Result<Connection, NodeError> {
    backend.connect_read_only()
}

/// One line of the records of processing: an activity, for one tenant and purpose.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Activity {
    /// The kind of processing (`ingest_batch`, `release_aggregate`, …).
    pub activity: String,
    /// The tenant (controller) it was done for.
    pub tenant: String,
    /// The declared purpose, when the activity has one.
    pub purpose: String,
    /// How many times it happened.
    pub events: u64,
    /// The data categories it touches.
    pub data_categories: Vec<String>,
    /// Who received its results.
    pub recipients: String,
    /// Records stored (ingest).
    pub records_ingested: u64,
    /// Aggregate groups released across the border.
    pub groups_released: u64,
    /// Aggregate groups withheld for being smaller than k.
    pub groups_suppressed: u64,
    /// Pseudonymised rows released across the border.
    pub rows_released: u64,
    /// Differential-privacy epsilon spent.
    pub epsilon_spent: f64,
}

/// Records of processing from the log, for entries in `[from, to)` (Unix seconds).
pub fn activities(conn: &Connection, from: i64, to: i64) -> Result<Vec<Activity>, NodeError> {
    let mut stmt = conn.prepare(
        "SELECT kind, tenant, details FROM audit_log WHERE at >= $1 AND at < $2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut by_key: std::collections::BTreeMap<(String, String, String), Activity> =
        std::collections::BTreeMap::new();
    for row in rows {
        let (kind, tenant, details) = row?;
        let Some(k) = Kind::ALL.iter().find(|k| k.as_str() == kind) else {
            continue;
        };
        if matches!(k, Kind::NodeStart | Kind::ReleaseRecordsStart) {
            continue;
        }
        let d: serde_json::Value = serde_json::from_str(&details).unwrap_or_default();
        let purpose = d["purpose"].as_str().unwrap_or("").to_owned();
        let a = by_key
            .entry((kind.clone(), tenant.clone(), purpose.clone()))
            .or_insert_with(|| Activity {
                activity: kind.clone(),
                tenant: tenant.clone(),
                purpose,
                data_categories: k.categories().iter().map(|c| (*c).to_owned()).collect(),
                recipients: match k {
                    Kind::ReleaseAggregate => {
                        format!("tenant {tenant} through the gateway, outside the region: aggregates")
                    }
                    Kind::ReleaseRecords => format!(
                        "tenant {tenant} through the gateway, outside the region: pseudonymised records"
                    ),
                    Kind::IncidentSubjectsListed | Kind::LocalAggregate => {
                        "in-country staff (LocalNode)".to_owned()
                    }
                    Kind::DpRelease => {
                        "none: noisy cells stored in the region; they leave only summed, as aggregates"
                            .to_owned()
                    }
                    _ => "none (stored in the region)".to_owned(),
                },
                ..Default::default()
            });
        a.events += 1;
        let n = |key: &str| d[key].as_u64().unwrap_or(0);
        a.records_ingested += n("accepted");
        a.groups_released += n("groups_released");
        a.groups_suppressed += n("groups_suppressed");
        a.rows_released += n("rows_released");
        a.epsilon_spent += d["epsilon"].as_f64().unwrap_or(0.0);
    }
    Ok(by_key.into_values().collect())
}

/// The activities as CSV, with a header line.
pub fn activities_csv(activities: &[Activity]) -> String {
    let mut out = String::from(
        "activity,tenant,purpose,events,data_categories,recipients,records_ingested,groups_released,groups_suppressed,rows_released,epsilon_spent\n",
    );
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for a in activities {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            a.activity,
            a.tenant,
            a.purpose,
            a.events,
            quote(&a.data_categories.join(";")),
            quote(&a.recipients),
            a.records_ingested,
            a.groups_released,
            a.groups_suppressed,
            a.rows_released,
            a.epsilon_spent
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize, every: u64) -> (Connection, AuditLog) {
        let conn = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        conn.execute_batch(SCHEMA).unwrap();
        let log = AuditLog::new("eu-de", &[5; 32], every);
        for i in 0..n {
            log.append(
                &conn,
                Entry {
                    kind: Kind::IngestBatch,
                    tenant: "acme",
                    subject: None,
                    details: serde_json::json!({ "accepted": i }),
                },
            )
            .unwrap();
        }
        (conn, log)
    }

    fn unlock(conn: &Connection) {
        conn.execute_batch(
            "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;
             DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;",
        )
        .unwrap();
    }

    fn check(conn: &Connection, log: &AuditLog) -> Result<Verified, Tamper> {
        verify(conn, "eu-de", &log.public_key()).unwrap()
    }

    #[test]
    fn an_intact_log_verifies() {
        let (conn, log) = log_with(25, 10);
        let v = check(&conn, &log).unwrap();
        assert_eq!((v.entries, v.checkpoints), (25, 2));
    }

    #[test]
    fn the_log_refuses_updates_unless_the_triggers_are_dropped() {
        let (conn, _) = log_with(3, 10);
        assert!(
            conn.execute("UPDATE audit_log SET details = '{}'", [])
                .is_err()
        );
        assert!(conn.execute("DELETE FROM audit_log", []).is_err());
    }

    #[test]
    fn a_modified_entry_is_named() {
        let (conn, log) = log_with(25, 10);
        unlock(&conn);
        conn.execute(
            "UPDATE audit_log SET details = '{\"accepted\":99}' WHERE seq = 7",
            [],
        )
        .unwrap();
        let t = check(&conn, &log).unwrap_err();
        assert_eq!((t.seq, t.kind), (7, Tampering::Modified));
    }

    #[test]
    fn a_removed_entry_is_named() {
        let (conn, log) = log_with(25, 10);
        unlock(&conn);
        conn.execute("DELETE FROM audit_log WHERE seq = 12", [])
            .unwrap();
        let t = check(&conn, &log).unwrap_err();
        assert_eq!((t.seq, t.kind), (12, Tampering::Removed));
    }

    #[test]
    fn reordered_entries_are_named() {
        let (conn, log) = log_with(25, 10);
        unlock(&conn);
        // Swap entries 14 and 15 by renumbering them.
        conn.execute_batch(
            "UPDATE audit_log SET seq = -1 WHERE seq = 14;
             UPDATE audit_log SET seq = 14 WHERE seq = 15;
             UPDATE audit_log SET seq = 15 WHERE seq = -1;",
        )
        .unwrap();
        let t = check(&conn, &log).unwrap_err();
        assert_eq!((t.seq, t.kind), (14, Tampering::Reordered), "{t}");
    }

    #[test]
    fn truncation_before_a_checkpoint_is_named() {
        let (conn, log) = log_with(25, 10);
        unlock(&conn);
        conn.execute("DELETE FROM audit_log WHERE seq > 17", [])
            .unwrap();
        let t = check(&conn, &log).unwrap_err();
        // The checkpoint at 20 proves entries 18 to 20 existed.
        assert_eq!((t.seq, t.kind), (18, Tampering::Truncated));
    }

    #[test]
    fn a_rewritten_chain_and_a_forged_checkpoint_are_named() {
        let (conn, log) = log_with(25, 10);
        unlock(&conn);
        // Rewrite entry 13 and recompute every hash after it, as an attacker with the file
        // but without the signing key would.
        conn.execute(
            "UPDATE audit_log SET details = '{\"accepted\":0}' WHERE seq = 13",
            [],
        )
        .unwrap();
        let rows: Vec<(u64, i64, String, String, String)> = conn
            .prepare(
                "SELECT seq, at, kind, tenant, details FROM audit_log WHERE seq >= 13 ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut prev: Vec<u8> = conn
            .query_row("SELECT hash FROM audit_log WHERE seq = 12", [], |r| {
                r.get(0)
            })
            .unwrap();
        for (seq, at, kind, tenant, details) in rows {
            let h = entry_hash(&prev, seq, at, &kind, &tenant, None, &details);
            conn.execute(
                "UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3",
                params![prev, h.as_slice(), seq as i64],
            )
            .unwrap();
            prev = h.to_vec();
        }
        let t = check(&conn, &log).unwrap_err();
        assert_eq!((t.seq, t.kind), (11, Tampering::Rewritten), "{t}");

        // Re-signing the head needs the key: a checkpoint signed with another key is forged.
        let forger = AuditLog::new("eu-de", &[6; 32], 10);
        conn.execute("DELETE FROM audit_checkpoints WHERE seq = 20", [])
            .unwrap();
        let head: Vec<u8> = conn
            .query_row("SELECT hash FROM audit_log WHERE seq = 20", [], |r| {
                r.get(0)
            })
            .unwrap();
        forger.sign_head(&conn, 20, 0, &head).unwrap();
        let t = check(&conn, &log).unwrap_err();
        assert_eq!((t.seq, t.kind), (20, Tampering::ForgedCheckpoint), "{t}");
    }

    #[test]
    fn releases_are_signed() {
        let (_, log) = log_with(0, 10);
        let mut release = RegionRelease {
            region_id: "eu-de".into(),
            rows_released: 5,
            audit_seq: 3,
            ..Default::default()
        };
        log.sign_release(&mut release);
        assert!(verify_release(&release, &log.public_key()));
        release.rows_released = 6;
        assert!(!verify_release(&release, &log.public_key()));
    }
}
