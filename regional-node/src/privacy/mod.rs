//! The privacy mechanisms, pure functions of their inputs: no storage, no I/O.
//!
//! [`dp`] draws the noise of differentially private releases, [`pseudonym`] derives the keyed
//! pseudonyms that replace ids in everything leaving the region, and [`redact`] takes direct
//! identifiers out of free text.

pub mod dp;
pub mod pseudonym;
pub mod redact;
