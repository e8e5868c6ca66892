//! A Domicile regional node: keeps one region's CX data in-country.
//!
//! The node opens sealed records with the region's private key ([`domain::ingest`]), stores
//! them in an embedded SQLite file or PostgreSQL ([`store`]), and answers the gateway's
//! federation calls ([`api::service`]) with partial aggregates in which every released group
//! has at least *k* distinct subjects ([`domain::aggregate`]). It enforces the residency
//! invariant itself: it refuses records for countries outside its jurisdiction, and nothing in
//! its federation API can carry a direct identifier out.
//!
//! Layout, in layers from the bottom (a module imports only from layers below it, and within
//! a layer only modules below it; `tests/tests/layers.rs` checks it):
//! - [`error`], [`config`]: the error type and the configuration;
//! - [`store`] (engines, schema application, key vault, KEK, key files) and [`privacy`]
//!   (noise, pseudonyms, redaction: pure functions);
//! - [`domain`]: what the node does with the data, written against the store's connections;
//! - [`node`]: [`Node`], composing the domain into calls (authorisation, audit, limits,
//!   clock), and the operator procedures (backup, retention);
//! - [`api`]: the gRPC services and listeners.
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
