//! The node's domain: what it does with the data, written against the store's connections.
//!
//! Lower modules first, each importing only modules listed before it (and the store, the
//! privacy mechanisms and the configuration below): [`policy`] (the country policies, pure),
//! [`audit`] and [`authority`] (the audit chain, the DPO keys), [`consent`] (the ledger, the
//! permission check, the restriction flags), [`partial`] (releasing a group: noise, then *k*),
//! [`rollup`], [`aggregate`] and [`release`] (aggregates from the rollups or the rows,
//! k-anonymous or differentially private), [`stored`] (records at rest and the batch write),
//! [`ingest`] and [`records`] (records in and out), [`incident`], [`followup`], [`rights`]
//! (what an erasure deletes, legal holds), [`cases`] (subject requests as cases: steps,
//! deadlines, the queue), [`overview`], and [`schema`] (every table, for the store to apply). The node ([`crate::node`]) composes them into calls.

pub mod aggregate;
pub mod audit;
pub mod authority;
pub mod cases;
pub mod consent;
pub mod followup;
pub mod incident;
pub mod ingest;
pub mod overview;
pub mod partial;
pub mod policy;
pub mod records;
pub mod release;
pub mod rights;
pub mod rollup;
pub mod schema;
pub mod stored;
