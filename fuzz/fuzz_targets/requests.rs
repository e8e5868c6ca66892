//! Request validation: arbitrary bytes decoded as each request the gateway and nodes validate
//! (the first byte picks which), then validated. A request is valid or a list of violations,
//! never a panic. The W3C `traceparent` parser and the X25519 public-key check get the same
//! bytes.
#![no_main]

use domicile_ops::trace::TraceContext;
use domicile_proto::{
    consent::{Confirmation, ConsentChange, ConsentQuestion},
    domain::{AggregateSpec, IncidentSpec, RecordSpec, TenantId},
    pb::{
        AggregateRequest, CheckContactPermissionRequest, ConfirmConsentRequest, GetConsentRequest,
        PlaceLegalHoldRequest, QueryRecordsRequest, RecordConsentRequest, ReportIncidentRequest,
        SubmitSubjectRequestRequest, WithdrawConsentRequest,
    },
    rights::{HoldSpec, RightsRequest},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = TraceContext::parse(data);
    // A recipient's or a region's X25519 public key as a caller sends it (low-order points
    // are refused, never a panic).
    let _ = domicile_proto::seal::PublicSealingKey::from_bytes(data);
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => {
            if let Ok(r) = AggregateRequest::decode(bytes) {
                let _ = TenantId::parse(&r.tenant_id, "tenant_id");
                let _ = AggregateSpec::from_query(r.query.as_ref(), "query");
            }
        }
        1 => {
            if let Ok(r) = QueryRecordsRequest::decode(bytes) {
                let _ = RecordSpec::from_query(r.query.as_ref(), "query");
            }
        }
        2 => {
            if let Ok(r) = SubmitSubjectRequestRequest::decode(bytes) {
                let _ = RightsRequest::parse(&r);
            }
        }
        3 => {
            if let Ok(r) = PlaceLegalHoldRequest::decode(bytes) {
                let _ = HoldSpec::parse(&r, 1_790_000_000);
            }
        }
        4 => {
            if let Ok(r) = RecordConsentRequest::decode(bytes) {
                let _ = ConsentChange::from_record(&r);
            }
        }
        5 => {
            if let Ok(r) = WithdrawConsentRequest::decode(bytes) {
                let _ = ConsentChange::from_withdraw(&r);
            }
        }
        6 => {
            if let Ok(r) = CheckContactPermissionRequest::decode(bytes) {
                let _ = ConsentQuestion::from_check(&r);
            }
        }
        7 => {
            if let Ok(r) = GetConsentRequest::decode(bytes) {
                let _ = ConsentQuestion::from_get(&r);
            }
        }
        8 => {
            if let Ok(r) = ConfirmConsentRequest::decode(bytes) {
                let _ = Confirmation::parse(&r);
            }
        }
        10 => {
            if let Ok(r) = domicile_proto::pb::OpenFollowUpRequest::decode(bytes) {
                let _ = domicile_proto::followup::FollowUpSpec::parse(&r);
            }
        }
        11 => {
            if let Ok(r) = domicile_proto::pb::ListFollowUpsRequest::decode(bytes) {
                let _ = domicile_proto::followup::check_ids(&r.follow_up_ids);
            }
            if let Ok(r) = domicile_proto::pb::RecordFollowUpOutcomeRequest::decode(bytes) {
                let _ = domicile_proto::followup::outcome(r.outcome);
                let _ = domicile_proto::followup::region_of_follow_up(&r.follow_up_id, "id");
            }
        }
        _ => {
            if let Ok(r) = ReportIncidentRequest::decode(bytes) {
                let _ = IncidentSpec::parse(&r);
            }
        }
    }
});
