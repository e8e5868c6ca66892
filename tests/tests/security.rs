//! Authentication, authorisation and limits at the gateway.
//!
//! - Tokens: HS256 (development secret), RS256 and ES256 (JWKS); valid, expired, for another
//!   audience or issuer, badly signed, `alg: none`, malformed, missing.
//! - The matrix: for every operation, a caller lacking it is refused on every RPC of that
//!   operation and admitted on the others; tenant and purpose checks; the DPO authority for
//!   access, portability, erasure and legal holds.
//! - Limits: per-tenant rate and concurrency (`RESOURCE_EXHAUSTED`), load shedding
//!   (`UNAVAILABLE`), nothing done by a refused call.

use domicile_client::{ConnectOptions, Gateway, connect_with};
use domicile_gateway::{auth::AuthConfig, limits::LimitsConfig};
use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, CheckContactPermissionRequest, ExtendDeadline,
    FetchSubjectRequestExportRequest, GetAuditCheckpointRequest, GetConsentRequest,
    GetIncidentRequest, GetSubjectRequestRequest, IngestRequest, ListRegionsRequest,
    ListSubjectRequestsRequest, Metric, PlaceLegalHoldRequest, Purpose, QueryRecordsRequest,
    RecordQuery, SubjectRef, SubjectRequestKind, SubmitSubjectRequestRequest,
    UpdateSubjectRequestRequest, update_subject_request_request::Action,
};
use domicile_tests::{Federation, TENANT};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tonic::Code;

const AUDIENCE: &str = "domicile";
const ISSUER: &str = "https://idp.test";
const SECRET: &[u8] = b"a development secret of at least 32 bytes";
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");

const OPERATIONS: [&str; 10] = [
    "regions",
    "ingest",
    "aggregate",
    "records",
    "consent",
    "rights",
    "incident",
    "audit",
    "admin",
    "follow_up",
];
const PURPOSES: [&str; 6] = [
    "service",
    "cx_survey",
    "cx_analytics",
    "marketing",
    "profiling",
    "call_recording",
];

#[derive(Serialize, Clone)]
struct Claims {
    sub: String,
    tenant: String,
    purposes: Vec<String>,
    operations: Vec<String>,
    dpo: bool,
    exp: u64,
    aud: String,
    iss: String,
}

fn now() -> u64 {
    domicile_proto::domain::unix_now() as u64
}

fn claims(operations: &[&str], purposes: &[&str], dpo: bool) -> Claims {
    Claims {
        sub: "svc-crm".into(),
        tenant: TENANT.into(),
        purposes: purposes.iter().map(|p| (*p).to_owned()).collect(),
        operations: operations.iter().map(|o| (*o).to_owned()).collect(),
        dpo,
        exp: now() + 600,
        aud: AUDIENCE.into(),
        iss: ISSUER.into(),
    }
}

fn hs256(c: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: &str, c: &Claims) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_der(
            &std::fs::read(format!("{DATA}/jwt-test-rs256.pkcs1.der")).unwrap(),
        ),
        Algorithm::ES256 => EncodingKey::from_ec_der(
            &std::fs::read(format!("{DATA}/jwt-test-es256.pkcs8.der")).unwrap(),
        ),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, c, &key).unwrap()
}

async fn secured(limits: Option<LimitsConfig>) -> anyhow::Result<(Federation, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, SECRET)?;
    let auth = AuthConfig {
        audience: AUDIENCE.into(),
        issuer: Some(ISSUER.into()),
        hs256_secret_file: Some(secret),
        jwks_file: Some(format!("{DATA}/jwt-test-jwks.json").into()),
        leeway_seconds: 5,
        clients: Vec::new(),
    };
    let mut b = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .auth(auth);
    if let Some(l) = limits {
        b = b.limits(l);
    }
    Ok((b.start().await?, dir))
}

async fn client(fed: &Federation, token: Option<String>) -> Gateway {
    connect_with(
        &fed.gateway_addr.to_string(),
        &ConnectOptions {
            token,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn subject() -> Option<SubjectRef> {
    Some(SubjectRef {
        country: "DE".into(),
        external_id: "cust-1".into(),
    })
}

fn aggregate(tenant: &str, purpose: Purpose) -> AggregateRequest {
    AggregateRequest {
        tenant_id: tenant.into(),
        query: Some(AggregateQuery {
            purpose: purpose as i32,
            metrics: vec![Metric::Count as i32],
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: false,
    }
}

/// One call of each RPC (with the DPO-only kinds apart), as `(operation, name)`.
const RPCS: [(&str, &str); 19] = [
    ("regions", "ListRegions"),
    ("ingest", "Ingest"),
    ("aggregate", "Aggregate"),
    ("records", "QueryRecords"),
    ("consent", "CheckContactPermission"),
    ("consent", "GetConsent"),
    ("audit", "GetAuditCheckpoint"),
    ("incident", "GetIncident"),
    ("rights", "SubmitSubjectRequest(RESTRICTION)"),
    ("rights", "GetSubjectRequest"),
    ("rights", "SubmitSubjectRequest(ERASURE)"),
    ("rights", "SubmitSubjectRequest(ACCESS)"),
    ("rights", "PlaceLegalHold"),
    ("rights", "UpdateSubjectRequest(signed)"),
    ("rights", "ListSubjectRequests"),
    ("rights", "FetchSubjectRequestExport"),
    ("admin", "GetOverview"),
    ("follow_up", "OpenFollowUp"),
    ("follow_up", "ListFollowUps"),
];

/// Calls `rpc` for `tenant` with `purpose`; the status code (OK when it succeeds).
async fn call(
    fed: &Federation,
    gw: &mut Gateway,
    rpc: &str,
    tenant: &str,
    purpose: Purpose,
) -> Code {
    let t = tenant.to_owned();
    let subject_request = |kind: SubjectRequestKind| SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: t.clone(),
        subject: subject(),
        kind: kind as i32,
        recipient_public_key: vec![7; 32],
        ..Default::default()
    };
    let result = match rpc {
        "ListRegions" => gw.list_regions(ListRegionsRequest {}).await.map(|_| ()),
        "Ingest" => gw
            .ingest(IngestRequest {
                tenant_id: t.clone(),
                envelopes: Vec::new(),
            })
            .await
            .map(|_| ()),
        "Aggregate" => gw.aggregate(aggregate(tenant, purpose)).await.map(|_| ()),
        "QueryRecords" => gw
            .query_records(QueryRecordsRequest {
                tenant_id: t.clone(),
                query: Some(RecordQuery {
                    purpose: purpose as i32,
                    limit: 1,
                    ..Default::default()
                }),
                regions: Vec::new(),
            })
            .await
            .map(|_| ()),
        "CheckContactPermission" => gw
            .check_contact_permission(CheckContactPermissionRequest {
                tenant_id: t.clone(),
                subject: subject(),
                purpose: purpose as i32,
                channel: domicile_proto::pb::Channel::Email as i32,
            })
            .await
            .map(|_| ()),
        "GetConsent" => gw
            .get_consent(GetConsentRequest {
                tenant_id: t.clone(),
                subject: subject(),
                purpose: purpose as i32,
            })
            .await
            .map(|_| ()),
        "GetAuditCheckpoint" => gw
            .get_audit_checkpoint(GetAuditCheckpointRequest {
                region_id: "eu-de".into(),
            })
            .await
            .map(|_| ()),
        "GetOverview" => gw
            .get_overview(domicile_proto::pb::GetOverviewRequest {
                tenant_id: t.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "GetIncident" => gw
            .get_incident(GetIncidentRequest {
                tenant_id: t.clone(),
                incident_id: "inc-00000000000000000000000000000000".into(),
            })
            .await
            .map(|_| ()),
        "SubmitSubjectRequest(RESTRICTION)" => gw
            .submit_subject_request(fed.signed(subject_request(SubjectRequestKind::Restriction)))
            .await
            .map(|_| ()),
        "SubmitSubjectRequest(ERASURE)" => gw
            .submit_subject_request(fed.signed(subject_request(SubjectRequestKind::Erasure)))
            .await
            .map(|_| ()),
        "SubmitSubjectRequest(ACCESS)" => gw
            .submit_subject_request(fed.signed(subject_request(SubjectRequestKind::Access)))
            .await
            .map(|_| ()),
        "GetSubjectRequest" => gw
            .get_subject_request(GetSubjectRequestRequest {
                tenant_id: t.clone(),
                request_id: "dsr-eu-de-00000000000000000000000000000000".into(),
            })
            .await
            .map(|_| ()),
        "UpdateSubjectRequest(signed)" => gw
            .update_subject_request(fed.signed(UpdateSubjectRequestRequest {
                tenant_id: t.clone(),
                request_id: format!("eu-de.sr-{}", "0".repeat(32)),
                action: Some(Action::Extend(ExtendDeadline {
                    reason: "complex".into(),
                })),
                actor: "dpo".into(),
                dpo_signature: None,
            }))
            .await
            .map(|_| ()),
        "ListSubjectRequests" => gw
            .list_subject_requests(ListSubjectRequestsRequest {
                tenant_id: t.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "FetchSubjectRequestExport" => gw
            .fetch_subject_request_export(FetchSubjectRequestExportRequest {
                tenant_id: t.clone(),
                request_id: format!("eu-de.sr-{}", "0".repeat(32)),
            })
            .await
            .map(|_| ()),
        "PlaceLegalHold" => gw
            .place_legal_hold(fed.signed(PlaceLegalHoldRequest {
                tenant_id: t.clone(),
                subject: subject(),
                reason: "litigation".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        "OpenFollowUp" => gw
            .open_follow_up(domicile_proto::pb::OpenFollowUpRequest {
                tenant_id: t.clone(),
                region_id: "eu-de".into(),
                subject_pseudonym: "0123456789abcdef0123456789abcdef".into(),
                purpose: purpose as i32,
                reason: "nps-detractor".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "ListFollowUps" => gw
            .list_follow_ups(domicile_proto::pb::ListFollowUpsRequest {
                tenant_id: t.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other => panic!("no RPC {other}"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Refused by authentication or authorisation.
fn refused(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_anything_runs() -> anyhow::Result<()> {
    let (fed, _dir) = secured(None).await?;
    let full = claims(&OPERATIONS, &PURPOSES, true);
    let request = || aggregate(TENANT, Purpose::CxAnalytics);

    // Valid tokens of every algorithm are accepted.
    for token in [
        hs256(&full),
        signed(Algorithm::RS256, "test-rs256", &full),
        signed(Algorithm::ES256, "test-es256", &full),
    ] {
        let mut gw = client(&fed, Some(token)).await;
        gw.aggregate(request()).await?;
    }

    let expired = Claims {
        exp: now() - 3600,
        ..full.clone()
    };
    let other_audience = Claims {
        aud: "someone-else".into(),
        ..full.clone()
    };
    let other_issuer = Claims {
        iss: "https://evil.test".into(),
        ..full.clone()
    };
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &full,
        &EncodingKey::from_secret(b"another secret of at least 32 bytes long"),
    )?;
    // A valid RS256 token with its payload swapped for one granting another tenant.
    let genuine = signed(Algorithm::RS256, "test-rs256", &full);
    let forged_payload = signed(
        Algorithm::RS256,
        "test-rs256",
        &Claims {
            tenant: "globex".into(),
            ..full.clone()
        },
    );
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged: Vec<&str> = forged_payload.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], forged[1], parts[2]);
    // alg "none": unsigned.
    let none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&full)?)
        )
    };
    // An ES256 token naming the RSA key: no algorithm confusion.
    let confused = signed(Algorithm::ES256, "test-rs256", &full);
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("expired", Some(hs256(&expired)), "expired"),
        (
            "wrong audience",
            Some(hs256(&other_audience)),
            "another audience",
        ),
        ("wrong issuer", Some(hs256(&other_issuer)), "another issuer"),
        ("wrong signature", Some(wrong_secret), "bad signature"),
        ("tampered payload", Some(tampered), "bad signature"),
        ("alg none", Some(none), ""),
        (
            "unknown key id",
            Some(signed(Algorithm::ES256, "nope", &full)),
            "no key",
        ),
        ("algorithm confusion", Some(confused), ""),
        ("malformed", Some("not-a-jwt".into()), "not a JWT"),
        ("missing", None, "missing credentials"),
    ];
    for (what, token, says) in cases {
        let mut gw = client(&fed, token).await;
        for rpc in ["Aggregate", "ListRegions", "SubmitSubjectRequest(ERASURE)"] {
            let status = match rpc {
                "Aggregate" => gw.aggregate(request()).await.unwrap_err(),
                "ListRegions" => gw.list_regions(ListRegionsRequest {}).await.unwrap_err(),
                _ => {
                    assert_eq!(
                        call(&fed, &mut gw, rpc, TENANT, Purpose::CxAnalytics).await,
                        Code::Unauthenticated,
                        "{what}: {rpc}"
                    );
                    continue;
                }
            };
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{what}: {rpc}: {status:?}"
            );
            assert!(
                status.message().contains(says),
                "{what}: {}",
                status.message()
            );
        }
    }
    // Health stays open (Kubernetes probes it without credentials).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fed.gateway_addr))?
        .connect()
        .await?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_operation_tenant_purpose_and_dpo_authority() -> anyhow::Result<()> {
    let (fed, _dir) = secured(None).await?;

    // With every operation, purpose and the DPO's authority, nothing is refused.
    let mut full = client(&fed, Some(hs256(&claims(&OPERATIONS, &PURPOSES, true)))).await;
    for (_, rpc) in RPCS {
        let code = call(&fed, &mut full, rpc, TENANT, Purpose::CxAnalytics).await;
        assert!(!refused(code), "{rpc} refused with every right: {code:?}");
    }

    // Without one operation: exactly that operation's RPCs are refused.
    for missing in OPERATIONS {
        let ops: Vec<&str> = OPERATIONS
            .iter()
            .copied()
            .filter(|o| *o != missing)
            .collect();
        let mut gw = client(&fed, Some(hs256(&claims(&ops, &PURPOSES, true)))).await;
        for (op, rpc) in RPCS {
            let code = call(&fed, &mut gw, rpc, TENANT, Purpose::CxAnalytics).await;
            if op == missing {
                assert_eq!(code, Code::PermissionDenied, "{rpc} without {missing}");
            } else {
                assert!(!refused(code), "{rpc} refused without {missing}: {code:?}");
            }
        }
    }

    // Another tenant's data: refused on every tenant-scoped RPC.
    for (_, rpc) in RPCS {
        let code = call(&fed, &mut full, rpc, "globex", Purpose::CxAnalytics).await;
        let scoped = !matches!(rpc, "ListRegions" | "GetAuditCheckpoint");
        assert_eq!(
            code == Code::PermissionDenied,
            scoped,
            "{rpc} for globex: {code:?}"
        );
    }

    // A purpose the token does not allow: refused where the request declares it.
    let mut survey_only = client(
        &fed,
        Some(hs256(&claims(&OPERATIONS, &["cx_survey"], true))),
    )
    .await;
    for rpc in [
        "Aggregate",
        "QueryRecords",
        "CheckContactPermission",
        "GetConsent",
        "OpenFollowUp",
    ] {
        assert_eq!(
            call(&fed, &mut survey_only, rpc, TENANT, Purpose::CxAnalytics).await,
            Code::PermissionDenied,
            "{rpc} for cx_analytics"
        );
        assert!(!refused(
            call(&fed, &mut survey_only, rpc, TENANT, Purpose::CxSurvey).await
        ));
    }

    // Access, portability, erasure and legal holds need the DPO's authority; restriction
    // and status checks do not.
    let mut no_dpo = client(&fed, Some(hs256(&claims(&OPERATIONS, &PURPOSES, false)))).await;
    for (_, rpc) in RPCS.iter().filter(|(op, _)| *op == "rights") {
        let code = call(&fed, &mut no_dpo, rpc, TENANT, Purpose::CxAnalytics).await;
        let dpo_only = matches!(
            *rpc,
            "SubmitSubjectRequest(ERASURE)"
                | "SubmitSubjectRequest(ACCESS)"
                | "PlaceLegalHold"
                | "UpdateSubjectRequest(signed)"
        );
        assert_eq!(
            code == Code::PermissionDenied,
            dpo_only,
            "{rpc} without dpo: {code:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_entry_names_who_caused_it() -> anyhow::Result<()> {
    let (fed, _dir) = secured(None).await?;
    let mut full = client(&fed, Some(hs256(&claims(&OPERATIONS, &PURPOSES, true)))).await;
    // The subject the calls name exists, so that the rights calls act.
    let regions = domicile_tests::client::regions(&mut full).await?;
    let records = [
        domicile_tests::person("DE", "cust-1", "Erika M", "e@example.de", "", "10115", 1980),
        domicile_tests::touch(
            "DE",
            "t-1",
            "cust-1",
            domicile_proto::domain::unix_now() - 3_600,
            "",
        ),
    ];
    domicile_tests::client::ingest(&full, TENANT, &regions, &fed.trust_bundle, &records, 10)
        .await?;
    full.aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await?;
    let recipient = domicile_proto::seal::SealingKeyPair::generate();
    full.submit_subject_request(fed.signed(SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: subject(),
        kind: SubjectRequestKind::Access as i32,
        recipient_public_key: recipient.public().as_bytes().to_vec(),
        actor: "dpo-desk".into(),
        ..Default::default()
    }))
    .await?;
    full.place_legal_hold(fed.signed(PlaceLegalHoldRequest {
        tenant_id: TENANT.into(),
        subject: subject(),
        reason: "litigation".into(),
        expires_at: domicile_tests::ts(domicile_proto::domain::unix_now() + 86_400),
        ..Default::default()
    }))
    .await?;
    let dpo_key = domicile_proto::trust::dpo_key_id(&fed.dpo.key.verifying_key());
    let conn = fed.node("eu-de").unwrap().connect()?;
    let mut stmt = conn.prepare("SELECT kind, details FROM audit_log ORDER BY seq")?;
    let entries: Vec<(String, serde_json::Value)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .map(|row| {
            let (kind, details) = row?;
            Ok((kind, serde_json::from_str(&details).unwrap()))
        })
        .collect::<anyhow::Result<_>>()?;
    let principal = |d: &serde_json::Value| d["principal"].as_str().unwrap_or("").to_owned();
    assert!(entries.len() >= 5, "{entries:?}");
    for (kind, details) in &entries {
        let p = principal(details);
        assert!(!p.is_empty(), "{kind} names no principal: {details}");
    }
    // What the calls caused names the token's subject, forwarded by the gateway; what the
    // DPO signed names the DPO's key too; what the node did on its own names the node.
    let by = |kind: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, d)| principal(d))
            .collect()
    };
    assert!(
        by("release_aggregate").iter().all(|p| p == "svc-crm")
            && !by("release_aggregate").is_empty(),
        "{:?}",
        by("release_aggregate")
    );
    let signed: Vec<String> = entries
        .iter()
        .map(|(_, d)| principal(d))
        .filter(|p| p.contains(";dpo-key="))
        .collect();
    assert!(
        !signed.is_empty()
            && signed
                .iter()
                .all(|p| *p == format!("svc-crm;dpo-key={dpo_key}")),
        "{signed:?}"
    );
    assert_eq!(principal(&entries[0].1), "node", "{:?}", entries[0]);

    // A caller cannot choose its principal: a header naming another is replaced by the
    // gateway with the authenticated one.
    let mut req = tonic::Request::new(aggregate(TENANT, Purpose::CxAnalytics));
    req.metadata_mut()
        .insert("x-domicile-principal", "dpo-of-someone-else".parse()?);
    full.aggregate(req).await?;
    let last: String = conn.query_row(
        "SELECT details FROM audit_log WHERE kind = 'release_aggregate' ORDER BY seq DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    assert!(last.contains("\"principal\":\"svc-crm\""), "{last}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_before_anything_is_done() -> anyhow::Result<()> {
    let (fed, _dir) = secured(Some(LimitsConfig {
        requests_per_second: 0.5,
        burst: 3,
        max_concurrent_per_tenant: 64,
        max_in_flight: 2048,
        ..LimitsConfig::default()
    }))
    .await?;
    let token = hs256(&claims(&OPERATIONS, &PURPOSES, false));
    let mut gw = client(&fed, Some(token)).await;
    let calls_to_regions = || {
        fed.gateway
            .metrics()
            .encode()
            .lines()
            .filter(|l| {
                l.starts_with("domicile_gateway_region_requests_total{")
                    && l.contains("method=\"Aggregate\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    for _ in 0..3 {
        gw.aggregate(aggregate(TENANT, Purpose::CxAnalytics))
            .await?;
    }
    let asked = calls_to_regions();
    assert_eq!(asked, 6.0, "three aggregates, two regions each");
    let over = gw
        .aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("rate limit"));
    assert_eq!(
        calls_to_regions(),
        asked,
        "a refused call reaches no region"
    );

    // Another tenant has its own budget of calls.
    let globex = Claims {
        tenant: "globex".into(),
        ..claims(&OPERATIONS, &PURPOSES, false)
    };
    let mut other = client(&fed, Some(hs256(&globex))).await;
    other
        .aggregate(aggregate("globex", Purpose::CxAnalytics))
        .await?;
    Ok(())
}

/// A caller over its rate is refused from the request's headers, before its body is read:
/// an 8 MiB aggregate whose body is still arriving gets `RESOURCE_EXHAUSTED` at once. Were
/// the limits checked after decoding (as before issue 25), the gateway would first wait for,
/// and buffer, the whole message, and this request, whose body never ends, would get no
/// answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_rate_callers_body_is_neither_read_nor_waited_for() -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let (fed, _dir) = secured(Some(LimitsConfig {
        requests_per_second: 0.01,
        burst: 1,
        ..LimitsConfig::default()
    }))
    .await?;
    let token = hs256(&claims(&OPERATIONS, &PURPOSES, false));
    // The one call of the burst.
    let mut gw = client(&fed, Some(token.clone())).await;
    gw.aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await?;

    // The next: a gRPC message announced as 8 MiB, of which the first 64 KiB are sent and
    // the rest never is.
    let tcp = tokio::net::TcpStream::connect(fed.gateway_addr).await?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await?;
    tokio::spawn(connection);
    let (frames, body) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(4);
    let mut head = vec![0u8];
    head.extend_from_slice(&(8u32 * 1024 * 1024).to_be_bytes());
    head.extend_from_slice(&[0u8; 64 * 1024]);
    frames
        .send(Ok(hyper::body::Frame::data(bytes::Bytes::from(head))))
        .await?;
    let request = http::Request::post(format!(
        "http://{}/domicile.v1.Gateway/Aggregate",
        fed.gateway_addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", format!("Bearer {token}"))
    .body(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(body),
    ))?;
    // A bound on a wait that should not happen, not a clock: the refusal is immediate.
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        sender.send_request(request),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer while the body is unfinished"))??;
    let status = match response.headers().get("grpc-status") {
        // A refusal is trailers-only: the status is in the headers.
        Some(s) => s.to_str()?.to_owned(),
        None => {
            let trailers = response.into_body().collect().await?.trailers().cloned();
            trailers
                .and_then(|t| t.get("grpc-status").map(|s| s.to_str().unwrap().to_owned()))
                .unwrap_or_default()
        }
    };
    assert_eq!(status, (Code::ResourceExhausted as i32).to_string());
    // Only now may the body end: the answer came while it was unfinished.
    drop(frames);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_per_tenant_and_load_shedding() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, SECRET)?;
    // A region that never answers keeps an aggregate (and its admission) open until its
    // deadline.
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .unresponsive_region("hung", &["FR"])
        .auth(AuthConfig {
            audience: AUDIENCE.into(),
            issuer: Some(ISSUER.into()),
            hs256_secret_file: Some(secret),
            jwks_file: None,
            leeway_seconds: 5,
            clients: Vec::new(),
        })
        .limits(LimitsConfig {
            requests_per_second: 1000.0,
            burst: 1000,
            max_concurrent_per_tenant: 1,
            max_in_flight: 2,
            ..LimitsConfig::default()
        })
        .start()
        .await?;
    let token = |tenant: &str| {
        hs256(&Claims {
            tenant: tenant.into(),
            ..claims(&OPERATIONS, &PURPOSES, false)
        })
    };
    let slow = |tenant: &'static str, gw: Gateway| {
        let mut gw = gw;
        tokio::spawn(async move {
            let mut r = tonic::Request::new(aggregate(tenant, Purpose::CxAnalytics));
            r.set_timeout(std::time::Duration::from_millis(2500));
            gw.aggregate(r).await
        })
    };
    let acme = client(&fed, Some(token(TENANT))).await;
    let first = slow(TENANT, acme.clone());
    let limiter = fed.gateway.limiter();
    domicile_tests::eventually("the first aggregate is admitted", || {
        let n = limiter.in_flight();
        async move { n == 1 }
    })
    .await;

    // The tenant's one slot is taken.
    let busy = acme
        .clone()
        .aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("concurrency"));

    // Two calls in flight in all: a third tenant is shed with UNAVAILABLE.
    let second = slow("globex", client(&fed, Some(token("globex"))).await);
    domicile_tests::eventually("the second aggregate is admitted", || {
        let n = limiter.in_flight();
        async move { n == 2 }
    })
    .await;
    let mut initech = client(&fed, Some(token("initech"))).await;
    let shed = initech
        .aggregate(aggregate("initech", Purpose::CxAnalytics))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");

    // Finished calls free their slots.
    first.await??;
    second.await??;
    let mut only_de = aggregate(TENANT, Purpose::CxAnalytics);
    only_de.regions = vec!["eu-de".into()];
    acme.clone().aggregate(only_de).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateway_certificate_reaches_a_node() -> anyhow::Result<()> {
    use domicile_proto::pb::{GetRegionInfoRequest, RegionalNodeIngestRequest};
    use domicile_tests::{node_client, node_client_as};

    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .start()
        .await?;
    let ingest = || RegionalNodeIngestRequest {
        tenant_id: TENANT.into(),
        envelope: None,
    };

    // The gateway's own certificate: served (and an empty ingest is a validation error).
    let mut as_gateway = node_client(&fed, "eu-de").await?;
    as_gateway.get_region_info(GetRegionInfoRequest {}).await?;
    let invalid = as_gateway.ingest(ingest()).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    // Bypassing the gateway with another certificate of the same CA: refused before the
    // handler (which would have said INVALID_ARGUMENT).
    let mut bypass = node_client_as(&fed, "eu-de", Some(fed.pki.pair("client"))).await?;
    for status in [
        bypass.ingest(ingest()).await.unwrap_err(),
        bypass
            .get_region_info(GetRegionInfoRequest {})
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("pinned"));
    }

    // No client certificate, or one from another CA: the TLS handshake fails.
    let other_ca = tempfile::tempdir()?;
    let foreign = domicile::certs::generate(other_ca.path(), &["eu-de".into()], "x.domicile")?;
    for (what, identity) in [
        ("no certificate", None),
        ("another CA", Some(foreign.pair("gateway"))),
    ] {
        let refused = match node_client_as(&fed, "eu-de", identity).await {
            Err(_) => true,
            Ok(mut c) => c.get_region_info(GetRegionInfoRequest {}).await.is_err(),
        };
        assert!(refused, "{what}: a call went through");
    }

    // Plaintext to the federation port: no answer.
    let plain = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        fed.node("eu-de").unwrap().addr
    ))?
    .connect_timeout(std::time::Duration::from_secs(2))
    .timeout(std::time::Duration::from_secs(2))
    .connect()
    .await;
    if let Ok(channel) = plain {
        let mut c = domicile_proto::pb::regional_node_client::RegionalNodeClient::new(channel);
        assert!(c.get_region_info(GetRegionInfoRequest {}).await.is_err());
    }

    // The node counted the refusals as such.
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    let text = node.metrics().encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with("domicile_node_rpc_requests_total{")
                && l.contains("method=\"Ingest\"")
                && l.contains("code=\"PERMISSION_DENIED\"")),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_may_authenticate_with_a_client_certificate() -> anyhow::Result<()> {
    use domicile_gateway::auth::CertClient;
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, SECRET)?;
    let auth = AuthConfig {
        audience: AUDIENCE.into(),
        issuer: None,
        hs256_secret_file: Some(secret),
        jwks_file: None,
        leeway_seconds: 5,
        clients: vec![CertClient {
            identity: "client.domicile".into(),
            tenant: TENANT.into(),
            purposes: vec!["cx_analytics".into()],
            operations: vec!["aggregate".into()],
            dpo: false,
        }],
    };
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .auth(auth)
        .public_tls()
        .start()
        .await?;
    let pem = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let tls = |identity: Option<(std::path::PathBuf, std::path::PathBuf)>, token| ConnectOptions {
        token,
        ca_pem: Some(pem(fed.pki.ca())),
        domain: Some("gateway.domicile".into()),
        identity: identity.map(|(c, k)| (pem(c), pem(k))),
    };
    let addr = fed.gateway_addr.to_string();

    // The listed certificate: its tenant, purposes and operations apply.
    let mut by_cert = connect_with(&addr, &tls(Some(fed.pki.pair("client")), None)).await?;
    by_cert
        .aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await?;
    let code = call(
        &fed,
        &mut by_cert,
        "QueryRecords",
        TENANT,
        Purpose::CxAnalytics,
    )
    .await;
    assert_eq!(code, Code::PermissionDenied);
    let code = call(&fed, &mut by_cert, "Aggregate", TENANT, Purpose::Marketing).await;
    assert_eq!(code, Code::PermissionDenied);

    // A certificate of the same CA that is not listed (the gateway's own): unauthenticated.
    let mut unlisted = connect_with(&addr, &tls(Some(fed.pki.pair("gateway")), None)).await?;
    let code = call(
        &fed,
        &mut unlisted,
        "Aggregate",
        TENANT,
        Purpose::CxAnalytics,
    )
    .await;
    assert_eq!(code, Code::Unauthenticated);

    // Over TLS without a certificate: a token works, nothing does not.
    let token = hs256(&claims(&OPERATIONS, &PURPOSES, false));
    let mut by_token = connect_with(&addr, &tls(None, Some(token))).await?;
    by_token
        .aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await?;
    let mut anonymous = connect_with(&addr, &tls(None, None)).await?;
    let code = call(
        &fed,
        &mut anonymous,
        "Aggregate",
        TENANT,
        Purpose::CxAnalytics,
    )
    .await;
    assert_eq!(code, Code::Unauthenticated);

    // A certificate from another CA: the handshake fails.
    let other = tempfile::tempdir()?;
    let foreign = domicile::certs::generate(other.path(), &[], "client.domicile")?;
    let refused = match connect_with(&addr, &tls(Some(foreign.pair("client")), None)).await {
        Err(_) => true,
        Ok(mut c) => !matches!(
            call(&fed, &mut c, "Aggregate", TENANT, Purpose::CxAnalytics).await,
            Code::Ok
        ),
    };
    assert!(refused, "a certificate from another CA was accepted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_decoding() -> anyhow::Result<()> {
    use domicile_proto::pb::{SealedEnvelope, SealedRecord};
    let (fed, _dir) = secured(Some(LimitsConfig {
        max_message_bytes: 1024 * 1024,
        ..LimitsConfig::default()
    }))
    .await?;
    let mut gw = client(&fed, Some(hs256(&claims(&OPERATIONS, &PURPOSES, false)))).await;
    let big = IngestRequest {
        tenant_id: TENANT.into(),
        envelopes: vec![SealedEnvelope {
            region_id: "eu-de".into(),
            records: vec![SealedRecord {
                country: "DE".into(),
                ciphertext: vec![0; 2 * 1024 * 1024].into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let refused = gw.ingest(big).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("too large"),
        "{}",
        refused.message()
    );
    // Nothing reached a region.
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    assert!(!node.metrics().encode().contains("method=\"Ingest\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_byte_budget_is_taken_per_call_and_given_back() -> anyhow::Result<()> {
    use domicile_proto::pb::{SealedEnvelope, SealedRecord};
    let (fed, _dir) = secured(Some(LimitsConfig {
        max_message_bytes: 1024 * 1024,
        max_buffered_bytes: 256 * 1024,
        ..LimitsConfig::default()
    }))
    .await?;
    let gw = client(&fed, Some(hs256(&claims(&OPERATIONS, &PURPOSES, false)))).await;
    // The records do not open (no region key sealed them): the node rejects them, and the
    // call itself is answered.
    let ingest = |bytes: usize, n: usize| IngestRequest {
        tenant_id: TENANT.into(),
        envelopes: vec![SealedEnvelope {
            region_id: "eu-de".into(),
            key_id: "budget".into(),
            encapsulated_key: vec![1; 32],
            records: vec![SealedRecord {
                seq: 0,
                idempotency_key: format!("budget-{n}"),
                country: "DE".into(),
                kind: 1,
                ciphertext: vec![0x5a; bytes].into(),
            }],
        }],
    };
    // Larger than the whole budget: it runs alone, and is answered.
    gw.clone().ingest(ingest(600 * 1024, 0)).await?;
    // Each call gives its share back when it is answered: 100 KiB twenty times over a 256 KiB
    // budget.
    for n in 1..=20 {
        gw.clone().ingest(ingest(100 * 1024, n)).await?;
    }
    // At once, only what fits is taken: the rest is refused, retryably, and changes nothing.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..16 {
        let mut gw = gw.clone();
        let request = ingest(100 * 1024, 100 + n);
        calls.spawn(async move { gw.ingest(request).await });
    }
    let answers = calls.join_all().await;
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    assert!(answered >= 1, "at least the first fits");
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("request bytes"),
            "{}",
            refused.message()
        );
    }
    // Nothing is left held.
    gw.clone().ingest(ingest(250 * 1024, 200)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_subject_is_indistinguishable_from_a_missing_one() -> anyhow::Result<()> {
    use domicile_tests::{SynthSpec, client as c, gateway_client, synth};
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .start()
        .await?;
    let mut gw = gateway_client(&fed).await?;
    let regions = c::regions(&mut gw).await?;
    let records = synth::generate(&SynthSpec {
        countries: vec!["DE".into()],
        subjects: 5,
        interactions: 10,
        seed: 9,
    });
    c::ingest(&gw, "globex", &regions, &fed.trust_bundle, &records, 100).await?;
    let theirs = records
        .iter()
        .find_map(|r| match &r.payload.record {
            Some(domicile_proto::pb::record_payload::Record::Subject(s)) => {
                Some(s.external_id.clone())
            }
            _ => None,
        })
        .unwrap();
    let ask = |external_id: String| SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: Some(SubjectRef {
            country: "DE".into(),
            external_id,
        }),
        kind: SubjectRequestKind::Access as i32,
        recipient_public_key: vec![9; 32],
        actor: "dpo-1".into(),
        ..Default::default()
    };
    let of_globex = gw
        .submit_subject_request(fed.signed(ask(theirs.clone())))
        .await
        .unwrap_err();
    let nobody = gw
        .submit_subject_request(fed.signed(ask("cust-de-nobody".into())))
        .await
        .unwrap_err();
    assert_eq!(of_globex.code(), Code::NotFound);
    assert_eq!(of_globex.code(), nobody.code());
    assert_eq!(
        of_globex.message().replace(&theirs, "<id>"),
        nobody.message().replace("cust-de-nobody", "<id>"),
        "the same answer"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_verifies_each_nodes_identity() -> anyhow::Result<()> {
    use domicile_proto::pb::RegionStatus;
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .start()
        .await?;
    let mut gw = domicile_tests::gateway_client(&fed).await?;
    let all_ok = |r: &domicile_proto::pb::AggregateResponse| {
        r.coverage
            .iter()
            .map(|c| (c.region_id.clone(), c.status == RegionStatus::Ok as i32))
            .collect::<Vec<_>>()
    };
    let answer = gw
        .aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await?;
    assert_eq!(
        all_ok(answer.get_ref()),
        [("eu-de".to_owned(), true), ("us".to_owned(), true)]
    );

    // Expect eu-de to present the US node's identity: its real certificate no longer passes.
    let mut wrong = (*fed.gateway.config()).clone();
    wrong.regions[0].identity = Some("us.node.domicile".into());
    fed.gateway.reload(wrong)?;
    let answer = gw
        .aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await?;
    let eu_de = &answer.get_ref().coverage[0];
    assert_eq!(eu_de.status, RegionStatus::Unavailable as i32, "{eu_de:?}");
    assert_eq!(answer.get_ref().coverage[1].status, RegionStatus::Ok as i32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_have_a_default_and_a_cap() -> anyhow::Result<()> {
    use domicile_proto::pb::RegionStatus;
    use std::time::{Duration, Instant};
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .unresponsive_region("hung", &["FR"])
        .default_deadline(Duration::from_millis(300))
        .max_deadline(Duration::from_millis(800))
        .start()
        .await?;
    let mut gw = domicile_tests::gateway_client(&fed).await?;

    // No deadline from the caller: the default applies.
    let started = Instant::now();
    let answer = gw
        .aggregate(aggregate(TENANT, Purpose::CxAnalytics))
        .await?;
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        answer.get_ref().coverage[1].status,
        RegionStatus::DeadlineExceeded as i32
    );

    // A caller asking for a minute gets the cap; requiring every region makes it an error.
    let mut request = tonic::Request::new(AggregateRequest {
        require_all_regions: true,
        ..aggregate(TENANT, Purpose::CxAnalytics)
    });
    request.set_timeout(Duration::from_secs(60));
    let started = Instant::now();
    let late = gw.aggregate(request).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    Ok(())
}
