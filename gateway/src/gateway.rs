//! The gateway's business logic, callable in-process (tests) or through [`crate::service`].

use std::{sync::Arc, time::Duration};

use domicile_proto::{
    domain::{AggregateSpec, RecordSpec, TenantId},
    error::Violations,
    merge::MergedGroups,
    pb::{
        AggregateRequest, AggregateResponse, IngestRequest, IngestResponse, NoiseMechanism,
        PrivacyParameters, QueryRecordsRequest, RegionInfo, RegionRelease, RegionStatus,
        RegionalNodeAggregateRequest, RegionalNodeIngestRequest, ReleaseKind, ResidencyAttestation,
    },
};

use crate::{
    config::GatewayConfig,
    directory::{Directory, Region},
    error::GatewayError,
    fanout::{fan_out, request},
    records::{self, RecordStream},
    routing,
};

/// The gateway: configuration and region directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    config: Arc<GatewayConfig>,
    directory: Arc<Directory>,
}

impl Gateway {
    /// Builds a gateway from validated configuration. Must run inside a Tokio runtime.
    pub fn new(config: GatewayConfig) -> Result<Self, tonic::transport::Error> {
        let directory = Directory::new(&config)?;
        Ok(Self {
            config: Arc::new(config),
            directory: Arc::new(directory),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The region directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Probes every region and lists them with health and sealing keys.
    pub async fn list_regions(&self, deadline: Duration) -> Vec<RegionInfo> {
        let timeout = deadline.min(Duration::from_millis(self.config.probe_timeout_ms));
        self.directory.probe_all(timeout).await
    }

    /// Routes sealed records to their regions; one result per record, in request order.
    pub async fn ingest(
        &self,
        req: IngestRequest,
        deadline: Duration,
    ) -> Result<IngestResponse, GatewayError> {
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id")?;
        let plan = routing::plan(
            &self.directory,
            req.envelopes,
            self.config.max_records_per_request,
        )?;
        let mut results = plan.results;
        let mut placements = Vec::with_capacity(plan.forwards.len());
        let mut targets = Vec::with_capacity(plan.forwards.len());
        for forward in plan.forwards {
            placements.push((forward.envelope_index, forward.positions));
            targets.push((forward.region, forward.envelope));
        }
        let tenant_id = tenant.as_str();
        let outcomes = fan_out(targets, deadline, |region, envelope, deadline| {
            let mut client = region.client.clone();
            let message = RegionalNodeIngestRequest {
                tenant_id: tenant_id.to_owned(),
                envelope: Some(envelope),
            };
            async move {
                Ok(client
                    .ingest(request(message, deadline))
                    .await?
                    .into_inner()
                    .results)
            }
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
                        let left = failure
                            .metadata
                            .iter()
                            .find(|(k, _)| k == "remaining_epsilon")
                            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.clone());
                        exhausted.push((outcome.region.id.clone(), left));
                    }
                    attestation
                        .regions
                        .push(nothing_released(&outcome.region.id));
                }
            }
            coverage.push(entry);
        }
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
        Ok(AggregateResponse {
            groups: merged.finish(&spec.metrics),
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

    /// Streams pseudonymised records from the requested regions (see [`records`]). The request
    /// is validated before anything is streamed.
    pub fn query_records(
        &self,
        req: QueryRecordsRequest,
        deadline: Duration,
    ) -> Result<RecordStream, GatewayError> {
        let mut v = Violations::new();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id");
        let spec = RecordSpec::from_query(req.query.as_ref(), "query");
        let regions = self.resolve_regions(&req.regions, &mut v);
        let (tenant, spec) = combine(v, tenant, spec)?;
        Ok(records::stream(regions, tenant, spec, deadline))
    }

    /// The regions named by `ids` (all when empty), with a violation for each unknown or
    /// repeated id.
    pub(crate) fn resolve_regions(&self, ids: &[String], v: &mut Violations) -> Vec<Arc<Region>> {
        let mut regions: Vec<Arc<Region>> = Vec::new();
        if ids.is_empty() {
            regions.extend(self.directory.regions().iter().cloned());
        }
        for (i, id) in ids.iter().enumerate() {
            match self.directory.region(id) {
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
fn combine<A, B>(
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
