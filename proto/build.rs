//! Compiles `domicile/v1/*.proto` with protox (a pure-Rust protobuf compiler, so no `protoc`
//! is needed) and generates prost messages and tonic clients and servers.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "domicile/v1/common.proto",
    "domicile/v1/records.proto",
    "domicile/v1/aggregate.proto",
    "domicile/v1/query.proto",
    "domicile/v1/consent.proto",
    "domicile/v1/audit.proto",
    "domicile/v1/subject.proto",
    "domicile/v1/followup.proto",
    "domicile/v1/local.proto",
    "domicile/v1/overview.proto",
    "domicile/v1/gateway.proto",
    "domicile/v1/node.proto",
];

/// Messages that hold personal data in plaintext: their `Debug` is written by hand so that a
/// stray `{:?}` in a log line cannot leak them.
const REDACTED_DEBUG: &[&str] = &[
    "domicile.v1.SubjectRecord",
    "domicile.v1.InteractionRecord",
    "domicile.v1.SurveyAnswer",
    "domicile.v1.IncidentSubject",
    "domicile.v1.FollowUpContact",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("domicile_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::StrictCodec")
        .skip_debug(REDACTED_DEBUG.iter().copied())
        // A sealed record's ciphertext (up to the whole request) is a slice of the buffer the
        // request was read into, not a copy: the gateway holds one copy of a large ingest less.
        .bytes(".domicile.v1.SealedRecord.ciphertext")
        .compile_fds(fds)?;
    Ok(())
}
