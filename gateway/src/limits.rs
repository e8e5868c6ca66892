//! Admission: per-tenant request rate and concurrency, and load shedding.
//!
//! Every call is admitted before it does anything: over the tenant's rate (a token bucket) or
//! its concurrent calls it gets `RESOURCE_EXHAUSTED`; when the gateway as a whole has
//! `max_in_flight` calls running it gets `UNAVAILABLE` (retryable elsewhere). Nothing is
//! half-done: the refusal comes before any region is called.
//!
//! An admitted call's request then reserves its size from one budget shared by every call
//! (`max_buffered_bytes`) before its body is read ([`crate::api::budget`]), so what the gateway
//! holds of requests at once is bounded whatever the callers send.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use dashmap::DashMap;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// `[limits]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained calls per second per tenant. Default 200.
    #[serde(default = "default_rate")]
    pub requests_per_second: f64,
    /// Calls a tenant may make at once above the sustained rate. Default 400.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Calls one tenant may have running at once. Default 64.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_per_tenant: u32,
    /// Calls the gateway runs at once before it sheds load with `UNAVAILABLE`. Default 2048.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Largest request message, in bytes; a larger one is refused before it is decoded
    /// (`OUT_OF_RANGE`, tonic's code for it). Default 80 MiB: a full ingest batch of 1,000
    /// records of 64 KiB, plus framing.
    #[serde(default = "default_message_bytes")]
    pub max_message_bytes: usize,
    /// Request bytes the gateway holds at once, across all calls. Each admitted call whose
    /// message is over 64 KiB reserves the message's declared size (at most this) before its
    /// body is read, and keeps it until its response ends; a call that does not fit is refused
    /// with `UNAVAILABLE`, its body unread. Default 16 MiB. A message larger than this runs
    /// only when no other call holds any of it.
    #[serde(default = "default_buffered_bytes")]
    pub max_buffered_bytes: u32,
}

fn default_rate() -> f64 {
    200.0
}
fn default_burst() -> u32 {
    400
}
fn default_concurrency() -> u32 {
    64
}
fn default_in_flight() -> usize {
    2048
}
fn default_message_bytes() -> usize {
    80 * 1024 * 1024
}
fn default_buffered_bytes() -> u32 {
    16 * 1024 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_second: default_rate(),
            burst: default_burst(),
            max_concurrent_per_tenant: default_concurrency(),
            max_in_flight: default_in_flight(),
            max_message_bytes: default_message_bytes(),
            max_buffered_bytes: default_buffered_bytes(),
        }
    }
}

impl LimitsConfig {
    /// Every problem, as `(option, message)`.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if !(self.requests_per_second > 0.0 && self.requests_per_second.is_finite()) {
            out.push(("limits.requests_per_second", "must be a positive number"));
        }
        if self.burst == 0 {
            out.push(("limits.burst", "must be at least 1"));
        }
        if self.max_concurrent_per_tenant == 0 {
            out.push(("limits.max_concurrent_per_tenant", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            out.push(("limits.max_in_flight", "must be at least 1"));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_message_bytes) {
            out.push(("limits.max_message_bytes", "must be 1 KiB to 1 GiB"));
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.max_buffered_bytes) {
            out.push(("limits.max_buffered_bytes", "must be 64 KiB to 1 GiB"));
        }
        out
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Admits calls under a [`LimitsConfig`].
#[derive(Debug)]
pub struct Limiter {
    config: LimitsConfig,
    buckets: DashMap<String, Mutex<Bucket>>,
    running: DashMap<String, Arc<Semaphore>>,
    in_flight: Arc<AtomicUsize>,
    buffered: Arc<Semaphore>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// A call's admission: releases its concurrency slot and in-flight count when dropped.
#[derive(Debug)]
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    /// A limiter with `config`.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            buckets: DashMap::new(),
            running: DashMap::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            buffered: Arc::new(Semaphore::new(config.max_buffered_bytes as usize)),
            config,
        }
    }

    /// The budget of request bytes held at once (one permit per byte), and its size.
    pub fn request_budget(&self) -> (Arc<Semaphore>, u32) {
        (self.buffered.clone(), self.config.max_buffered_bytes)
    }

    /// The largest request message accepted (`limits.max_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    /// Calls admitted and not yet finished, across tenants.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Admits one call of `tenant`, or says why not.
    pub fn admit(&self, tenant: &str) -> Result<Admission, Status> {
        let running = self.in_flight.fetch_add(1, Ordering::AcqRel);
        // From here on, every refusal must give the in-flight count back.
        let refuse = |status: Status| {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            Err(status)
        };
        if running >= self.config.max_in_flight {
            return refuse(Status::unavailable(
                "the gateway is overloaded; retry with backoff",
            ));
        }
        if !self.take_token(tenant) {
            return refuse(Status::resource_exhausted(format!(
                "rate limit: at most {} calls per second per tenant",
                self.config.requests_per_second
            )));
        }
        let slots = self
            .running
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.config.max_concurrent_per_tenant as usize,
                ))
            })
            .clone();
        match slots.try_acquire_owned() {
            Ok(slot) => Ok(Admission {
                _slot: slot,
                in_flight: self.in_flight.clone(),
            }),
            Err(_) => refuse(Status::resource_exhausted(format!(
                "concurrency limit: at most {} calls at once per tenant",
                self.config.max_concurrent_per_tenant
            ))),
        }
    }

    fn take_token(&self, tenant: &str) -> bool {
        let burst = f64::from(self.config.burst);
        let entry = self.buckets.entry(tenant.to_owned()).or_insert_with(|| {
            Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            })
        });
        let mut b = entry.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.at).as_secs_f64() * self.config.requests_per_second;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn limiter(rate: f64, burst: u32, concurrent: u32, in_flight: usize) -> Limiter {
        Limiter::new(LimitsConfig {
            requests_per_second: rate,
            burst,
            max_concurrent_per_tenant: concurrent,
            max_in_flight: in_flight,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn the_burst_then_the_rate() {
        let l = limiter(0.001, 3, 10, 100);
        for _ in 0..3 {
            drop(l.admit("acme").unwrap());
        }
        assert_eq!(l.admit("acme").unwrap_err().code(), Code::ResourceExhausted);
        // Another tenant has its own bucket.
        assert!(l.admit("globex").is_ok());
    }

    #[test]
    fn concurrency_per_tenant_and_load_shedding() {
        let l = limiter(1000.0, 1000, 2, 3);
        let a = l.admit("acme").unwrap();
        let _b = l.admit("acme").unwrap();
        assert_eq!(l.admit("acme").unwrap_err().code(), Code::ResourceExhausted);
        let _c = l.admit("globex").unwrap();
        // Three running: the fourth is shed whoever asks.
        assert_eq!(l.admit("initech").unwrap_err().code(), Code::Unavailable);
        drop(a);
        assert!(l.admit("acme").is_ok(), "a finished call frees its slot");
        assert_eq!(l.in_flight.load(Ordering::Acquire), 2);
    }
}
