//! The gateway's surfaces: [`service`] (the tonic `Gateway` service: authentication, limits
//! and deadlines around [`crate::gateway::Gateway`]'s calls), [`server`] (listeners, health,
//! reflection, metrics, the background probes), [`budget`] (the request bytes held at once) and
//! [`console`] (the operator console).

pub mod budget;
pub mod console;
pub mod server;
pub mod service;
