//! The node's gRPC surface: [`service`] (the federation API the gateway calls), [`local`] (the
//! in-country API over the region's own mutual TLS) and [`server`] (listeners, health,
//! reflection, metrics endpoint, shutdown). Thin adapters over [`crate::node::Node`].

pub mod local;
pub mod server;
pub mod service;
