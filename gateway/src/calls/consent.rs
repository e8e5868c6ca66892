//! Subject-scoped consent calls: validated here, routed to the one region that holds the
//! subject (by its country, or by the region prefix of a confirmation token), answered there.
//!
//! A region's answer, error included, is relayed as the node gave it: nodes put field paths and
//! reasons in their errors, never personal values.

use std::{future::Future, time::Duration};

use domicile_proto::{
    consent::{Confirmation, ConsentChange, ConsentQuestion},
    error::Violations,
    pb::{
        CheckContactPermissionRequest, CheckContactPermissionResponse, ConfirmConsentRequest,
        ConfirmConsentResponse, GetConsentRequest, GetConsentResponse, RecordConsentRequest,
        RecordConsentResponse, RegionalNodeCheckContactPermissionRequest,
        RegionalNodeConfirmConsentRequest, RegionalNodeGetConsentRequest,
        RegionalNodeRecordConsentRequest, RegionalNodeWithdrawConsentRequest,
        WithdrawConsentRequest, WithdrawConsentResponse, regional_node_client::RegionalNodeClient,
    },
};
use tonic::Status;

use crate::federation::directory::RegionChannel;

use crate::{error::GatewayError, federation::fanout::request, gateway::Gateway};

impl Gateway {
    /// The client of the region serving `country`, or a violation of `subject.country`.
    fn client_for_country(
        &self,
        country: &str,
    ) -> Result<(String, RegionalNodeClient<RegionChannel>), GatewayError> {
        let region = self.region_for_country(country).ok_or_else(|| {
            Violations::one(
                "subject.country",
                "no region serves this country; see ListRegions",
            )
        })?;
        Ok((region.id.clone(), region.client.clone()))
    }

    /// Runs one region call under `deadline`; a missing answer names the region.
    pub(crate) async fn one_region<T, Fut>(
        region: &str,
        deadline: Duration,
        call: Fut,
    ) -> Result<T, GatewayError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(GatewayError::Region(region.to_owned(), status)),
            Err(_) => Err(GatewayError::RegionsDeadline(format!(
                "{region} (no answer within {} ms)",
                deadline.as_millis()
            ))),
        }
    }

    /// Routes `CheckContactPermission` to the subject's region.
    pub async fn check_contact_permission(
        &self,
        req: CheckContactPermissionRequest,
        deadline: Duration,
    ) -> Result<CheckContactPermissionResponse, GatewayError> {
        let q = ConsentQuestion::from_check(&req)?;
        let (region, mut client) = self.client_for_country(&q.subject.country)?;
        let message = RegionalNodeCheckContactPermissionRequest { request: Some(req) };
        let call = client.check_contact_permission(request(message, deadline));
        let answer = Self::one_region(&region, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region))
    }

    /// Routes `RecordConsent` to the subject's region.
    pub async fn record_consent(
        &self,
        req: RecordConsentRequest,
        deadline: Duration,
    ) -> Result<RecordConsentResponse, GatewayError> {
        let change = ConsentChange::from_record(&req)?;
        let (region, mut client) = self.client_for_country(&change.subject.country)?;
        let message = RegionalNodeRecordConsentRequest { request: Some(req) };
        let call = client.record_consent(request(message, deadline));
        let answer = Self::one_region(&region, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region))
    }

    /// Routes `WithdrawConsent` to the subject's region.
    pub async fn withdraw_consent(
        &self,
        req: WithdrawConsentRequest,
        deadline: Duration,
    ) -> Result<WithdrawConsentResponse, GatewayError> {
        let change = ConsentChange::from_withdraw(&req)?;
        let (region, mut client) = self.client_for_country(&change.subject.country)?;
        let message = RegionalNodeWithdrawConsentRequest { request: Some(req) };
        let call = client.withdraw_consent(request(message, deadline));
        let answer = Self::one_region(&region, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region))
    }

    /// Routes `GetConsent` to the subject's region.
    pub async fn get_consent(
        &self,
        req: GetConsentRequest,
        deadline: Duration,
    ) -> Result<GetConsentResponse, GatewayError> {
        let q = ConsentQuestion::from_get(&req)?;
        let (region, mut client) = self.client_for_country(&q.subject.country)?;
        let message = RegionalNodeGetConsentRequest { request: Some(req) };
        let call = client.get_consent(request(message, deadline));
        let answer = Self::one_region(&region, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region))
    }

    /// Routes `ConfirmConsent` to the region that issued the token.
    pub async fn confirm_consent(
        &self,
        req: ConfirmConsentRequest,
        deadline: Duration,
    ) -> Result<ConfirmConsentResponse, GatewayError> {
        let confirmation = Confirmation::parse(&req)?;
        let region = self
            .region(&confirmation.region_id)
            .ok_or_else(|| Violations::one("token", "issued by no known region"))?;
        let (region, mut client) = (region.id.clone(), region.client.clone());
        let message = RegionalNodeConfirmConsentRequest { request: Some(req) };
        let call = client.confirm_consent(request(message, deadline));
        let answer = Self::one_region(&region, deadline, call).await?;
        answer.response.ok_or_else(|| missing(&region))
    }
}

fn missing(region: &str) -> GatewayError {
    GatewayError::Region(
        region.to_owned(),
        Status::internal("the region's answer was empty"),
    )
}
