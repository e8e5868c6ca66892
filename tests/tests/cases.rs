//! Subject requests as cases, end to end through the gateway with the nodes' clock in the
//! test's hands: a request waits for identity verification, then is fulfilled; waiting for the
//! subject pauses the deadline where the policy says so; an extension is once, before the
//! deadline; a refusal closes the request and does nothing; the queue lists by due date across
//! regions, page after page; a region that was down gets the request when the client sends
//! it again. And the attacks on the steps: a gateway cannot take a step on its own, nor replay
//! one.

use std::sync::Arc;

use domicile_ops::clock::{Clock, ManualClock};
use domicile_proto::{
    domain::days_from_civil,
    error::field_violations,
    pb::{
        AwaitSubject, ExtendDeadline, FetchSubjectRequestExportRequest, GetSubjectRequestRequest,
        IdentityVerification, ListSubjectRequestsRequest, ListSubjectRequestsResponse,
        RefuseSubjectRequest, RegionStatus, SubjectRef, SubjectRequestKind, SubjectRequestReceipt,
        SubjectRequestStatus, SubmitSubjectRequestRequest, UpdateSubjectRequestRequest,
        VerificationMethod, update_subject_request_request::Action,
    },
    seal::{SealingKeyPair, open_export},
};
use domicile_tests::{Federation, TENANT, gateway_client, ingest_records, person, touch};
use tonic::Code;

use SubjectRequestStatus as S;

const DAY: i64 = 86_400;

/// 2027-01-31T09:00:00Z: the month after it is short.
fn jan_31() -> i64 {
    days_from_civil(2027, 1, 31) * DAY + 9 * 3600
}

fn at(y: i64, m: i64, d: i64) -> i64 {
    days_from_civil(y, m, d) * DAY + 9 * 3600
}

/// DE (GDPR: one month, two more, paused while waiting) and US (45 days, 45 more, not paused),
/// with subjects d0..d9 and u0..u4, each with one interaction; "both" is in DE and US.
async fn setup(clock: &ManualClock) -> anyhow::Result<(Federation, domicile_client::Gateway)> {
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .clock(Arc::new(clock.clone()))
        .start()
        .await?;
    let mut records = Vec::new();
    for (country, prefix, n) in [("DE", "d", 10), ("US", "u", 5)] {
        for i in 0..n {
            let id = format!("{prefix}{i}");
            records.push(person(country, &id, "A B", "a@example.org", "", "1", 1980));
            records.push(touch(
                country,
                &format!("{id}-i"),
                &id,
                jan_31() - 40 * DAY,
                "",
            ));
        }
        records.push(person(
            country,
            "both",
            "A B",
            "b@example.org",
            "",
            "1",
            1980,
        ));
        records.push(touch(
            country,
            &format!("both-{country}"),
            "both",
            jan_31() - 40 * DAY,
            "",
        ));
    }
    ingest_records(&fed, &records).await?;
    let gw = gateway_client(&fed).await?;
    Ok((fed, gw))
}

fn submit(country: &str, id: &str, kind: SubjectRequestKind) -> SubmitSubjectRequestRequest {
    SubmitSubjectRequestRequest {
        tenant_id: TENANT.into(),
        subject: Some(SubjectRef {
            country: country.into(),
            external_id: id.into(),
        }),
        kind: kind as i32,
        actor: "dpo-desk".into(),
        ..Default::default()
    }
}

fn verification() -> IdentityVerification {
    IdentityVerification {
        method: VerificationMethod::DocumentCheck as i32,
        evidence_reference: "ticket 4411".into(),
        verified_by: "agent-7".into(),
        verified_at: None,
    }
}

fn step(request_id: &str, action: Action) -> UpdateSubjectRequestRequest {
    UpdateSubjectRequestRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        action: Some(action),
        actor: "dpo-desk".into(),
        dpo_signature: None,
    }
}

/// The fields an `INVALID_ARGUMENT` names.
fn fields(status: &tonic::Status) -> Vec<String> {
    field_violations(status)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn reason(text: &str) -> String {
    text.to_owned()
}

/// Submits (signed) and returns the one receipt.
async fn open(
    fed: &Federation,
    gw: &mut domicile_client::Gateway,
    req: SubmitSubjectRequestRequest,
) -> anyhow::Result<SubjectRequestReceipt> {
    let mut answer = gw
        .submit_subject_request(fed.signed(req))
        .await?
        .into_inner();
    anyhow::ensure!(answer.receipts.len() == 1, "{answer:?}");
    Ok(answer.receipts.remove(0))
}

/// Takes a signed step and returns the receipt after it.
async fn take(
    fed: &Federation,
    gw: &mut domicile_client::Gateway,
    request_id: &str,
    action: Action,
) -> Result<SubjectRequestReceipt, tonic::Status> {
    let answer = gw
        .update_subject_request(fed.signed(step(request_id, action)))
        .await?
        .into_inner();
    Ok(answer.receipt.expect("a receipt"))
}

fn status(r: &SubjectRequestReceipt) -> S {
    S::try_from(r.status).unwrap()
}

fn due(r: &SubjectRequestReceipt) -> i64 {
    r.due_at.as_ref().unwrap().seconds
}

fn actions(r: &SubjectRequestReceipt) -> Vec<(String, S)> {
    r.events
        .iter()
        .map(|e| (e.action.clone(), S::try_from(e.status).unwrap()))
        .collect()
}

fn named(items: &[(&str, S)]) -> Vec<(String, S)> {
    items.iter().map(|(a, s)| ((*a).to_owned(), *s)).collect()
}

#[tokio::test]
async fn an_access_request_waits_for_verification_then_is_fulfilled_with_its_history()
-> anyhow::Result<()> {
    let clock = ManualClock::at(jan_31());
    let (fed, mut gw) = setup(&clock).await?;
    let keys = SealingKeyPair::generate();
    let mut req = submit("DE", "d0", SubjectRequestKind::Access);
    req.recipient_public_key = keys.public().as_bytes().to_vec();
    let received = open(&fed, &mut gw, req).await?;
    assert_eq!(status(&received), S::Received);
    assert!(
        received.export.is_none(),
        "nothing leaves before the verification"
    );
    assert!(received.completed_at.is_none());
    // One month by the calendar: January 31st is due on February 28th.
    assert_eq!(due(&received), at(2027, 2, 28));
    assert_eq!(actions(&received), named(&[("received", S::Received)]));
    let id = received.request_id.clone();

    // A compromised gateway verifying on its own: the node wants the DPO's signature.
    let unsigned = gw
        .update_subject_request(step(&id, Action::Verify(verification())))
        .await
        .unwrap_err();
    assert_eq!(unsigned.code(), Code::PermissionDenied, "{unsigned:?}");
    // A bad verification names its field and changes nothing.
    let bad = take(
        &fed,
        &mut gw,
        &id,
        Action::Verify(IdentityVerification {
            evidence_reference: String::new(),
            ..verification()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(fields(&bad), ["verify.evidence_reference"]);

    clock.advance(3 * DAY);
    let signed = fed.signed(step(&id, Action::Verify(verification())));
    let done = gw
        .update_subject_request(signed.clone())
        .await?
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(status(&done), S::Completed);
    assert_eq!(
        done.completed_at.as_ref().unwrap().seconds,
        jan_31() + 3 * DAY
    );
    let v = done
        .verification
        .as_ref()
        .expect("the verification is kept");
    assert_eq!(v.method, VerificationMethod::DocumentCheck as i32);
    assert_eq!(v.evidence_reference, "ticket 4411");
    assert_eq!(v.verified_by, "agent-7");
    assert_eq!(v.verified_at.as_ref().unwrap().seconds, jan_31() + 3 * DAY);
    let export = done
        .export
        .as_ref()
        .expect("the export, sealed to the requester");
    let json = open_export(
        &keys,
        TENANT,
        &done.region_id,
        done.request_id.as_bytes(),
        &export.encapsulated_key,
        &export.ciphertext,
    )?;
    let doc: serde_json::Value = serde_json::from_slice(&json)?;
    assert_eq!(doc["subject"]["external_id"], "d0");
    assert_eq!(
        actions(&done),
        named(&[
            ("received", S::Received),
            ("verified", S::InProgress),
            ("completed", S::Completed)
        ])
    );
    assert_eq!(done.events[1].actor, "agent-7");
    assert!(done.events.iter().all(|e| !e.principal.is_empty()));
    // Signed by the region's identity key: it verifies offline with the trust bundle, and
    // not once changed (the export is not covered: it is sealed to the requester).
    fed.trust_bundle.verify_receipt(&done)?;
    let forged = SubjectRequestReceipt {
        status: S::Refused as i32,
        ..done.clone()
    };
    assert!(fed.trust_bundle.verify_receipt(&forged).is_err());
    let fewer = SubjectRequestReceipt {
        events: done.events[..1].to_vec(),
        ..done.clone()
    };
    assert!(fed.trust_bundle.verify_receipt(&fewer).is_err());
    fed.trust_bundle.verify_receipt(&received)?;

    // The same signed step again: a replay (the nonce was used).
    let replay = gw.update_subject_request(signed).await.unwrap_err();
    assert_eq!(replay.code(), Code::PermissionDenied, "{replay:?}");
    // Signed afresh: the request is done, nothing more to verify.
    let again = take(&fed, &mut gw, &id, Action::Verify(verification()))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    // GetSubjectRequest: the same history, no export.
    let got = gw
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: id.clone(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(actions(&got), actions(&done));
    assert!(got.export.is_none());
    fed.trust_bundle.verify_receipt(&got)?;

    // Another tenant cannot see or step it.
    let other = gw
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: "other".into(),
            request_id: id,
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn deadlines_follow_the_country_policy_pause_while_waiting_and_extend_once()
-> anyhow::Result<()> {
    let clock = ManualClock::at(jan_31());
    let (fed, mut gw) = setup(&clock).await?;
    let de = open(
        &fed,
        &mut gw,
        submit("DE", "d1", SubjectRequestKind::Erasure),
    )
    .await?;
    let us = open(
        &fed,
        &mut gw,
        submit("US", "u1", SubjectRequestKind::Erasure),
    )
    .await?;
    assert_eq!(due(&de), at(2027, 2, 28));
    assert_eq!(due(&us), jan_31() + 45 * DAY);

    // Two days in, both ask the subject for identity evidence.
    clock.advance(2 * DAY);
    let asked = clock.now();
    let why = Action::AwaitSubject(AwaitSubject {
        reason: reason("identity evidence requested"),
    });
    let de_wait = take(&fed, &mut gw, &de.request_id, why.clone()).await?;
    let us_wait = take(&fed, &mut gw, &us.request_id, why.clone()).await?;
    assert_eq!(status(&de_wait), S::AwaitingSubject);
    // GDPR (DE policy): the clock stops; CCPA (US policy): it runs on.
    assert_eq!(de_wait.paused_since.as_ref().unwrap().seconds, asked);
    assert!(us_wait.paused_since.is_none());
    // Only a RECEIVED request waits.
    let twice = take(&fed, &mut gw, &de.request_id, why).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);

    // Fifty days later, past both original due dates: only the US request is overdue.
    clock.advance(50 * DAY);
    let overdue = list(
        &mut gw,
        ListSubjectRequestsRequest {
            overdue_only: true,
            ..query()
        },
    )
    .await?;
    let ids: Vec<_> = overdue.receipts.iter().map(|r| &r.request_id).collect();
    assert_eq!(ids, [&us.request_id]);
    assert!(overdue.receipts[0].overdue);
    let us_counts = overdue.counts.iter().find(|c| c.region_id == "us").unwrap();
    assert_eq!((us_counts.open, us_counts.overdue), (1, 1));
    let de_counts = overdue
        .counts
        .iter()
        .find(|c| c.region_id == "eu-de")
        .unwrap();
    assert_eq!((de_counts.open, de_counts.overdue), (1, 0));

    // The subject answers: verified, erased; the DE deadline moved by the 50 days' pause.
    let de_done = take(
        &fed,
        &mut gw,
        &de.request_id,
        Action::Verify(verification()),
    )
    .await?;
    assert_eq!(status(&de_done), S::Completed);
    assert_eq!(due(&de_done), at(2027, 2, 28) + 50 * DAY);
    assert!(!de_done.overdue, "completed on time, counting the pause");
    assert!(de_done.paused_since.is_none());
    // Erased: the region holds nothing about the subject any more.
    let mut access = submit("DE", "d1", SubjectRequestKind::Access);
    access.recipient_public_key = SealingKeyPair::generate().public().as_bytes().to_vec();
    access.verification = Some(verification());
    let gone = gw
        .submit_subject_request(fed.signed(access))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");

    // The overdue US request cannot be extended any more.
    let late = take(
        &fed,
        &mut gw,
        &us.request_id,
        Action::Extend(ExtendDeadline {
            reason: reason("complex"),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("overdue"), "{late:?}");

    // Extensions: DE by two further months from its due date, once; US by 45 days.
    let de2 = open(
        &fed,
        &mut gw,
        submit("DE", "d2", SubjectRequestKind::Erasure),
    )
    .await?;
    let us2 = open(
        &fed,
        &mut gw,
        submit("US", "u2", SubjectRequestKind::Erasure),
    )
    .await?;
    let extend = Action::Extend(ExtendDeadline {
        reason: reason("many systems to search"),
    });
    let de2x = take(&fed, &mut gw, &de2.request_id, extend.clone()).await?;
    let (y, m, d) = domicile_proto::domain::civil_from_days(due(&de2).div_euclid(DAY));
    let (m3, y3) = if m + 2 > 12 {
        (m + 2 - 12, y + 1)
    } else {
        (m + 2, y)
    };
    assert_eq!(
        due(&de2x),
        days_from_civil(y3, m3, d.min(domicile_proto::domain::days_in_month(y3, m3))) * DAY
            + due(&de2).rem_euclid(DAY)
    );
    assert_eq!(de2x.extension_reason, "many systems to search");
    assert_eq!(
        status(&de2x),
        S::Received,
        "an extension does not change the status"
    );
    let again = take(&fed, &mut gw, &de2.request_id, extend.clone())
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let us2x = take(&fed, &mut gw, &us2.request_id, extend).await?;
    assert_eq!(due(&us2x), due(&us2) + 45 * DAY);
    assert_eq!(
        actions(&us2x),
        named(&[("received", S::Received), ("extended", S::Received)])
    );
    assert_eq!(us2x.events[1].reason, "many systems to search");
    Ok(())
}

#[tokio::test]
async fn a_refusal_closes_the_request_with_its_reason_and_does_nothing() -> anyhow::Result<()> {
    let clock = ManualClock::at(jan_31());
    let (fed, mut gw) = setup(&clock).await?;
    let r = open(
        &fed,
        &mut gw,
        submit("DE", "d3", SubjectRequestKind::Erasure),
    )
    .await?;
    let bad = take(
        &fed,
        &mut gw,
        &r.request_id,
        Action::Refuse(RefuseSubjectRequest {
            reason: String::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(fields(&bad), ["refuse.reason"]);
    clock.advance(DAY);
    let refused = take(
        &fed,
        &mut gw,
        &r.request_id,
        Action::Refuse(RefuseSubjectRequest {
            reason: reason("identity could not be verified"),
        }),
    )
    .await?;
    assert_eq!(status(&refused), S::Refused);
    assert_eq!(refused.refusal_reason, "identity could not be verified");
    assert!(refused.completed_at.is_none(), "refused is not completed");
    assert!(!refused.overdue);
    for action in [
        Action::Verify(verification()),
        Action::Refuse(RefuseSubjectRequest {
            reason: reason("again"),
        }),
        Action::Extend(ExtendDeadline {
            reason: reason("late"),
        }),
    ] {
        let e = take(&fed, &mut gw, &r.request_id, action)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    }
    // Nothing was erased: the subject's request for access still finds them.
    let keys = SealingKeyPair::generate();
    let mut access = submit("DE", "d3", SubjectRequestKind::Access);
    access.recipient_public_key = keys.public().as_bytes().to_vec();
    access.verification = Some(verification());
    let fulfilled = open(&fed, &mut gw, access).await?;
    assert_eq!(status(&fulfilled), S::Completed);
    assert!(fulfilled.export.is_some());
    // Closed: not in the open queue; listed under REFUSED.
    let open_queue = list(&mut gw, query()).await?;
    assert!(
        open_queue
            .receipts
            .iter()
            .all(|x| x.request_id != r.request_id)
    );
    let refused_list = list(
        &mut gw,
        ListSubjectRequestsRequest {
            statuses: vec![S::Refused as i32],
            ..query()
        },
    )
    .await?;
    assert_eq!(refused_list.receipts.len(), 1);
    assert_eq!(
        refused_list.receipts[0].refusal_reason,
        "identity could not be verified"
    );

    // Waiting for the subject, then refused: the pause ends with the request.
    let waiting = open(
        &fed,
        &mut gw,
        submit("DE", "d6", SubjectRequestKind::Erasure),
    )
    .await?;
    take(
        &fed,
        &mut gw,
        &waiting.request_id,
        Action::AwaitSubject(AwaitSubject {
            reason: reason("identity evidence requested"),
        }),
    )
    .await?;
    let closed = take(
        &fed,
        &mut gw,
        &waiting.request_id,
        Action::Refuse(RefuseSubjectRequest {
            reason: reason("no answer from the requester"),
        }),
    )
    .await?;
    assert_eq!(status(&closed), S::Refused);
    assert!(closed.paused_since.is_none());

    // An access request whose subject is erased before it is verified: verifying cannot
    // fulfil it (IN_PROGRESS, and the call says why), and it is closed with a reason.
    let late_keys = SealingKeyPair::generate();
    let mut late = submit("DE", "d7", SubjectRequestKind::Access);
    late.recipient_public_key = late_keys.public().as_bytes().to_vec();
    let late = open(&fed, &mut gw, late).await?;
    let mut erase = submit("DE", "d7", SubjectRequestKind::Erasure);
    erase.verification = Some(verification());
    assert_eq!(status(&open(&fed, &mut gw, erase).await?), S::Completed);
    let failed = take(
        &fed,
        &mut gw,
        &late.request_id,
        Action::Verify(verification()),
    )
    .await
    .unwrap_err();
    assert_eq!(failed.code(), Code::FailedPrecondition, "{failed:?}");
    assert!(failed.message().contains("no longer held"), "{failed:?}");
    let stuck = gw
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: late.request_id.clone(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(status(&stuck), S::InProgress);
    let closed = take(
        &fed,
        &mut gw,
        &late.request_id,
        Action::Refuse(RefuseSubjectRequest {
            reason: reason("the data was erased at the subject's request"),
        }),
    )
    .await?;
    assert_eq!(status(&closed), S::Refused);
    assert_eq!(
        actions(&closed),
        named(&[
            ("received", S::Received),
            ("verified", S::InProgress),
            ("refused", S::Refused)
        ])
    );
    Ok(())
}

fn query() -> ListSubjectRequestsRequest {
    ListSubjectRequestsRequest {
        tenant_id: TENANT.into(),
        ..Default::default()
    }
}

async fn list(
    gw: &mut domicile_client::Gateway,
    req: ListSubjectRequestsRequest,
) -> anyhow::Result<ListSubjectRequestsResponse> {
    Ok(gw.list_subject_requests(req).await?.into_inner())
}

#[tokio::test]
async fn the_queue_lists_by_due_date_across_regions_page_after_page() -> anyhow::Result<()> {
    let clock = ManualClock::at(jan_31());
    let (fed, mut gw) = setup(&clock).await?;
    // Open requests received a day apart, alternating regions (DE: one month, US: 45 days),
    // and two fulfilled at once.
    let mut opened = Vec::new();
    for i in 0..9 {
        let (country, id) = if i % 2 == 0 {
            ("DE", format!("d{}", i / 2 + 4))
        } else {
            ("US", format!("u{}", i / 2))
        };
        let r = open(
            &fed,
            &mut gw,
            submit(country, &id, SubjectRequestKind::Erasure),
        )
        .await?;
        opened.push((due(&r), r.request_id));
        clock.advance(DAY);
    }
    for id in ["d3", "d9"] {
        let mut r = submit("DE", id, SubjectRequestKind::Restriction);
        r.verification = Some(verification());
        assert_eq!(status(&open(&fed, &mut gw, r).await?), S::Completed);
    }
    opened.sort();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &mut gw,
            ListSubjectRequestsRequest {
                page_size: 4,
                page_token: token.clone(),
                ..query()
            },
        )
        .await?;
        pages += 1;
        assert!(page.receipts.len() <= 4);
        assert!(
            page.coverage
                .iter()
                .all(|c| c.status == RegionStatus::Ok as i32)
        );
        seen.extend(page.receipts.iter().map(|r| (due(r), r.request_id.clone())));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, opened, "every open request once, soonest due first");
    assert_eq!(pages, 3);
    // Pages larger than any region's share (DE 5, US 4): the merged page is still cut.
    let mut again = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &mut gw,
            ListSubjectRequestsRequest {
                page_size: 6,
                page_token: token.clone(),
                ..query()
            },
        )
        .await?;
        assert!(page.receipts.len() <= 6, "{} receipts", page.receipts.len());
        again.extend(page.receipts.iter().map(|r| (due(r), r.request_id.clone())));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(again, opened);
    // Counts: DE 5 open, US 4 open; nothing overdue; a week before the first DE request is
    // due, the DE requests due within 7 days.
    clock.set(at(2027, 2, 24));
    let all = list(&mut gw, query()).await?;
    let de = all.counts.iter().find(|c| c.region_id == "eu-de").unwrap();
    let us = all.counts.iter().find(|c| c.region_id == "us").unwrap();
    assert_eq!((de.open, de.overdue), (5, 0));
    assert_eq!((us.open, us.overdue), (4, 0));
    // DE due Feb 28, Mar 2, 4, 6, 8 (9 a.m.): within 7 days of Feb 24, 9 a.m. are two.
    assert_eq!(de.due_within_7_days, 2);
    assert_eq!(us.due_within_7_days, 0);
    let soon = list(
        &mut gw,
        ListSubjectRequestsRequest {
            due_within_days: 7,
            ..query()
        },
    )
    .await?;
    assert_eq!(soon.receipts.len(), 2);
    // Completed ones on request; one region only on request.
    let completed = list(
        &mut gw,
        ListSubjectRequestsRequest {
            statuses: vec![S::Completed as i32],
            regions: vec!["eu-de".into()],
            ..query()
        },
    )
    .await?;
    assert_eq!(completed.receipts.len(), 2);
    assert_eq!(completed.coverage.len(), 1);
    // Bad input names its field.
    for (bad, field) in [
        (
            ListSubjectRequestsRequest {
                page_token: "not-a-token".into(),
                ..query()
            },
            "page_token",
        ),
        (
            ListSubjectRequestsRequest {
                page_size: 1001,
                ..query()
            },
            "page_size",
        ),
        (
            ListSubjectRequestsRequest {
                regions: vec!["mars".into()],
                ..query()
            },
            "regions[0]",
        ),
        (
            ListSubjectRequestsRequest {
                statuses: vec![99],
                ..query()
            },
            "statuses[0]",
        ),
    ] {
        let e = gw.list_subject_requests(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(fields(&e), [field]);
    }
    Ok(())
}

#[tokio::test]
async fn a_region_down_during_submission_gets_the_request_when_the_client_sends_it_again()
-> anyhow::Result<()> {
    let clock = ManualClock::at(jan_31());
    let (mut fed, mut gw) = setup(&clock).await?;
    // "both" is a customer in DE and in the US; the country is not given: every region is
    // asked. The client names the request, so that sending it again is idempotent.
    let federation_id = format!("dsr-{}", "5e".repeat(16));
    let mut req = submit("", "both", SubjectRequestKind::Erasure);
    req.request_id = federation_id.clone();
    req.verification = Some(verification());
    fed.stop_node("us").await;
    let first = gw
        .submit_subject_request(fed.signed(req.clone()))
        .await?
        .into_inner();
    assert_eq!(first.receipts.len(), 1, "{first:?}");
    let de_first = &first.receipts[0];
    assert_eq!(de_first.region_id, "eu-de");
    assert_eq!(de_first.federation_request_id, federation_id);
    assert_eq!(status(de_first), S::Completed);
    let us_cover = first.coverage.iter().find(|c| c.region_id == "us").unwrap();
    assert_eq!(us_cover.status, RegionStatus::Unavailable as i32);

    // The region comes back; the client sends the same request again (signed afresh).
    fed.restart_node("us").await?;
    let second = gw
        .submit_subject_request(fed.signed(req.clone()))
        .await?
        .into_inner();
    let mut by_region: Vec<_> = second
        .receipts
        .iter()
        .map(|r| (r.region_id.clone(), r.request_id.clone(), status(r)))
        .collect();
    by_region.sort();
    assert_eq!(by_region.len(), 2, "{second:?}");
    // DE answers the request it has (not a second one); the US takes it now.
    assert_eq!(
        by_region[0],
        (
            "eu-de".to_owned(),
            de_first.request_id.clone(),
            S::Completed
        )
    );
    assert_eq!(by_region[1].0, "us");
    assert_eq!(by_region[1].2, S::Completed);
    assert!(
        second
            .receipts
            .iter()
            .all(|r| r.federation_request_id == federation_id)
    );
    // And a third time: still one request per region.
    let third = gw
        .submit_subject_request(fed.signed(req.clone()))
        .await?
        .into_inner();
    let mut ids: Vec<_> = third
        .receipts
        .iter()
        .map(|r| r.request_id.clone())
        .collect();
    ids.sort();
    let mut before: Vec<_> = by_region.iter().map(|r| r.1.clone()).collect();
    before.sort();
    assert_eq!(ids, before);
    let done = list(
        &mut gw,
        ListSubjectRequestsRequest {
            statuses: vec![S::Completed as i32],
            ..query()
        },
    )
    .await?;
    assert_eq!(
        done.receipts
            .iter()
            .filter(|r| r.federation_request_id == federation_id)
            .count(),
        2
    );
    // The same id for another kind of request is refused, naming the field.
    let mut other = req;
    other.kind = SubjectRequestKind::Restriction as i32;
    other.subject = Some(SubjectRef {
        country: "DE".into(),
        external_id: "d0".into(),
    });
    let e = gw
        .submit_subject_request(fed.signed(other))
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["request_id"], "{e:?}");
    Ok(())
}

/// Fetches an export through the gateway: the messages' count and the export reassembled.
async fn fetch(
    gw: &mut domicile_client::Gateway,
    request_id: &str,
) -> Result<(usize, domicile_proto::pb::SealedExport, i64), tonic::Status> {
    let mut stream = gw
        .fetch_subject_request_export(FetchSubjectRequestExportRequest {
            tenant_id: TENANT.into(),
            request_id: request_id.into(),
        })
        .await?
        .into_inner();
    let mut export = domicile_proto::pb::SealedExport::default();
    let (mut messages, mut total, mut expires) = (0, 0, 0);
    while let Some(m) = stream.message().await? {
        if messages == 0 {
            export.encapsulated_key = m.encapsulated_key;
            export.schema = m.schema;
            total = m.total_bytes;
            expires = m.expires_at.unwrap().seconds;
        } else {
            assert!(m.encapsulated_key.is_empty() && m.expires_at.is_none());
        }
        assert!(m.chunk.len() <= 256 * 1024);
        export.ciphertext.extend_from_slice(&m.chunk);
        messages += 1;
    }
    assert_eq!(export.ciphertext.len() as u64, total);
    Ok((messages, export, expires))
}

fn opened(
    keys: &SealingKeyPair,
    receipt: &SubjectRequestReceipt,
    export: &domicile_proto::pb::SealedExport,
) -> serde_json::Value {
    let json = open_export(
        keys,
        TENANT,
        &receipt.region_id,
        receipt.request_id.as_bytes(),
        &export.encapsulated_key,
        &export.ciphertext,
    )
    .expect("the export opens with the requester's key");
    serde_json::from_slice(&json).unwrap()
}

#[tokio::test]
async fn an_export_is_fetched_again_until_it_expires_then_destroyed_and_audited()
-> anyhow::Result<()> {
    let clock = ManualClock::at(jan_31());
    let (fed, mut gw) = setup(&clock).await?;
    // A subject with a long history: an export of several chunks.
    let comment = "Der Rückruf kam pünktlich und das Problem war schnell gelöst. ".repeat(4);
    let mut records = vec![person("DE", "big", "A B", "big@example.org", "", "1", 1980)];
    for i in 0..1_500 {
        records.push(touch(
            "DE",
            &format!("big-{i}"),
            "big",
            jan_31() - 60 * DAY + i * 60,
            &comment,
        ));
    }
    ingest_records(&fed, &records).await?;
    let keys = SealingKeyPair::generate();
    let mut req = submit("DE", "big", SubjectRequestKind::Access);
    req.recipient_public_key = keys.public().as_bytes().to_vec();
    req.verification = Some(verification());
    let receipt = open(&fed, &mut gw, req).await?;
    let first = opened(&keys, &receipt, receipt.export.as_ref().unwrap());
    assert_eq!(first["interactions"].as_array().unwrap().len(), 1_500);
    // Kept for the DE policy's 30 days.
    let expires = receipt.export_expires_at.as_ref().unwrap().seconds;
    assert_eq!(expires, jan_31() + 30 * DAY);
    fed.trust_bundle.verify_receipt(&receipt)?;

    // Fetched twice, later, in several messages: the same export, sealed as it was.
    for days in [1, 29] {
        clock.set(jan_31() + days * DAY);
        let (messages, export, until) = fetch(&mut gw, &receipt.request_id).await?;
        assert!(messages > 1, "{messages} message(s)");
        assert_eq!(until, expires);
        assert_eq!(&export, receipt.export.as_ref().unwrap());
        assert_eq!(opened(&keys, &receipt, &export), first);
    }
    // Not for another tenant, nor for a request without an export.
    let other = gw
        .fetch_subject_request_export(FetchSubjectRequestExportRequest {
            tenant_id: "other".into(),
            request_id: receipt.request_id.clone(),
        })
        .await;
    assert_eq!(other.err().map(|e| e.code()), Some(Code::NotFound));
    let mut erasure = submit("DE", "d4", SubjectRequestKind::Erasure);
    erasure.verification = Some(verification());
    let erased = open(&fed, &mut gw, erasure).await?;
    assert!(erased.export_expires_at.is_none());
    let none = fetch(&mut gw, &erased.request_id).await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound);

    // Past its expiry: not answered, even before the sweep destroys it.
    clock.set(expires);
    let late = fetch(&mut gw, &receipt.request_id).await.unwrap_err();
    assert_eq!(late.code(), Code::NotFound, "{late:?}");
    let node = fed.node("eu-de").unwrap();
    let swept = node.node.as_ref().unwrap().sweep()?;
    assert_eq!(swept.exports_destroyed, 1);
    let conn = node.connect()?;
    let left: i64 = conn.query_row(
        "SELECT COUNT(*) FROM subject_exports WHERE request_id = $1",
        [receipt.request_id.as_str()],
        |r| r.get(0),
    )?;
    assert_eq!(left, 0, "the ciphertext is gone from the database");
    let history = gw
        .get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: receipt.request_id.clone(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap();
    let steps: Vec<_> = history.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        steps,
        [
            "received",
            "verified",
            "completed",
            "export_fetched",
            "export_fetched",
            "export_destroyed"
        ]
    );
    assert!(history.export_expires_at.is_none());
    // Every fetch and the destruction are in the region's audit log too.
    let audited: i64 = conn.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE details LIKE $1 AND details LIKE $2",
        [
            format!("%{}%", receipt.request_id).as_str(),
            "%\"action\":\"export_%",
        ],
        |r| r.get(0),
    )?;
    assert_eq!(audited, 3);

    // An erasure takes a subject's kept exports with it.
    let mut again = submit("DE", "d5", SubjectRequestKind::Access);
    again.recipient_public_key = keys.public().as_bytes().to_vec();
    again.verification = Some(verification());
    let kept = open(&fed, &mut gw, again).await?;
    fetch(&mut gw, &kept.request_id).await?;
    let mut erase = submit("DE", "d5", SubjectRequestKind::Erasure);
    erase.verification = Some(verification());
    open(&fed, &mut gw, erase).await?;
    let gone = fetch(&mut gw, &kept.request_id).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    Ok(())
}
