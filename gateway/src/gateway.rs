//! The gateway's business logic, callable in-process (tests) or through [`crate::api::service`].

use domicile_ops::clock::SharedClock;
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use domicile_proto::{
    domain::{AggregateSpec, TenantId},
    error::Violations,
    merge::MergedGroups,
    pb::{
        AggregateRequest, AggregateResponse, IngestRequest, IngestResponse, NoiseMechanism,
        PrivacyParameters, RegionInfo, RegionRelease, RegionStatus, RegionalNodeAggregateRequest,
        ReleaseKind, ResidencyAttestation,
    },
};

use crate::{
    auth::Authenticator,
    config::GatewayConfig,
    error::GatewayError,
    federation::directory::{BuildError, Directory, Region},
    federation::fanout::{fan_out, request},
    federation::routing,
    limits::Limiter,
    metrics::GatewayMetrics,
};

/// The gateway: configuration, region directory and metrics. Cheap to clone.
///
/// The configuration and directory can be replaced while serving ([`Gateway::reload`]); a call
/// works on the snapshot it started with, so a region removed by a reload still finishes the
/// calls already sent to it.
#[derive(Debug, Clone)]
pub struct Gateway {
    current: Arc<RwLock<Current>>,
    pub(crate) metrics: GatewayMetrics,
    /// The audit witness: kept across reloads (its file is the one named at start).
    witness: Arc<crate::federation::witness::Witness>,
    /// The time: the system's, or one a test moves ([`Gateway::with_clock`]).
    clock: SharedClock,
}

#[derive(Debug, Clone)]
struct Current {
    config: Arc<GatewayConfig>,
    directory: Arc<Directory>,
    /// `None` only in the explicit insecure mode.
    auth: Option<Arc<Authenticator>>,
    limiter: Arc<Limiter>,
}

/// Builds what a configuration needs besides the directory.
/// The key files are read again here: one that changed since the configuration was checked
/// fails the start or the reload, naming the option.
fn security(
    config: &GatewayConfig,
) -> Result<(Option<Arc<Authenticator>>, Arc<Limiter>), BuildError> {
    let auth = match &config.auth {
        Some(a) => Some(Arc::new(
            Authenticator::from_config(a).map_err(BuildError::Files)?,
        )),
        None => None,
    };
    Ok((auth, Arc::new(Limiter::new(config.limits.clone()))))
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Regions that joined the directory.
    pub added: Vec<String>,
    /// Regions that left it.
    pub removed: Vec<String>,
    /// Regions whose countries or endpoints changed.
    pub changed: Vec<String>,
    /// Options that changed but take effect only on restart (listen addresses).
    pub restart_needed: Vec<String>,
}

impl Gateway {
    /// Builds a gateway from validated configuration. Must run inside a Tokio runtime.
    pub fn new(config: GatewayConfig) -> Result<Self, BuildError> {
        let mut metrics = GatewayMetrics::new();
        if let Some(otlp) = &config.otlp {
            let spans = domicile_ops::otlp::SpanExporter::new(otlp, "domicile-gateway", &[])
                .map_err(BuildError::Files)?;
            metrics.rpc.spans = Some(spans.clone());
            metrics.regions.spans = Some(spans);
        }
        let directory = Directory::new(&config, metrics.clone())?;
        let (auth, limiter) = security(&config)?;
        if config.federation_tls.is_none() {
            tracing::warn!(
                "insecure_plaintext_federation: regions are called in plaintext, unverified"
            );
        }
        if auth.is_none() {
            tracing::warn!(
                "insecure_no_auth: the gateway serves without authentication; every caller may do everything"
            );
        }
        let witness =
            crate::federation::witness::Witness::open(config.audit_witness_file.as_deref())
                .map_err(BuildError::Files)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Current {
                config: Arc::new(config),
                directory: Arc::new(directory),
                auth,
                limiter,
            })),
            metrics,
            witness: Arc::new(witness),
            clock: domicile_ops::clock::system(),
        })
    }

    /// The same gateway reading the time from `clock` (tests move a manual clock rather than
    /// wait). Deadlines and timeouts of calls stay on the runtime's timer.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Now, in Unix seconds, by the gateway's clock: legal holds' expiry, incident deadlines,
    /// the overview's window.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The audit witness ([`crate::federation::witness`]).
    pub fn witness(&self) -> &crate::federation::witness::Witness {
        &self.witness
    }

    /// The authenticator in force; `None` in the explicit insecure mode.
    pub fn authenticator(&self) -> Option<Arc<Authenticator>> {
        self.read().auth.clone()
    }

    /// The admission limiter in force.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.read().limiter.clone()
    }

    /// The state in force (a poisoned lock still holds a consistent state: it is only
    /// replaced whole).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Current {
        self.read().clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.read().config.clone()
    }

    /// The region directory in force.
    pub fn directory(&self) -> Arc<Directory> {
        self.read().directory.clone()
    }

    /// The region with id `id`.
    pub fn region(&self, id: &str) -> Option<Arc<Region>> {
        self.directory().region(id).cloned()
    }

    /// The region that serves `country`.
    pub fn region_for_country(&self, country: &str) -> Option<Arc<Region>> {
        self.directory().region_for_country(country).cloned()
    }

    /// Every region, in configuration order.
    pub fn regions(&self) -> Vec<Arc<Region>> {
        self.directory().regions().to_vec()
    }

    /// The metrics.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Replaces the configuration with `config` (already validated): regions are added,
    /// removed or re-pointed without a restart, keys for tokens (`[auth]`) and limits are
    /// re-read, unchanged regions keep their connections, and
    /// calls in flight finish on the directory they started with. Listen addresses are only
    /// read at start; a change to them is reported in `restart_needed`.
    pub fn reload(&self, config: GatewayConfig) -> Result<ReloadReport, BuildError> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let directory = current.directory.rebuild(&config)?;
        let old = &current.config;
        let ids = |c: &GatewayConfig| c.regions.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        let (old_ids, new_ids) = (ids(old), ids(&config));
        let mut report = ReloadReport {
            added: new_ids
                .iter()
                .filter(|i| !old_ids.contains(i))
                .cloned()
                .collect(),
            removed: old_ids
                .iter()
                .filter(|i| !new_ids.contains(i))
                .cloned()
                .collect(),
            ..Default::default()
        };
        for r in &config.regions {
            if let Some(o) = old.regions.iter().find(|o| o.id == r.id)
                && (o.countries != r.countries || o.endpoints != r.endpoints)
            {
                report.changed.push(r.id.clone());
            }
        }
        if old.listen != config.listen {
            report.restart_needed.push("listen".to_owned());
        }
        if old.metrics_listen != config.metrics_listen {
            report.restart_needed.push("metrics_listen".to_owned());
        }
        if old.console_listen != config.console_listen {
            report.restart_needed.push("console_listen".to_owned());
        }
        let (auth, limiter) = security(&config)?;
        *current = Current {
            config: Arc::new(config),
            directory: Arc::new(directory),
            auth,
            limiter,
        };
        self.metrics.reloads.inc();
        Ok(report)
    }

    /// Probes every region and lists them with health and sealing keys.
    pub async fn list_regions(&self, deadline: Duration) -> Vec<RegionInfo> {
        let Current {
            config, directory, ..
        } = self.current();
        let timeout = deadline.min(Duration::from_millis(config.probe_timeout_ms));
        directory.probe_all(timeout).await
    }

    /// Routes sealed records to their regions; one result per record, in request order.
    pub async fn ingest(
        &self,
        req: IngestRequest,
        deadline: Duration,
    ) -> Result<IngestResponse, GatewayError> {
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        let Current {
            config, directory, ..
        } = self.current();
        let plan = routing::plan(&directory, req.envelopes, config.max_records_per_request)?;
        let mut results = plan.results;
        let mut placements = Vec::with_capacity(plan.forwards.len());
        let mut targets = Vec::with_capacity(plan.forwards.len());
        for forward in plan.forwards {
            placements.push((forward.envelope_index, forward.positions));
            targets.push((forward.region, forward.envelope));
        }
        let tenant_id = tenant.as_str();
        let outcomes = fan_out(targets, deadline, |region, envelope, deadline| async move {
            region.ingest(tenant_id, envelope, deadline).await
        })
        .await;

        let mut coverage = Vec::with_capacity(outcomes.len());
        for (outcome, (envelope_index, positions)) in outcomes.into_iter().zip(placements) {
            let entry = outcome.coverage();
            match outcome.result {
                // A region that answers with fewer results than records leaves the rest as
                // "not confirmed", which is retryable.
                Ok(answered) => {
                    for (pos, mut r) in positions.into_iter().zip(answered) {
                        r.envelope_index = envelope_index;
                        results[pos] = r;
                    }
                }
                // The records may or may not be stored; a retry with the same idempotency keys
                // is safe either way.
                Err(failure) => {
                    tracing::warn!(region = %entry.region_id, detail = %failure.detail, "ingest forward failed");
                    for pos in positions {
                        let r = &results[pos];
                        results[pos] = routing::region_unavailable(
                            envelope_index,
                            r.seq,
                            &r.idempotency_key,
                            &failure.detail,
                        );
                    }
                }
            }
            coverage.push(entry);
        }
        self.metrics.observe_coverage("Ingest", &coverage);
        Ok(IngestResponse { results, coverage })
    }

    /// Fans an aggregate out to the requested regions and merges their partials.
    pub async fn aggregate(
        &self,
        req: AggregateRequest,
        deadline: Duration,
    ) -> Result<AggregateResponse, GatewayError> {
        let mut v = Violations::new();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id");
        let spec = AggregateSpec::from_query(req.query.as_ref(), "query");
        let regions = self.resolve_regions(&req.regions, &mut v);
        let (tenant, spec) = combine(v, tenant, spec)?;

        let message = RegionalNodeAggregateRequest {
            tenant_id: tenant.as_str().to_owned(),
            query: Some(spec.to_query()),
        };
        let targets = regions.into_iter().map(|r| (r, ())).collect();
        let outcomes = fan_out(targets, deadline, |region, (), deadline| {
            let mut client = region.client.clone();
            let message = message.clone();
            async move {
                Ok(client
                    .aggregate(request(message, deadline))
                    .await?
                    .into_inner())
            }
        })
        .await;

        let mut merged = MergedGroups::new();
        let mut coverage = Vec::with_capacity(outcomes.len());
        let mut attestation = ResidencyAttestation::default();
        let mut suppressed = 0u64;
        let mut k_applied = spec.min_group_size;
        let mut exhausted = Vec::new();
        for outcome in outcomes {
            let mut entry = outcome.coverage();
            match outcome.result {
                Ok(partial) => {
                    entry.groups_released = u32::try_from(partial.groups.len()).unwrap_or(u32::MAX);
                    entry.groups_suppressed =
                        u32::try_from(partial.suppressed_groups).unwrap_or(u32::MAX);
                    suppressed += partial.suppressed_groups;
                    k_applied = k_applied.max(partial.min_group_size);
                    merged.add_region(partial.groups);
                    attestation.regions.push(
                        partial
                            .release
                            .unwrap_or_else(|| nothing_released(&outcome.region.id)),
                    );
                }
                Err(failure) => {
                    if failure.status == RegionStatus::BudgetExhausted {
                        let meta = |key: &str| {
                            failure
                                .metadata
                                .iter()
                                .find(|(k, _)| k == key)
                                .map_or_else(|| "unknown".to_owned(), |(_, v)| v.clone())
                        };
                        exhausted.push((
                            outcome.region.id.clone(),
                            meta("month"),
                            meta("remaining_epsilon"),
                        ));
                    }
                    attestation
                        .regions
                        .push(nothing_released(&outcome.region.id));
                }
            }
            coverage.push(entry);
        }
        self.metrics.observe_coverage("Aggregate", &coverage);
        if !coverage.is_empty() && exhausted.len() == coverage.len() {
            return Err(GatewayError::BudgetExhausted(exhausted));
        }
        if req.require_all_regions {
            let missing: Vec<_> = coverage
                .iter()
                .filter(|c| c.status != RegionStatus::Ok as i32)
                .collect();
            if !missing.is_empty() {
                let list = missing
                    .iter()
                    .map(|c| format!("{} ({})", c.region_id, c.detail))
                    .collect::<Vec<_>>()
                    .join(", ");
                let all_deadline = missing
                    .iter()
                    .all(|c| c.status == RegionStatus::DeadlineExceeded as i32);
                return Err(if all_deadline {
                    GatewayError::RegionsDeadline(list)
                } else {
                    GatewayError::RegionsUnavailable(list)
                });
            }
        }
        let noised = attestation
            .regions
            .iter()
            .filter(|r| r.mechanism == NoiseMechanism::DiscreteLaplace as i32);
        let epsilon = noised.clone().map(|r| r.epsilon).fold(0.0, f64::max);
        let mechanism = if noised.count() > 0 {
            NoiseMechanism::DiscreteLaplace
        } else {
            NoiseMechanism::None
        };
        let groups = merged.finish(&spec.metrics);
        self.metrics.groups_released.inc_by(groups.len() as u64);
        self.metrics.groups_suppressed.inc_by(suppressed);
        Ok(AggregateResponse {
            groups,
            suppressed_groups: suppressed,
            coverage,
            privacy: Some(PrivacyParameters {
                min_group_size: k_applied,
                mechanism: mechanism as i32,
                epsilon,
            }),
            attestation: Some(attestation),
        })
    }

    /// The regions named by `ids` (all when empty), with a violation for each unknown or
    /// repeated id.
    pub(crate) fn resolve_regions(&self, ids: &[String], v: &mut Violations) -> Vec<Arc<Region>> {
        let directory = self.directory();
        let mut regions: Vec<Arc<Region>> = Vec::new();
        if ids.is_empty() {
            regions.extend(directory.regions().iter().cloned());
        }
        for (i, id) in ids.iter().enumerate() {
            match directory.region(id) {
                Some(r) if regions.iter().any(|x| Arc::ptr_eq(x, r)) => {
                    v.add(format!("regions[{i}]"), "duplicate region")
                }
                Some(r) => regions.push(r.clone()),
                None => v.add(format!("regions[{i}]"), "unknown region; see ListRegions"),
            }
        }
        regions
    }
}

/// The attestation entry of a region that released nothing.
pub(crate) fn nothing_released(region_id: &str) -> RegionRelease {
    RegionRelease {
        region_id: region_id.to_owned(),
        kind: ReleaseKind::None as i32,
        ..Default::default()
    }
}

/// All violations of a request, or its two validated parts.
pub(crate) fn combine<A, B>(
    mut v: Violations,
    a: Result<A, Violations>,
    b: Result<B, Violations>,
) -> Result<(A, B), Violations> {
    match (a, b) {
        (Ok(a), Ok(b)) if v.is_empty() => Ok((a, b)),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                v.0.extend(e.0);
            }
            Err(v)
        }
    }
}
