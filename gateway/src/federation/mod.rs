//! The federation's plumbing: the regions the gateway knows and how it reaches them.
//!
//! [`conn`] (one HTTP/2 connection to a node, driven from the calling task), [`directory`] (the regions, their clients, health and replicas), [`replicas`] (choosing a
//! replica), [`fanout`] (one call per region under a deadline, with each region's outcome), [`forward`]
//! (sealed batches framed for a region without copying their ciphertexts),
//! [`routing`] (which region a country's record goes to) and [`witness`] (the audit-chain heads
//! the gateway has seen from each region, kept across restarts).

pub mod conn;
pub mod directory;
pub mod fanout;
pub mod forward;
pub mod replicas;
pub mod routing;
pub mod witness;
