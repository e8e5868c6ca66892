//! Operations support shared by the Domicile gateway and regional nodes.
//!
//! - [`config`]: configuration files with environment overrides.
//! - [`trace`]: W3C `traceparent` parsing and the trace context of the call being served.
//! - [`metrics`]: the Prometheus families every listener records, and the `/metrics` endpoint.
//! - [`rpc`]: tower middleware that gives each served call a span, a trace context and
//!   metrics, and that propagates the trace to regions on the gateway's client channels.
//! - [`principal`]: who a call acts for, carried from the gateway to the nodes' audit logs.
//! - [`lifecycle`]: graceful drain on shutdown, and the signals that ask for it.
//! - [`tls`]: pinned peer identities on mutual-TLS listeners.
//! - [`alloc`]: the C allocator's settings for long-running processes.
//!
//! Nothing here reads a message body: spans and labels are built from the method path, the
//! `traceparent` and `grpc-status` headers only, so no personal data can reach them.
// `deny`, not `forbid`: [`alloc::tune`] is the one call into C (`mallopt`), allowed there.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod alloc;
pub mod clock;
pub mod config;
pub mod lifecycle;
pub mod metrics;
pub mod otlp;
pub mod principal;
pub mod rpc;
pub mod tls;
pub mod trace;
