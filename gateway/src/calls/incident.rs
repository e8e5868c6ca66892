//! Audit checkpoints and breach incidents through the gateway.
//!
//! `ReportIncident` gets an id here and fans out to the asked regions, each of which counts its
//! affected subjects and stores its part; `GetIncident` asks every region and combines the
//! parts of those that hold one. The gateway keeps no state: the regions are the record.

use std::{collections::BTreeMap, time::Duration};

use domicile_proto::{
    domain::{IncidentSpec, TenantId, is_incident_id},
    error::Violations,
    pb::{
        AffectedCount, GetAuditCheckpointRequest, GetAuditCheckpointResponse, GetIncidentRequest,
        GetIncidentResponse, Incident, IncidentStatus, RegionCoverage, RegionIncident,
        RegionStatus, RegionalNodeGetIncidentRequest, RegionalNodeReportIncidentRequest,
        ReportIncidentRequest, ReportIncidentResponse,
    },
};
use tonic::Code;

use crate::{
    error::GatewayError,
    federation::fanout::{fan_out, request},
    gateway::Gateway,
};

/// A fresh incident id: `inc-` and 128 random bits in hex.
fn new_incident_id() -> Result<String, GatewayError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        GatewayError::Region(
            "gateway".into(),
            tonic::Status::internal(format!("randomness: {e}")),
        )
    })?;
    Ok(format!(
        "inc-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Fills the combined fields of `incident` from its region parts, its time left as of `now`.
fn combine(incident: &mut Incident, now: i64) {
    let mut totals: BTreeMap<i32, u64> = BTreeMap::new();
    for part in &incident.regions {
        for a in &part.affected {
            *totals.entry(a.category).or_default() += a.subjects;
        }
    }
    incident.totals = totals
        .into_iter()
        .map(|(category, subjects)| AffectedCount {
            country: String::new(),
            category,
            subjects,
        })
        .collect();
    incident.deadline = incident
        .regions
        .iter()
        .filter_map(|r| r.deadline)
        .min_by_key(|t| t.seconds);
    let deadline = incident.deadline.map_or(0, |t| t.seconds);
    incident.seconds_left = deadline - now;
    incident.status = if incident.seconds_left > 0 {
        IncidentStatus::Open
    } else {
        IncidentStatus::DeadlinePassed
    } as i32;
}

impl Gateway {
    /// A region's signed audit head, checked by the audit witness ([`crate::federation::witness`]): a head
    /// that does not extend the witnessed one is `DATA_LOSS`.
    pub async fn get_audit_checkpoint(
        &self,
        req: GetAuditCheckpointRequest,
        deadline: Duration,
    ) -> Result<GetAuditCheckpointResponse, GatewayError> {
        let region = self
            .region(&req.region_id)
            .ok_or_else(|| Violations::one("region_id", "unknown region; see ListRegions"))?;
        let (checkpoint, witness) = self.witness_region(&region, deadline).await?;
        Ok(GetAuditCheckpointResponse {
            checkpoint: Some(checkpoint),
            witness: Some(witness),
        })
    }

    /// Records an incident in the asked regions and returns it combined.
    pub async fn report_incident(
        &self,
        req: ReportIncidentRequest,
        deadline: Duration,
    ) -> Result<ReportIncidentResponse, GatewayError> {
        let mut v = Violations::new();
        let spec = IncidentSpec::parse(&req);
        let regions = self.resolve_regions(&req.regions, &mut v);
        let spec = match spec {
            Ok(s) if v.is_empty() => s,
            Ok(_) => return Err(v.into()),
            Err(e) => {
                v.0.extend(e.0);
                return Err(v.into());
            }
        };
        let incident_id = new_incident_id()?;
        // Forwarded exactly as signed: the DPO's signature covers every field.
        let forwarded = req.clone();
        let detected_at = Some(domicile_proto::domain::whole_seconds(
            spec.detected_at.unwrap_or_else(|| self.now()),
        ));
        let message = RegionalNodeReportIncidentRequest {
            incident_id: incident_id.clone(),
            request: Some(forwarded.clone()),
        };
        let targets = regions.into_iter().map(|r| (r, ())).collect();
        let outcomes = fan_out(targets, deadline, |region, (), deadline| {
            let mut client = region.client.clone();
            let message = message.clone();
            async move {
                Ok(client
                    .report_incident(request(message, deadline))
                    .await?
                    .into_inner())
            }
        })
        .await;
        let mut incident = Incident {
            incident_id,
            tenant_id: spec.tenant.as_str().to_owned(),
            window: forwarded.window,
            categories: forwarded.categories,
            description: forwarded.description,
            detected_at,
            ..Default::default()
        };
        let mut coverage = Vec::new();
        for outcome in outcomes {
            coverage.push(outcome.coverage());
            if let Ok(answer) = outcome.result {
                incident.regions.extend(answer.region);
            }
        }
        if incident.regions.is_empty() {
            // An incident no region recorded does not exist: say why rather than answer with
            // an empty one (the DPO's signature refused, the daily limit reached, …).
            let code_of = |c: &RegionCoverage| {
                [
                    ("PermissionDenied", Code::PermissionDenied),
                    ("FailedPrecondition", Code::FailedPrecondition),
                ]
                .into_iter()
                .find(|(name, _)| c.detail.starts_with(name))
                .map_or(Code::Unavailable, |(_, code)| code)
            };
            let code = coverage.first().map_or(Code::Unavailable, code_of);
            let code = if coverage.iter().all(|c| code_of(c) == code) {
                code
            } else {
                Code::Unavailable
            };
            let reasons = coverage
                .iter()
                .map(|c| format!("{}: {}", c.region_id, c.detail))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(GatewayError::NotRecorded(code, reasons));
        }
        combine(&mut incident, self.now());
        tracing::info!(
            incident = %incident.incident_id,
            tenant = %incident.tenant_id,
            regions = incident.regions.len(),
            "incident reported"
        );
        Ok(ReportIncidentResponse {
            incident: Some(incident),
            coverage,
        })
    }

    /// An incident, combined from the regions that hold a part of it.
    pub async fn get_incident(
        &self,
        req: GetIncidentRequest,
        deadline: Duration,
    ) -> Result<GetIncidentResponse, GatewayError> {
        let mut v = Violations::new();
        if let Err(e) = TenantId::parse(&req.tenant_id, "tenant_id") {
            v.0.extend(e.0);
        }
        if !is_incident_id(&req.incident_id) {
            v.add("incident_id", "must be \"inc-\" and 32 hex characters");
        }
        v.into_result(())?;
        let message = RegionalNodeGetIncidentRequest {
            request: Some(req.clone()),
        };
        let targets = self.regions().into_iter().map(|r| (r, ())).collect();
        let outcomes = fan_out(targets, deadline, |region, (), deadline| {
            let mut client = region.client.clone();
            let message = message.clone();
            async move {
                match client.get_incident(request(message, deadline)).await {
                    Ok(r) => Ok(r.into_inner().incident),
                    // Not involved: an answer, not a failure.
                    Err(s) if s.code() == Code::NotFound => Ok(None),
                    Err(s) => Err(s),
                }
            }
        })
        .await;
        let mut incident: Option<Incident> = None;
        let mut parts: Vec<RegionIncident> = Vec::new();
        let mut coverage = Vec::new();
        for outcome in outcomes {
            let mut entry = outcome.coverage();
            if let Ok(found) = outcome.result {
                match found {
                    Some(mut i) => {
                        parts.append(&mut i.regions);
                        incident.get_or_insert(i);
                    }
                    None => entry.detail = "not involved".into(),
                }
            }
            coverage.push(entry);
        }
        let Some(mut incident) = incident else {
            let all_answered = coverage.iter().all(|c| c.status == RegionStatus::Ok as i32);
            return Err(if all_answered {
                GatewayError::Region(
                    "all".into(),
                    tonic::Status::not_found("no region holds this incident"),
                )
            } else {
                GatewayError::RegionsUnavailable(
                    "no answering region holds this incident; some did not answer".into(),
                )
            });
        };
        incident.regions = parts;
        combine(&mut incident, self.now());
        Ok(GetIncidentResponse {
            incident: Some(incident),
            coverage,
        })
    }
}
