//! Follow-ups through the gateway (followup.proto): `OpenFollowUp` goes to the pseudonym's
//! region, which alone can resolve it; `ListFollowUps` asks the regions the ids name, or every
//! region asked. Nothing here is stored: the regions keep the cases.

use std::{collections::BTreeMap, time::Duration};

use domicile_proto::{
    domain::{TenantId, is_region_id},
    error::Violations,
    followup::{FollowUpSpec, check_ids, region_of_follow_up},
    pb::{
        ListFollowUpsRequest, ListFollowUpsResponse, OpenFollowUpRequest, OpenFollowUpResponse,
        RegionalNodeListFollowUpsRequest, RegionalNodeOpenFollowUpRequest,
    },
};

use crate::{
    calls::rights::missing,
    error::GatewayError,
    federation::fanout::{fan_out, request},
    gateway::Gateway,
};

impl Gateway {
    /// Sends an `OpenFollowUp` to the pseudonym's region.
    pub async fn open_follow_up(
        &self,
        req: OpenFollowUpRequest,
        deadline: Duration,
    ) -> Result<OpenFollowUpResponse, GatewayError> {
        FollowUpSpec::parse(&req)?;
        let region = self
            .region(&req.region_id)
            .ok_or_else(|| Violations::one("region_id", "no such region; see ListRegions"))?;
        let mut client = region.client.clone();
        let call = client.open_follow_up(request(
            RegionalNodeOpenFollowUpRequest { request: Some(req) },
            deadline,
        ));
        let answer = Self::one_region(&region.id, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region.id))
    }

    /// The cases the ids name, or every case of the regions asked, with each region's part.
    pub async fn list_follow_ups(
        &self,
        req: ListFollowUpsRequest,
        deadline: Duration,
    ) -> Result<ListFollowUpsResponse, GatewayError> {
        let mut v = Violations::new();
        if let Err(e) = TenantId::parse(&req.tenant_id, "tenant_id") {
            v.0.extend(e.0);
        }
        if let Err(e) = check_ids(&req.follow_up_ids) {
            v.0.extend(e.0);
        }
        if req.region_ids.len() > 1_000 {
            v.add("region_ids", "at most 1000");
        }
        for (i, id) in req.region_ids.iter().take(1_000).enumerate() {
            if !is_region_id(id) || self.region(id).is_none() {
                v.add(
                    format!("region_ids[{i}]"),
                    "no such region; see ListRegions",
                );
            }
        }
        v.into_result(())?;
        // Which regions, and which ids each is asked for.
        let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if req.follow_up_ids.is_empty() {
            let all = req.region_ids.is_empty();
            for region in self.regions() {
                if all || req.region_ids.contains(&region.id) {
                    asked.entry(region.id.clone()).or_default();
                }
            }
        } else {
            for (i, id) in req.follow_up_ids.iter().enumerate() {
                let region = region_of_follow_up(id, "follow_up_ids")?;
                if self.region(&region).is_none() {
                    return Err(Violations::one(
                        format!("follow_up_ids[{i}]"),
                        "issued by no known region",
                    )
                    .into());
                }
                asked.entry(region).or_default().push(id.clone());
            }
        }
        let targets = asked
            .into_iter()
            .filter_map(|(region, ids)| self.region(&region).map(|r| (r, ids)))
            .collect();
        let tenant_id = req.tenant_id.clone();
        let open_only = req.open_only;
        let outcomes = fan_out(targets, deadline, |region, ids, deadline| {
            let mut client = region.client.clone();
            let message = RegionalNodeListFollowUpsRequest {
                tenant_id: tenant_id.clone(),
                follow_up_ids: ids,
                open_only,
            };
            async move {
                client
                    .list_follow_ups(request(message, deadline))
                    .await
                    .map(|r| r.into_inner().follow_ups)
            }
        })
        .await;
        let mut response = ListFollowUpsResponse::default();
        for outcome in outcomes {
            response.coverage.push(outcome.coverage());
            if let Ok(mut cases) = outcome.result {
                response.follow_ups.append(&mut cases);
            }
        }
        Ok(response)
    }
}
