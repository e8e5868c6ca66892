//! A Domicile regional node: keeps one region's CX data in-country.
//!
//! The node opens sealed records with the region's private key ([`ingest`]), stores them in an
//! embedded SQLite file ([`storage`]), and answers the gateway's federation calls
//! ([`service`]) with partial aggregates in which every released group has at least *k*
//! distinct subjects ([`aggregate`]). It enforces the residency invariant itself: it refuses
//! records for countries outside its jurisdiction, and nothing in its federation API can carry a
//! direct identifier out.
//!
//! Layout: [`config`] (TOML), [`keys`] (the sealing key file), [`node`] (the business logic,
//! callable in-process), [`service`] (the thin tonic adapter), [`server`] (listener, health,
//! reflection, shutdown).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod node;
pub mod privacy;
pub mod store;
#[cfg(test)]
mod testing;

pub use api::server::{serve, serve_local};
pub use config::NodeConfig;
pub use node::Node;
