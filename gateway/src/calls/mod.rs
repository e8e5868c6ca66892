//! The gateway's calls beyond ingest and aggregates ([`crate::gateway`]): each validates its
//! request, fans out or routes through [`crate::federation`], and merges the regions'
//! answers. Every module extends [`crate::gateway::Gateway`]; none imports another's calls
//! except [`rights`]'s shared validation, which [`followup`] reuses.

pub mod audit;
pub mod consent;
pub mod followup;
pub mod incident;
pub mod overview;
pub mod records;
pub mod rights;
