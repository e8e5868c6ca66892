//! Consent end to end through the gateway: grant, check, withdraw; double opt-in with expiring,
//! single-use tokens; the ledger's history; consent gating aggregates, records and recorded
//! calls, by country policy.

use domicile_proto::{
    error::field_violations,
    pb::{
        AggregateQuery, AggregateRequest, Channel, CheckContactPermissionRequest,
        ConfirmConsentRequest, ConsentAction, ConsentRule, ConsentSource, ConsentState,
        GetConsentRequest, LocalNodeAggregateRequest, Metric, PermissionReasonCode, Purpose,
        QueryRecordsRequest, RecordConsentRequest, RecordQuery, RejectReason, SubjectRef,
        WithdrawConsentRequest, local_node_client::LocalNodeClient, record_payload::Record,
    },
};
use domicile_tests::{
    TENANT, client, federation, gateway_client, ingest_records, person, query_records, touch,
};
use prost::Message;
use tonic::Code;

const WORDING: [u8; 32] = [7; 32];

fn subject(country: &str, id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        country: country.into(),
        external_id: id.into(),
    })
}

fn record(
    country: &str,
    id: &str,
    purpose: Purpose,
    channel: Channel,
    action: ConsentAction,
) -> RecordConsentRequest {
    RecordConsentRequest {
        tenant_id: TENANT.into(),
        subject: subject(country, id),
        purpose: purpose as i32,
        channel: channel as i32,
        action: action as i32,
        source: ConsentSource::WebForm as i32,
        wording_sha256: if action == ConsentAction::Grant {
            WORDING.to_vec()
        } else {
            Vec::new()
        },
        actor: "crm:web-signup".into(),
        token_ttl_seconds: 0,
    }
}

async fn check(
    gw: &mut domicile_client::Gateway,
    country: &str,
    id: &str,
    purpose: Purpose,
    channel: Channel,
) -> anyhow::Result<domicile_proto::pb::CheckContactPermissionResponse> {
    Ok(gw
        .check_contact_permission(CheckContactPermissionRequest {
            tenant_id: TENANT.into(),
            subject: subject(country, id),
            purpose: purpose as i32,
            channel: channel as i32,
        })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_check_withdraw_check() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    let mut gw = gateway_client(&fed).await?;
    // DE: surveys by phone need an opt-in.
    let before = check(&mut gw, "DE", "c-1", Purpose::CxSurvey, Channel::Phone).await?;
    assert!(!before.allowed);
    assert_eq!(before.policy_version, "DE@2026-11-01");
    assert_eq!(
        before.reasons[0].code,
        PermissionReasonCode::CountryRule as i32
    );
    assert_eq!(before.reasons[0].rule, ConsentRule::OptIn as i32);
    assert_eq!(
        before.reasons[1].code,
        PermissionReasonCode::NoConsentOnFile as i32
    );
    assert_eq!(before.reasons[1].consent_state, ConsentState::None as i32);

    let granted = gw
        .record_consent(record(
            "DE",
            "c-1",
            Purpose::CxSurvey,
            Channel::Phone,
            ConsentAction::Grant,
        ))
        .await?
        .into_inner();
    assert_eq!(granted.state, ConsentState::Granted as i32);
    assert!(granted.confirmation_token.is_empty());
    let entry = granted.entry.unwrap();
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.policy_version, "DE@2026-11-01");
    assert_eq!(entry.wording_sha256, WORDING);

    let allowed = check(&mut gw, "DE", "c-1", Purpose::CxSurvey, Channel::Phone).await?;
    assert!(allowed.allowed);
    assert_eq!(
        allowed.reasons[1].consent_state,
        ConsentState::Granted as i32
    );
    assert_eq!(allowed.reasons[1].consent_since, entry.recorded_at);
    // The grant was for the phone only.
    assert!(
        !check(&mut gw, "DE", "c-1", Purpose::CxSurvey, Channel::Sms)
            .await?
            .allowed
    );

    let withdrawn = gw
        .withdraw_consent(WithdrawConsentRequest {
            tenant_id: TENANT.into(),
            subject: subject("DE", "c-1"),
            purpose: Purpose::CxSurvey as i32,
            channel: Channel::Phone as i32,
            source: ConsentSource::PhoneCall as i32,
            actor: "agent:4711".into(),
        })
        .await?
        .into_inner();
    assert_eq!(withdrawn.state, ConsentState::Withdrawn as i32);
    let after = check(&mut gw, "DE", "c-1", Purpose::CxSurvey, Channel::Phone).await?;
    assert!(!after.allowed);
    assert_eq!(
        after.reasons[1].code,
        PermissionReasonCode::RefusedOrWithdrawn as i32
    );

    // The US allows surveys by e-mail unless the subject opted out; another tenant's consent
    // is not this tenant's.
    assert!(
        check(&mut gw, "US", "u-1", Purpose::CxSurvey, Channel::Email)
            .await?
            .allowed
    );
    let mut other = record(
        "US",
        "u-1",
        Purpose::CxSurvey,
        Channel::Email,
        ConsentAction::Refuse,
    );
    other.tenant_id = "globex".into();
    gw.record_consent(other).await?;
    assert!(
        check(&mut gw, "US", "u-1", Purpose::CxSurvey, Channel::Email)
            .await?
            .allowed
    );

    // History: both entries, oldest first, with no identifier of the subject in the answer.
    let history = gw
        .get_consent(GetConsentRequest {
            tenant_id: TENANT.into(),
            subject: subject("DE", "c-1"),
            purpose: 0,
        })
        .await?
        .into_inner();
    let actions: Vec<i32> = history.history.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [ConsentAction::Grant as i32, ConsentAction::Withdraw as i32]
    );
    assert_eq!(history.current.len(), 1);
    assert_eq!(history.current[0].state, ConsentState::Withdrawn as i32);
    let bytes = history.encode_to_vec();
    assert!(!bytes.windows(3).any(|w| w == b"c-1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_opt_in_tokens_confirm_once_and_expire() -> anyhow::Result<()> {
    // The node's time is this clock's: a token expires when the test moves it.
    let clock = domicile_ops::clock::ManualClock::at(domicile_proto::domain::unix_now());
    let fed = domicile_tests::Federation::builder()
        .region("eu-de", &["DE"])
        .clock(std::sync::Arc::new(clock.clone()))
        .start()
        .await?;
    let mut gw = gateway_client(&fed).await?;
    // DE: marketing by e-mail needs a double opt-in, so a grant becomes a request.
    let req = gw
        .record_consent(record(
            "DE",
            "c-2",
            Purpose::Marketing,
            Channel::Email,
            ConsentAction::Grant,
        ))
        .await?
        .into_inner();
    assert_eq!(req.state, ConsentState::PendingConfirmation as i32);
    assert_eq!(
        req.entry.unwrap().action,
        ConsentAction::DoubleOptInRequest as i32
    );
    assert!(req.confirmation_token.starts_with("eu-de."));
    let pending = check(&mut gw, "DE", "c-2", Purpose::Marketing, Channel::Email).await?;
    assert!(!pending.allowed);
    assert_eq!(pending.reasons[0].rule, ConsentRule::DoubleOptIn as i32);
    assert_eq!(
        pending.reasons[1].code,
        PermissionReasonCode::ConfirmationPending as i32
    );

    let confirm = |token: &str| ConfirmConsentRequest {
        tenant_id: TENANT.into(),
        token: token.into(),
        source: 0,
    };
    // Another tenant cannot use the token: to it, the token does not exist.
    let mut foreign = confirm(&req.confirmation_token);
    foreign.tenant_id = "globex".into();
    assert_eq!(
        gw.confirm_consent(foreign).await.unwrap_err().code(),
        Code::NotFound
    );

    let done = gw
        .confirm_consent(confirm(&req.confirmation_token))
        .await?
        .into_inner();
    assert_eq!(done.state, ConsentState::GrantedConfirmed as i32);
    assert_eq!(done.entry.unwrap().source, ConsentSource::EmailLink as i32);
    assert!(
        check(&mut gw, "DE", "c-2", Purpose::Marketing, Channel::Email)
            .await?
            .allowed
    );

    // Single use.
    let again = gw
        .confirm_consent(confirm(&req.confirmation_token))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("already used"),
        "{}",
        again.message()
    );

    // Expiry: a token valid for one second, used after two.
    let mut short = record(
        "DE",
        "c-3",
        Purpose::Marketing,
        Channel::Email,
        ConsentAction::Grant,
    );
    short.token_ttl_seconds = 1;
    let short = gw.record_consent(short).await?.into_inner();
    clock.advance(2);
    let expired = gw
        .confirm_consent(confirm(&short.confirmation_token))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );
    assert!(
        !check(&mut gw, "DE", "c-3", Purpose::Marketing, Channel::Email)
            .await?
            .allowed
    );

    // A withdrawal after the request supersedes it: its token no longer confirms.
    let later = gw
        .record_consent(record(
            "DE",
            "c-4",
            Purpose::Marketing,
            Channel::Email,
            ConsentAction::Grant,
        ))
        .await?
        .into_inner();
    gw.record_consent(record(
        "DE",
        "c-4",
        Purpose::Marketing,
        Channel::Unspecified,
        ConsentAction::Refuse,
    ))
    .await?;
    let superseded = gw
        .confirm_consent(confirm(&later.confirmation_token))
        .await
        .unwrap_err();
    assert_eq!(superseded.code(), Code::FailedPrecondition);

    // Unknown and malformed tokens.
    let unknown = gw
        .confirm_consent(confirm("eu-de.bm9wZQ"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = gw.confirm_consent(confirm("no token")).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&malformed)[0].field, "token");

    // The ledger is append-only, even to someone with the database file.
    let conn = fed.node("eu-de").unwrap().connect()?;
    let err = conn
        .execute("UPDATE consent_ledger SET state = 2", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(conn.execute("DELETE FROM consent_ledger", []).is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_consent_calls_name_their_fields() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let mut gw = gateway_client(&fed).await?;
    let mut bad = record(
        "JP",
        "x",
        Purpose::Unspecified,
        Channel::Email,
        ConsentAction::Withdraw,
    );
    bad.actor = String::new();
    let err = gw.record_consent(bad).await.unwrap_err();
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["purpose", "action", "actor"]);
    // A valid request for a country no region serves.
    let err = gw
        .record_consent(record(
            "JP",
            "x",
            Purpose::CxSurvey,
            Channel::Email,
            ConsentAction::Refuse,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&err)[0].field, "subject.country");
    let err = gw
        .check_contact_permission(CheckContactPermissionRequest {
            tenant_id: TENANT.into(),
            subject: subject("DE", "x"),
            purpose: Purpose::CxSurvey as i32,
            channel: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err)[0].field, "channel");
    Ok(())
}

fn aggregate(purpose: Purpose) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: purpose as i32,
            metrics: vec![Metric::DistinctSubjects as i32, Metric::Count as i32],
            min_group_size: 2,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn records(purpose: Purpose) -> QueryRecordsRequest {
    QueryRecordsRequest {
        tenant_id: TENANT.into(),
        query: Some(RecordQuery {
            purpose: purpose as i32,
            ..Default::default()
        }),
        regions: Vec::new(),
    }
}

/// Twelve subjects with two interactions each in `country`.
fn people(country: &str) -> Vec<domicile_tests::SynthRecord> {
    let mut out = Vec::new();
    for s in 0..12 {
        let id = format!("{country}-s{s}");
        out.push(person(country, &id, "A Person", "", "", "", 0));
        for i in 0..2 {
            out.push(touch(
                country,
                &format!("{id}-i{i}"),
                &id,
                1_780_000_000 + i * 60,
                "",
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_gates_aggregates_and_records_by_country_rule() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("in", &["IN"]), ("us", &["US"])]).await?;
    ingest_records(&fed, &[people("DE"), people("IN"), people("US")].concat()).await?;
    let mut gw = gateway_client(&fed).await?;
    // The gate as it stands, in country (the exact LocalNode aggregate): across the border an
    // aggregate is summed from releases of closed months, made once, so a later consent change
    // does not alter them (docs/privacy-model.md); the gate decides what goes into a release.
    let subjects = |region: &'static str| {
        let addr = fed.node(region).unwrap().local_addr.unwrap();
        async move {
            let mut local = LocalNodeClient::connect(format!("http://{addr}")).await?;
            let groups = local
                .aggregate(LocalNodeAggregateRequest {
                    tenant_id: TENANT.into(),
                    query: aggregate(Purpose::CxAnalytics).query,
                })
                .await?
                .into_inner()
                .groups;
            anyhow::Ok(
                groups
                    .first()
                    .map_or(0, |g| g.stats.as_ref().unwrap().distinct_subjects),
            )
        }
    };

    // DE: analytics is opt-out. Everybody counts until one refuses.
    assert_eq!(subjects("eu-de").await?, 12);
    gw.record_consent(record(
        "DE",
        "DE-s0",
        Purpose::CxAnalytics,
        Channel::Unspecified,
        ConsentAction::Refuse,
    ))
    .await?;
    assert_eq!(subjects("eu-de").await?, 11);

    // IN: analytics is opt-in. Nobody counts until some grant.
    assert_eq!(subjects("in").await?, 0);
    for s in 0..10 {
        gw.record_consent(record(
            "IN",
            &format!("IN-s{s}"),
            Purpose::CxAnalytics,
            Channel::Unspecified,
            ConsentAction::Grant,
        ))
        .await?;
    }
    assert_eq!(subjects("in").await?, 10);
    // The first release of IN's data (made now) has exactly those ten in it: the exact count
    // of its cell before noise is 10, so its noisy interactions are 20 plus noise.
    let released = gw
        .aggregate(aggregate(Purpose::CxAnalytics))
        .await?
        .into_inner();
    assert!(
        released.coverage.iter().all(|c| c.status == 1),
        "{:?}",
        released.coverage
    );

    // Records follow the same rule: DE-s0's interactions are gone, IN has only its ten.
    let (rows, _) = query_records(&mut gw, records(Purpose::CxAnalytics)).await?;
    let count = |c: &str| rows.iter().filter(|r| r.country == c).count();
    assert_eq!((count("DE"), count("IN"), count("US")), (22, 20, 24));

    // US: profiling is opt-out; an objection takes the subject out of profiling only.
    gw.record_consent(record(
        "US",
        "US-s5",
        Purpose::Profiling,
        Channel::Unspecified,
        ConsentAction::Object,
    ))
    .await?;
    let (profiling, _) = query_records(&mut gw, records(Purpose::Profiling)).await?;
    let us_profiling = profiling.iter().filter(|r| r.country == "US").count();
    assert_eq!(us_profiling, 22);
    let (analytics, _) = query_records(&mut gw, records(Purpose::CxAnalytics)).await?;
    assert_eq!(analytics.iter().filter(|r| r.country == "US").count(), 24);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_calls_need_consent_where_every_party_must_agree() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    let mut gw = gateway_client(&fed).await?;
    let recorded = |country: &str, id: &str, subject: &str| {
        let mut r = touch(country, id, subject, 1_780_000_000, "");
        if let Some(Record::Interaction(i)) = &mut r.payload.record {
            i.recorded = true;
        }
        r
    };
    let regions = client::regions(&mut gw).await?;
    let first = client::ingest(
        &gw,
        TENANT,
        &regions,
        &fed.trust_bundle,
        &[
            recorded("DE", "call-1", "de-a"),
            recorded("US", "call-2", "us-a"),
        ],
        10,
    )
    .await?;
    // DE (all parties) refuses the recorded call; the US (one party) takes it.
    assert_eq!(first.accepted, 1);
    assert_eq!(
        first
            .rejected
            .get(RejectReason::RecordingConsentMissing.as_str_name()),
        Some(&1),
        "{:?}",
        first.rejected
    );

    gw.record_consent(record(
        "DE",
        "de-a",
        Purpose::CallRecording,
        Channel::Phone,
        ConsentAction::Grant,
    ))
    .await?;
    let second = client::ingest(
        &gw,
        TENANT,
        &regions,
        &fed.trust_bundle,
        &[recorded("DE", "call-3", "de-a")],
        10,
    )
    .await?;
    assert_eq!(second.accepted, 1, "{:?}", second.rejected);
    Ok(())
}

/// A burst of contact checks on one region opens no more database readers than the store
/// keeps (`store::READERS`): a call past them waits for a reader slot as a task, instead of
/// taking a blocking thread and opening a connection of its own, as every call did before
/// (issue 25). Four bursts of 64 calls at once, all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_contact_checks_opens_no_more_readers_than_the_store_keeps() -> anyhow::Result<()>
{
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let gw = gateway_client(&fed).await?;
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    let before = node.store().readers_opened();
    for burst in 0..4 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..64 {
            let mut gw = gw.clone();
            calls.spawn(async move {
                let id = format!("burst-{burst}-{i}");
                check(&mut gw, "DE", &id, Purpose::Marketing, Channel::Email).await
            });
        }
        while let Some(answer) = calls.join_next().await {
            assert!(!answer??.allowed, "nothing is on file for these subjects");
        }
    }
    let opened = node.store().readers_opened() - before;
    assert!(
        (1..=domicile_node::store::READERS).contains(&opened),
        "{opened} reader connections opened for 256 checks, 64 at a time"
    );
    Ok(())
}
