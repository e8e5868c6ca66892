//! The `domicile` command's library: the in-process federation used by `domicile dev` and the
//! integration tests ([`federation`]), a deterministic synthetic CX data set ([`synth`]), a
//! small sealing client ([`client`]), bulk import ([`load`]), a development PKI ([`certs`]) and
//! the `dev` command itself ([`dev`]), and the trust set up outside the gateway: bundles and
//! DPO keys ([`trust`]).
//!
//! This crate is the only one that depends on both the gateway and the node: the `domicile`
//! binary runs either (or both, in `dev`), while `domicile-gateway` and `domicile-node` never
//! depend on each other.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attacker;
pub mod certs;
pub mod client;
pub mod dev;
pub mod federation;
pub mod load;
pub mod requests;
pub mod synth;
pub mod table;
pub mod token;
pub mod trust;
