//! The node's domain: what it does with the data, written against the store's connections.
//!
//! Lower modules first: [`policy`] (the country policies, pure), [`audit`] and [`authority`]
//! (the audit chain and the DPO keys), [`consent`] (the ledger and the permission check),
//! [`rollup`], [`aggregate`] and [`release`] (aggregates over the rollups, k-anonymous or
//! differentially private), [`ingest`] and [`records`] (records in and out), [`incident`],
//! [`followup`], [`rights`] (subject rights and legal holds), [`overview`] and [`retention`].
//! A module imports only modules listed before it.

pub mod aggregate;
pub mod audit;
pub mod authority;
pub mod consent;
pub mod followup;
pub mod incident;
pub mod ingest;
pub mod overview;
pub mod policy;
pub mod records;
pub mod release;
pub mod retention;
pub mod rights;
pub mod rollup;
pub mod schema;
pub mod stored;
