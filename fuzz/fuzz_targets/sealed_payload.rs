//! Arbitrary plaintext sealed correctly to a node: the node's payload decoding and validation
//! (behind the HPKE layer, where random ciphertext never reaches) give a verdict, never a panic.
#![no_main]

use std::sync::OnceLock;

use domicile_node::domain::ingest::open_envelope;
use domicile_proto::{
    pb::RecordKind,
    seal::{EnvelopeSealer, SealingKeyPair},
};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static SealingKeyPair {
    static KEYS: OnceLock<SealingKeyPair> = OnceLock::new();
    KEYS.get_or_init(|| SealingKeyPair::from_private_bytes(&[7u8; 32]).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, plaintext)) = data.split_first() else {
        return;
    };
    let kind = if mode & 1 == 0 {
        RecordKind::Subject
    } else {
        RecordKind::Interaction
    };
    let mut sealer = EnvelopeSealer::new("acme", "eu-de", keys().public()).unwrap();
    sealer.seal_bytes("DE", "fuzz-1", kind, plaintext).unwrap();
    let envelope = sealer.finish();
    let verdicts = open_envelope(keys(), "acme", &["DE".to_owned()], &envelope);
    assert_eq!(verdicts.len(), 1);
});
