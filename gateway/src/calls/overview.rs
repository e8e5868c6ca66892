//! `GetOverview`: every region's report on itself, side by side, for the console.
//!
//! Each region is asked concurrently under the caller's deadline. A region that does not
//! answer is listed with why, and the others are still shown: an overview degrades, it never
//! fails for one region.

use std::time::Duration;

use domicile_proto::{
    domain::{OverviewWindow, TenantId, whole_seconds},
    error::Violations,
    pb::{
        GetOverviewRequest, GetOverviewResponse, RegionOverview, RegionStatus,
        RegionalNodeGetRegionOverviewRequest,
    },
};

use crate::{
    error::GatewayError,
    federation::fanout::{fan_out, request},
    gateway::{Gateway, combine},
};

impl Gateway {
    /// Asks every region for its report and lists them in configuration order.
    pub async fn overview(
        &self,
        req: GetOverviewRequest,
        deadline: Duration,
    ) -> Result<GetOverviewResponse, GatewayError> {
        let now = self.now();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id");
        let window = OverviewWindow::parse(req.since.as_ref(), req.bucket_seconds, now);
        let (tenant, window) = combine(Violations::new(), tenant, window)?;
        let message = RegionalNodeGetRegionOverviewRequest {
            tenant_id: tenant.as_str().to_owned(),
            since: Some(whole_seconds(window.since)),
            bucket_seconds: window.bucket_seconds,
        };
        // One snapshot for the calls and the states, even if a reload lands meanwhile.
        let directory = self.directory();
        let targets = directory
            .regions()
            .iter()
            .map(|r| (r.clone(), ()))
            .collect();
        let outcomes = fan_out(targets, deadline, |region, (), deadline| {
            let mut client = region.client.clone();
            let message = message.clone();
            async move {
                Ok(client
                    .get_region_overview(request(message, deadline))
                    .await?
                    .into_inner())
            }
        })
        .await;
        let regions = outcomes
            .into_iter()
            .map(|outcome| {
                let (call_status, detail, report) = match outcome.result {
                    Ok(report) => (RegionStatus::Ok, String::new(), Some(report)),
                    Err(failure) => (failure.status, failure.detail, None),
                };
                let state = directory.state(&outcome.region.id).unwrap_or_default();
                RegionOverview {
                    audit_witness: self.witness().last(&outcome.region.id),
                    health: state.health as i32,
                    audit_public_key: state.audit_public_key,
                    region_id: outcome.region.id.clone(),
                    countries: outcome.region.countries.clone(),
                    call_status: call_status as i32,
                    detail,
                    report,
                }
            })
            .collect();
        Ok(GetOverviewResponse {
            regions,
            at: Some(whole_seconds(now)),
            since: Some(whole_seconds(window.since)),
            bucket_seconds: window.bucket_seconds,
        })
    }
}
