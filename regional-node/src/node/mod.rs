//! The node's business logic, callable in-process (tests) or through [`crate::api::service`].

pub mod backup;
mod followup;
pub mod local_access;
pub mod metrics;
pub mod purge;
pub mod retention;
mod rights;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use domicile_proto::{
    consent::{Confirmation, ConsentChange, ConsentQuestion},
    domain::{AggregateSpec, IncidentSpec, RecordSpec, TenantId, is_incident_id},
    error::Violations,
    pb::{
        CheckContactPermissionResponse, ConsentAction, ConsentState, GetConsentResponse,
        NoiseMechanism, Purpose, RecordResult, RecordStatus, RegionIncident, RegionRelease,
        RegionalNodeAggregateResponse, RegionalNodeQueryRecordsResponse, RejectReason, ReleaseKind,
        SealedEnvelope, SealingKey,
    },
    seal::{SUITE, SealingKeyPair},
};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{
    config::NodeConfig,
    domain::aggregate,
    domain::audit::{self, AuditLog, Entry},
    domain::consent::{self, Recorded},
    domain::incident,
    domain::ingest::{Verdict, open_envelope, result},
    domain::partial::Rules,
    domain::policy::{CountryPolicy, PolicySet, Release},
    domain::records,
    domain::stored::{self, RecordBody, StoreOutcome},
    error::NodeError,
    node::metrics::StorageSize,
    node::metrics::{DecisionLabels, NodeMetrics, OutcomeLabels, TenantLabels},
    privacy::pseudonym::Pseudonymiser,
    store::keys,
    store::{Backend, Store},
};

/// Messages buffered between the SQL reader and the gRPC stream of `QueryRecords`: when the
/// client stops reading, the reader blocks after this many batches.
const RECORD_STREAM_BUFFER: usize = 2;

/// A stream of `QueryRecords` messages from a node.
pub type RecordStream = mpsc::Receiver<Result<RegionalNodeQueryRecordsResponse, NodeError>>;

/// A running regional node: configuration, keys and storage.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: NodeConfig,
    /// The time differential-privacy releases are made by (which buckets have closed).
    pub(crate) clock: domicile_ops::clock::SharedClock,
    pub(crate) keys: SealingKeyPair,
    /// The previous sealing key and the end of its grace period (Unix seconds).
    pub(crate) previous: Option<(SealingKeyPair, i64)>,
    pub(crate) store: Store,
    pub(crate) policies: PolicySet,
    pub(crate) pseudonyms: Pseudonymiser,
    /// Randomness for differential-privacy noise, seeded from the operating system.
    pub(crate) noise_rng: crate::privacy::dp::SharedRng,
    /// Erasures whose rows are still being deleted ([`purge`]).
    pub(crate) purges: purge::Purges,
    /// Hot reads running at once ([`Node::reading`]): one per store reader.
    pub(crate) read_slots: Arc<tokio::sync::Semaphore>,
    /// Pseudonymised records handed to `QueryRecords` streams since start.
    pub(crate) records_released: AtomicU64,
    /// The tamper-evident audit log.
    pub(crate) audit: AuditLog,
    /// Prometheus metrics.
    pub(crate) metrics: NodeMetrics,
    /// The federation listener's mutual TLS; `None` in the explicit insecure mode.
    pub(crate) tls: Option<FederationTls>,
    /// Mutual TLS of the in-country listener, and who it admits.
    pub(crate) local_tls: Option<tonic::transport::ServerTlsConfig>,
    pub(crate) local_access: local_access::LocalAccess,
    /// When the sealing key file was written (seconds since the epoch), for its age.
    pub(crate) sealing_key_since: Option<i64>,
    /// The DPO keys registered per tenant.
    pub(crate) dpo_keys: crate::domain::authority::DpoKeys,
}

/// What the federation listener needs for mutual TLS, read at start.
#[derive(Debug, Clone)]
pub struct FederationTls {
    /// Certificate, key and client CA.
    pub config: tonic::transport::ServerTlsConfig,
    /// The gateway identity pinned.
    pub pin: domicile_ops::tls::RequirePeer,
}

fn load_tls(config: &NodeConfig) -> Result<Option<FederationTls>, NodeError> {
    let Some(t) = &config.tls else {
        tracing::warn!(
            region = %config.region_id,
            "insecure_plaintext: the federation listener serves any client, in plaintext"
        );
        return Ok(None);
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| NodeError::Internal(format!("tls.{what}: {}: {e}", path.display())))
    };
    let identity = tonic::transport::Identity::from_pem(
        read("cert_file", &t.cert_file)?,
        read("key_file", &t.key_file)?,
    );
    let ca = tonic::transport::Certificate::from_pem(read("client_ca_file", &t.client_ca_file)?);
    Ok(Some(FederationTls {
        config: tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca),
        pin: domicile_ops::tls::RequirePeer::new(std::slice::from_ref(&t.gateway_identity))
            .map_err(|e| NodeError::Internal(format!("tls.gateway_identity: {e}")))?,
    }))
}

/// The in-country listener's mutual TLS, from `[local_tls]`.
fn load_local_tls(
    config: &NodeConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, NodeError> {
    let Some(t) = &config.local_tls else {
        if config.local_listen.is_some() {
            tracing::warn!(
                "the in-country listener serves in plaintext on loopback: every local caller \
                 has every role (set [local_tls] and [[local_principals]] for anything else)"
            );
        }
        return Ok(None);
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| NodeError::Internal(format!("local_tls.{what}: {}: {e}", path.display())))
    };
    Ok(Some(
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                read("cert_file", &t.cert_file)?,
                read("key_file", &t.key_file)?,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                "client_ca_file",
                &t.client_ca_file,
            )?)),
    ))
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
    /// Opens the node's storage and keys as configured: keys are loaded, never created.
    pub fn open(config: NodeConfig) -> Result<Self, NodeError> {
        Self::open_with_clock(config, domicile_ops::clock::system())
    }

    /// [`Node::open`] with the clock that decides which days and months have closed (tests
    /// move a manual one; production uses the system clock).
    pub fn open_with_clock(
        config: NodeConfig,
        clock: domicile_ops::clock::SharedClock,
    ) -> Result<Self, NodeError> {
        config
            .validate()
            .map_err(|e| NodeError::Internal(format!("configuration: {e}")))?;
        // Policies first: a bad policy file stops the start before anything is created.
        let policies = PolicySet::load(config.policy_dir.as_deref(), &config.countries)
            .map_err(|e| NodeError::Internal(format!("policy: {e}")))?;
        let keys = keys::load(&config.sealing_key_path(), "sealing_key_file")?;
        let sealing_key_since = std::fs::metadata(config.sealing_key_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        let secret = keys::load_secret(&config.pseudonym_secret_path(), "pseudonym_secret_file")?;
        let audit_seed = keys::load_secret(&config.audit_key_path(), "audit_key_file")?;
        let audit = AuditLog::new(
            &config.region_id,
            &audit_seed,
            config.audit_checkpoint_every,
        )
        .with_clock(clock.clone());
        let tls = load_tls(&config)?;
        let local_tls = load_local_tls(&config)?;
        let local_access = local_access::LocalAccess::from_config(&config)?;
        let dpo_keys = crate::domain::authority::DpoKeys::open(config.dpo_keys_file.as_deref())
            .map_err(NodeError::Internal)?;
        let previous = match (
            &config.previous_sealing_key_file,
            config.previous_key_until(),
        ) {
            (Some(path), Some(until)) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    NodeError::Internal(format!(
                        "previous_sealing_key_file: {}: {e}",
                        path.display()
                    ))
                })?;
                let pair = SealingKeyPair::from_private_bytes(&bytes)
                    .map_err(|e| NodeError::Internal(format!("previous_sealing_key_file: {e}")))?;
                Some((pair, until))
            }
            _ => None,
        };
        // The KEK is checked against the vault before the data database is opened.
        let store = Store::open_with_vault(
            &config.backend(),
            crate::store::vault::Vault::open_for(&config)?.with_clock(clock.clone()),
            &crate::domain::schema::SCHEMA,
        )?;
        store.write(|tx| {
            audit.append(
                tx,
                Entry {
                    kind: audit::Kind::NodeStart,
                    tenant: "",
                    subject: None,
                    details: serde_json::json!({
                        "region": config.region_id,
                        "countries": config.countries,
                        "policies": policies.labels(),
                        "sealing_key_id": keys.public().key_id(),
                        "audit_public_key": hex::encode(audit.public_key()),
                        "dpo_keys": dpo_keys.len(),
                    }),
                },
            )?;
            // Every log has a signed checkpoint from its start on: `audit verify` refuses a
            // chain that no checkpoint covers.
            audit.checkpoint(tx)
        })?;
        tracing::info!(
            region = %config.region_id,
            countries = ?config.countries,
            policies = ?policies.labels(),
            key_id = %keys.public().key_id(),
            storage = %config.backend().describe(),
            "node opened"
        );
        let queued = store.read(crate::domain::rights::queued_purges)?;
        let mut metrics = NodeMetrics::new(
            &config.region_id,
            match config.backend() {
                Backend::Sqlite(path) => vec![
                    ("database", StorageSize::File(path.clone())),
                    ("database_wal", StorageSize::File(wal_of(&path))),
                    ("key_vault", StorageSize::File(config.key_vault_path())),
                    (
                        "key_vault_wal",
                        StorageSize::File(wal_of(&config.key_vault_path())),
                    ),
                ],
                // The write-ahead log is the cluster's, not the database's.
                backend @ Backend::Postgres(_) => vec![
                    ("database", StorageSize::Database(backend)),
                    ("key_vault", StorageSize::File(config.key_vault_path())),
                    (
                        "key_vault_wal",
                        StorageSize::File(wal_of(&config.key_vault_path())),
                    ),
                ],
            },
        );
        if let Some(otlp) = &config.otlp {
            metrics.rpc.spans = Some(
                domicile_ops::otlp::SpanExporter::new(
                    otlp,
                    "domicile-node",
                    &[("domicile.region", config.region_id.as_str())],
                )
                .map_err(NodeError::Internal)?,
            );
        }
        metrics.erasures_purging.set(queued as i64);
        let node = Self {
            inner: Arc::new(Inner {
                purges: purge::Purges::new(queued),
                metrics,
                tls,
                local_tls,
                local_access,
                sealing_key_since,
                previous,
                config,
                clock,
                keys,
                store,
                policies,
                pseudonyms: Pseudonymiser::new(&secret),
                noise_rng: crate::privacy::dp::SharedRng::from_os_rng(),
                read_slots: Arc::new(tokio::sync::Semaphore::new(crate::store::READERS)),
                records_released: AtomicU64::new(0),
                audit,
                dpo_keys,
            }),
        };
        if queued > 0 {
            // A purge the node stopped in the middle of: finished before those reads answer.
            tracing::info!(
                erasures = queued,
                "resuming the purge of erased subjects' rows"
            );
            node.kick_purges();
        }
        // The subject-request queue's gauges, counted at each scrape (the node held weakly:
        // the metrics do not keep it alive).
        let weak = Arc::downgrade(&node.inner);
        node.inner.metrics.on_scrape(move || {
            let Some(inner) = weak.upgrade() else { return };
            let node = Self { inner };
            let now = node.now();
            match node
                .inner
                .store
                .read(|conn| crate::domain::cases::totals(conn, now))
            {
                Ok((open, soon, overdue)) => {
                    for (state, n) in [
                        ("open", open),
                        ("due_within_7_days", soon),
                        ("overdue", overdue),
                    ] {
                        node.inner
                            .metrics
                            .subject_requests
                            .get_or_create(&metrics::QueueLabels {
                                state: state.to_owned(),
                            })
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "counting subject requests for the metrics"),
            }
        });
        Ok(node)
    }

    /// Pseudonymised records this node has handed to `QueryRecords` streams since it started
    /// (a record counts once it is queued for the network, before the client reads it).
    pub fn records_released(&self) -> u64 {
        self.inner.records_released.load(Ordering::Relaxed)
    }

    /// The federation listener's mutual TLS, if configured.
    pub fn federation_tls(&self) -> Option<&FederationTls> {
        self.inner.tls.as_ref()
    }

    /// The in-country listener's mutual TLS (`None`: plaintext on loopback) and admission.
    pub fn local_access(
        &self,
    ) -> (
        Option<&tonic::transport::ServerTlsConfig>,
        &local_access::LocalAccess,
    ) {
        (self.inner.local_tls.as_ref(), &self.inner.local_access)
    }

    /// The metrics.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.inner.metrics
    }

    /// The node's time (Unix seconds): its injected clock, the system's in production.
    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// A signed checkpoint of the audit head (made now if the head moved).
    pub async fn audit_checkpoint(&self) -> Result<domicile_proto::pb::AuditCheckpoint, NodeError> {
        self.blocking(|node| node.inner.store.write(|tx| node.inner.audit.checkpoint(tx)))
            .await
    }

    /// A checkpoint of the current head for a witness that saw entry `known_seq` last: the
    /// log from there to the head is checked to chain, and that entry's hash today comes back
    /// beside the checkpoint (empty for 0 or past the head).
    pub async fn witnessed_checkpoint(
        &self,
        known_seq: u64,
    ) -> Result<(domicile_proto::pb::AuditCheckpoint, Vec<u8>), NodeError> {
        self.blocking(move |node| {
            node.inner.store.write(|tx| {
                let checkpoint = node.inner.audit.checkpoint(tx)?;
                let known = audit::chain_from(tx, known_seq, checkpoint.seq)?;
                Ok((checkpoint, known))
            })
        })
        .await
    }

    /// The current sealing key as this region states it, signed with its identity (audit)
    /// key, valid from now for `sealing_key_statement_hours`.
    pub fn signed_sealing_key(&self) -> domicile_proto::pb::SignedSealingKey {
        let inner = &self.inner;
        let public = inner.keys.public();
        // Wall-clock time, not the node's clock: clients check the statement against theirs.
        let now = domicile_proto::domain::unix_now();
        let statement = domicile_proto::pb::SealingKeyStatement {
            region_id: inner.config.region_id.clone(),
            countries: inner.config.countries.clone(),
            key_id: public.key_id().to_owned(),
            public_key: public.as_bytes().to_vec(),
            suite: SUITE.to_owned(),
            not_before: inner.sealing_key_since.unwrap_or(now).min(now),
            not_after: now + 3_600 * inner.config.sealing_key_statement_hours as i64,
            policy_versions: inner.policies.labels(),
        };
        inner.audit.sign_statement(&statement)
    }

    /// Checks `request`'s DPO signature for `tenant` and spends its nonce. A refusal is
    /// audited (which request, why, which key) and returned as `PERMISSION_DENIED`. On success,
    /// the principal to run the request as: the caller's, with the DPO key's id.
    pub async fn authorize_dpo<R>(
        &self,
        tenant: &str,
        request: &R,
    ) -> Result<std::sync::Arc<str>, NodeError>
    where
        R: domicile_proto::trust::DpoSigned,
    {
        // Wall-clock time, not the node's clock: the DPO signs with theirs.
        let now = domicile_proto::domain::unix_now();
        let verdict = domicile_proto::trust::verify_request(request, now, |id| {
            self.inner.dpo_keys.lookup(tenant, id)
        });
        let key_id = request
            .dpo_signature()
            .map(|s| s.key_id.chars().take(16).collect::<String>())
            .unwrap_or_default();
        let tenant = tenant.to_owned();
        let name = R::FULL_NAME;
        let outcome = self
            .blocking(move |node| {
                let inner = &node.inner;
                inner.store.write(|tx| {
                    let verdict = match verdict {
                        Ok(v) if crate::domain::authority::use_nonce(tx, &v, now)? => Ok(v),
                        Ok(_) => Err(domicile_proto::trust::DpoRefusal::Replayed),
                        Err(r) => Err(r),
                    };
                    if let Err(refusal) = &verdict {
                        inner.audit.append(
                            tx,
                            Entry {
                                kind: audit::Kind::DpoRefused,
                                tenant: &tenant,
                                subject: None,
                                details: serde_json::json!({
                                    "request": name,
                                    "reason": refusal.reason(),
                                    "dpo_key_id": key_id,
                                }),
                            },
                        )?;
                    }
                    Ok(verdict)
                })
            })
            .await?;
        let verified = outcome.map_err(NodeError::DpoRefused)?;
        let caller = domicile_ops::principal::current();
        Ok(format!(
            "{};dpo-key={}",
            caller.as_deref().unwrap_or("unattributed"),
            verified.key_id
        )
        .into())
    }

    /// This region's report for the console: keys, policies, a fresh audit checkpoint, and the
    /// tenant's releases from `since` in buckets of `bucket_seconds`, privacy budget, subject
    /// requests, incidents and consent counts.
    pub async fn region_overview(
        &self,
        tenant: TenantId,
        since: i64,
        bucket_seconds: u32,
    ) -> Result<domicile_proto::pb::RegionalNodeGetRegionOverviewResponse, NodeError> {
        let checkpoint = self.audit_checkpoint().await?;
        self.blocking(move |node| {
            let inner = &node.inner;
            let tenant = tenant.as_str();
            let budget_milli = inner.policies.release_rules().budget_milli;
            let now = inner.clock.now();
            inner.store.read(|conn| {
                let (subject_requests, open_requests, open_total) =
                    crate::domain::overview::subject_requests(conn, tenant, now)?;
                Ok(domicile_proto::pb::RegionalNodeGetRegionOverviewResponse {
                    region_id: inner.config.region_id.clone(),
                    countries: inner.config.countries.clone(),
                    policy_versions: inner.policies.labels(),
                    sealing_key_id: inner.keys.public().key_id().to_owned(),
                    sealing_key_since: inner
                        .sealing_key_since
                        .map(domicile_proto::domain::whole_seconds),
                    checkpoint: Some(checkpoint.clone()),
                    releases: crate::domain::overview::releases(
                        conn,
                        tenant,
                        since,
                        i64::from(bucket_seconds.max(1)),
                    )?,
                    budget: Some(crate::domain::overview::budget(
                        conn,
                        tenant,
                        budget_milli,
                        now,
                    )?),
                    subject_requests,
                    open_requests,
                    open_requests_total: open_total,
                    incidents: crate::domain::overview::incidents(
                        conn,
                        tenant,
                        incident::Release::of(&inner.policies),
                    )?,
                    consents: crate::domain::overview::consents(conn, tenant)?,
                    follow_ups: Some(crate::domain::followup::counts(conn, tenant, now)?),
                })
            })
        })
        .await
    }

    /// Records this region's part of an incident and audits it. Its counts come back rounded;
    /// past the tenant's daily number of reports the report is refused (and the refusal
    /// audited).
    pub async fn report_incident(
        &self,
        incident_id: String,
        spec: IncidentSpec,
    ) -> Result<RegionIncident, NodeError> {
        if !is_incident_id(&incident_id) {
            return Err(
                Violations::one("incident_id", "must be \"inc-\" and 32 hex characters").into(),
            );
        }
        self.erasures_purged().await?;
        let outcome = self
            .blocking(move |node| {
                let inner = &node.inner;
                let region = &inner.config.region_id;
                let release = incident::Release::of(&inner.policies);
                inner.store.write(|tx| {
                    let today = incident::reports_today(tx, spec.tenant.as_str(), node.now())?;
                    if today >= release.per_day {
                        inner.audit.append(
                            tx,
                            Entry {
                                kind: audit::Kind::IncidentReported,
                                tenant: spec.tenant.as_str(),
                                subject: None,
                                details: serde_json::json!({
                                    "incident_id": incident_id,
                                    "refused": "daily limit of incident reports",
                                    "reports_today": today,
                                }),
                            },
                        )?;
                        return Ok(Err(release.per_day));
                    }
                    let part = incident::report(
                        tx,
                        &inner.policies,
                        region,
                        &incident_id,
                        &spec,
                        node.now(),
                    )?;
                    let (start, end) = release.align(spec.start, spec.end);
                    inner.audit.append(
                        tx,
                        Entry {
                            kind: audit::Kind::IncidentReported,
                            tenant: spec.tenant.as_str(),
                            subject: None,
                            details: serde_json::json!({
                                "incident_id": incident_id,
                                "window": [start, end],
                                "count_granularity": release.granularity,
                                "deadline": part.deadline.as_ref().map(|t| t.seconds),
                                "policy_versions": part.policy_versions,
                            }),
                        },
                    )?;
                    Ok(Ok(part))
                })
            })
            .await?;
        outcome.map_err(|limit| {
            NodeError::FailedPrecondition(format!(
                "incident reports: at most {limit} per tenant per UTC day in this region; the \
                 exact counts are on the in-country listener"
            ))
        })
    }

    /// This region's part of an incident, or `NotFound`.
    pub async fn get_incident(
        &self,
        tenant: TenantId,
        incident_id: String,
    ) -> Result<domicile_proto::pb::Incident, NodeError> {
        self.blocking(move |node| {
            let found = node
                .inner
                .store
                .read(|conn| incident::get(conn, tenant.as_str(), &incident_id))?;
            let mut incident = found
                .ok_or_else(|| NodeError::NotFound("no such incident in this region".into()))?;
            let release = incident::Release::of(&node.inner.policies);
            for part in &mut incident.regions {
                part.region_id = node.inner.config.region_id.clone();
                part.affected = release.round(std::mem::take(&mut part.affected));
            }
            Ok(incident)
        })
        .await
    }

    /// Who an incident affects, with contact details, and the exact affected counts: for the
    /// in-country listener only.
    pub async fn incident_subjects(
        &self,
        tenant: TenantId,
        incident_id: String,
    ) -> Result<
        (
            Vec<domicile_proto::pb::IncidentSubject>,
            Vec<domicile_proto::pb::AffectedCount>,
        ),
        NodeError,
    > {
        self.erasures_purged().await?;
        self.blocking(move |node| {
            let inner = &node.inner;
            let (subjects, exact) = inner.store.read(|conn| {
                let subjects =
                    incident::subjects(conn, &inner.store, tenant.as_str(), &incident_id)?
                        .ok_or_else(|| {
                            NodeError::NotFound("no such incident in this region".into())
                        })?;
                let exact = incident::get(conn, tenant.as_str(), &incident_id)?
                    .map(|i| i.regions.into_iter().flat_map(|r| r.affected).collect())
                    .unwrap_or_default();
                Ok((subjects, exact))
            })?;
            inner.store.write(|tx| {
                inner.audit.append(
                    tx,
                    Entry {
                        kind: audit::Kind::IncidentSubjectsListed,
                        tenant: tenant.as_str(),
                        subject: None,
                        details: serde_json::json!({
                            "incident_id": incident_id,
                            "subjects": subjects.len(),
                        }),
                    },
                )
            })?;
            Ok((subjects, exact))
        })
        .await
    }

    /// The country policies in force.
    pub fn policies(&self) -> &PolicySet {
        &self.inner.policies
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The storage (for tests and operational commands).
    pub fn store(&self) -> &Store {
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
        spawn_blocking_in_span(move || node.ingest_blocking(&tenant, &envelope))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    fn ingest_blocking(
        &self,
        tenant: &TenantId,
        envelope: &SealedEnvelope,
    ) -> Result<Vec<RecordResult>, NodeError> {
        let inner = &self.inner;
        // The previous key still opens envelopes during its grace period after a rotation.
        let key = match &inner.previous {
            Some((previous, until))
                if envelope.key_id == previous.public().key_id() && self.now() < *until =>
            {
                previous
            }
            _ => &inner.keys,
        };
        let verdicts = open_envelope(key, tenant.as_str(), &inner.config.countries, envelope);
        let meta: Vec<(u32, &str)> = envelope
            .records
            .iter()
            .map(|r| (r.seq, r.idempotency_key.as_str()))
            .collect();
        self.store_verdicts(
            tenant,
            "envelope.records",
            &envelope.key_id,
            &meta,
            verdicts,
        )
    }

    /// Checks and stores a batch of records sent in clear by an in-country system
    /// (`LocalNode.Ingest`): the sealed path's checks, results and audit, the seal aside.
    pub async fn ingest_plain(
        &self,
        tenant_id: &str,
        records: Vec<domicile_proto::pb::LocalRecord>,
    ) -> Result<Vec<RecordResult>, NodeError> {
        let tenant = TenantId::parse(tenant_id, "tenant_id")?;
        let max = self.inner.config.max_records_per_envelope;
        if records.len() > max {
            return Err(
                Violations::one("records", format!("at most {max} records per batch")).into(),
            );
        }
        self.blocking(move |node| {
            let verdicts =
                crate::domain::ingest::check_plain(&node.inner.config.countries, &records);
            let meta: Vec<(u32, &str)> = records
                .iter()
                .map(|r| (r.seq, r.idempotency_key.as_str()))
                .collect();
            node.store_verdicts(&tenant, "records", "in-country", &meta, verdicts)
        })
        .await
    }

    /// Stores the valid records of a batch whose verdicts are given (one per record of
    /// `meta`: seq and idempotency key), in one transaction with its audit entry; one result
    /// per record, in order. `source` names where the batch came from in the audit entry (a
    /// sealing key id, or `in-country`).
    fn store_verdicts(
        &self,
        tenant: &TenantId,
        prefix: &'static str,
        source: &str,
        meta: &[(u32, &str)],
        mut verdicts: Vec<Verdict>,
    ) -> Result<Vec<RecordResult>, NodeError> {
        let inner = &self.inner;
        crate::domain::ingest::check_vocabulary(
            inner.config.vocabulary.get(tenant.as_str()),
            prefix,
            &mut verdicts,
        );
        // A profile whose e-mail or phone is under a suppression kept by an erasure (the same
        // person, sent again under a new id): the suppression extends to its external id. The
        // suppression ids are computed from the clear ids, before they are keyed.
        let p = &inner.pseudonyms;
        let mut contacts_at: std::collections::HashMap<usize, (String, Vec<String>)> = verdicts
            .iter()
            .enumerate()
            .filter_map(|(n, v)| match v {
                Verdict::Store(r) => match &r.body {
                    RecordBody::Subject(s) => {
                        let ids = p.suppression_of_contacts(tenant.as_str(), &s.email, &s.phone);
                        (!ids.is_empty()).then(|| {
                            (
                                n,
                                (
                                    p.suppression_of_subject(tenant.as_str(), &s.external_id),
                                    ids,
                                ),
                            )
                        })
                    }
                    RecordBody::Interaction(_) => None,
                },
                Verdict::Reject(..) => None,
            })
            .collect();
        // From here on the records carry their subjects' references and keyed ids only.
        let keys = stored::key_records(
            &inner.store,
            tenant.as_str(),
            verdicts.iter_mut().filter_map(|v| match v {
                Verdict::Store(r) => Some(r.as_mut()),
                Verdict::Reject(..) => None,
            }),
        )?;
        let verdicts = self.check_recording_consent(tenant, verdicts)?;
        let mut to_store = Vec::new();
        let mut contacts: Vec<(usize, String, Vec<String>)> = Vec::new();
        let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(verdicts.len());
        for (n, (&(seq, idempotency_key), verdict)) in meta.iter().zip(verdicts).enumerate() {
            match verdict {
                Verdict::Store(r) => {
                    if let Some((subject, ids)) = contacts_at.remove(&n) {
                        contacts.push((to_store.len(), subject, ids));
                    }
                    to_store.push(*r);
                    results.push(None);
                }
                Verdict::Reject(reason, detail) => results.push(Some(result(
                    seq,
                    idempotency_key,
                    RecordStatus::Rejected,
                    reason,
                    detail,
                ))),
            }
        }
        let rejected = results.iter().filter(|r| r.is_some()).count();
        let (subjects, interactions) = to_store.iter().fold((0, 0), |(s, i), r| match r.body {
            RecordBody::Subject(_) => (s + 1, i),
            RecordBody::Interaction(_) => (s, i + 1),
        });
        let audit_node = self.clone();
        let audit_tenant = tenant.clone();
        let key_id = source.to_owned();
        let sent = meta.len();
        let outcomes = stored::write_batch(
            &inner.store,
            tenant.as_str(),
            to_store,
            keys,
            self.now(),
            move |tx, outcomes| {
                let stored = outcomes
                    .iter()
                    .filter(|o| **o == StoreOutcome::Stored)
                    .count();
                if !contacts.is_empty() && consent::any_suppression(tx, audit_tenant.as_str())? {
                    for (i, subject_id, ids) in &contacts {
                        if outcomes.get(*i) == Some(&StoreOutcome::Stored) {
                            consent::extend_suppression(
                                tx,
                                audit_tenant.as_str(),
                                ids,
                                subject_id,
                            )?;
                        }
                    }
                }
                audit_node.inner.audit.append(
                    tx,
                    Entry {
                        kind: audit::Kind::IngestBatch,
                        tenant: audit_tenant.as_str(),
                        subject: None,
                        details: serde_json::json!({
                            "key_id": key_id,
                            "records": sent,
                            "accepted": stored,
                            "duplicate": outcomes.len() - stored,
                            "rejected": rejected,
                            "subject_records": subjects,
                            "interaction_records": interactions,
                        }),
                    },
                )?;
                Ok(())
            },
        )?;
        let mut outcomes = outcomes.into_iter();
        let results: Vec<RecordResult> = meta
            .iter()
            .zip(results)
            .map(|(&(seq, idempotency_key), r)| {
                r.unwrap_or_else(|| {
                    let status = match outcomes.next() {
                        Some(StoreOutcome::Duplicate) => RecordStatus::Duplicate,
                        _ => RecordStatus::Accepted,
                    };
                    result(
                        seq,
                        idempotency_key,
                        status,
                        RejectReason::Unspecified,
                        String::new(),
                    )
                })
            })
            .collect();
        let count =
            |status: RecordStatus| results.iter().filter(|r| r.status == status as i32).count();
        let accepted = count(RecordStatus::Accepted);
        for (outcome, n) in [
            ("accepted", accepted),
            ("duplicate", count(RecordStatus::Duplicate)),
            ("rejected", count(RecordStatus::Rejected)),
        ] {
            inner
                .metrics
                .records_ingested
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                })
                .inc_by(n as u64);
        }
        tracing::debug!(
            region = %inner.config.region_id,
            tenant = %tenant,
            records = results.len(),
            accepted,
            "ingest batch"
        );
        Ok(results)
    }

    /// This region's partial aggregate for `tenant`, with the release it amounts to: summed
    /// from differentially private releases of closed days or months (docs/privacy-model.md),
    /// making the ones it needs that do not exist yet — each charged once to the accountant,
    /// which refuses a release past its month of data's budget with
    /// [`NodeError::BudgetExhausted`]. *k* (the largest of the country policy's, the node's floor
    /// and the request's) applies to the noisy distinct-subject counts.
    pub async fn aggregate(
        &self,
        tenant_id: &str,
        spec: AggregateSpec,
    ) -> Result<RegionalNodeAggregateResponse, NodeError> {
        let tenant = TenantId::parse(tenant_id, "tenant_id")?;
        self.erasures_purged().await?;
        let policies = &self.inner.policies;
        let floor = self.inner.config.min_group_size.max(spec.min_group_size);
        let k_by_country: std::collections::BTreeMap<String, u32> = policies
            .iter()
            .map(|p| (p.country().to_owned(), p.min_group_size().max(floor)))
            .collect();
        let k_mixed = k_by_country.values().copied().max().unwrap_or(floor);
        let rules = policies.release_rules();
        let now = self.inner.clock.now();
        // Before the longest interaction retention, every interaction is gone: no releases.
        let retention_days = policies
            .iter()
            .map(|p| i64::from(p.retention.interactions))
            .max()
            .unwrap_or(0);
        let plan =
            crate::domain::release::Plan::new(&spec, now, now - (retention_days + 1) * 86_400)?;
        let fingerprint = fingerprint(tenant.as_str(), &spec.to_query().encode_to_vec());

        let node = self.clone();
        spawn_blocking_in_span(move || {
            let inner = &node.inner;
            let region = &inner.config.region_id;
            // Make what is missing, all in one transaction: a refusal leaves nothing made and
            // nothing charged. When everything exists (the steady state), no write at all.
            let complete = inner.store.read(|conn| {
                crate::domain::release::all_made(conn, tenant.as_str(), spec.purpose, &plan)
            })?;
            let made = if complete {
                Vec::new()
            } else {
                inner.store.write(|tx| {
                    // Locked per draw, not across this transaction's SQL and audit writes.
                    let mut rng = inner.noise_rng.draws();
                    let made = match crate::domain::release::ensure_all(
                        tx,
                        region,
                        &inner.config.countries,
                        tenant.as_str(),
                        spec.purpose,
                        consent::Gate::new(&inner.policies, spec.purpose, tenant.as_str()),
                        rules,
                        &plan,
                        now,
                        &mut rng,
                    )? {
                        Ok(made) => made,
                        Err(e) => {
                            return Err(NodeError::BudgetExhausted {
                                month: e.month,
                                remaining_milli: e.remaining_milli,
                                budget_milli: e.budget_milli,
                                requested_milli: e.requested_milli,
                            });
                        }
                    };
                    for m in &made {
                        inner.audit.append(
                            tx,
                            Entry {
                                kind: audit::Kind::DpRelease,
                                tenant: tenant.as_str(),
                                subject: None,
                                details: serde_json::json!({
                                    "purpose": spec.purpose.as_str_name(),
                                    "release": m.id,
                                    "cost": m.epsilon_milli as f64 / 1000.0,
                                    "data_month": crate::domain::rollup::month_label(m.data_month),
                                    "remaining": m.remaining_milli as f64 / 1000.0,
                                    "max_contributions": rules.max_contributions,
                                    "policy_versions": inner.policies.labels(),
                                }),
                            },
                        )?;
                    }
                    Ok(made)
                })?
            };
            if let Some(last) = made.last() {
                inner
                    .metrics
                    .dp_budget_remaining
                    .get_or_create(&TenantLabels {
                        tenant: tenant.as_str().to_owned(),
                    })
                    .set(last.remaining_milli as f64 / 1000.0);
            }
            let (partial, sources) = inner.store.read(|conn| {
                crate::domain::release::answer(
                    conn,
                    region,
                    tenant.as_str(),
                    &spec,
                    &plan,
                    &k_by_country,
                    k_mixed,
                )
            })?;
            let spent_now: u32 = made.iter().map(|m| m.epsilon_milli).sum();
            let released = u32::try_from(partial.groups.len()).unwrap_or(u32::MAX);
            let mut release = RegionRelease {
                region_id: region.clone(),
                kind: if released > 0 {
                    ReleaseKind::Aggregates
                } else {
                    ReleaseKind::None
                } as i32,
                groups_released: released,
                groups_suppressed: u32::try_from(partial.suppressed).unwrap_or(u32::MAX),
                rows_released: 0,
                min_group_size: partial.min_group_size,
                mechanism: NoiseMechanism::DiscreteLaplace as i32,
                epsilon: f64::from(spent_now) / 1000.0,
                policy_versions: inner.policies.labels(),
                countries_denied: Vec::new(),
                query_fingerprint: fingerprint,
                audit_seq: 0,
                signature: Vec::new(),
                derived_from: sources
                    .iter()
                    .map(|s| domicile_proto::pb::DpReleaseRef {
                        id: s.id.clone(),
                        epsilon: s.epsilon,
                    })
                    .collect(),
                released_through: Some(domicile_proto::domain::whole_seconds(
                    plan.released_through(),
                )),
            };
            // Nothing leaves without its audit entry.
            release.audit_seq = inner.store.write(|tx| {
                let mut details = release_details(&spec.purpose, &release);
                details["derived_from"] =
                    serde_json::json!(sources.iter().map(|s| s.id.as_str()).collect::<Vec<_>>());
                inner.audit.append(
                    tx,
                    Entry {
                        kind: audit::Kind::ReleaseAggregate,
                        tenant: tenant.as_str(),
                        subject: None,
                        details,
                    },
                )
            })?;
            inner.audit.sign_release(&mut release);
            let purpose = spec.purpose.as_str_name();
            NodeMetrics::by_purpose(&inner.metrics.groups_released, purpose, u64::from(released));
            NodeMetrics::by_purpose(
                &inner.metrics.groups_suppressed,
                purpose,
                partial.suppressed,
            );
            tracing::debug!(
                region = %region,
                tenant = %tenant,
                purpose,
                groups = released,
                suppressed = partial.suppressed,
                releases_made = made.len(),
                epsilon = release.epsilon,
                "aggregate released"
            );
            Ok(RegionalNodeAggregateResponse {
                region_id: region.clone(),
                groups: partial.groups,
                suppressed_groups: partial.suppressed,
                min_group_size: partial.min_group_size,
                release: Some(release),
            })
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    /// The exact aggregate, for in-country use only (the `LocalNode` listener): no noise, no
    /// *k*, every row of the purpose's consent gate. Never served across the border.
    pub async fn exact_aggregate(
        &self,
        tenant_id: &str,
        spec: AggregateSpec,
    ) -> Result<Vec<domicile_proto::pb::PartialGroup>, NodeError> {
        let tenant = TenantId::parse(tenant_id, "tenant_id")?;
        self.erasures_purged().await?;
        let node = self.clone();
        spawn_blocking_in_span(move || {
            let inner = &node.inner;
            let partial = inner.store.read(|conn| {
                let rules = Rules {
                    bounds: None,
                    k_by_country: Default::default(),
                    k_mixed: 0,
                    gate: consent::Gate::new(&inner.policies, spec.purpose, tenant.as_str()),
                    noise: None,
                };
                aggregate::run(conn, &inner.config.region_id, tenant.as_str(), &spec, rules)
            })?;
            inner.store.write(|tx| {
                inner.audit.append(
                    tx,
                    Entry {
                        kind: audit::Kind::LocalAggregate,
                        tenant: tenant.as_str(),
                        subject: None,
                        details: serde_json::json!({
                            "purpose": spec.purpose.as_str_name(),
                            "groups": partial.groups.len(),
                        }),
                    },
                )
            })?;
            Ok(partial.groups)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    /// Streams this region's pseudonymised records for `tenant`, in time order, from the
    /// countries whose policy lets records leave; the last message carries the release.
    /// Refused with [`NodeError::DeniedByPolicy`] when no country of the region does.
    pub fn query_records(
        &self,
        tenant_id: &str,
        spec: RecordSpec,
    ) -> Result<RecordStream, NodeError> {
        let tenant = TenantId::parse(tenant_id, "tenant_id")?;
        let policies = &self.inner.policies;
        let (allowed, denied): (Vec<_>, Vec<_>) = policies
            .iter()
            .partition(|p| p.border.release == Release::Pseudonymised);
        let allowed: Vec<String> = allowed.iter().map(|p| p.country().to_owned()).collect();
        let denied: Vec<String> = denied.iter().map(|p| p.country().to_owned()).collect();
        if allowed.is_empty() {
            return Err(NodeError::DeniedByPolicy(format!(
                "region {} releases aggregates only ({})",
                self.inner.config.region_id,
                policies.labels().join(", ")
            )));
        }
        let fingerprint = fingerprint(tenant.as_str(), &spec.to_query().encode_to_vec());
        let (tx, rx) = mpsc::channel(RECORD_STREAM_BUFFER);
        let node = self.clone();
        spawn_blocking_in_span(move || {
            let inner = &node.inner;
            // On the blocking pool, which has the runtime's handle: the stream is made before
            // the wait, so this one waits here.
            if let Err(e) = tokio::runtime::Handle::current().block_on(node.erasures_purged()) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            let region_id = inner.config.region_id.as_str();
            let release = records::Release {
                region_id,
                tenant: tenant.as_str(),
                countries: &allowed,
                policies: &inner.policies,
                pseudonyms: &inner.pseudonyms,
                vault: inner.store.vault(),
                consent: consent::Gate::new(&inner.policies, spec.purpose, tenant.as_str()),
            };
            let start = inner.store.write(|tx| {
                inner.audit.append(
                    tx,
                    Entry {
                        kind: audit::Kind::ReleaseRecordsStart,
                        tenant: tenant.as_str(),
                        subject: None,
                        details: serde_json::json!({
                            "purpose": spec.purpose.as_str_name(),
                            "limit": spec.limit,
                            "countries": allowed,
                            "countries_denied": denied,
                            "query_fingerprint": fingerprint,
                        }),
                    },
                )
            });
            if let Err(e) = start {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            let outcome = inner.store.read(|conn| {
                records::run(conn, &release, &spec, |batch| {
                    inner
                        .records_released
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    NodeMetrics::by_purpose(
                        &inner.metrics.records_released,
                        spec.purpose.as_str_name(),
                        batch.len() as u64,
                    );
                    let msg = RegionalNodeQueryRecordsResponse {
                        records: batch,
                        release: None,
                    };
                    // Blocks while the client is not reading: this is the backpressure.
                    tx.blocking_send(Ok(msg)).is_ok()
                })
            });
            let last = outcome.and_then(|rows| {
                tracing::debug!(
                    region = %region_id,
                    tenant = %tenant,
                    purpose = spec.purpose.as_str_name(),
                    rows,
                    "records released"
                );
                let mut release = RegionRelease {
                    region_id: region_id.to_owned(),
                    kind: if rows > 0 {
                        ReleaseKind::PseudonymisedRecords
                    } else {
                        ReleaseKind::None
                    } as i32,
                    rows_released: rows,
                    mechanism: NoiseMechanism::None as i32,
                    policy_versions: inner.policies.labels(),
                    countries_denied: denied.clone(),
                    query_fingerprint: fingerprint.clone(),
                    ..Default::default()
                };
                release.audit_seq = inner.store.write(|tx| {
                    inner.audit.append(
                        tx,
                        Entry {
                            kind: audit::Kind::ReleaseRecords,
                            tenant: tenant.as_str(),
                            subject: None,
                            details: release_details(&spec.purpose, &release),
                        },
                    )
                })?;
                inner.audit.sign_release(&mut release);
                Ok(RegionalNodeQueryRecordsResponse {
                    records: Vec::new(),
                    release: Some(release),
                })
            });
            let _ = tx.blocking_send(last);
        });
        Ok(rx)
    }

    /// Rejects recorded interactions from countries that demand every party's consent to
    /// recording when no `call_recording` grant of the subject is on file for the channel.
    fn check_recording_consent(
        &self,
        tenant: &TenantId,
        verdicts: Vec<Verdict>,
    ) -> Result<Vec<Verdict>, NodeError> {
        let needs_check = |v: &Verdict| match v {
            Verdict::Store(r) => match &r.body {
                RecordBody::Interaction(i) => {
                    i.recorded
                        && self.inner.policies.get(&r.country).is_some_and(|p| {
                            p.recording.rule == crate::domain::policy::RecordingRule::AllParties
                        })
                }
                RecordBody::Subject(_) => false,
            },
            Verdict::Reject(..) => false,
        };
        if !verdicts.iter().any(needs_check) {
            return Ok(verdicts);
        }
        // Which records lack the consent, read first; the batch is then changed outside the
        // read (which may run twice, on a new session, if the first was lost).
        let missing: Vec<bool> = self.inner.store.read(|conn| {
            verdicts
                .iter()
                .map(|verdict| {
                    if needs_check(verdict)
                        && let Verdict::Store(r) = verdict
                        && let RecordBody::Interaction(i) = &r.body
                    {
                        let (state, _) = consent::current(
                            conn,
                            tenant.as_str(),
                            &i.subject_id,
                            Purpose::CallRecording,
                            i.channel,
                        )?;
                        return Ok(!matches!(
                            state,
                            ConsentState::Granted | ConsentState::GrantedConfirmed
                        ));
                    }
                    Ok(false)
                })
                .collect()
        })?;
        Ok(verdicts
            .into_iter()
            .zip(missing)
            .map(|(verdict, missing)| match verdict {
                Verdict::Store(r) if missing => Verdict::Reject(
                    RejectReason::RecordingConsentMissing,
                    format!(
                        "payload.interaction.recorded: {} requires every party's consent \
                         to recording and none of the subject's is on file for this channel",
                        r.country
                    ),
                ),
                verdict => verdict,
            })
            .collect())
    }

    /// Replaces `subject`'s external id with the subject's reference (made when `create` and
    /// the vault does not know the subject; otherwise an unknown subject gets an empty
    /// reference, which matches no row).
    pub(crate) fn to_reference(
        &self,
        tenant: &domicile_proto::domain::TenantId,
        subject: &mut domicile_proto::consent::Subject,
        create: bool,
    ) -> Result<(), NodeError> {
        let external = subject.external_id.as_str();
        let reference = self
            .inner
            .store
            .vault()
            .resolve(
                tenant.as_str(),
                &std::collections::BTreeSet::from([external]),
                create,
            )?
            .remove(external)
            .map(|k| k.reference);
        subject.external_id = reference.unwrap_or_default();
        Ok(())
    }

    /// The decrypted profile of the subject with `external_id`, if this region holds one (for
    /// in-country tools and tests: the database knows the subject by reference only).
    pub fn profile_of(
        &self,
        tenant: &str,
        external_id: &str,
    ) -> Result<Option<crate::domain::stored::Profile>, NodeError> {
        let store = &self.inner.store;
        let Some(key) = store.vault().find(tenant, external_id)? else {
            return Ok(None);
        };
        store.read(|conn| crate::domain::stored::profile(store, conn, tenant, &key.reference))
    }

    /// Audits a consent ledger entry under the subject's audit pseudonym, in the caller's
    /// transaction (the one that appended the entry).
    pub(crate) fn audit_consent(
        &self,
        tx: &crate::store::db::Connection,
        tenant: &str,
        subject_id: &str,
        entry: &domicile_proto::pb::ConsentEntry,
    ) -> Result<u64, NodeError> {
        let subject = self.inner.pseudonyms.audit_subject(tenant, subject_id);
        self.inner.audit.append(
            tx,
            Entry {
                kind: audit::Kind::ConsentChange,
                tenant,
                subject: Some(&subject),
                details: consent_details(entry),
            },
        )
    }

    /// The policy of `country` when this node serves it; the error names `field`.
    pub(crate) fn policy_for(
        &self,
        country: &str,
        field: &str,
    ) -> Result<&CountryPolicy, NodeError> {
        self.inner.policies.get(country).ok_or_else(|| {
            Violations::one(
                field,
                format!(
                    "not served by region {}; route by ListRegions",
                    self.inner.config.region_id
                ),
            )
            .into()
        })
    }

    /// Runs `f` on the blocking pool with this node.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let node = self.clone();
        spawn_blocking_in_span(move || f(&node))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    /// Runs the read-only `f` on the blocking pool once a reader slot is free. Under load a
    /// call past the slots waits here, as a task, rather than as one more blocking thread
    /// holding one more database connection: at 64 calls in flight on two cores, a thread
    /// and a SQLite connection opened per call was most of the work (issue 25).
    pub(crate) async fn reading<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let slot = self
            .inner
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NodeError::Internal("the node is shutting down".into()))?;
        // The slot goes with the work: a caller that gives up does not free it early.
        self.blocking(move |node| {
            let _slot = slot;
            f(node)
        })
        .await
    }

    /// Appends a grant, refusal, objection or withdrawal to a subject's consent ledger.
    pub async fn record_consent(&self, change: ConsentChange) -> Result<Recorded, NodeError> {
        self.policy_for(&change.subject.country, "subject.country")?;
        self.blocking(move |node| {
            let policy = node.policy_for(&change.subject.country, "subject.country")?;
            let region = node.inner.config.region_id.as_str();
            let inner = &node.inner;
            // The ledger is kept by the subject's reference, made here for a subject not
            // seen before.
            let mut change = change;
            node.to_reference(&change.tenant, &mut change.subject, true)?;
            let now = node.now();
            let recorded = inner.store.write(|tx| {
                let recorded = consent::record(tx, region, policy, &change, now)?;
                node.audit_consent(
                    tx,
                    change.tenant.as_str(),
                    &change.subject.external_id,
                    &recorded.entry,
                )?;
                Ok(recorded)
            })?;
            tracing::debug!(
                region = %region,
                tenant = %change.tenant,
                purpose = change.purpose.as_str_name(),
                action = ConsentAction::try_from(recorded.entry.action)
                    .map_or("", |a| a.as_str_name()),
                "consent recorded"
            );
            Ok(recorded)
        })
        .await
    }

    /// Confirms a double opt-in with its token.
    pub async fn confirm_consent(&self, confirmation: Confirmation) -> Result<Recorded, NodeError> {
        if confirmation.region_id != self.inner.config.region_id {
            return Err(Violations::one("token", "issued by another region").into());
        }
        self.blocking(move |node| {
            let policies = &node.inner.policies;
            let inner = &node.inner;
            let now = node.now();
            let recorded = inner.store.write(|tx| {
                let (recorded, subject_id) = consent::confirm(tx, policies, &confirmation, now)?;
                node.audit_consent(
                    tx,
                    confirmation.tenant.as_str(),
                    &subject_id,
                    &recorded.entry,
                )?;
                Ok(recorded)
            })?;
            tracing::debug!(
                region = %node.inner.config.region_id,
                tenant = %confirmation.tenant,
                "double opt-in confirmed"
            );
            Ok(recorded)
        })
        .await
    }

    /// The consent state and ledger of a subject.
    pub async fn get_consent(&self, q: ConsentQuestion) -> Result<GetConsentResponse, NodeError> {
        self.policy_for(&q.subject.country, "subject.country")?;
        self.reading(move |node| {
            let mut q = q;
            node.to_reference(&q.tenant, &mut q.subject, false)?;
            node.inner.store.read(|conn| consent::get(conn, &q))
        })
        .await
    }

    /// May the subject be contacted for the purpose on the channel, and why.
    pub async fn check_contact_permission(
        &self,
        q: ConsentQuestion,
    ) -> Result<CheckContactPermissionResponse, NodeError> {
        self.policy_for(&q.subject.country, "subject.country")?;
        self.reading(move |node| {
            let policy = node.policy_for(&q.subject.country, "subject.country")?;
            let suppressed_as = vec![
                node.inner
                    .pseudonyms
                    .suppression_of_subject(q.tenant.as_str(), &q.subject.external_id),
            ];
            let suppressed_as = || suppressed_as.clone();
            let mut q = q;
            node.to_reference(&q.tenant, &mut q.subject, false)?;
            let answer = node
                .inner
                .store
                .read(|conn| consent::check(conn, policy, &q, suppressed_as))?;
            node.inner
                .metrics
                .contact_checks
                .get_or_create(&DecisionLabels {
                    purpose: q.purpose.as_str_name().to_owned(),
                    channel: q.channel.as_str_name().to_owned(),
                    decision: if answer.allowed { "allowed" } else { "denied" }.to_owned(),
                })
                .inc();
            Ok(answer)
        })
        .await
    }
}

/// `spawn_blocking` that keeps the caller's span (the RPC's, with its trace id) for the logs
/// of the blocking part, and its principal for the audit entries it writes.
fn spawn_blocking_in_span<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    let principal = domicile_ops::principal::current();
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| domicile_ops::principal::sync_scope(principal, f))
    })
}

/// The write-ahead log beside an SQLite file.
fn wal_of(path: &std::path::Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

/// The audit details of a release: its parameters and counts, never data.
fn release_details(purpose: &Purpose, release: &RegionRelease) -> serde_json::Value {
    serde_json::json!({
        "purpose": purpose.as_str_name(),
        "kind": ReleaseKind::try_from(release.kind).map_or("", |k| k.as_str_name()),
        "groups_released": release.groups_released,
        "groups_suppressed": release.groups_suppressed,
        "rows_released": release.rows_released,
        "min_group_size": release.min_group_size,
        "mechanism": NoiseMechanism::try_from(release.mechanism).map_or("", |m| m.as_str_name()),
        "epsilon": release.epsilon,
        "policy_versions": release.policy_versions,
        "countries_denied": release.countries_denied,
        "query_fingerprint": release.query_fingerprint,
    })
}

/// The audit details of a consent entry.
fn consent_details(entry: &domicile_proto::pb::ConsentEntry) -> serde_json::Value {
    serde_json::json!({
        "purpose": Purpose::try_from(entry.purpose).map_or("", |p| p.as_str_name()),
        "channel": domicile_proto::pb::Channel::try_from(entry.channel).map_or("", |c| c.as_str_name()),
        "action": ConsentAction::try_from(entry.action).map_or("", |a| a.as_str_name()),
        "ledger_seq": entry.seq,
        "policy_version": entry.policy_version,
        "actor": entry.actor,
    })
}

/// Hex SHA-256 of the tenant and the encoded query: names the query in attestations without
/// revealing anything but its parameters.
fn fingerprint(tenant: &str, query: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(query);
    hex::encode(h.finalize())
}

/// Brings the node's database to [`crate::domain::schema::SCHEMA_VERSION`] (creating it if
/// missing) without serving; returns the version it had (`None`: new).
pub fn migrate(config: &NodeConfig) -> Result<Option<i64>, NodeError> {
    let backend = config.backend();
    let before = crate::store::schema_version(&backend)?;
    Store::open_with_vault(
        &backend,
        crate::store::vault::Vault::open_for(config)?,
        &crate::domain::schema::SCHEMA,
    )?;
    Ok(before)
}
