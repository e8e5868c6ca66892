//! The node's business logic, callable in-process (tests) or through [`crate::service`].

use std::sync::Arc;

use domicile_proto::{
    domain::{AggregateSpec, TenantId},
    error::Violations,
    pb::{RecordResult, RecordStatus, RejectReason, SealedEnvelope, SealingKey},
    seal::{SUITE, SealingKeyPair},
};

use crate::{
    aggregate::{self, Partial},
    config::NodeConfig,
    error::NodeError,
    ingest::{Verdict, open_envelope, result},
    keys,
    storage::{SqliteStore, StoreOutcome},
};

/// A running regional node: configuration, keys and storage.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    keys: SealingKeyPair,
    store: SqliteStore,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("region_id", &self.inner.config.region_id)
            .field("key_id", &self.inner.keys.public().key_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node's storage and sealing key as configured (creating them if missing).
    pub fn open(config: NodeConfig) -> Result<Self, NodeError> {
        config
            .validate()
            .map_err(|e| NodeError::Internal(format!("configuration: {e}")))?;
        let keys = keys::load_or_create(&config.sealing_key_path())
            .map_err(|e| NodeError::Internal(format!("sealing key: {e}")))?;
        let store = SqliteStore::open(&config.database)?;
        tracing::info!(
            region = %config.region_id,
            countries = ?config.countries,
            key_id = %keys.public().key_id(),
            database = %config.database.display(),
            "node opened"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                keys,
                store,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The storage (for tests and operational commands).
    pub fn store(&self) -> &SqliteStore {
        &self.inner.store
    }

    /// The current public sealing key, as published.
    pub fn sealing_key(&self) -> SealingKey {
        let public = self.inner.keys.public();
        SealingKey {
            key_id: public.key_id().to_owned(),
            public_key: public.as_bytes().to_vec(),
            suite: SUITE.to_owned(),
        }
    }

    /// Opens, checks and stores one envelope. One result per record, in order; the valid
    /// records of a batch are committed together.
    pub async fn ingest(
        &self,
        tenant_id: &str,
        envelope: SealedEnvelope,
    ) -> Result<Vec<RecordResult>, NodeError> {
        let tenant = TenantId::parse(tenant_id, "tenant_id")?;
        let config = &self.inner.config;
        let mut v = Violations::new();
        if envelope.region_id != config.region_id {
            v.add(
                "envelope.region_id",
                format!("this node serves region {}", config.region_id),
            );
        }
        if envelope.records.len() > config.max_records_per_envelope {
            v.add(
                "envelope.records",
                format!(
                    "at most {} records per envelope",
                    config.max_records_per_envelope
                ),
            );
        }
        v.into_result(())?;

        let node = self.clone();
        tokio::task::spawn_blocking(move || node.ingest_blocking(&tenant, &envelope))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    fn ingest_blocking(
        &self,
        tenant: &TenantId,
        envelope: &SealedEnvelope,
    ) -> Result<Vec<RecordResult>, NodeError> {
        let inner = &self.inner;
        let verdicts = open_envelope(
            &inner.keys,
            tenant.as_str(),
            &inner.config.countries,
            envelope,
        );
        let mut to_store = Vec::new();
        let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(verdicts.len());
        for (record, verdict) in envelope.records.iter().zip(verdicts) {
            match verdict {
                Verdict::Store(r) => {
                    to_store.push(*r);
                    results.push(None);
                }
                Verdict::Reject(reason, detail) => results.push(Some(result(
                    record.seq,
                    &record.idempotency_key,
                    RecordStatus::Rejected,
                    reason,
                    detail,
                ))),
            }
        }
        let outcomes = if to_store.is_empty() {
            Vec::new()
        } else {
            inner.store.ingest(tenant.as_str(), &to_store)?
        };
        let mut outcomes = outcomes.into_iter();
        let results: Vec<RecordResult> = envelope
            .records
            .iter()
            .zip(results)
            .map(|(record, r)| {
                r.unwrap_or_else(|| {
                    let status = match outcomes.next() {
                        Some(StoreOutcome::Duplicate) => RecordStatus::Duplicate,
                        _ => RecordStatus::Accepted,
                    };
                    result(
                        record.seq,
                        &record.idempotency_key,
                        status,
                        RejectReason::Unspecified,
                        String::new(),
                    )
                })
            })
            .collect();
        let accepted = results
            .iter()
            .filter(|r| r.status == RecordStatus::Accepted as i32)
            .count();
        tracing::debug!(
            region = %inner.config.region_id,
            tenant = %tenant,
            records = results.len(),
            accepted,
            "ingest batch"
        );
        Ok(results)
    }

    /// This region's partial aggregate for `tenant`. k is the larger of the node's and the
    /// request's.
    pub async fn aggregate(
        &self,
        tenant_id: &str,
        spec: AggregateSpec,
    ) -> Result<Partial, NodeError> {
        let tenant = TenantId::parse(tenant_id, "tenant_id")?;
        let k = self.inner.config.min_group_size.max(spec.min_group_size);
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let region = &node.inner.config.region_id;
            node.inner
                .store
                .read(|conn| aggregate::run(conn, region, tenant.as_str(), &spec, k))
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
    }
}
