//! The closed loop (issue 24, item 3): an analyst holding a pseudonym from `QueryRecords` opens a
//! follow-up through the gateway; the subject's region resolves it, checks consent and the
//! country rule, and keeps the case; an in-country agent, over the region's own mutual TLS,
//! re-identifies the subject (audited with the agent's identity and the purpose) and records
//! the outcome, which the analyst sees as a status. Tried as attackers would: a pseudonym of
//! another purpose or region, or past the window, does not resolve; a subject who refused
//! contact cannot be followed up; consent withdrawn after opening cancels the case; an erasure
//! cuts the case from the person; the wrong role or no certificate is refused; and nothing the
//! analyst sees carries the subject's identity.
//!
//! With `DOMICILE_FEDERATION_STORAGE=postgres` (the README's test command runs it so) the same
//! test runs with every node's data in PostgreSQL.

use std::sync::Arc;

use domicile_node::config::LocalRole;
use domicile_proto::pb::{
    Channel, ConsentAction, ConsentSource, FollowUpPriority, FollowUpStatus, GetOverviewRequest,
    ListFollowUpsRequest, LocalNodeListFollowUpsRequest, OpenFollowUpRequest, Purpose,
    QueryRecordsRequest, RecordConsentRequest, RecordFollowUpOutcomeRequest, RecordQuery,
    ReidentifyFollowUpRequest, SubjectRef, SubjectRequestKind, SubmitSubjectRequestRequest,
    WithdrawConsentRequest, record_payload::Record,
};
use domicile_tests::{Capture, TENANT, gateway_client, ingest_records, local_client, person};
use tonic::Code;

const AGENT: &str = "agent-7.eu-de.cx.example";
const SUPERVISOR: &str = "supervisor.eu-de.cx.example";
const DPO: &str = "dpo.eu-de.cx.example";
const CRM: &str = "crm.eu-de.cx.example";

const DAY: i64 = 86_400;

fn now() -> i64 {
    domicile_proto::domain::unix_now()
}

/// The identifying values of the test's subjects: none may reach the analyst.
fn identities(n: usize) -> Vec<String> {
    (1..=n)
        .flat_map(|i| {
            [
                format!("fu-cust-{i}"),
                format!("Canary Person{i}"),
                format!("canary{i}@example.de"),
                format!("+4930555000{i}"),
            ]
        })
        .collect()
}

/// A detractor's interaction, its outcome code telling the test which subject a released
/// record is (codes cross the border in clear).
fn detractor(i: usize, started_at: i64) -> domicile_tests::SynthRecord {
    let mut r = domicile_tests::touch(
        "DE",
        &format!("fu-int-{i}"),
        &format!("fu-cust-{i}"),
        started_at,
        &format!("Terrible. Call me, Canary Person{i}, on +4930555000{i}"),
    );
    if let Some(Record::Interaction(x)) = &mut r.payload.record {
        x.outcome = format!("case-{i}");
        if let Some(s) = &mut x.survey {
            s.nps = Some(2);
        }
    }
    r
}

fn subject(i: usize) -> Option<SubjectRef> {
    Some(SubjectRef {
        country: "DE".into(),
        external_id: format!("fu-cust-{i}"),
    })
}

fn consent(i: usize, action: ConsentAction, channel: Channel) -> RecordConsentRequest {
    RecordConsentRequest {
        tenant_id: TENANT.into(),
        subject: subject(i),
        purpose: Purpose::CxSurvey as i32,
        channel: channel as i32,
        action: action as i32,
        source: ConsentSource::WebForm as i32,
        wording_sha256: vec![1; 32],
        actor: "crm:web".into(),
        token_ttl_seconds: 0,
    }
}

fn open(pseudonym: &str, purpose: Purpose, region: &str) -> OpenFollowUpRequest {
    OpenFollowUpRequest {
        tenant_id: TENANT.into(),
        region_id: region.into(),
        subject_pseudonym: pseudonym.into(),
        purpose: purpose as i32,
        channels: vec![Channel::Phone as i32, Channel::Email as i32],
        reason: "nps-detractor".into(),
        priority: FollowUpPriority::Normal as i32,
    }
}

/// Subject number → its pseudonym under `purpose`, from `QueryRecords` through the gateway.
async fn pseudonyms(
    gw: &mut domicile_client::Gateway,
    cap: &Capture,
    purpose: Purpose,
) -> anyhow::Result<std::collections::BTreeMap<usize, String>> {
    let (records, _) = domicile_tests::query_records(
        gw,
        QueryRecordsRequest {
            tenant_id: TENANT.into(),
            query: Some(RecordQuery {
                purpose: purpose as i32,
                ..Default::default()
            }),
            regions: Vec::new(),
        },
    )
    .await?;
    let mut out = std::collections::BTreeMap::new();
    for r in records {
        cap.add(format!("{r:?}").as_bytes());
        if let Some(i) = r.outcome.strip_prefix("case-") {
            out.insert(i.parse()?, r.subject_pseudonym);
        }
    }
    Ok(out)
}

async fn status_of(
    gw: &mut domicile_client::Gateway,
    cap: &Capture,
    id: &str,
) -> anyhow::Result<domicile_proto::pb::FollowUp> {
    let listed = cap
        .result(
            gw.list_follow_ups(ListFollowUpsRequest {
                tenant_id: TENANT.into(),
                follow_up_ids: vec![id.to_owned()],
                ..Default::default()
            })
            .await,
        )
        .ok_or_else(|| anyhow::anyhow!("ListFollowUps failed"))?;
    anyhow::ensure!(listed.follow_ups.len() == 1, "{listed:?}");
    Ok(listed.follow_ups[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detractor_is_followed_up_in_country_without_their_identity_crossing()
-> anyhow::Result<()> {
    let clock = domicile_ops::clock::ManualClock::at(now());
    let fed = domicile_tests::Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .clock(Arc::new(clock.clone()))
        .local_principals(&[
            (AGENT, LocalRole::Agent),
            (SUPERVISOR, LocalRole::Supervisor),
            (DPO, LocalRole::RegionalDpo),
            (CRM, LocalRole::Integration),
        ])
        .start()
        .await?;
    let mut gw = gateway_client(&fed).await?;
    // What the analyst sees: every answer and error of the gateway.
    let cap = Capture::default();

    // Five detractors, each granting CX surveys on every channel (so their records are
    // released under that purpose); one more whose interaction is 40 days old.
    let mut records = Vec::new();
    for i in 1..=6 {
        records.push(person(
            "DE",
            &format!("fu-cust-{i}"),
            &format!("Canary Person{i}"),
            &format!("canary{i}@example.de"),
            &format!("+4930555000{i}"),
            "10115",
            1980,
        ));
        let at = if i == 6 {
            now() - 40 * DAY
        } else {
            now() - 3_600
        };
        records.push(detractor(i, at));
    }
    ingest_records(&fed, &records).await?;
    for i in 1..=6 {
        gw.record_consent(consent(i, ConsentAction::Grant, Channel::Unspecified))
            .await?;
    }
    // Subject 2 then refuses to be called or mailed for surveys.
    for channel in [Channel::Phone, Channel::Email] {
        gw.record_consent(consent(2, ConsentAction::Refuse, channel))
            .await?;
    }
    let survey = pseudonyms(&mut gw, &cap, Purpose::CxSurvey).await?;
    let analytics = pseudonyms(&mut gw, &cap, Purpose::CxAnalytics).await?;
    assert!(
        (1..=6).all(|i| survey.contains_key(&i) && analytics.contains_key(&i)),
        "every detractor's record is released: {survey:?}"
    );

    // Opened under the purpose the pseudonym was released for; the phone is allowed.
    let opened = cap
        .result(
            gw.open_follow_up(open(&survey[&1], Purpose::CxSurvey, "eu-de"))
                .await,
        )
        .expect("the follow-up opens");
    assert!(!opened.existing);
    let case = opened.follow_up.unwrap();
    assert!(case.follow_up_id.starts_with("eu-de.followup-"), "{case:?}");
    assert_eq!(case.status, FollowUpStatus::Open as i32);
    assert_eq!(case.channel, Channel::Phone as i32);
    assert_eq!(case.country, "DE");
    assert!(!case.overdue);
    // Opening again is safe: the same case comes back.
    let again = gw
        .open_follow_up(open(&survey[&1], Purpose::CxSurvey, "eu-de"))
        .await?
        .into_inner();
    assert!(again.existing);
    assert_eq!(again.follow_up.unwrap().follow_up_id, case.follow_up_id);

    // Pseudonyms resolve only under their own purpose and in their own region.
    for (req, what) in [
        (
            open(&survey[&1], Purpose::CxAnalytics, "eu-de"),
            "another purpose",
        ),
        (
            open(&analytics[&1], Purpose::CxSurvey, "eu-de"),
            "another purpose's pseudonym",
        ),
        (open(&survey[&1], Purpose::CxSurvey, "us"), "another region"),
        (open(&"0".repeat(32), Purpose::CxSurvey, "eu-de"), "made up"),
        (
            open(&survey[&6], Purpose::CxSurvey, "eu-de"),
            "past the window",
        ),
    ] {
        let status = gw.open_follow_up(req).await.unwrap_err();
        cap.status(&status);
        assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}");
    }
    // A subject who refused contact cannot be followed up: the reasons, not the person.
    let refused = gw
        .open_follow_up(open(&survey[&2], Purpose::CxSurvey, "eu-de"))
        .await
        .unwrap_err();
    cap.status(&refused);
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("refused or withdrew"),
        "{}",
        refused.message()
    );
    // Bad input names the field and changes nothing.
    let mut bad = open(&survey[&3], Purpose::CxSurvey, "eu-de");
    bad.reason = "Call Canary Person3 now".into();
    let status = gw.open_follow_up(bad).await.unwrap_err();
    cap.status(&status);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("reason"), "{}", status.message());

    // In the country: only the agent and supervisor roles may re-identify; none without a
    // certificate of the region's CA.
    for who in [DPO, CRM] {
        let status = local_client(&fed, "eu-de", Some(who))
            .await?
            .reidentify_follow_up(ReidentifyFollowUpRequest {
                tenant_id: TENANT.into(),
                follow_up_id: case.follow_up_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{who}: {status:?}");
    }
    match local_client(&fed, "eu-de", None).await {
        Err(_) => {}
        Ok(mut c) => {
            let refused = c
                .list_follow_ups(LocalNodeListFollowUpsRequest {
                    tenant_id: TENANT.into(),
                    open_only: true,
                })
                .await;
            assert!(refused.is_err(), "no certificate, no answer");
        }
    }
    let mut agent = local_client(&fed, "eu-de", Some(AGENT)).await?;
    let queue = agent
        .list_follow_ups(LocalNodeListFollowUpsRequest {
            tenant_id: TENANT.into(),
            open_only: true,
        })
        .await?
        .into_inner();
    assert_eq!(queue.follow_ups.len(), 1);
    assert_eq!(queue.follow_ups[0].follow_up_id, case.follow_up_id);
    let who = agent
        .reidentify_follow_up(ReidentifyFollowUpRequest {
            tenant_id: TENANT.into(),
            follow_up_id: case.follow_up_id.clone(),
        })
        .await?
        .into_inner();
    let contact = who.contact.unwrap();
    assert_eq!(contact.external_id, "fu-cust-1");
    assert_eq!(contact.full_name, "Canary Person1");
    assert_eq!(contact.channel, Channel::Phone as i32);
    assert_eq!(contact.address, "+49305550001");
    // Not a contact yet: the analyst sees it open.
    assert_eq!(
        status_of(&mut gw, &cap, &case.follow_up_id).await?.status,
        FollowUpStatus::Open as i32
    );
    let outcome = |status: FollowUpStatus| RecordFollowUpOutcomeRequest {
        tenant_id: TENANT.into(),
        follow_up_id: case.follow_up_id.clone(),
        outcome: status as i32,
    };
    agent
        .record_follow_up_outcome(outcome(FollowUpStatus::NotReached))
        .await?;
    assert_eq!(
        status_of(&mut gw, &cap, &case.follow_up_id).await?.status,
        FollowUpStatus::NotReached as i32
    );
    let bad = agent
        .record_follow_up_outcome(outcome(FollowUpStatus::Cancelled))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    agent
        .record_follow_up_outcome(outcome(FollowUpStatus::Resolved))
        .await?;
    let resolved = status_of(&mut gw, &cap, &case.follow_up_id).await?;
    assert_eq!(resolved.status, FollowUpStatus::Resolved as i32);
    let closed = agent
        .record_follow_up_outcome(outcome(FollowUpStatus::Reached))
        .await
        .unwrap_err();
    assert_eq!(closed.code(), Code::FailedPrecondition, "{closed:?}");
    let closed = agent
        .reidentify_follow_up(ReidentifyFollowUpRequest {
            tenant_id: TENANT.into(),
            follow_up_id: case.follow_up_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        closed.code(),
        Code::FailedPrecondition,
        "closed cases do not re-identify"
    );

    // Consent withdrawn after the case was opened: the agent is refused and the case cancelled.
    let withdrawn = cap
        .result(
            gw.open_follow_up(open(&survey[&3], Purpose::CxSurvey, "eu-de"))
                .await,
        )
        .unwrap()
        .follow_up
        .unwrap();
    gw.withdraw_consent(WithdrawConsentRequest {
        tenant_id: TENANT.into(),
        subject: subject(3),
        purpose: Purpose::CxSurvey as i32,
        channel: Channel::Unspecified as i32,
        source: ConsentSource::PhoneCall as i32,
        actor: "crm:web".into(),
    })
    .await?;
    let refused = agent
        .reidentify_follow_up(ReidentifyFollowUpRequest {
            tenant_id: TENANT.into(),
            follow_up_id: withdrawn.follow_up_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(!refused.message().contains("fu-cust-3"));
    assert_eq!(
        status_of(&mut gw, &cap, &withdrawn.follow_up_id)
            .await?
            .status,
        FollowUpStatus::Cancelled as i32
    );

    // An erasure cancels the subject's case and cuts it from the person.
    let erased = cap
        .result(
            gw.open_follow_up(open(&survey[&4], Purpose::CxSurvey, "eu-de"))
                .await,
        )
        .unwrap()
        .follow_up
        .unwrap();
    gw.submit_subject_request(fed.signed(SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: subject(4),
        kind: SubjectRequestKind::Erasure as i32,
        actor: "dpo-desk".into(),
        ..Default::default()
    }))
    .await?;
    assert_eq!(
        status_of(&mut gw, &cap, &erased.follow_up_id).await?.status,
        FollowUpStatus::Cancelled as i32
    );
    let conn = fed.node("eu-de").unwrap().connect()?;
    // Ids are hex and a region id: safe to inline.
    let link: String = conn.query_row(
        &format!(
            "SELECT subject_id FROM follow_ups WHERE follow_up_id = '{}'",
            erased.follow_up_id
        ),
        [],
        |r| r.get(0),
    )?;
    assert_eq!(link, "", "the erased subject's case keeps no reference");

    // A high-priority case goes overdue after a day, on the nodes' clock.
    let urgent = {
        let mut req = open(&survey[&5], Purpose::CxSurvey, "eu-de");
        req.priority = FollowUpPriority::High as i32;
        cap.result(gw.open_follow_up(req).await)
            .unwrap()
            .follow_up
            .unwrap()
    };
    clock.advance(2 * DAY);
    let late = status_of(&mut gw, &cap, &urgent.follow_up_id).await?;
    assert!(late.overdue, "{late:?}");
    let overview = cap
        .result(
            gw.get_overview(GetOverviewRequest {
                tenant_id: TENANT.into(),
                ..Default::default()
            })
            .await,
        )
        .unwrap();
    let de = overview
        .regions
        .iter()
        .find(|r| r.region_id == "eu-de")
        .and_then(|r| r.report.as_ref())
        .and_then(|r| r.follow_ups)
        .unwrap();
    assert_eq!(
        (de.open, de.overdue, de.resolved, de.cancelled),
        (1, 1, 1, 2)
    );
    // Every case, listed across the regions, with each region's part.
    let all = cap
        .result(
            gw.list_follow_ups(ListFollowUpsRequest {
                tenant_id: TENANT.into(),
                ..Default::default()
            })
            .await,
        )
        .unwrap();
    assert_eq!(all.follow_ups.len(), 4);
    assert_eq!(all.coverage.len(), 2);

    // Past the window the pseudonym no longer resolves (the interaction is 31 days old).
    clock.advance(29 * DAY);
    let status = gw
        .open_follow_up(open(&survey[&5], Purpose::CxSurvey, "eu-de"))
        .await;
    // Subject 5's case is still open, so within the window it would come back `existing`.
    let status = status.unwrap_err();
    cap.status(&status);
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Every re-identification is audited with the agent's identity and the purpose.
    let entries: Vec<String> = conn
        .prepare("SELECT details FROM audit_log WHERE kind = 'follow_up_reidentified'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].contains(&format!("local:{AGENT}/agent"))
            && entries[0].contains("PURPOSE_CX_SURVEY"),
        "{}",
        entries[0]
    );
    let refusals: i64 = conn.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'follow_up' AND details LIKE '%refused%'",
        [],
        |r| r.get(0),
    )?;
    assert!(refusals >= 6, "refusals are audited too: {refusals}");

    // Nothing the analyst saw identifies anyone.
    let seen = cap.bytes();
    for value in identities(6) {
        assert!(
            !seen.windows(value.len()).any(|w| w == value.as_bytes()),
            "{value} reached the analyst"
        );
    }
    Ok(())
}
