//! The node's Prometheus metrics (`domicile_node_*`).
//!
//! Labels are method names, outcomes, purposes, channels, tenants and file kinds: never a
//! subject, never a value read from a record. Every family carries the node's `region` label.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock, atomic::AtomicU64},
};

use domicile_ops::metrics::{RpcMetrics, Source, registered};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels naming an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// e.g. `accepted`, `duplicate`, `rejected`.
    pub outcome: String,
}

/// Labels naming a purpose.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabels {
    /// e.g. `PURPOSE_CX_ANALYTICS`.
    pub purpose: String,
}

/// Labels naming a tenant (a CX platform's customer organisation, not a person).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// Tenant id.
    pub tenant: String,
}

/// Labels of a contact-permission decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// e.g. `PURPOSE_MARKETING`.
    pub purpose: String,
    /// e.g. `CHANNEL_EMAIL`.
    pub channel: String,
    /// `allowed` or `denied`.
    pub decision: String,
}

/// Labels naming a storage file.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    /// `database`, `database_wal`, `key_vault`, `key_vault_wal`.
    pub file: String,
}

/// Labels of the subject-request queue's gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `open`, `due_within_7_days` or `overdue`.
    pub state: String,
}

/// What runs at each scrape besides the file sizes (set once the node exists).
#[derive(Clone, Default)]
struct ScrapeHook(Arc<OnceLock<Box<dyn Fn() + Send + Sync>>>);

impl std::fmt::Debug for ScrapeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ScrapeHook(set)"
        } else {
            "ScrapeHook(unset)"
        })
    }
}

/// Every metric the node exports. Cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// Served calls, on both listeners.
    pub rpc: RpcMetrics,
    /// Records received in ingest batches, by outcome.
    pub records_ingested: Family<OutcomeLabels, Counter>,
    /// Aggregate groups released across the border, by purpose.
    pub groups_released: Family<PurposeLabels, Counter>,
    /// Aggregate groups suppressed (fewer than k subjects), by purpose.
    pub groups_suppressed: Family<PurposeLabels, Counter>,
    /// Pseudonymised records released across the border, by purpose.
    pub records_released: Family<PurposeLabels, Counter>,
    /// Epsilon left of the budget of the month of data the tenant's latest release was
    /// charged to.
    pub dp_budget_remaining: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    /// Contact-permission decisions.
    pub contact_checks: Family<DecisionLabels, Counter>,
    /// Size of the node's storage files in bytes, read at each scrape.
    pub storage_bytes: Family<FileLabels, Gauge>,
    /// Erasures answered whose interactions are still being deleted (`node::purge`).
    pub erasures_purging: Gauge,
    /// Subject requests by urgency, over every tenant, read at each scrape.
    pub subject_requests: Family<QueueLabels, Gauge>,
    on_scrape: ScrapeHook,
    source: Source,
}

/// What a `storage_bytes` gauge measures.
#[derive(Debug, Clone)]
pub enum StorageSize {
    /// A file; one not created yet (the WAL between checkpoints) counts as empty.
    File(PathBuf),
    /// A PostgreSQL database (`pg_database_size`), read at each scrape; 0 when unreachable.
    Database(crate::store::Backend),
}

impl StorageSize {
    fn bytes(&self) -> u64 {
        match self {
            Self::File(path) => std::fs::metadata(path).map_or(0, |m| m.len()),
            Self::Database(backend) => backend
                .connect_read_only()
                .and_then(|c| {
                    c.query_row("SELECT pg_database_size(current_database())", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .map_or(0, |n| n.max(0) as u64),
        }
    }
}

impl NodeMetrics {
    /// Registers every family in a new registry labelled with `region`; each scrape first
    /// reads the sizes of `files` (label, path).
    pub fn new(region: &str, files: Vec<(&'static str, StorageSize)>) -> Self {
        let mut root = Registry::with_prefix_and_labels(
            "domicile_node",
            [("region".into(), region.to_owned().into())].into_iter(),
        );
        let r = &mut root;
        let rpc = RpcMetrics::register(r);
        let records_ingested = registered(
            r,
            "records_ingested",
            "Records received in ingest batches, by outcome (accepted, duplicate, rejected)",
        );
        let groups_released = registered(
            r,
            "groups_released",
            "Aggregate groups released across the border, by purpose",
        );
        let groups_suppressed = registered(
            r,
            "groups_suppressed",
            "Aggregate groups suppressed for having fewer than k subjects, by purpose",
        );
        let records_released = registered(
            r,
            "records_released",
            "Pseudonymised records released across the border, by purpose",
        );
        let dp_budget_remaining = registered(
            r,
            "dp_budget_remaining_epsilon",
            "Epsilon left of the budget of the month of data the tenant's latest release was charged to",
        );
        let contact_checks = registered(
            r,
            "contact_checks",
            "Contact-permission decisions, by purpose, channel and decision",
        );
        let storage_bytes: Family<FileLabels, Gauge> = registered(
            r,
            "storage_bytes",
            "Size of the node's storage files in bytes",
        );
        let erasures_purging = registered(
            r,
            "erasures_purging",
            "Erasures answered whose interactions are still being deleted; reads of interactions \
             wait while it is above 0",
        );
        let subject_requests = registered(
            r,
            "subject_requests",
            "Open subject requests (open), those due within 7 days (due_within_7_days) and those \
             past due (overdue), over every tenant",
        );
        let sizes = storage_bytes.clone();
        let on_scrape = ScrapeHook::default();
        let hook = on_scrape.clone();
        let source = Source::new(root).with_refresh(move || {
            if let Some(f) = hook.0.get() {
                f();
            }
            for (label, source) in &files {
                let size = source.bytes();
                sizes
                    .get_or_create(&FileLabels {
                        file: (*label).to_owned(),
                    })
                    .set(i64::try_from(size).unwrap_or(i64::MAX));
            }
        });
        Self {
            rpc,
            records_ingested,
            groups_released,
            groups_suppressed,
            records_released,
            dp_budget_remaining,
            contact_checks,
            storage_bytes,
            erasures_purging,
            subject_requests,
            on_scrape,
            source,
        }
    }

    /// Runs `f` at each scrape (once set, for the node's life).
    pub(crate) fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_scrape.0.set(Box::new(f));
    }

    /// The exposition source for `/metrics`.
    pub fn source(&self) -> Source {
        self.source.clone()
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        self.source.encode()
    }

    /// Counts one value of a family labelled by purpose.
    pub(crate) fn by_purpose(family: &Family<PurposeLabels, Counter>, purpose: &str, n: u64) {
        family
            .get_or_create(&PurposeLabels {
                purpose: purpose.to_owned(),
            })
            .inc_by(n);
    }
}
