//! The sealing format: how a client makes personal data opaque to everyone but the target
//! region's node. The byte-level specification is in `proto/domicile/v1/records.proto`; this
//! module is its reference implementation, used by the Rust client, the CLI and the node.
//!
//! One HPKE context (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305) is set up per envelope, so the X25519 key agreement is paid once per
//! batch. Records are sealed under a key exported from that context with an explicit sequence
//! number as nonce, so each record opens on its own: one damaged record cannot take the rest of
//! the batch down with it, as it would with the context's implicit sequence counter.

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb::{RecordKind, RecordPayload, SealedEnvelope, SealedRecord, record_payload};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// The HPKE suite of sealing format v1, as reported in `SealingKey.suite`.
pub const SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305";
/// Prefix of the HPKE `info` string.
pub const INFO_PREFIX: &[u8] = b"domicile/v1/ingest";
/// HPKE exporter context for the per-envelope record key.
pub const RECORD_KEY_LABEL: &[u8] = b"domicile/v1/record-key";
/// Length of an X25519 public key and of an encapsulated key.
pub const KEY_LEN: usize = 32;
/// Largest ciphertext a record may have.
pub const MAX_CIPHERTEXT_LEN: usize = 64 * 1024;

/// Why sealing or opening failed. Deliberately vague about *what* failed to open: an oracle is
/// no help to an attacker, and the details would say nothing to an honest client.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SealError {
    /// A public or private key, or an encapsulated key, has the wrong length or is invalid.
    #[error("invalid {0}")]
    InvalidKey(&'static str),
    /// The record did not open: wrong key, or ciphertext or metadata changed on the way.
    #[error("record does not open with this region's key and metadata")]
    OpenFailed,
    /// The payload opened but is not a valid `RecordPayload` message.
    #[error("payload is not a valid RecordPayload")]
    MalformedPayload,
    /// A record's ciphertext exceeds [`MAX_CIPHERTEXT_LEN`].
    #[error("ciphertext longer than {MAX_CIPHERTEXT_LEN} bytes")]
    TooLarge,
    /// The payload is empty (no record set).
    #[error("payload has no record")]
    EmptyPayload,
    /// The envelope already holds `u32::MAX` records.
    #[error("envelope is full")]
    EnvelopeFull,
}

/// The key id of a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// A region's public sealing key, as published by `ListRegions`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicSealingKey {
    key_id: String,
    bytes: [u8; KEY_LEN],
}

impl PublicSealingKey {
    /// Parses a raw X25519 public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealError::InvalidKey("public key length"))?;
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&bytes)
            .map_err(|_| SealError::InvalidKey("public key"))?;
        // A low-order point (the all-zero key, among others) gives an all-zero shared secret,
        // which HPKE refuses when sealing: refuse it here, where it is still the caller's input.
        hpke::setup_sender::<HpkeAead, Kdf, Kem>(&OpModeS::Base, &pk, b"domicile/v1/key-check")
            .map_err(|_| SealError::InvalidKey("public key (a low-order point)"))?;
        Ok(Self {
            key_id: key_id(&bytes),
            bytes,
        })
    }

    /// The key id (see [`key_id`]).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte key.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl std::fmt::Debug for PublicSealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicSealingKey")
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// A region's sealing key pair. Lives only on the region's nodes.
pub struct SealingKeyPair {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: PublicSealingKey,
}

impl SealingKeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let (private, public) = Kem::gen_keypair();
        Self::from_parts(private, &public.to_bytes())
    }

    /// Restores a key pair from its 32-byte private key.
    pub fn from_private_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != KEY_LEN {
            return Err(SealError::InvalidKey("private key length"));
        }
        let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| SealError::InvalidKey("private key"))?;
        let public = <Kem as hpke::Kem>::sk_to_pk(&private);
        Ok(Self::from_parts(private, &public.to_bytes()))
    }

    fn from_parts(private: <Kem as hpke::Kem>::PrivateKey, public: &[u8]) -> Self {
        let bytes: [u8; KEY_LEN] = public.try_into().expect("X25519 public keys are 32 bytes");
        Self {
            private,
            public: PublicSealingKey {
                key_id: key_id(&bytes),
                bytes,
            },
        }
    }

    /// The raw private key, for writing to a key file. Handle with care.
    pub fn private_bytes(&self) -> Vec<u8> {
        self.private.to_bytes().to_vec()
    }

    /// The public half.
    pub fn public(&self) -> &PublicSealingKey {
        &self.public
    }
}

impl std::fmt::Debug for SealingKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKeyPair")
            .field("key_id", &self.public.key_id)
            .finish_non_exhaustive()
    }
}

/// The HPKE `info` of an envelope: binds it to one tenant and one region.
pub fn info(tenant_id: &str, region_id: &str) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_PREFIX.len() + tenant_id.len() + region_id.len() + 2);
    info.extend_from_slice(INFO_PREFIX);
    info.push(0);
    info.extend_from_slice(tenant_id.as_bytes());
    info.push(0);
    info.extend_from_slice(region_id.as_bytes());
    info
}

/// The cleartext routing metadata of one record, authenticated as AAD.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    /// Tenant id of the request.
    pub tenant_id: &'a str,
    /// Region of the envelope.
    pub region_id: &'a str,
    /// ISO country code of the record.
    pub country: &'a str,
    /// Declared record kind.
    pub kind: RecordKind,
    /// Sequence number within the envelope.
    pub seq: u32,
    /// Idempotency key.
    pub idempotency_key: &'a str,
}

/// The spelling of a record kind in the AAD.
pub fn kind_label(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Subject => "SUBJECT",
        RecordKind::Interaction => "INTERACTION",
        RecordKind::Unspecified => "UNSPECIFIED",
    }
}

/// The AAD of a record (see `records.proto`).
pub fn aad(meta: &RecordMeta<'_>) -> Vec<u8> {
    format!(
        "domicile/v1|{}|{}|{}|{}|{}|{}",
        meta.tenant_id,
        meta.region_id,
        meta.country,
        kind_label(meta.kind),
        meta.seq,
        meta.idempotency_key
    )
    .into_bytes()
}

fn nonce(seq: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&u64::from(seq).to_be_bytes());
    Nonce::from(n)
}

fn record_cipher(
    export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>,
) -> ChaCha20Poly1305 {
    let mut key = [0u8; 32];
    // Exporting 32 bytes from HKDF-SHA256 cannot fail (the limit is 255 * 32 bytes).
    export(&mut key).expect("HPKE export of 32 bytes");
    let cipher = ChaCha20Poly1305::new_from_slice(&key).expect("32-byte key");
    key.fill(0);
    cipher
}

/// The kind that a payload's content has.
pub fn payload_kind(payload: &RecordPayload) -> RecordKind {
    match payload.record {
        Some(record_payload::Record::Subject(_)) => RecordKind::Subject,
        Some(record_payload::Record::Interaction(_)) => RecordKind::Interaction,
        None => RecordKind::Unspecified,
    }
}

/// Seals records for one region and one tenant into a [`SealedEnvelope`].
pub struct EnvelopeSealer {
    tenant_id: String,
    region_id: String,
    key_id: String,
    encapsulated_key: Vec<u8>,
    cipher: ChaCha20Poly1305,
    records: Vec<SealedRecord>,
}

impl EnvelopeSealer {
    /// Sets up a fresh HPKE context to `key` (one X25519 key agreement).
    pub fn new(
        tenant_id: &str,
        region_id: &str,
        key: &PublicSealingKey,
    ) -> Result<Self, SealError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(key.as_bytes())
            .map_err(|_| SealError::InvalidKey("public key"))?;
        let (enc, ctx) = hpke::setup_sender::<HpkeAead, Kdf, Kem>(
            &OpModeS::Base,
            &pk,
            &info(tenant_id, region_id),
        )
        .map_err(|_| SealError::InvalidKey("public key"))?;
        let cipher = record_cipher(|out| ctx.export(RECORD_KEY_LABEL, out));
        Ok(Self {
            tenant_id: tenant_id.to_owned(),
            region_id: region_id.to_owned(),
            key_id: key.key_id().to_owned(),
            encapsulated_key: enc.to_bytes().to_vec(),
            cipher,
            records: Vec::new(),
        })
    }

    /// Seals `payload` with the next sequence number and returns that number. The record kind
    /// is taken from the payload.
    pub fn seal(
        &mut self,
        country: &str,
        idempotency_key: &str,
        payload: &RecordPayload,
    ) -> Result<u32, SealError> {
        let kind = payload_kind(payload);
        if kind == RecordKind::Unspecified {
            return Err(SealError::EmptyPayload);
        }
        self.seal_bytes(country, idempotency_key, kind, &payload.encode_to_vec())
    }

    /// Seals raw plaintext bytes under the given metadata. [`seal`](Self::seal) is the normal
    /// way; this exists for clients that encode payloads themselves (and for tests that need a
    /// payload that does not match its declared kind).
    pub fn seal_bytes(
        &mut self,
        country: &str,
        idempotency_key: &str,
        kind: RecordKind,
        plaintext: &[u8],
    ) -> Result<u32, SealError> {
        let seq = u32::try_from(self.records.len()).map_err(|_| SealError::EnvelopeFull)?;
        let meta = RecordMeta {
            tenant_id: &self.tenant_id,
            region_id: &self.region_id,
            country,
            kind,
            seq,
            idempotency_key,
        };
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce(seq),
                Payload {
                    msg: plaintext,
                    aad: &aad(&meta),
                },
            )
            .map_err(|_| SealError::TooLarge)?;
        if ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(SealError::TooLarge);
        }
        self.records.push(SealedRecord {
            seq,
            idempotency_key: idempotency_key.to_owned(),
            country: country.to_owned(),
            kind: kind as i32,
            ciphertext: ciphertext.into(),
        });
        Ok(seq)
    }

    /// Number of records sealed so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing was sealed yet.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The finished envelope.
    pub fn finish(self) -> SealedEnvelope {
        SealedEnvelope {
            region_id: self.region_id,
            key_id: self.key_id,
            encapsulated_key: self.encapsulated_key,
            records: self.records,
        }
    }
}

/// Opens the records of one envelope at the node.
pub struct EnvelopeOpener {
    tenant_id: String,
    region_id: String,
    cipher: ChaCha20Poly1305,
}

impl EnvelopeOpener {
    /// Sets up the receiving HPKE context for an envelope (one X25519 key agreement).
    pub fn new(
        keys: &SealingKeyPair,
        tenant_id: &str,
        region_id: &str,
        encapsulated_key: &[u8],
    ) -> Result<Self, SealError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(encapsulated_key)
            .map_err(|_| SealError::InvalidKey("encapsulated key"))?;
        let ctx = hpke::setup_receiver::<HpkeAead, Kdf, Kem>(
            &OpModeR::Base,
            &keys.private,
            &enc,
            &info(tenant_id, region_id),
        )
        .map_err(|_| SealError::InvalidKey("encapsulated key"))?;
        let cipher = record_cipher(|out| ctx.export(RECORD_KEY_LABEL, out));
        Ok(Self {
            tenant_id: tenant_id.to_owned(),
            region_id: region_id.to_owned(),
            cipher,
        })
    }

    /// Opens one record against its own metadata and decodes the payload.
    pub fn open(&self, record: &SealedRecord) -> Result<RecordPayload, SealError> {
        if record.ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(SealError::TooLarge);
        }
        let meta = RecordMeta {
            tenant_id: &self.tenant_id,
            region_id: &self.region_id,
            country: &record.country,
            kind: RecordKind::try_from(record.kind).unwrap_or(RecordKind::Unspecified),
            seq: record.seq,
            idempotency_key: &record.idempotency_key,
        };
        let plaintext = self
            .cipher
            .decrypt(
                &nonce(record.seq),
                Payload {
                    msg: &record.ciphertext,
                    aad: &aad(&meta),
                },
            )
            .map_err(|_| SealError::OpenFailed)?;
        RecordPayload::decode(plaintext.as_slice()).map_err(|_| SealError::MalformedPayload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{SubjectRecord, record_payload::Record};

    fn subject(id: &str) -> RecordPayload {
        RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: id.into(),
                email: format!("{id}@example.org"),
                ..Default::default()
            })),
        }
    }

    fn sealed(keys: &SealingKeyPair, n: usize) -> SealedEnvelope {
        let mut s = EnvelopeSealer::new("acme", "eu-de", keys.public()).unwrap();
        for i in 0..n {
            s.seal("DE", &format!("k{i}"), &subject(&format!("s{i}")))
                .unwrap();
        }
        s.finish()
    }

    #[test]
    fn records_open_in_any_order() {
        let keys = SealingKeyPair::generate();
        let env = sealed(&keys, 3);
        let opener = EnvelopeOpener::new(&keys, "acme", "eu-de", &env.encapsulated_key).unwrap();
        for r in env.records.iter().rev() {
            let p = opener.open(r).unwrap();
            assert_eq!(payload_kind(&p), RecordKind::Subject);
        }
        assert_eq!(env.key_id, keys.public().key_id());
    }

    #[test]
    fn a_damaged_record_does_not_affect_the_others() {
        let keys = SealingKeyPair::generate();
        let mut env = sealed(&keys, 3);
        let mut damaged = env.records[1].ciphertext.to_vec();
        damaged[0] ^= 1;
        env.records[1].ciphertext = damaged.into();
        let opener = EnvelopeOpener::new(&keys, "acme", "eu-de", &env.encapsulated_key).unwrap();
        assert!(opener.open(&env.records[0]).is_ok());
        assert_eq!(opener.open(&env.records[1]), Err(SealError::OpenFailed));
        assert!(opener.open(&env.records[2]).is_ok());
    }

    #[test]
    fn changed_metadata_does_not_open() {
        let keys = SealingKeyPair::generate();
        let env = sealed(&keys, 1);
        let opener = EnvelopeOpener::new(&keys, "acme", "eu-de", &env.encapsulated_key).unwrap();
        let mut r = env.records[0].clone();
        r.country = "FR".into();
        assert_eq!(opener.open(&r), Err(SealError::OpenFailed));
        let mut r = env.records[0].clone();
        r.kind = RecordKind::Interaction as i32;
        assert_eq!(opener.open(&r), Err(SealError::OpenFailed));
        let mut r = env.records[0].clone();
        r.idempotency_key = "other".into();
        assert_eq!(opener.open(&r), Err(SealError::OpenFailed));
        // Another tenant or region cannot open the envelope at all.
        let other = EnvelopeOpener::new(&keys, "globex", "eu-de", &env.encapsulated_key).unwrap();
        assert_eq!(other.open(&env.records[0]), Err(SealError::OpenFailed));
    }

    #[test]
    fn another_regions_key_does_not_open() {
        let keys = SealingKeyPair::generate();
        let env = sealed(&keys, 1);
        let wrong = SealingKeyPair::generate();
        let opener = EnvelopeOpener::new(&wrong, "acme", "eu-de", &env.encapsulated_key).unwrap();
        assert_eq!(opener.open(&env.records[0]), Err(SealError::OpenFailed));
    }

    #[test]
    fn low_order_public_keys_are_refused() {
        // The all-zero point and another low-order point of Curve25519 (order 8), and the
        // encoding of 1 (order 4 on the twist): contributory behaviour would fail when sealing.
        let mut one = [0u8; 32];
        one[0] = 1;
        let order8 =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap();
        for bad in [[0u8; 32].to_vec(), one.to_vec(), order8] {
            assert!(
                PublicSealingKey::from_bytes(&bad).is_err(),
                "{} accepted",
                hex::encode(&bad)
            );
        }
        let good = SealingKeyPair::generate();
        assert!(PublicSealingKey::from_bytes(good.public().as_bytes()).is_ok());
    }

    #[test]
    fn key_pair_round_trips_through_private_bytes() {
        let keys = SealingKeyPair::generate();
        let again = SealingKeyPair::from_private_bytes(&keys.private_bytes()).unwrap();
        assert_eq!(again.public(), keys.public());
        assert!(SealingKeyPair::from_private_bytes(&[1, 2, 3]).is_err());
        assert!(PublicSealingKey::from_bytes(&[0; 31]).is_err());
    }

    #[test]
    fn aad_matches_the_documented_format() {
        let meta = RecordMeta {
            tenant_id: "acme",
            region_id: "eu-de",
            country: "DE",
            kind: RecordKind::Interaction,
            seq: 42,
            idempotency_key: "i-1|x",
        };
        assert_eq!(
            aad(&meta),
            b"domicile/v1|acme|eu-de|DE|INTERACTION|42|i-1|x"
        );
        assert_eq!(info("acme", "eu-de"), b"domicile/v1/ingest\0acme\0eu-de");
    }
}

/// Prefix of the HPKE `info` string of a subject-data export.
pub const EXPORT_INFO_PREFIX: &[u8] = b"domicile/v1/export";

/// `info` of an export: `"domicile/v1/export" 0 tenant 0 region`.
pub fn export_info(tenant_id: &str, region_id: &str) -> Vec<u8> {
    let mut info = EXPORT_INFO_PREFIX.to_vec();
    info.push(0);
    info.extend_from_slice(tenant_id.as_bytes());
    info.push(0);
    info.extend_from_slice(region_id.as_bytes());
    info
}

/// Seals an export to the requester's key (HPKE base mode, the sealing suite, single message).
/// Returns the encapsulated key and the ciphertext.
pub fn seal_export(
    recipient: &PublicSealingKey,
    tenant_id: &str,
    region_id: &str,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient.as_bytes())
        .map_err(|_| SealError::InvalidKey("public key"))?;
    let (enc, mut ctx) = hpke::setup_sender::<HpkeAead, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        &export_info(tenant_id, region_id),
    )
    .map_err(|_| SealError::InvalidKey("public key"))?;
    let ct = ctx
        .seal(plaintext, aad)
        .map_err(|_| SealError::OpenFailed)?;
    Ok((enc.to_bytes().to_vec(), ct))
}

/// Opens an export with the requester's key pair.
pub fn open_export(
    keys: &SealingKeyPair,
    tenant_id: &str,
    region_id: &str,
    aad: &[u8],
    encapsulated_key: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(encapsulated_key)
        .map_err(|_| SealError::InvalidKey("encapsulated key"))?;
    let mut ctx = hpke::setup_receiver::<HpkeAead, Kdf, Kem>(
        &OpModeR::Base,
        &keys.private,
        &enc,
        &export_info(tenant_id, region_id),
    )
    .map_err(|_| SealError::InvalidKey("encapsulated key"))?;
    ctx.open(ciphertext, aad).map_err(|_| SealError::OpenFailed)
}

#[cfg(test)]
mod export_tests {
    use super::*;

    #[test]
    fn an_export_opens_only_for_its_recipient_tenant_region_and_request() {
        let recipient = SealingKeyPair::generate();
        let (enc, ct) =
            seal_export(recipient.public(), "acme", "eu-de", b"req-1", b"{\"a\":1}").unwrap();
        assert_eq!(
            open_export(&recipient, "acme", "eu-de", b"req-1", &enc, &ct).unwrap(),
            b"{\"a\":1}"
        );
        assert!(open_export(&recipient, "acme", "eu-fr", b"req-1", &enc, &ct).is_err());
        assert!(open_export(&recipient, "acme", "eu-de", b"req-2", &enc, &ct).is_err());
        let other = SealingKeyPair::generate();
        assert!(open_export(&other, "acme", "eu-de", b"req-1", &enc, &ct).is_err());
    }
}
