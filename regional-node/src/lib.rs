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

pub mod aggregate;
pub mod audit;
pub mod authority;
pub mod backup;
pub mod config;
pub mod consent;
pub mod db;
pub mod dp;
pub mod error;
pub mod followup;
pub mod incident;
pub mod ingest;
pub mod kek;
pub mod keys;
pub mod local;
pub mod metrics;
pub mod node;
pub mod overview;
pub mod pg_schema;
pub mod policy;
pub mod pseudonym;
pub mod records;
pub mod redact;
pub mod release;
pub mod retention;
pub mod rights;
pub mod rollup;
pub mod server;
pub mod service;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod vault;

pub use config::NodeConfig;
pub use node::Node;
pub use server::{serve, serve_local};
