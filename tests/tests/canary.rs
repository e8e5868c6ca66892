//! The residency proof: canary values planted in every personal field, in three regions, never
//! appear in anything that crosses the federation boundary.
//!
//! Every RPC of the gateway and of the nodes' federation API is driven — valid calls, invalid
//! ones (some carrying canaries in the invalid fields), and calls that fail because a region is
//! down — and every byte that crosses is captured: gateway responses, stream messages and
//! errors (code, message, details), node federation responses and errors, every level of the
//! gateway's and nodes' logs, and the Prometheus metrics of the gateway and of every node as
//! scraped over HTTP. The capture is then searched for each canary in plain text,
//! hex (lower and upper case) and base64 (standard and URL-safe, at every byte alignment).
//!
//! Positive controls keep the test honest: each region reads its canaries back (while its files
//! hold them only encrypted), the detector finds a canary hidden in base64 inside a blob, and the redaction
//! placeholders do cross (so the comments were released, redacted).
//!
//! Every new RPC must be driven here. Follow-ups go round the whole loop: opened through the
//! gateway for released pseudonyms, re-identified and resolved on the in-country listener (whose
//! answers, personal data by design, stay in the country and are not captured), then listed
//! through the gateway and the nodes.

use base64::Engine;
use domicile_proto::{
    pb::{
        AggregateQuery, AggregateRequest, AwaitSubject, Channel, CheckContactPermissionRequest,
        ConfirmConsentRequest, ConsentAction, ConsentSource, Dimension, ExtendDeadline,
        FetchSubjectRequestExportRequest, FollowUpStatus, GetAuditCheckpointRequest,
        GetConsentRequest, GetIncidentRequest, GetOverviewRequest, GetRegionInfoRequest,
        GetSubjectRequestRequest, IdentityVerification, IngestRequest, InteractionRecord,
        ListFollowUpsRequest, ListRegionsRequest, ListSubjectRequestsRequest, OpenFollowUpRequest,
        PlaceLegalHoldRequest, Purpose, QueryRecordsRequest, RecordConsentRequest,
        RecordFollowUpOutcomeRequest, RecordPayload, RecordQuery, RefuseSubjectRequest,
        RegionalNodeAggregateRequest, RegionalNodeCheckContactPermissionRequest,
        RegionalNodeConfirmConsentRequest, RegionalNodeGetAuditCheckpointRequest,
        RegionalNodeGetConsentRequest, RegionalNodeGetIncidentRequest,
        RegionalNodeGetRegionOverviewRequest, RegionalNodeGetSubjectRequestRequest,
        RegionalNodeIngestRequest, RegionalNodeListFollowUpsRequest,
        RegionalNodeOpenFollowUpRequest, RegionalNodePlaceLegalHoldRequest,
        RegionalNodeQueryRecordsRequest, RegionalNodeRecordConsentRequest,
        RegionalNodeReleaseLegalHoldRequest, RegionalNodeReportIncidentRequest,
        RegionalNodeSubmitSubjectRequestRequest, RegionalNodeWithdrawConsentRequest,
        ReidentifyFollowUpRequest, ReleaseLegalHoldRequest, ReportIncidentRequest, SealedEnvelope,
        SubjectRecord, SubjectRef, SubjectRequestKind, SubjectRequestStatus,
        SubmitSubjectRequestRequest, SurveyAnswer, TimeRange, UpdateSubjectRequestRequest,
        VerificationMethod, WithdrawConsentRequest, record_payload::Record,
        regional_node_client::RegionalNodeClient, update_subject_request_request::Action,
    },
    seal::{EnvelopeSealer, PublicSealingKey},
};
use domicile_tests::{Capture, Federation, TENANT, client, gateway_client, node_client};
use prost::Message;
use tonic::transport::Channel as Grpc;

/// Every encoding of `canary` the capture is searched for.
fn encodings(canary: &str) -> Vec<Vec<u8>> {
    let raw = canary.as_bytes();
    let mut forms = vec![
        raw.to_vec(),
        hex::encode(raw).into_bytes(),
        hex::encode_upper(raw).into_bytes(),
    ];
    // Inside a larger base64 blob the canary can start at any byte offset modulo 3; the
    // characters for its whole 3-byte groups are the same whatever surrounds it.
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for skip in 0..3 {
            let tail = &raw[skip..];
            let whole = &tail[..tail.len() - tail.len() % 3];
            forms.push(engine.encode(whole).into_bytes());
        }
    }
    forms
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    position(haystack, needle).is_some()
}

fn position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The captured text around byte `at`, to say where a canary was found.
fn around(haystack: &[u8], at: usize) -> String {
    let start = at.saturating_sub(200);
    let end = (at + 200).min(haystack.len());
    String::from_utf8_lossy(&haystack[start..end]).into_owned()
}

/// The canaries of region `r`: one per personal field, each unique and unlikely by chance.
struct Canaries {
    external_id: String,
    interaction_id: String,
    first: String,
    last: String,
    email: String,
    phone: String,
    phone_digits: String,
    postal_code: String,
    iban: String,
    card: String,
}

impl Canaries {
    fn new(r: usize) -> Self {
        Self {
            external_id: format!("cust-kanari{r}-qzx"),
            interaction_id: format!("int-kanari{r}-wvy"),
            first: format!("Zorbakan{r}"),
            last: format!("Quixvelt{r}"),
            email: format!("zorba.kanari{r}@canary-{r}.example"),
            phone: format!("+49 151 7331 90{r}7"),
            phone_digits: format!("49151733190{r}7"),
            postal_code: format!("Q9Z{r}K7"),
            // Valid check digits, so the redactor must recognise them as such.
            iban: [
                "DE75512108001245126199",
                "FR7630006000011234567890189",
                "GB33BUKB20201555555555",
            ][r]
                .to_owned(),
            card: [
                "4111 1111 1111 1111",
                "5555 5555 5555 4444",
                "4012 8888 8888 1881",
            ][r]
                .to_owned(),
        }
    }

    fn full_name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }

    fn comment(&self) -> String {
        format!(
            "Hello, {} here. Mail {} or call {}. Refund to {} not card {}.",
            self.full_name(),
            self.email,
            self.phone,
            self.iban,
            self.card
        )
    }

    /// Everything that must never cross the boundary.
    fn all(&self) -> Vec<String> {
        vec![
            self.external_id.clone(),
            self.interaction_id.clone(),
            self.first.clone(),
            self.last.clone(),
            self.full_name(),
            self.email.clone(),
            self.phone.clone(),
            self.phone_digits.clone(),
            self.postal_code.clone(),
            self.iban.clone(),
            self.card.clone(),
            self.card.replace(' ', ""),
            self.comment(),
        ]
    }

    fn payloads(&self, country: &str) -> Vec<RecordPayload> {
        let subject = RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: self.external_id.clone(),
                full_name: self.full_name(),
                email: self.email.clone(),
                phone: self.phone.clone(),
                postal_code: self.postal_code.clone(),
                language: format!("{}-{country}", country.to_lowercase()),
                birth_year: 1984,
            })),
        };
        // Enough interactions from enough subjects to pass k in aggregates: the canary subject
        // and its interactions, plus plain subjects that make the groups large.
        let mut out = vec![subject];
        for i in 0..30 {
            out.push(RecordPayload {
                record: Some(Record::Interaction(InteractionRecord {
                    interaction_id: format!("{}-{i}", self.interaction_id),
                    subject_external_id: if i % 3 == 0 {
                        self.external_id.clone()
                    } else {
                        format!("plain-{country}-{i}")
                    },
                    channel: [Channel::Phone, Channel::Email, Channel::Chat][i % 3] as i32,
                    started_at: Some(prost_types::Timestamp {
                        seconds: 1_780_000_000 + i as i64 * 3_600,
                        nanos: 0,
                    }),
                    handle_time_seconds: 120 + i as u32,
                    outcome: "resolved".into(),
                    agent_team: "tier1".into(),
                    recorded: false,
                    survey: Some(SurveyAnswer {
                        survey_id: "post-contact".into(),
                        nps: Some((i % 11) as u32),
                        csat: Some((i % 5 + 1) as u32),
                        ces: Some((i % 7 + 1) as u32),
                        // The node redacts the names of the subject it holds; other subjects'
                        // comments carry the other canaries only.
                        comment: if i % 3 == 0 {
                            self.comment()
                        } else {
                            self.comment().replace(&self.full_name(), "a customer")
                        },
                    }),
                    ..Default::default()
                })),
            });
        }
        out
    }
}

const REGIONS: [(&str, &str); 3] = [("eu-de", "DE"), ("eu-fr", "FR"), ("us", "US")];

async fn sealed(
    gw: &mut domicile_client::Gateway,
    region: &str,
    country: &str,
    payloads: &[RecordPayload],
    prefix: &str,
) -> anyhow::Result<SealedEnvelope> {
    let regions = client::regions(gw).await?;
    let info = regions.iter().find(|r| r.region_id == region).unwrap();
    let key = PublicSealingKey::from_bytes(&info.sealing_key.as_ref().unwrap().public_key)?;
    let mut sealer = EnvelopeSealer::new(TENANT, region, &key)?;
    for (i, p) in payloads.iter().enumerate() {
        sealer.seal(country, &format!("{prefix}-{region}-{i}"), p)?;
    }
    Ok(sealer.finish())
}

fn aggregate(group_by: &[Dimension], epsilon: Option<f64>, regions: &[&str]) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: (1..=7).collect(),
            group_by: group_by.iter().map(|d| *d as i32).collect(),
            min_group_size: 2,
            epsilon,
            ..Default::default()
        }),
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
        require_all_regions: false,
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

/// Reads a record stream to its end, capturing every message (or the error); the rows seen.
async fn drain<M: Message + std::fmt::Debug + Default>(
    cap: &Capture,
    call: Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>,
    rows: fn(&M) -> usize,
) -> u64 {
    let mut n = 0;
    match call {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        n += rows(&m) as u64;
                        cap.message(&m);
                    }
                    Ok(None) => break,
                    Err(s) => {
                        cap.status(&s);
                        break;
                    }
                }
            }
        }
        Err(s) => cap.status(&s),
    }
    n
}

async fn drain_gateway_stream(
    cap: &Capture,
    gw: &mut domicile_client::Gateway,
    req: QueryRecordsRequest,
) -> u64 {
    drain(cap, gw.query_records(req).await, |m| m.records.len()).await
}

async fn drain_node_stream(
    cap: &Capture,
    node: &mut RegionalNodeClient<Grpc>,
    req: RegionalNodeQueryRecordsRequest,
) -> u64 {
    drain(cap, node.query_records(req).await, |m| m.records.len()).await
}

fn incident_request() -> ReportIncidentRequest {
    ReportIncidentRequest {
        tenant_id: TENANT.into(),
        regions: Vec::new(),
        window: Some(TimeRange {
            start: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            end: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
        }),
        categories: (1..=6).collect(),
        description: "Laptop with an export lost".into(),
        detected_at: None,
        dpo_signature: None,
    }
}

fn subject_ref(country: &str, c: &Canaries) -> Option<SubjectRef> {
    Some(SubjectRef {
        country: country.into(),
        external_id: c.external_id.clone(),
    })
}

fn grant(country: &str, c: &Canaries, purpose: Purpose, channel: Channel) -> RecordConsentRequest {
    RecordConsentRequest {
        tenant_id: TENANT.into(),
        subject: subject_ref(country, c),
        purpose: purpose as i32,
        channel: channel as i32,
        action: ConsentAction::Grant as i32,
        source: ConsentSource::WebForm as i32,
        wording_sha256: vec![1; 32],
        actor: "crm:web".into(),
        token_ttl_seconds: 0,
    }
}

/// Every consent RPC through the gateway for `c`'s subject, valid and invalid.
async fn consent_calls(
    cap: &Capture,
    gw: &mut domicile_client::Gateway,
    country: &str,
    c: &Canaries,
) {
    let check = |channel: Channel| CheckContactPermissionRequest {
        tenant_id: TENANT.into(),
        subject: subject_ref(country, c),
        purpose: Purpose::Marketing as i32,
        channel: channel as i32,
    };
    cap.result(gw.check_contact_permission(check(Channel::Email)).await);
    let granted = cap.result(
        gw.record_consent(grant(country, c, Purpose::Marketing, Channel::Email))
            .await,
    );
    cap.result(
        gw.record_consent(grant(country, c, Purpose::CxSurvey, Channel::Phone))
            .await,
    );
    if let Some(token) = granted
        .map(|g| g.confirmation_token)
        .filter(|t| !t.is_empty())
    {
        let confirm = ConfirmConsentRequest {
            tenant_id: TENANT.into(),
            token,
            source: 0,
        };
        cap.result(gw.confirm_consent(confirm.clone()).await);
        cap.result(gw.confirm_consent(confirm).await); // reused
    }
    cap.result(gw.check_contact_permission(check(Channel::Email)).await);
    cap.result(
        gw.withdraw_consent(WithdrawConsentRequest {
            tenant_id: TENANT.into(),
            subject: subject_ref(country, c),
            purpose: Purpose::Marketing as i32,
            channel: Channel::Email as i32,
            source: ConsentSource::PhoneCall as i32,
            actor: "agent:7".into(),
        })
        .await,
    );
    cap.result(
        gw.get_consent(GetConsentRequest {
            tenant_id: TENANT.into(),
            subject: subject_ref(country, c),
            purpose: 0,
        })
        .await,
    );
    // Invalid: canaries in the actor, the external id and the token.
    let mut bad = grant(country, c, Purpose::Marketing, Channel::Email);
    bad.actor = c.full_name();
    bad.subject = Some(SubjectRef {
        country: country.into(),
        external_id: format!("{}\u{7}{}", c.external_id, c.email),
    });
    cap.result(gw.record_consent(bad).await);
    cap.result(
        gw.confirm_consent(ConfirmConsentRequest {
            tenant_id: TENANT.into(),
            token: format!("{}.{}", c.email, c.phone),
            source: 0,
        })
        .await,
    );
    cap.result(
        gw.confirm_consent(ConfirmConsentRequest {
            tenant_id: TENANT.into(),
            token: "eu-de.dW5rbm93bg".into(),
            source: 0,
        })
        .await,
    );
}

/// Every data-subject-rights RPC through the gateway for `c`'s subject: access (sealed export),
/// restriction, a legal hold placed and released, receipts, and invalid requests carrying
/// canaries. (Erasure is left out so that the other calls still find the subject; its
/// crypto-shredding is proven in `tests/rights.rs`.)
async fn rights_calls(
    fed: &Federation,
    cap: &Capture,
    gw: &mut domicile_client::Gateway,
    country: &str,
    c: &Canaries,
) {
    let requester = domicile_proto::seal::SealingKeyPair::generate();
    let submit = |kind: SubjectRequestKind, country: &str| SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: subject_ref(country, c),
        kind: kind as i32,
        recipient_public_key: if kind == SubjectRequestKind::Access {
            requester.public().as_bytes().to_vec()
        } else {
            Vec::new()
        },
        actor: "dpo".into(),
        ..Default::default()
    };
    let access = cap.result(
        gw.submit_subject_request(fed.signed(submit(SubjectRequestKind::Access, "")))
            .await,
    );
    if let Some(receipt) = access.and_then(|a| a.receipts.into_iter().next()) {
        cap.result(
            gw.get_subject_request(GetSubjectRequestRequest {
                tenant_id: TENANT.into(),
                request_id: receipt.request_id,
            })
            .await,
        );
    }
    let hold = cap.result(
        gw.place_legal_hold(fed.signed(PlaceLegalHoldRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            subject: subject_ref(country, c),
            reason: "case 7".into(),
            interactions: None,
            expires_at: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
        }))
        .await,
    );
    if let Some(hold) = hold {
        cap.result(
            gw.release_legal_hold(fed.signed(ReleaseLegalHoldRequest {
                dpo_signature: None,
                tenant_id: TENANT.into(),
                hold_id: hold.hold_id,
            }))
            .await,
        );
    }
    cap.result(
        gw.submit_subject_request(fed.signed(submit(SubjectRequestKind::Restriction, country)))
            .await,
    );
    // Invalid: canaries in the actor, the subject, the ids and the reason.
    let mut bad = submit(SubjectRequestKind::Objection, country);
    bad.actor = c.email.clone();
    bad.subject = Some(SubjectRef {
        country: c.postal_code.clone(),
        external_id: format!("{}\u{1}", c.external_id),
    });
    cap.result(gw.submit_subject_request(fed.signed(bad)).await);
    cap.result(
        gw.get_subject_request(GetSubjectRequestRequest {
            tenant_id: TENANT.into(),
            request_id: c.phone.clone(),
        })
        .await,
    );
    cap.result(
        gw.place_legal_hold(fed.signed(PlaceLegalHoldRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            subject: subject_ref(country, c),
            reason: format!("{}\u{7}", c.full_name()),
            interactions: None,
            expires_at: None,
        }))
        .await,
    );
    cap.result(
        gw.release_legal_hold(fed.signed(ReleaseLegalHoldRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            hold_id: c.external_id.clone(),
        }))
        .await,
    );
    case_calls(fed, cap, gw, country, c).await;
}

/// The case RPCs for `c`'s subject: an access request left waiting, its steps (wait, extend,
/// verify), the queue, its export fetched again, and invalid steps, pages and fetches carrying
/// canaries.
async fn case_calls(
    fed: &Federation,
    cap: &Capture,
    gw: &mut domicile_client::Gateway,
    country: &str,
    c: &Canaries,
) {
    let requester = domicile_proto::seal::SealingKeyPair::generate();
    let waiting = cap.result(
        gw.submit_subject_request(fed.signed(SubmitSubjectRequestRequest {
            tenant_id: TENANT.into(),
            subject: subject_ref(country, c),
            kind: SubjectRequestKind::Access as i32,
            recipient_public_key: requester.public().as_bytes().to_vec(),
            actor: "dpo".into(),
            request_id: format!("dsr-{}", "c0".repeat(16)),
            ..Default::default()
        }))
        .await,
    );
    let step = |request_id: &str, action: Action| UpdateSubjectRequestRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.to_owned(),
        action: Some(action),
        actor: "dpo".into(),
        dpo_signature: None,
    };
    let verification = IdentityVerification {
        method: VerificationMethod::DocumentCheck as i32,
        evidence_reference: "ticket 7".into(),
        verified_by: "agent-7".into(),
        verified_at: None,
    };
    if let Some(id) = waiting.and_then(|w| w.receipts.into_iter().next().map(|r| r.request_id)) {
        for action in [
            Action::AwaitSubject(AwaitSubject {
                reason: "identity evidence requested".into(),
            }),
            Action::Extend(ExtendDeadline {
                reason: "many systems".into(),
            }),
            Action::Verify(verification.clone()),
        ] {
            cap.result(
                gw.update_subject_request(fed.signed(step(&id, action)))
                    .await,
            );
        }
        fetch_export(cap, gw, &id).await;
    }
    for statuses in [Vec::new(), vec![SubjectRequestStatus::Completed as i32]] {
        cap.result(
            gw.list_subject_requests(ListSubjectRequestsRequest {
                tenant_id: TENANT.into(),
                statuses,
                ..Default::default()
            })
            .await,
        );
    }
    // Invalid: canaries in a step's id, evidence and reason, a page token and a fetched id.
    let bogus = format!("{}.sr-{}", "eu-de", "0".repeat(32));
    for (id, action) in [
        (c.phone.clone(), Action::Verify(verification.clone())),
        (
            bogus.clone(),
            Action::Verify(IdentityVerification {
                evidence_reference: format!("{}\u{1}", c.email),
                verified_by: c.full_name(),
                ..verification.clone()
            }),
        ),
        (
            bogus.clone(),
            Action::Refuse(RefuseSubjectRequest {
                reason: format!("{}\u{7}", c.iban),
            }),
        ),
    ] {
        cap.result(
            gw.update_subject_request(fed.signed(step(&id, action)))
                .await,
        );
    }
    cap.result(
        gw.list_subject_requests(ListSubjectRequestsRequest {
            tenant_id: TENANT.into(),
            page_token: hex::encode(format!("1:{}", c.card)),
            ..Default::default()
        })
        .await,
    );
    fetch_export(cap, gw, &c.postal_code).await;
    fetch_export(cap, gw, &bogus).await;
}

/// Fetches an export through the gateway, every message (or the error) captured.
async fn fetch_export(cap: &Capture, gw: &mut domicile_client::Gateway, request_id: &str) {
    let answer = gw
        .fetch_subject_request_export(FetchSubjectRequestExportRequest {
            tenant_id: TENANT.into(),
            request_id: request_id.to_owned(),
        })
        .await;
    match answer {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(m)) => cap.message(&m),
                    Ok(None) => break,
                    Err(s) => {
                        cap.status(&s);
                        break;
                    }
                }
            }
        }
        Err(s) => cap.status(&s),
    }
}

/// Every consent RPC of a node's federation API for `c`'s subject.
async fn node_consent_calls(
    cap: &Capture,
    node: &mut RegionalNodeClient<Grpc>,
    country: &str,
    c: &Canaries,
) {
    cap.result(
        node.check_contact_permission(RegionalNodeCheckContactPermissionRequest {
            request: Some(CheckContactPermissionRequest {
                tenant_id: TENANT.into(),
                subject: subject_ref(country, c),
                purpose: Purpose::CxSurvey as i32,
                channel: Channel::Phone as i32,
            }),
        })
        .await,
    );
    let granted = cap.result(
        node.record_consent(RegionalNodeRecordConsentRequest {
            request: Some(grant(country, c, Purpose::Marketing, Channel::Email)),
        })
        .await,
    );
    if let Some(token) = granted
        .and_then(|g| g.response)
        .map(|g| g.confirmation_token)
        .filter(|t| !t.is_empty())
    {
        cap.result(
            node.confirm_consent(RegionalNodeConfirmConsentRequest {
                request: Some(ConfirmConsentRequest {
                    tenant_id: TENANT.into(),
                    token,
                    source: 0,
                }),
            })
            .await,
        );
    }
    cap.result(
        node.withdraw_consent(RegionalNodeWithdrawConsentRequest {
            request: Some(WithdrawConsentRequest {
                tenant_id: TENANT.into(),
                subject: subject_ref(country, c),
                purpose: Purpose::Marketing as i32,
                channel: Channel::Unspecified as i32,
                source: ConsentSource::Api as i32,
                actor: "sync".into(),
            }),
        })
        .await,
    );
    cap.result(
        node.get_consent(RegionalNodeGetConsentRequest {
            request: Some(GetConsentRequest {
                tenant_id: TENANT.into(),
                subject: subject_ref(country, c),
                purpose: 0,
            }),
        })
        .await,
    );
    cap.result(
        node.get_consent(RegionalNodeGetConsentRequest { request: None })
            .await,
    );
    // A subject of a country the node does not serve.
    cap.result(
        node.check_contact_permission(RegionalNodeCheckContactPermissionRequest {
            request: Some(CheckContactPermissionRequest {
                tenant_id: TENANT.into(),
                subject: subject_ref("JP", c),
                purpose: Purpose::CxSurvey as i32,
                channel: Channel::Phone as i32,
            }),
        })
        .await,
    );
}

/// Drives every gateway and node RPC, valid, invalid and failing; returns records streamed.
/// Follow-ups for released pseudonyms, closed in-country; every answer the analyst sees.
async fn follow_up_calls(
    fed: &Federation,
    cap: &Capture,
    gw: &mut domicile_client::Gateway,
    canaries: &[Canaries],
) -> anyhow::Result<()> {
    let c = &canaries[0];
    // A recent interaction of each canary subject: pseudonyms resolve within the follow-up
    // window only, and the canaries' other interactions are months old.
    for (r, (region, country)) in REGIONS.iter().enumerate() {
        let recent = RecordPayload {
            record: Some(Record::Interaction(InteractionRecord {
                interaction_id: format!("{}-recent", canaries[r].interaction_id),
                subject_external_id: canaries[r].external_id.clone(),
                channel: Channel::Phone as i32,
                started_at: domicile_tests::ts(domicile_proto::domain::unix_now() - 3_600),
                handle_time_seconds: 60,
                outcome: "resolved".into(),
                survey: Some(SurveyAnswer {
                    survey_id: "post-contact".into(),
                    nps: Some(1),
                    comment: canaries[r].comment(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let envelope = sealed(gw, region, country, &[recent], "recent").await?;
        let resp = cap
            .result(
                gw.ingest(IngestRequest {
                    tenant_id: TENANT.into(),
                    envelopes: vec![envelope],
                })
                .await,
            )
            .expect("ingest answers");
        assert!(resp.results.iter().all(|x| x.status == 1), "{resp:?}");
    }
    let mut stream = gw
        .query_records(records(Purpose::CxAnalytics))
        .await?
        .into_inner();
    let mut pseudonyms = std::collections::BTreeSet::new();
    while let Some(msg) = stream.message().await? {
        cap.message(&msg);
        for r in msg.records {
            pseudonyms.insert((r.region_id, r.subject_pseudonym));
        }
    }
    let mut opened = Vec::new();
    for (region_id, subject_pseudonym) in pseudonyms.into_iter().take(30) {
        let req = OpenFollowUpRequest {
            tenant_id: TENANT.into(),
            region_id,
            subject_pseudonym,
            purpose: Purpose::CxAnalytics as i32,
            channels: Vec::new(),
            reason: "nps-detractor".into(),
            priority: 0,
        };
        if let Some(r) = cap.result(gw.open_follow_up(req).await) {
            opened.extend(r.follow_up);
        }
    }
    assert!(!opened.is_empty(), "follow-ups opened");
    let mut reidentified = 0;
    for case in &opened {
        let mut local = domicile_tests::local_client(fed, &case.region_id, None).await?;
        // In-country answers: personal data by design, never through the gateway.
        if local
            .reidentify_follow_up(ReidentifyFollowUpRequest {
                tenant_id: TENANT.into(),
                follow_up_id: case.follow_up_id.clone(),
            })
            .await
            .is_ok()
        {
            reidentified += 1;
        }
        local
            .record_follow_up_outcome(RecordFollowUpOutcomeRequest {
                tenant_id: TENANT.into(),
                follow_up_id: case.follow_up_id.clone(),
                outcome: FollowUpStatus::Resolved as i32,
            })
            .await?;
    }
    assert!(reidentified > 0, "the loop closed in-country");
    let listed = cap.result(
        gw.list_follow_ups(ListFollowUpsRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await,
    );
    assert!(listed.is_some_and(|l| {
        l.follow_ups
            .iter()
            .any(|f| f.status == FollowUpStatus::Resolved as i32)
    }));
    // Invalid, carrying canaries.
    cap.result(
        gw.open_follow_up(OpenFollowUpRequest {
            tenant_id: TENANT.into(),
            region_id: c.external_id.clone(),
            subject_pseudonym: c.email.clone(),
            purpose: Purpose::CxAnalytics as i32,
            channels: vec![77],
            reason: c.full_name(),
            priority: 9,
        })
        .await,
    );
    cap.result(
        gw.list_follow_ups(ListFollowUpsRequest {
            tenant_id: c.email.clone(),
            follow_up_ids: vec![c.external_id.clone()],
            region_ids: vec![c.phone.clone()],
            open_only: true,
        })
        .await,
    );
    Ok(())
}

async fn drive_every_rpc(
    fed: &mut Federation,
    cap: &Capture,
    canaries: &[Canaries],
) -> anyhow::Result<u64> {
    let mut gw = gateway_client(fed).await?;
    let mut streamed = 0;

    // ListRegions.
    cap.result(gw.list_regions(ListRegionsRequest {}).await);

    // Ingest, valid: the request itself crosses the boundary too, sealed.
    for (r, (region, country)) in REGIONS.iter().enumerate() {
        let envelope = sealed(
            &mut gw,
            region,
            country,
            &canaries[r].payloads(country),
            "ok",
        )
        .await?;
        let req = IngestRequest {
            tenant_id: TENANT.into(),
            envelopes: vec![envelope],
        };
        cap.message(&req);
        let resp = cap.result(gw.ingest(req).await).expect("ingest answers");
        assert!(
            resp.results.iter().all(|x| x.status == 1),
            "all accepted: {resp:?}"
        );
    }

    // Ingest, invalid: canaries inside invalid fields must not be echoed in the rejections.
    let c = &canaries[0];
    let bad = vec![
        RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: format!("{}{}", c.external_id, "x".repeat(200)),
                full_name: c.full_name(),
                email: c.email.clone(),
                ..Default::default()
            })),
        },
        RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: c.external_id.clone(),
                full_name: format!("{}{}", c.full_name(), "y".repeat(300)),
                email: format!("{}\u{7}", c.email),
                phone: c.phone.repeat(20),
                birth_year: 1700,
                ..Default::default()
            })),
        },
        RecordPayload {
            record: Some(Record::Interaction(InteractionRecord {
                interaction_id: c.interaction_id.clone(),
                subject_external_id: c.external_id.clone(),
                survey: Some(SurveyAnswer {
                    comment: c.comment().repeat(100),
                    nps: Some(11),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        },
    ];
    let mut envelope = sealed(&mut gw, "eu-de", "DE", &bad, "bad").await?;
    // A record sealed for DE but declared FR, and one with a tampered ciphertext.
    let mut moved = envelope.records[0].clone();
    moved.country = "FR".into();
    moved.idempotency_key = "bad-moved".into();
    let mut tampered = envelope.records[1].clone();
    let mut damaged = tampered.ciphertext.to_vec();
    damaged[0] ^= 1;
    tampered.ciphertext = damaged.into();
    tampered.idempotency_key = "bad-tampered".into();
    envelope.records.extend([moved, tampered]);
    let req = IngestRequest {
        tenant_id: TENANT.into(),
        envelopes: vec![envelope.clone()],
    };
    cap.message(&req);
    let resp = cap.result(gw.ingest(req).await).expect("ingest answers");
    assert!(
        resp.results.iter().all(|x| x.status == 3),
        "all rejected: {resp:?}"
    );
    cap.result(
        gw.ingest(IngestRequest {
            tenant_id: c.full_name(), // an invalid tenant id carrying a canary
            envelopes: vec![envelope.clone()],
        })
        .await,
    );

    // Aggregate over every dimension, exact and noised, and invalid.
    for group_by in [
        vec![],
        vec![Dimension::Region],
        vec![Dimension::Country, Dimension::Channel, Dimension::Month],
        vec![Dimension::Day],
    ] {
        cap.result(gw.aggregate(aggregate(&group_by, None, &[])).await);
        cap.result(gw.aggregate(aggregate(&group_by, Some(1.0), &[])).await);
    }
    let mut invalid = aggregate(&[Dimension::Channel], Some(-1.0), &["atlantis"]);
    invalid.tenant_id = c.email.clone();
    cap.result(gw.aggregate(invalid).await);

    // QueryRecords under several purposes, with a limit, and invalid.
    for purpose in [Purpose::CxAnalytics, Purpose::Service, Purpose::Marketing] {
        streamed += drain_gateway_stream(cap, &mut gw, records(purpose)).await;
    }
    let mut limited = records(Purpose::CxAnalytics);
    limited.query.as_mut().unwrap().limit = 5;
    limited.query.as_mut().unwrap().time_range = Some(TimeRange::default());
    streamed += drain_gateway_stream(cap, &mut gw, limited).await;
    let mut invalid = records(Purpose::Unspecified);
    invalid.tenant_id = c.full_name();
    drain_gateway_stream(cap, &mut gw, invalid).await;

    follow_up_calls(fed, cap, &mut gw, canaries).await?;

    // Audit checkpoints and incidents, valid and invalid.
    for (region, _) in REGIONS {
        cap.result(
            gw.get_audit_checkpoint(GetAuditCheckpointRequest {
                region_id: region.into(),
            })
            .await,
        );
    }
    cap.result(
        gw.get_audit_checkpoint(GetAuditCheckpointRequest {
            region_id: c.email.clone(),
        })
        .await,
    );
    let reported = cap.result(gw.report_incident(fed.signed(incident_request())).await);
    if let Some(incident) = reported.and_then(|r| r.incident) {
        cap.result(
            gw.get_incident(GetIncidentRequest {
                tenant_id: TENANT.into(),
                incident_id: incident.incident_id.clone(),
            })
            .await,
        );
    }
    let mut bad_incident = incident_request();
    bad_incident.tenant_id = c.full_name();
    bad_incident.window = None;
    cap.result(gw.report_incident(fed.signed(bad_incident)).await);
    cap.result(
        gw.get_incident(GetIncidentRequest {
            tenant_id: TENANT.into(),
            incident_id: c.external_id.clone(),
        })
        .await,
    );

    // Consent: every call, for every region's canary subject, valid and invalid.
    for (r, (_, country)) in REGIONS.iter().enumerate() {
        consent_calls(cap, &mut gw, country, &canaries[r]).await;
        rights_calls(fed, cap, &mut gw, country, &canaries[r]).await;
    }

    // The overview, valid and invalid (a canary as the tenant, a bad window).
    let overview = cap.result(
        gw.get_overview(GetOverviewRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await,
    );
    assert!(
        overview.is_some_and(|o| o.regions.iter().all(|r| r.report.is_some())),
        "every region reported"
    );
    cap.result(
        gw.get_overview(GetOverviewRequest {
            tenant_id: c.email.clone(),
            since: None,
            bucket_seconds: 1,
        })
        .await,
    );

    // The nodes' federation API, directly.
    for (r, (region, country)) in REGIONS.iter().enumerate() {
        let mut node = node_client(fed, region).await?;
        cap.result(node.get_region_info(GetRegionInfoRequest {}).await);
        let report = cap.result(
            node.get_region_overview(RegionalNodeGetRegionOverviewRequest {
                tenant_id: TENANT.into(),
                since: domicile_tests::ts(domicile_proto::domain::unix_now() - 3_600),
                bucket_seconds: 60,
            })
            .await,
        );
        assert!(
            report.is_some_and(|r| !r.consents.is_empty()),
            "{region} reported"
        );
        cap.result(
            node.get_region_overview(RegionalNodeGetRegionOverviewRequest {
                tenant_id: canaries[r].full_name(),
                since: None,
                bucket_seconds: 0,
            })
            .await,
        );
        let envelope = sealed(
            &mut gw,
            region,
            country,
            &canaries[r].payloads(country),
            "ok",
        )
        .await?;
        cap.result(
            node.ingest(RegionalNodeIngestRequest {
                tenant_id: TENANT.into(),
                envelope: Some(envelope),
            })
            .await,
        );
        cap.result(
            node.aggregate(RegionalNodeAggregateRequest {
                tenant_id: TENANT.into(),
                query: aggregate(&[Dimension::Country, Dimension::Day], Some(0.5), &[]).query,
            })
            .await,
        );
        cap.result(
            node.aggregate(RegionalNodeAggregateRequest {
                tenant_id: canaries[r].external_id.clone(),
                query: None,
            })
            .await,
        );
        streamed += drain_node_stream(
            cap,
            &mut node,
            RegionalNodeQueryRecordsRequest {
                tenant_id: TENANT.into(),
                query: records(Purpose::CxAnalytics).query,
            },
        )
        .await;
        drain_node_stream(
            cap,
            &mut node,
            RegionalNodeQueryRecordsRequest {
                tenant_id: canaries[r].email.clone(),
                query: None,
            },
        )
        .await;
        node_consent_calls(cap, &mut node, country, &canaries[r]).await;
        cap.result(
            node.list_follow_ups(RegionalNodeListFollowUpsRequest {
                tenant_id: TENANT.into(),
                follow_up_ids: Vec::new(),
                open_only: false,
            })
            .await,
        );
        cap.result(
            node.open_follow_up(RegionalNodeOpenFollowUpRequest {
                request: Some(OpenFollowUpRequest {
                    tenant_id: TENANT.into(),
                    region_id: region.to_string(),
                    subject_pseudonym: "0".repeat(32),
                    purpose: Purpose::CxAnalytics as i32,
                    channels: Vec::new(),
                    reason: canaries[r].external_id.clone(),
                    priority: 0,
                }),
            })
            .await,
        );
        let requester = domicile_proto::seal::SealingKeyPair::generate();
        cap.result(
            node.submit_subject_request(RegionalNodeSubmitSubjectRequestRequest {
                request: Some(fed.signed(SubmitSubjectRequestRequest {
                    verification: Some(domicile_proto::rights::verified_by_platform(
                        "test-session",
                        "test-platform",
                    )),
                    tenant_id: TENANT.into(),
                    subject: subject_ref(country, &canaries[r]),
                    kind: SubjectRequestKind::Portability as i32,
                    recipient_public_key: requester.public().as_bytes().to_vec(),
                    actor: "dpo".into(),
                    ..Default::default()
                })),
            })
            .await,
        );
        cap.result(
            node.get_subject_request(RegionalNodeGetSubjectRequestRequest {
                request: Some(GetSubjectRequestRequest {
                    tenant_id: TENANT.into(),
                    request_id: format!("{}.sr-{}", REGIONS[r].0, "0".repeat(32)),
                }),
            })
            .await,
        );
        cap.result(
            node.place_legal_hold(RegionalNodePlaceLegalHoldRequest { request: None })
                .await,
        );
        cap.result(
            node.release_legal_hold(RegionalNodeReleaseLegalHoldRequest {
                request: Some(fed.signed(ReleaseLegalHoldRequest {
                    dpo_signature: None,
                    tenant_id: TENANT.into(),
                    hold_id: format!("{}.hold-{}", REGIONS[r].0, "0".repeat(32)),
                })),
            })
            .await,
        );
        cap.result(
            node.get_audit_checkpoint(RegionalNodeGetAuditCheckpointRequest { known_seq: 0 })
                .await,
        );
        let part = cap.result(
            node.report_incident(RegionalNodeReportIncidentRequest {
                incident_id: format!("inc-{}", "ab".repeat(16)),
                request: Some(fed.signed(incident_request())),
            })
            .await,
        );
        if part.is_some() {
            cap.result(
                node.get_incident(RegionalNodeGetIncidentRequest {
                    request: Some(GetIncidentRequest {
                        tenant_id: TENANT.into(),
                        incident_id: format!("inc-{}", "ab".repeat(16)),
                    }),
                })
                .await,
            );
        }
        cap.result(
            node.report_incident(RegionalNodeReportIncidentRequest {
                incident_id: canaries[r].external_id.clone(),
                request: Some(fed.signed(incident_request())),
            })
            .await,
        );
    }
    // A node refuses an envelope for another region (with canary-bearing records inside).
    let mut fr_node = node_client(fed, "eu-fr").await?;
    cap.result(
        fr_node
            .ingest(RegionalNodeIngestRequest {
                tenant_id: TENANT.into(),
                envelope: Some(envelope),
            })
            .await,
    );

    // Failing calls: a region goes down; every RPC again.
    fed.stop_node("eu-fr").await;
    cap.result(gw.list_regions(ListRegionsRequest {}).await);
    let envelope = sealed(
        &mut gw,
        "eu-de",
        "DE",
        &canaries[0].payloads("DE")[..2],
        "late",
    )
    .await?;
    let mut req = IngestRequest {
        tenant_id: TENANT.into(),
        envelopes: vec![envelope],
    };
    let fr_key_missing = SealedEnvelope {
        region_id: "eu-fr".into(),
        ..req.envelopes[0].clone()
    };
    req.envelopes.push(fr_key_missing);
    cap.result(gw.ingest(req).await);
    let mut strict = aggregate(&[Dimension::Country], None, &[]);
    strict.require_all_regions = true;
    cap.result(gw.aggregate(strict).await);
    cap.result(
        gw.aggregate(aggregate(&[Dimension::Country], Some(0.5), &[]))
            .await,
    );
    streamed += drain_gateway_stream(cap, &mut gw, records(Purpose::CxAnalytics)).await;
    consent_calls(cap, &mut gw, "FR", &canaries[1]).await;
    cap.result(
        gw.get_overview(GetOverviewRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await,
    );
    cap.result(gw.report_incident(fed.signed(incident_request())).await);
    cap.result(
        gw.get_audit_checkpoint(GetAuditCheckpointRequest {
            region_id: "eu-fr".into(),
        })
        .await,
    );
    Ok(streamed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_crosses_the_federation_boundary() -> anyhow::Result<()> {
    let cap = Capture::default();
    let writer = cap.clone();
    // Every level of Domicile's own logs; the libraries' at debug (their trace level only
    // adds HTTP/2 frame bookkeeping, and makes the search ten times slower), but for the caps
    // every Domicile binary adds (`db::LOG_CAPS`: the PostgreSQL client logs statement
    // parameters at debug).
    let mut filter = tracing_subscriber::EnvFilter::new(
        "debug,domicile=trace,domicile_gateway=trace,domicile_node=trace,domicile_ops=trace,domicile_proto=trace,domicile_client=trace",
    );
    for cap in domicile_node::store::db::LOG_CAPS {
        filter = filter.add_directive(cap.parse()?);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let mut fed = domicile_tests::Federation::builder()
        .region("eu-de", &["DE"])
        .region("eu-fr", &["FR"])
        .region("us", &["US"])
        .start()
        .await?;
    let canaries: Vec<Canaries> = (0..3).map(Canaries::new).collect();

    let streamed = drive_every_rpc(&mut fed, &cap, &canaries).await?;
    // The metrics of the gateway and of every node, as Prometheus scrapes them.
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let sources = fed.metrics_sources();
    let paths: Vec<String> = sources.keys().cloned().collect();
    tokio::spawn(domicile_ops::metrics::serve(
        metrics_listener,
        sources,
        domicile_ops::metrics::MetricsAccess::open_loopback(),
        std::future::pending(),
    ));
    let mut metrics = String::new();
    for path in &paths {
        let (status, body) = domicile_ops::metrics::scrape(metrics_addr, path).await?;
        assert_eq!(status, 200, "{path}");
        metrics.push_str(&body);
    }
    cap.add(metrics.as_bytes());
    // Every byte the console serves: its page, script, styles, chart library, and its data
    // for every window (the federation runs without authentication: the tenant is named).
    let console_addr = domicile_tests::console(&fed).await?;
    let mut console = String::new();
    for path in domicile_gateway::api::console::PATHS {
        let paths: Vec<String> = match *path {
            "/api/overview" => ["1h", "24h", "7d", "30d"]
                .iter()
                .map(|w| format!("{path}?tenant={TENANT}&window={w}"))
                .collect(),
            // The case queue, all open requests and the overdue ones.
            "/api/requests" => vec![
                format!("{path}?tenant={TENANT}"),
                format!("{path}?tenant={TENANT}&overdue=1"),
            ],
            _ => vec![(*path).to_owned()],
        };
        for p in paths {
            let (status, body) = domicile_ops::metrics::scrape(console_addr, &p).await?;
            assert_eq!(status, 200, "console {p}");
            console.push_str(&body);
        }
    }
    cap.add(console.as_bytes());
    // The audit logs stay in-country, but they too hold no direct identifier.
    let audit_logs: Vec<Vec<u8>> = fed
        .nodes
        .iter()
        .map(|n| {
            let conn = n.connect().unwrap();
            let entries: Vec<String> = conn
                .prepare("SELECT kind || tenant || coalesce(subject, '') || details FROM audit_log")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            entries.join("|").into_bytes()
        })
        .collect();
    // The regions' own files (or PostgreSQL databases), read before the federation goes away.
    let stored: Vec<Vec<u8>> = REGIONS
        .iter()
        .map(|(region, _)| fed.database_bytes(region).unwrap())
        .collect();
    // The region itself can read its canaries back (they were stored)…
    let mut profiles = Vec::new();
    for (r, (region, _)) in REGIONS.iter().enumerate() {
        let node = fed.node(region).unwrap().node.clone().unwrap();
        let profile = node.profile_of(TENANT, &canaries[r].external_id)?;
        profiles.push(profile);
    }
    fed.shutdown().await;

    let captured = cap.bytes();
    // Controls: the drive exercised real data, comments crossed redacted, logs were captured.
    assert!(streamed >= 90, "records streamed: {streamed}");
    for placeholder in ["[NAME]", "[EMAIL]", "[PHONE]", "[IBAN]", "[CARD]"] {
        assert!(
            find(&captured, placeholder.as_bytes()),
            "{placeholder} crossed"
        );
    }
    assert!(find(&captured, b"DEBUG"), "debug logs were captured");
    assert_eq!(
        paths.len(),
        1 + REGIONS.len(),
        "the gateway's and every node's metrics"
    );
    for family in [
        "domicile_gateway_rpc_requests_total{",
        "domicile_gateway_region_requests_total{",
        "domicile_node_records_ingested_total{",
        "domicile_node_groups_released_total{",
        "domicile_node_dp_budget_remaining_epsilon{",
        "domicile_node_contact_checks_total{",
    ] {
        assert!(metrics.contains(family), "{family} was scraped");
    }
    // The console's data covered every panel of every region.
    for (needle, what) in [
        ("\"region_id\":\"eu-de\"", "regions"),
        ("\"groups_released\"", "releases"),
        ("\"overdue\":", "subject requests"),
        ("\"incident_id\":\"inc-", "incidents"),
        ("\"state\":\"granted\"", "consent"),
        ("\"signature\":\"", "checkpoints"),
    ] {
        assert!(console.contains(needle), "the console served {what}");
    }
    assert!(
        captured.len() > 100_000,
        "captured {} bytes",
        captured.len()
    );
    let hidden =
        base64::engine::general_purpose::STANDARD.encode(format!("xx{}yyy", canaries[1].email));
    assert!(
        encodings(&canaries[1].email)
            .iter()
            .any(|f| find(hidden.as_bytes(), f)),
        "the detector finds a canary inside a base64 blob"
    );

    for (r, c) in canaries.iter().enumerate() {
        // Planted: the canaries are in the region's own storage…
        let profile = profiles[r].as_ref().expect("the canary profile is stored");
        assert_eq!(profile.email, c.email, "planted in {}", REGIONS[r].0);
        // …but its files hold them encrypted or keyed: no personal field, and not the
        // customer's id, in clear at rest.
        for canary in [
            &c.email,
            &c.phone,
            &c.full_name(),
            &c.postal_code,
            &c.iban,
            &c.external_id,
        ] {
            assert!(
                !find(&stored[r], canary.as_bytes()),
                "{canary:?} in clear in {}'s files",
                REGIONS[r].0
            );
        }
        assert!(
            audit_logs[r].len() > 1_000,
            "the audit log of {} has entries",
            REGIONS[r].0
        );
        for canary in c.all() {
            assert!(
                !find(&audit_logs[r], canary.as_bytes()),
                "canary {canary:?} in the audit log of {}",
                REGIONS[r].0
            );
        }
        // …and never in what crossed the border, in any encoding.
        for canary in c.all() {
            for form in encodings(&canary) {
                if let Some(at) = position(&captured, &form) {
                    panic!(
                        "canary {canary:?} of {} crossed the boundary as {:?}, in:\n{}",
                        REGIONS[r].0,
                        String::from_utf8_lossy(&form),
                        around(&captured, at)
                    );
                }
            }
        }
    }
    println!(
        "captured {} bytes from the federation boundary; {streamed} records streamed",
        captured.len()
    );
    Ok(())
}
