//! The client of the public API: see the `domicile-client` crate.

pub use domicile_client::*;
