//! The Domicile gateway: the one gRPC endpoint CX platforms call.
//!
//! The gateway is PII-blind. It routes sealed records by their cleartext country to the region
//! that serves it ([`routing`]), fans aggregates out to regions concurrently under the caller's
//! deadline and merges their partials with the algebra in `domicile-proto` ([`fanout`]), and
//! reports each region's part in every answer. It never holds a key that opens personal data.
//!
//! Layout: [`config`] (TOML), [`directory`] (regions, their channels, cached keys and health),
//! [`fanout`] (one concurrent call per region, with per-region status), [`records`] (the
//! interleaved, backpressured `QueryRecords` stream), [`routing`] (ingest),
//! [`gateway`] (the business logic), [`consent`] (subject-scoped consent calls, routed to one
//! region), [`incident`] (audit checkpoints and breach incidents), [`rights`] (data-subject
//! requests and legal holds), [`witness`] (the regions' audit heads, remembered and checked),
//! [`service`] (the tonic adapter), [`server`] (listener,
//! health, reflection, shutdown).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod consent;
pub mod console;
pub mod deadline;
pub mod directory;
pub mod error;
pub mod fanout;
pub mod followup;
pub mod gateway;
pub mod incident;
pub mod limits;
pub mod metrics;
pub mod overview;
pub mod records;
pub mod replicas;
pub mod rights;
pub mod routing;
pub mod server;
pub mod service;
pub mod witness;

pub use config::{GatewayConfig, RegionConfig};
pub use gateway::Gateway;
pub use server::serve;
