//! A node opening an arbitrary `SealedEnvelope` (decoded from the fuzzer's bytes): every record
//! gets a verdict, never a panic. Half the inputs carry the node's real key id, so the HPKE
//! setup and record decryption are reached, not only the key check.
#![no_main]

use std::sync::OnceLock;

use domicile_node::domain::ingest::open_envelope;
use domicile_proto::pb::SealedEnvelope;
use domicile_proto::seal::SealingKeyPair;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn keys() -> &'static SealingKeyPair {
    static KEYS: OnceLock<SealingKeyPair> = OnceLock::new();
    KEYS.get_or_init(|| SealingKeyPair::from_private_bytes(&[7u8; 32]).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut envelope) = SealedEnvelope::decode(rest) else {
        return;
    };
    if mode & 1 == 1 {
        envelope.key_id = keys().public().key_id().to_owned();
    }
    let verdicts = open_envelope(keys(), "acme", &["DE".to_owned()], &envelope);
    assert_eq!(verdicts.len(), envelope.records.len());
});
