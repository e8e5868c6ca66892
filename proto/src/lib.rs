//! The `domicile.v1` contract shared by every Domicile component.
//!
//! - [`pb`]: the generated protobuf messages, tonic clients and servers.
//! - [`seal`]: the sealing format (HPKE, RFC 9180) that keeps personal data opaque to the
//!   gateway; documented byte for byte in `records.proto`.
//! - [`merge`]: the algebra of partial aggregates (a commutative monoid) and metric finalisation.
//! - [`consent`]: validated consent requests (routing and recording).
//! - [`rights`]: validated data-subject requests and legal holds.
//! - [`trust`]: region identities and signed sealing keys, the federation trust bundle, and
//!   the tenant DPO's signatures on requests (what the gateway cannot forge).
//! - [`domain`]: validated domain types converted from wire messages, with the field path of
//!   every violation.
//! - [`error`]: `google.rpc.BadRequest` field violations as a gRPC status.
//!
//! This crate depends on neither the gateway nor the node; both depend on it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod consent;
pub mod domain;
pub mod error;
pub mod followup;
pub mod merge;
pub mod rights;
pub mod seal;
pub mod trust;

/// Generated code for the `domicile.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("domicile.v1");

    /// The encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/domicile_descriptor.bin"));

    mod redacted_debug;
}
