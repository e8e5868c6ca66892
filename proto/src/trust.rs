//! Trust that does not pass through the gateway: region identities, signed sealing keys, the
//! federation trust bundle, and the tenant DPO's signatures on requests.
//!
//! The gateway is untrusted (DESIGN.md §1). Two things must therefore be checked end to end:
//!
//! - **Which key to seal to.** Each region signs a [`SealingKeyStatement`] with its identity key
//!   (the Ed25519 audit key). A [`TrustBundle`] (region id → identity public key), distributed
//!   out of band, lets a client verify the statement the gateway relays before sealing a byte
//!   ([`TrustBundle::verify_region`]). A gateway that substitutes its own key is caught there.
//! - **Who asks for a person's whole record.** Access, portability, erasure, legal holds and
//!   incident reports carry a [`DpoSignature`] over the request's canonical bytes, a nonce and a
//!   time ([`sign_request`]); the node verifies it against the DPO keys its operator registered
//!   ([`verify_request`]), so the gateway cannot forge the DPO's authority, swap the export's
//!   recipient key, or replay a request.
//!
//! The byte layouts are documented in `gateway.proto` (`SignedSealingKey`) and `common.proto`
//! (`DpoSignature`).

use std::{collections::BTreeMap, fmt, path::Path};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::{
    pb::{
        AuditCheckpoint, DpoSignature, PlaceLegalHoldRequest, RegionInfo, ReleaseLegalHoldRequest,
        ReportIncidentRequest, SealingKeyStatement, SignedSealingKey, SubjectRequestReceipt,
        SubmitSubjectRequestRequest, UpdateSubjectRequestRequest,
    },
    seal::{PublicSealingKey, SUITE, key_id},
};

/// Domain separation of sealing-key statements.
const STATEMENT_CONTEXT: &[u8] = b"domicile/v1/sealing-key\0";
/// Domain separation of DPO request signatures.
const DPO_CONTEXT: &[u8] = b"domicile/v1/dpo-request\0";
/// Seconds of clock difference tolerated between a signer and a verifier.
pub const CLOCK_SKEW_SECONDS: i64 = 60;
/// How old a DPO signature may be when it reaches a node.
pub const DPO_SIGNATURE_MAX_AGE_SECONDS: i64 = 300;
/// Bounds of a DPO signature's nonce, in bytes.
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// The bytes a sealing-key statement's signature covers.
fn statement_message(statement: &[u8]) -> Vec<u8> {
    let mut m = STATEMENT_CONTEXT.to_vec();
    m.extend_from_slice(statement);
    m
}

/// Signs `statement` with a region's identity key.
pub fn sign_statement(statement: &SealingKeyStatement, identity: &SigningKey) -> SignedSealingKey {
    let bytes = statement.encode_to_vec();
    let signature = identity
        .sign(&statement_message(&bytes))
        .to_bytes()
        .to_vec();
    SignedSealingKey {
        statement: bytes,
        signature,
    }
}

/// Why a region's sealing key is not trusted. Every variant names the region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The bundle does not list the region.
    #[error("region {0}: not in the trust bundle; ask its operator for `domicile trust export`")]
    UnknownRegion(String),
    /// The bundle's entry for the region has expired.
    #[error("region {0}: its trust bundle entry expired; get a fresh bundle")]
    ExpiredEntry(String),
    /// The gateway relayed no signed statement.
    #[error("region {0}: no signed sealing key (the gateway relayed none)")]
    Unsigned(String),
    /// The signature does not verify with the region's identity key.
    #[error(
        "region {0}: the sealing key's signature does not verify with the region's identity key"
    )]
    BadSignature(String),
    /// The statement is malformed or for something else.
    #[error("region {0}: {1}")]
    Mismatch(String, String),
    /// The statement is outside its validity window.
    #[error("region {0}: the sealing key statement is not valid now ({1})")]
    Expired(String, String),
    /// An audit head older than, or different from, one seen before.
    #[error("region {0}: audit head rolled back or forked: {1}")]
    Rollback(String, String),
}

/// A sealing key whose statement verified: seal to it, and only for `countries`.
#[derive(Debug, Clone)]
pub struct TrustedSealingKey {
    /// The region.
    pub region_id: String,
    /// The key.
    pub key: PublicSealingKey,
    /// The countries the region's statement names.
    pub countries: Vec<String>,
    /// Until when (Unix seconds, exclusive) the statement holds.
    pub not_after: i64,
}

/// One region in a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedRegion {
    /// The region's Ed25519 identity public key, 64 hex characters.
    pub identity_public_key: String,
    /// Unix seconds after which the entry is no longer trusted (absent: no expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// The federation trust bundle: region id → identity key. A small JSON file produced by the
/// regions' operators (`domicile trust export`, combined by `domicile trust bundle`) and
/// distributed to clients out of band, never through the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundle {
    /// Format version; 1.
    pub version: u32,
    /// The regions, by id.
    pub regions: BTreeMap<String, TrustedRegion>,
}

/// A bundle file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("trust bundle {path}: {message}")]
pub struct BundleError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl TrustBundle {
    /// An empty version-1 bundle.
    pub fn new() -> Self {
        Self {
            version: 1,
            regions: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a region's identity key.
    pub fn insert(&mut self, region_id: &str, identity: &[u8; 32], expires_at: Option<i64>) {
        self.regions.insert(
            region_id.to_owned(),
            TrustedRegion {
                identity_public_key: hex::encode(identity),
                expires_at,
            },
        );
    }

    /// Parses and checks a bundle (`origin` names it in errors).
    pub fn from_json(json: &str, origin: &str) -> Result<Self, BundleError> {
        let err = |message: String| BundleError {
            path: origin.to_owned(),
            message,
        };
        let bundle: TrustBundle = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
        if bundle.version != 1 {
            return Err(err(format!("version {}: expected 1", bundle.version)));
        }
        for (region, entry) in &bundle.regions {
            identity_key(&entry.identity_public_key)
                .map_err(|m| err(format!("regions.{region}.identity_public_key: {m}")))?;
        }
        Ok(bundle)
    }

    /// Reads a bundle file.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let json = std::fs::read_to_string(path).map_err(|e| BundleError {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_json(&json, &path.display().to_string())
    }

    /// The bundle as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a bundle serialises")
    }

    /// Verifies the signed sealing key a gateway relayed for `region` at time `now` (Unix
    /// seconds): listed and unexpired in the bundle, signed by that identity, for that region,
    /// within its validity, and equal to the unsigned key the gateway relayed beside it.
    pub fn verify_region(
        &self,
        region: &RegionInfo,
        now: i64,
    ) -> Result<TrustedSealingKey, TrustError> {
        let id = &region.region_id;
        let entry = self
            .regions
            .get(id)
            .ok_or_else(|| TrustError::UnknownRegion(id.clone()))?;
        if entry.expires_at.is_some_and(|at| now >= at) {
            return Err(TrustError::ExpiredEntry(id.clone()));
        }
        let identity = identity_key(&entry.identity_public_key)
            .map_err(|m| TrustError::Mismatch(id.clone(), m))?;
        let signed = region
            .signed_sealing_key
            .as_ref()
            .ok_or_else(|| TrustError::Unsigned(id.clone()))?;
        let trusted = verify_statement(signed, &identity, id, now)?;
        // The unsigned copy must say the same: a difference means someone changed it in transit.
        if let Some(relayed) = &region.sealing_key
            && (relayed.public_key != trusted.key.as_bytes()
                || relayed.key_id != trusted.key.key_id())
        {
            return Err(TrustError::Mismatch(
                id.clone(),
                format!(
                    "the relayed sealing key {} is not the signed key {}",
                    relayed.key_id,
                    trusted.key.key_id()
                ),
            ));
        }
        Ok(trusted)
    }
}

impl TrustBundle {
    /// Checks a subject-request receipt's signature against its region's identity key in the
    /// bundle.
    pub fn verify_receipt(&self, receipt: &SubjectRequestReceipt) -> Result<(), TrustError> {
        let id = || receipt.region_id.clone();
        let entry = self
            .regions
            .get(&receipt.region_id)
            .ok_or_else(|| TrustError::UnknownRegion(id()))?;
        let identity =
            identity_key(&entry.identity_public_key).map_err(|m| TrustError::Mismatch(id(), m))?;
        if self::verify_receipt(receipt, identity.as_bytes()) {
            Ok(())
        } else {
            Err(TrustError::BadSignature(id()))
        }
    }

    /// Checks an audit checkpoint relayed for `region_id`: signed by the region's identity
    /// (audit) key from the bundle, for that region, and not behind `known` (a checkpoint of
    /// the region verified earlier): a later entry, or the same entry with the same hash.
    pub fn verify_checkpoint(
        &self,
        region_id: &str,
        checkpoint: &AuditCheckpoint,
        known: Option<&AuditCheckpoint>,
    ) -> Result<(), TrustError> {
        let id = || region_id.to_owned();
        let entry = self
            .regions
            .get(region_id)
            .ok_or_else(|| TrustError::UnknownRegion(id()))?;
        let identity =
            identity_key(&entry.identity_public_key).map_err(|m| TrustError::Mismatch(id(), m))?;
        if checkpoint.region_id != region_id || !verify_checkpoint(checkpoint, identity.as_bytes())
        {
            return Err(TrustError::BadSignature(id()));
        }
        if let Some(k) = known {
            if checkpoint.seq < k.seq {
                return Err(TrustError::Rollback(
                    id(),
                    format!(
                        "entry {} is behind entry {} seen before",
                        checkpoint.seq, k.seq
                    ),
                ));
            }
            if checkpoint.seq == k.seq && checkpoint.head_hash != k.head_hash {
                return Err(TrustError::Rollback(
                    id(),
                    format!("entry {} has another hash than seen before", k.seq),
                ));
            }
        }
        Ok(())
    }
}

fn identity_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("expected 64 hex characters")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_owned())
}

/// Verifies a signed statement with `identity` for region `region_id` at `now`.
pub fn verify_statement(
    signed: &SignedSealingKey,
    identity: &VerifyingKey,
    region_id: &str,
    now: i64,
) -> Result<TrustedSealingKey, TrustError> {
    let id = || region_id.to_owned();
    let signature =
        Signature::from_slice(&signed.signature).map_err(|_| TrustError::BadSignature(id()))?;
    identity
        .verify(&statement_message(&signed.statement), &signature)
        .map_err(|_| TrustError::BadSignature(id()))?;
    let statement = SealingKeyStatement::decode(signed.statement.as_slice())
        .map_err(|_| TrustError::Mismatch(id(), "the signed statement does not decode".into()))?;
    if statement.region_id != region_id {
        return Err(TrustError::Mismatch(
            id(),
            format!(
                "the statement is for region {:?}",
                statement.region_id.chars().take(64).collect::<String>()
            ),
        ));
    }
    if statement.suite != SUITE {
        return Err(TrustError::Mismatch(id(), "unknown HPKE suite".into()));
    }
    let key = PublicSealingKey::from_bytes(&statement.public_key)
        .map_err(|_| TrustError::Mismatch(id(), "the signed key is not an X25519 key".into()))?;
    if statement.key_id != key_id(&statement.public_key) {
        return Err(TrustError::Mismatch(
            id(),
            "the statement's key id is not its key's".into(),
        ));
    }
    if now + CLOCK_SKEW_SECONDS < statement.not_before {
        return Err(TrustError::Expired(
            id(),
            format!("valid from {}", statement.not_before),
        ));
    }
    if now >= statement.not_after {
        return Err(TrustError::Expired(
            id(),
            format!("expired at {}", statement.not_after),
        ));
    }
    Ok(TrustedSealingKey {
        region_id: statement.region_id,
        key,
        countries: statement.countries,
        not_after: statement.not_after,
    })
}

// ---------------------------------------------------------------------------------------------
// Audit checkpoints

/// The bytes an audit checkpoint's signature covers (layout in `audit.proto`).
pub fn checkpoint_message(region_id: &str, seq: u64, at: i64, head_hash: &[u8]) -> Vec<u8> {
    let mut m = b"domicile/v1/audit-checkpoint\0".to_vec();
    m.extend_from_slice(region_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&at.to_be_bytes());
    m.extend_from_slice(head_hash);
    m
}

/// What a region signs for a subject-request receipt: the receipt without its signature and
/// its export (`SubjectRequestReceipt.signature`).
pub fn receipt_message(receipt: &SubjectRequestReceipt) -> Vec<u8> {
    let unsigned = SubjectRequestReceipt {
        signature: Vec::new(),
        export: None,
        ..receipt.clone()
    };
    let mut m = b"domicile/v1/subject-request-receipt\0".to_vec();
    m.extend_from_slice(&unsigned.encode_to_vec());
    m
}

/// Signs `receipt` with the region's identity key.
pub fn sign_receipt(receipt: &mut SubjectRequestReceipt, identity: &SigningKey) {
    receipt.signature = identity.sign(&receipt_message(receipt)).to_bytes().to_vec();
}

/// Whether `receipt` is signed by `public_key` (32 bytes).
pub fn verify_receipt(receipt: &SubjectRequestReceipt, public_key: &[u8]) -> bool {
    let Some(key) = <[u8; 32]>::try_from(public_key)
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
    else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&receipt.signature) else {
        return false;
    };
    key.verify(&receipt_message(receipt), &signature).is_ok()
}

/// Whether `checkpoint` is signed by `public_key` (32 bytes) and well formed.
pub fn verify_checkpoint(checkpoint: &AuditCheckpoint, public_key: &[u8]) -> bool {
    let Some(key) = <[u8; 32]>::try_from(public_key)
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
    else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&checkpoint.signature) else {
        return false;
    };
    let at = checkpoint.at.as_ref().map_or(0, |t| t.seconds);
    checkpoint.head_hash.len() == 32
        && key
            .verify(
                &checkpoint_message(
                    &checkpoint.region_id,
                    checkpoint.seq,
                    at,
                    &checkpoint.head_hash,
                ),
                &signature,
            )
            .is_ok()
}

// ---------------------------------------------------------------------------------------------
// DPO signatures

/// A request the tenant's DPO signs.
pub trait DpoSigned: Message + Clone + Default {
    /// The message's full protobuf name, part of what is signed.
    const FULL_NAME: &'static str;
    /// The signature slot.
    fn dpo_signature(&self) -> Option<&DpoSignature>;
    /// The signature slot, to fill.
    fn dpo_signature_mut(&mut self) -> &mut Option<DpoSignature>;
}

macro_rules! dpo_signed {
    ($($t:ident),*) => {$(
        impl DpoSigned for $t {
            const FULL_NAME: &'static str = concat!("domicile.v1.", stringify!($t));
            fn dpo_signature(&self) -> Option<&DpoSignature> {
                self.dpo_signature.as_ref()
            }
            fn dpo_signature_mut(&mut self) -> &mut Option<DpoSignature> {
                &mut self.dpo_signature
            }
        }
    )*};
}
dpo_signed!(
    SubmitSubjectRequestRequest,
    PlaceLegalHoldRequest,
    ReleaseLegalHoldRequest,
    ReportIncidentRequest,
    UpdateSubjectRequestRequest
);

/// The id of a DPO public key (see `DpoSignature.key_id`).
pub fn dpo_key_id(public_key: &VerifyingKey) -> String {
    key_id(public_key.as_bytes())
}

/// The bytes a DPO signature covers (layout in `common.proto`).
pub fn dpo_message<R: DpoSigned>(
    request: &R,
    key_id: &str,
    nonce: &[u8],
    signed_at: i64,
) -> Vec<u8> {
    let mut unsigned = request.clone();
    *unsigned.dpo_signature_mut() = None;
    let mut m = DPO_CONTEXT.to_vec();
    m.extend_from_slice(R::FULL_NAME.as_bytes());
    m.push(0);
    m.extend_from_slice(key_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(&signed_at.to_be_bytes());
    unsigned.encode(&mut m).expect("a Vec grows");
    m
}

/// Signs `request` in place as the DPO holding `key`, at `now`, with a fresh random nonce.
pub fn sign_request<R: DpoSigned>(request: &mut R, key: &SigningKey, now: i64) {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the operating system's random source is available");
    sign_request_with(request, key, now, &nonce);
}

/// `request` signed now by `key` ([`sign_request`]), by value.
pub fn signed<R: DpoSigned>(mut request: R, key: &SigningKey) -> R {
    sign_request(&mut request, key, crate::domain::unix_now());
    request
}

/// [`sign_request`] with a given nonce (tests).
pub fn sign_request_with<R: DpoSigned>(request: &mut R, key: &SigningKey, now: i64, nonce: &[u8]) {
    let key_id = dpo_key_id(&key.verifying_key());
    let signature = key.sign(&dpo_message(request, &key_id, nonce, now));
    *request.dpo_signature_mut() = Some(DpoSignature {
        key_id,
        nonce: nonce.to_vec(),
        signed_at: Some(crate::domain::whole_seconds(now)),
        signature: signature.to_bytes().to_vec(),
    });
}

/// Why a node refuses a DPO signature. The message names the reason, never the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpoRefusal {
    /// No signature.
    #[error("dpo_signature: required: this request needs the tenant DPO's signature")]
    Missing,
    /// The key id is not registered for the tenant in this region.
    #[error(
        "dpo_signature.key_id: no DPO key with this id is registered for the tenant in this region"
    )]
    UnknownKey,
    /// Malformed fields.
    #[error("dpo_signature: {0}")]
    Malformed(&'static str),
    /// The signature does not verify.
    #[error("dpo_signature.signature: does not verify for this request with the registered key")]
    BadSignature,
    /// Signed too long ago, or in the future.
    #[error(
        "dpo_signature.signed_at: stale or from the future (accepted: the last {DPO_SIGNATURE_MAX_AGE_SECONDS} s)"
    )]
    Stale,
    /// The nonce was used before.
    #[error("dpo_signature.nonce: already used: a replayed request")]
    Replayed,
}

impl DpoRefusal {
    /// A short, stable name for audit entries and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::UnknownKey => "unknown_key",
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::Replayed => "replayed",
        }
    }
}

/// A signature that verified: which key, and the nonce to record as used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDpo {
    /// The key's id.
    pub key_id: String,
    /// The nonce (record it; refuse it next time).
    pub nonce: Vec<u8>,
    /// When it was signed.
    pub signed_at: i64,
}

/// Verifies `request`'s DPO signature at `now` with `lookup` (key id → the registered key for
/// the request's tenant). The nonce is the caller's to check and record.
pub fn verify_request<R: DpoSigned>(
    request: &R,
    now: i64,
    lookup: impl Fn(&str) -> Option<VerifyingKey>,
) -> Result<VerifiedDpo, DpoRefusal> {
    let sig = request.dpo_signature().ok_or(DpoRefusal::Missing)?;
    if !NONCE_LEN.contains(&sig.nonce.len()) {
        return Err(DpoRefusal::Malformed("nonce: 16 to 64 bytes"));
    }
    let signed_at = sig
        .signed_at
        .as_ref()
        .filter(|t| t.nanos == 0)
        .ok_or(DpoRefusal::Malformed("signed_at: required, whole seconds"))?
        .seconds;
    if sig.key_id.len() != 16 || !sig.key_id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(DpoRefusal::Malformed("key_id: 16 hex characters"));
    }
    let key = lookup(&sig.key_id).ok_or(DpoRefusal::UnknownKey)?;
    let signature = Signature::from_slice(&sig.signature)
        .map_err(|_| DpoRefusal::Malformed("signature: 64 bytes"))?;
    key.verify(
        &dpo_message(request, &sig.key_id, &sig.nonce, signed_at),
        &signature,
    )
    .map_err(|_| DpoRefusal::BadSignature)?;
    if signed_at > now + CLOCK_SKEW_SECONDS || signed_at < now - DPO_SIGNATURE_MAX_AGE_SECONDS {
        return Err(DpoRefusal::Stale);
    }
    Ok(VerifiedDpo {
        key_id: sig.key_id.clone(),
        nonce: sig.nonce.clone(),
        signed_at,
    })
}

/// An Ed25519 key file: 32 raw bytes of seed, or 64 hex characters (with optional trailing
/// newline).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let seed: Option<[u8; 32]> = match bytes.len() {
        32 => bytes.as_slice().try_into().ok(),
        _ => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| hex::decode(s.trim()).ok())
            .and_then(|b| b.try_into().ok()),
    };
    seed.map(|s| SigningKey::from_bytes(&s)).ok_or_else(|| {
        format!(
            "{}: expected a 32-byte Ed25519 seed (raw or 64 hex characters)",
            path.display()
        )
    })
}

/// A DPO public key as written in a node's `dpo_keys_file`: 64 hex characters.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    identity_key(hex_key)
}

impl fmt::Display for TrustedSealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {}", self.region_id, self.key.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        pb::{SealingKey, SubjectRef, SubjectRequestKind},
        seal::SealingKeyPair,
    };

    fn identity(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn region(keys: &SealingKeyPair, signer: &SigningKey, not_after: i64) -> RegionInfo {
        let public = keys.public();
        let statement = SealingKeyStatement {
            region_id: "eu-de".into(),
            countries: vec!["DE".into()],
            key_id: public.key_id().into(),
            public_key: public.as_bytes().to_vec(),
            suite: SUITE.into(),
            not_before: 100,
            not_after,
            policy_versions: vec!["DE@1".into()],
        };
        RegionInfo {
            region_id: "eu-de".into(),
            countries: vec!["DE".into()],
            sealing_key: Some(SealingKey {
                key_id: public.key_id().into(),
                public_key: public.as_bytes().to_vec(),
                suite: SUITE.into(),
            }),
            signed_sealing_key: Some(sign_statement(&statement, signer)),
            ..Default::default()
        }
    }

    fn bundle(signer: &SigningKey) -> TrustBundle {
        let mut b = TrustBundle::new();
        b.insert("eu-de", signer.verifying_key().as_bytes(), None);
        b
    }

    #[test]
    fn a_statement_signed_by_the_bundles_identity_verifies() {
        let keys = SealingKeyPair::generate();
        let trusted = bundle(&identity(1))
            .verify_region(&region(&keys, &identity(1), 1_000), 500)
            .unwrap();
        assert_eq!(trusted.key, *keys.public());
        assert_eq!(trusted.countries, vec!["DE".to_owned()]);
    }

    #[test]
    fn a_substituted_key_is_refused_before_sealing() {
        let real = SealingKeyPair::generate();
        let evil = SealingKeyPair::generate();
        let b = bundle(&identity(1));
        // Re-signed by the attacker's own identity.
        let forged = region(&evil, &identity(2), 1_000);
        assert_eq!(
            b.verify_region(&forged, 500).unwrap_err(),
            TrustError::BadSignature("eu-de".into())
        );
        // The unsigned key swapped, the genuine statement kept.
        let mut swapped = region(&real, &identity(1), 1_000);
        swapped.sealing_key.as_mut().unwrap().public_key = evil.public().as_bytes().to_vec();
        assert!(matches!(
            b.verify_region(&swapped, 500),
            Err(TrustError::Mismatch(..))
        ));
        // No statement at all.
        let mut unsigned = region(&real, &identity(1), 1_000);
        unsigned.signed_sealing_key = None;
        assert_eq!(
            b.verify_region(&unsigned, 500).unwrap_err(),
            TrustError::Unsigned("eu-de".into())
        );
        // Another region's genuine statement presented as this region's.
        let mut other = region(&real, &identity(1), 1_000);
        other.region_id = "us".into();
        let mut b2 = b.clone();
        b2.insert("us", identity(1).verifying_key().as_bytes(), None);
        assert!(matches!(
            b2.verify_region(&other, 500),
            Err(TrustError::Mismatch(..))
        ));
    }

    #[test]
    fn validity_and_bundle_expiry_are_enforced() {
        let keys = SealingKeyPair::generate();
        let info = region(&keys, &identity(1), 1_000);
        let b = bundle(&identity(1));
        assert!(matches!(
            b.verify_region(&info, 1_000),
            Err(TrustError::Expired(..))
        ));
        assert!(matches!(
            b.verify_region(&info, 100 - CLOCK_SKEW_SECONDS - 1),
            Err(TrustError::Expired(..))
        ));
        let mut expiring = TrustBundle::new();
        expiring.insert("eu-de", identity(1).verifying_key().as_bytes(), Some(400));
        assert_eq!(
            expiring.verify_region(&info, 500).unwrap_err(),
            TrustError::ExpiredEntry("eu-de".into())
        );
        assert_eq!(
            TrustBundle::new().verify_region(&info, 500).unwrap_err(),
            TrustError::UnknownRegion("eu-de".into())
        );
    }

    #[test]
    fn bundles_round_trip_and_bad_ones_name_the_field() {
        let b = bundle(&identity(1));
        assert_eq!(TrustBundle::from_json(&b.to_json(), "b").unwrap(), b);
        let bad = r#"{"version":1,"regions":{"eu-de":{"identity_public_key":"abcd"}}}"#;
        let e = TrustBundle::from_json(bad, "b.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("regions.eu-de.identity_public_key"), "{e}");
    }

    fn access(recipient: u8) -> SubmitSubjectRequestRequest {
        SubmitSubjectRequestRequest {
            verification: Some(crate::rights::verified_by_platform(
                "test-session",
                "test-platform",
            )),
            tenant_id: "acme".into(),
            subject: Some(SubjectRef {
                external_id: "c-1".into(),
                country: "DE".into(),
            }),
            kind: SubjectRequestKind::Access as i32,
            recipient_public_key: vec![recipient; 32],
            ..Default::default()
        }
    }

    #[test]
    fn dpo_signatures_cover_the_whole_request() {
        let dpo = identity(7);
        let lookup =
            |id: &str| (id == dpo_key_id(&dpo.verifying_key())).then(|| dpo.verifying_key());
        let mut req = access(9);
        sign_request(&mut req, &dpo, 1_000);
        let ok = verify_request(&req, 1_010, lookup).unwrap();
        assert_eq!(ok.nonce.len(), 16);
        // The recipient key swapped by a gateway.
        let mut swapped = req.clone();
        swapped.recipient_public_key = vec![1; 32];
        assert_eq!(
            verify_request(&swapped, 1_010, lookup).unwrap_err(),
            DpoRefusal::BadSignature
        );
        // The kind changed (access → erasure).
        let mut kind = req.clone();
        kind.kind = SubjectRequestKind::Erasure as i32;
        assert_eq!(
            verify_request(&kind, 1_010, lookup).unwrap_err(),
            DpoRefusal::BadSignature
        );
        // Signed by someone else under the registered key id.
        let mut forged = access(9);
        sign_request(&mut forged, &identity(8), 1_000);
        forged.dpo_signature.as_mut().unwrap().key_id = dpo_key_id(&dpo.verifying_key());
        assert_eq!(
            verify_request(&forged, 1_010, lookup).unwrap_err(),
            DpoRefusal::BadSignature
        );
        // Unknown key, missing, stale, future.
        let mut other = access(9);
        sign_request(&mut other, &identity(8), 1_000);
        assert_eq!(
            verify_request(&other, 1_010, lookup).unwrap_err(),
            DpoRefusal::UnknownKey
        );
        assert_eq!(
            verify_request(&access(9), 1_010, lookup).unwrap_err(),
            DpoRefusal::Missing
        );
        assert_eq!(
            verify_request(&req, 1_000 + DPO_SIGNATURE_MAX_AGE_SECONDS + 1, lookup).unwrap_err(),
            DpoRefusal::Stale
        );
        assert_eq!(
            verify_request(&req, 1_000 - CLOCK_SKEW_SECONDS - 1, lookup).unwrap_err(),
            DpoRefusal::Stale
        );
    }

    #[test]
    fn a_receipt_verifies_with_its_regions_key_only_and_not_once_changed() {
        use crate::pb::{SubjectRequestEvent, SubjectRequestStatus};
        let region = identity(7);
        let mut bundle = TrustBundle::new();
        bundle.insert("eu-de", region.verifying_key().as_bytes(), None);
        bundle.insert("us", identity(8).verifying_key().as_bytes(), None);
        let mut receipt = SubjectRequestReceipt {
            request_id: format!("eu-de.sr-{}", "0a".repeat(16)),
            region_id: "eu-de".into(),
            status: SubjectRequestStatus::Completed as i32,
            events: vec![SubjectRequestEvent {
                action: "completed".into(),
                principal: "dpo".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        sign_receipt(&mut receipt, &region);
        assert!(bundle.verify_receipt(&receipt).is_ok());
        // The export is not covered: it is sealed to the requester, and a copy without it
        // still verifies.
        let mut no_export = receipt.clone();
        no_export.export = Some(Default::default());
        assert!(bundle.verify_receipt(&no_export).is_ok());
        let tampered = [
            SubjectRequestReceipt {
                status: SubjectRequestStatus::Refused as i32,
                ..receipt.clone()
            },
            SubjectRequestReceipt {
                events: Vec::new(),
                ..receipt.clone()
            },
            SubjectRequestReceipt {
                region_id: "us".into(),
                ..receipt.clone()
            },
            SubjectRequestReceipt {
                signature: Vec::new(),
                ..receipt.clone()
            },
        ];
        for t in &tampered {
            assert!(bundle.verify_receipt(t).is_err(), "{t:?}");
        }
        let unknown = SubjectRequestReceipt {
            region_id: "mars".into(),
            ..receipt
        };
        assert!(matches!(
            bundle.verify_receipt(&unknown),
            Err(TrustError::UnknownRegion(_))
        ));
    }

    #[test]
    fn a_signature_for_one_message_type_does_not_verify_for_another() {
        // The same bytes under another message name: domain separation by full name.
        let dpo = identity(7);
        let id = dpo_key_id(&dpo.verifying_key());
        let mut release = ReleaseLegalHoldRequest {
            tenant_id: "acme".into(),
            hold_id: "eu-de.hold-00".into(),
            dpo_signature: None,
        };
        sign_request_with(&mut release, &dpo, 1_000, &[3; 16]);
        let msg_release = dpo_message(&release, &id, &[3; 16], 1_000);
        let place = PlaceLegalHoldRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        };
        assert_ne!(msg_release, dpo_message(&place, &id, &[3; 16], 1_000));
    }
}
