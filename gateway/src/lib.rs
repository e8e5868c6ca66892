//! The Domicile gateway: the one gRPC endpoint CX platforms call.
//!
//! The gateway is PII-blind. It routes sealed records by their cleartext country to the region
//! that serves it, fans aggregates out to regions concurrently under the caller's deadline and
//! merges their partials with the algebra in `domicile-proto`, and reports each region's part
//! in every answer. It never holds a key that opens personal data.
//!
//! Layout, in layers (a module imports only from its own layer's lower modules and the layers
//! below; `tests/tests/layers.rs` checks it): [`config`], [`auth`], [`limits`], [`metrics`],
//! [`deadline`] and [`error`] at the bottom; [`federation`] (the regions, their clients and
//! health, the fan-out, the routing of ingest, the witnessed audit heads); [`gateway`] (the
//! core: ingest, aggregates, the configuration's reloads); [`calls`] (records, consent, rights,
//! follow-ups, incidents, overview, audit witnessing); [`api`] (the tonic service, the server,
//! the console).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod calls;
pub mod config;
pub mod deadline;
pub mod error;
pub mod federation;
pub mod gateway;
pub mod limits;
pub mod metrics;

pub use api::server::serve;
pub use config::{GatewayConfig, RegionConfig};
pub use gateway::Gateway;
