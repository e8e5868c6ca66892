//! `GetOverview` and the console's HTTP listener, against a real federation: what each region
//! reports equals what was done through the API (consents, requests, incidents, releases,
//! budget), checkpoints verify, an overdue request is counted, a stopped region is reported
//! and the others still answer; the console refuses callers without an admin token and shows
//! a tenant only its own figures.

use std::{collections::BTreeMap, net::SocketAddr};

use domicile_client::{ConnectOptions, connect_with};
use domicile_gateway::{auth::AuthConfig, limits::LimitsConfig};
use domicile_node::store::db::Value;
use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, Channel, ConsentAction, ConsentSource, ConsentState,
    DataCategory, Dimension, GetOverviewRequest, ListRegionsRequest, Metric, PlaceLegalHoldRequest,
    Purpose, RecordConsentRequest, RegionHealth, RegionStatus, ReportIncidentRequest, SubjectRef,
    SubjectRequestKind, SubjectRequestStatus, SubmitSubjectRequestRequest, TimeRange,
    WithdrawConsentRequest,
};
use domicile_tests::{Federation, TENANT, gateway_client, load, query_records, synth, ts};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn subject(country: &str, i: usize) -> Option<SubjectRef> {
    Some(SubjectRef {
        country: country.into(),
        external_id: synth::subject_id(country, i),
    })
}

fn consent(
    country: &str,
    i: usize,
    purpose: Purpose,
    channel: Channel,
    action: ConsentAction,
) -> RecordConsentRequest {
    domicile::dev::synthetic_consent(TENANT, country, i, purpose, channel, action)
}

fn aggregate(epsilon: Option<f64>) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::Count as i32],
            group_by: vec![Dimension::Country as i32, Dimension::Channel as i32],
            epsilon,
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_reports_what_was_done() -> anyhow::Result<()> {
    let mut fed = domicile_tests::federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    load(&fed, &["DE", "US"], 40, 400, 7).await?;
    let mut gw = gateway_client(&fed).await?;

    // DE: phone surveys need an opt-in, e-mail surveys a double opt-in.
    for i in 0..5 {
        gw.record_consent(consent(
            "DE",
            i,
            Purpose::CxSurvey,
            Channel::Phone,
            ConsentAction::Grant,
        ))
        .await?;
    }
    for i in 0..3 {
        gw.record_consent(consent(
            "DE",
            i,
            Purpose::CxSurvey,
            Channel::Email,
            ConsentAction::Grant,
        ))
        .await?;
    }
    gw.withdraw_consent(WithdrawConsentRequest {
        tenant_id: TENANT.into(),
        subject: subject("DE", 0),
        purpose: Purpose::CxSurvey as i32,
        channel: Channel::Phone as i32,
        source: ConsentSource::EmailLink as i32,
        actor: "test:console".into(),
    })
    .await?;
    gw.record_consent(consent(
        "DE",
        9,
        Purpose::Marketing,
        Channel::Sms,
        ConsentAction::Refuse,
    ))
    .await?;

    // Requests: a restriction (fulfilled) and an erasure held by a legal hold (open).
    let request = |i: usize, kind: SubjectRequestKind| SubmitSubjectRequestRequest {
        verification: Some(domicile_proto::rights::verified_by_platform(
            "test-session",
            "test-platform",
        )),
        tenant_id: TENANT.into(),
        subject: subject("DE", i),
        kind: kind as i32,
        actor: "test:console".into(),
        ..Default::default()
    };
    gw.submit_subject_request(fed.signed(request(10, SubjectRequestKind::Restriction)))
        .await?;
    let now = domicile_proto::domain::unix_now();
    gw.place_legal_hold(fed.signed(PlaceLegalHoldRequest {
        dpo_signature: None,
        tenant_id: TENANT.into(),
        subject: subject("DE", 11),
        reason: "case 1".into(),
        interactions: None,
        expires_at: ts(now + 86_400),
    }))
    .await?;
    let held = gw
        .submit_subject_request(fed.signed(request(11, SubjectRequestKind::Erasure)))
        .await?
        .into_inner()
        .receipts
        .remove(0);
    assert_eq!(held.status, SubjectRequestStatus::PartiallyCompleted as i32);

    let incident = gw
        .report_incident(fed.signed(ReportIncidentRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            regions: Vec::new(),
            window: Some(TimeRange {
                start: ts(now - 86_400),
                end: ts(now),
            }),
            categories: vec![DataCategory::Interactions as i32],
            description: "test".into(),
            detected_at: None,
        }))
        .await?
        .into_inner()
        .incident
        .unwrap();

    // Releases: two aggregates (the first makes the differentially private releases, the
    // second sums the same ones) and a record stream.
    let mut released: BTreeMap<String, u64> = BTreeMap::new();
    let mut suppressed: BTreeMap<String, u64> = BTreeMap::new();
    let mut spent: BTreeMap<String, f64> = BTreeMap::new();
    for epsilon in [None, Some(0.5)] {
        let answer = gw.aggregate(aggregate(epsilon)).await?.into_inner();
        for r in &answer.attestation.as_ref().unwrap().regions {
            *spent.entry(r.region_id.clone()).or_default() += r.epsilon;
        }
        for c in answer.coverage {
            *released.entry(c.region_id.clone()).or_default() += u64::from(c.groups_released);
            *suppressed.entry(c.region_id).or_default() += u64::from(c.groups_suppressed);
        }
    }
    let (records, _) = query_records(
        &mut gw,
        domicile_proto::pb::QueryRecordsRequest {
            tenant_id: TENANT.into(),
            query: Some(domicile_proto::pb::RecordQuery {
                purpose: Purpose::CxAnalytics as i32,
                limit: 10_000,
                ..Default::default()
            }),
            regions: Vec::new(),
        },
    )
    .await?;
    let de_rows = records.iter().filter(|r| r.region_id == "eu-de").count() as u64;
    assert!(de_rows > 0);

    let listed = gw
        .list_regions(ListRegionsRequest {})
        .await?
        .into_inner()
        .regions;
    let overview = gw
        .get_overview(GetOverviewRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(overview.bucket_seconds, 3_600);
    let ids: Vec<_> = overview
        .regions
        .iter()
        .map(|r| r.region_id.as_str())
        .collect();
    assert_eq!(ids, ["eu-de", "us"]);
    for (region, info) in overview.regions.iter().zip(&listed) {
        assert_eq!(
            region.call_status,
            RegionStatus::Ok as i32,
            "{}",
            region.detail
        );
        assert_eq!(region.health, RegionHealth::Serving as i32);
        let report = region.report.as_ref().unwrap();
        assert_eq!(
            report.sealing_key_id,
            info.sealing_key.as_ref().unwrap().key_id
        );
        // The checkpoint verifies with the key the gateway learned from the region.
        assert_eq!(region.audit_public_key, info.audit_public_key);
        let cp = report.checkpoint.as_ref().unwrap();
        let key = VerifyingKey::from_bytes(&region.audit_public_key.clone().try_into().unwrap())?;
        let message = domicile_node::domain::audit::checkpoint_message(
            &region.region_id,
            cp.seq,
            cp.at.unwrap().seconds,
            &cp.head_hash,
        );
        key.verify(&message, &Signature::from_slice(&cp.signature)?)?;
        // Releases: what each aggregate's coverage said left the region, summed.
        let groups: u64 = report.releases.iter().map(|b| b.groups_released).sum();
        let dropped: u64 = report.releases.iter().map(|b| b.groups_suppressed).sum();
        assert_eq!(groups, released[&region.region_id], "{}", region.region_id);
        assert_eq!(
            dropped, suppressed[&region.region_id],
            "{}",
            region.region_id
        );
        let epsilon: f64 = report.releases.iter().map(|b| b.epsilon).sum();
        let made = spent[&region.region_id];
        assert!(made >= 12.0 * 3.0, "month releases of ε = 3: {made}");
        assert!((epsilon - made).abs() < 1e-9, "{epsilon} vs {made}");
        // The budget of the current month of data: still open, so nothing released of it.
        let budget = report.budget.clone().unwrap();
        assert_eq!(budget.epsilon_per_month, 20.0);
        assert_eq!(budget.spent, 0.0);
        assert_eq!(budget.remaining, 20.0);
        assert_eq!(
            budget.month,
            domicile_tests::month_of(domicile_proto::domain::unix_now())
        );
        // The incident, with the counts GetIncident gives.
        assert_eq!(report.incidents.len(), 1);
        let part = incident
            .regions
            .iter()
            .find(|p| p.region_id == region.region_id)
            .unwrap();
        assert_eq!(report.incidents[0].incident_id, incident.incident_id);
        assert_eq!(report.incidents[0].affected, part.affected);
        assert_eq!(report.incidents[0].deadline, part.deadline);
    }
    let de = overview.regions[0].report.as_ref().unwrap();
    let us = overview.regions[1].report.as_ref().unwrap();
    let rows: u64 = de.releases.iter().map(|b| b.rows_released).sum();
    assert_eq!(rows, de_rows);
    let mut consents: Vec<_> = de
        .consents
        .iter()
        .map(|c| (c.purpose, c.channel, c.state, c.subjects))
        .collect();
    consents.sort();
    let mut expected = vec![
        (
            Purpose::CxSurvey as i32,
            Channel::Phone as i32,
            ConsentState::Granted as i32,
            4,
        ),
        (
            Purpose::CxSurvey as i32,
            Channel::Phone as i32,
            ConsentState::Withdrawn as i32,
            1,
        ),
        (
            Purpose::CxSurvey as i32,
            Channel::Email as i32,
            ConsentState::PendingConfirmation as i32,
            3,
        ),
        (
            Purpose::Marketing as i32,
            Channel::Sms as i32,
            ConsentState::Refused as i32,
            1,
        ),
    ];
    expected.sort();
    assert_eq!(consents, expected);
    assert!(de.consents.iter().all(|c| c.country == "DE"));
    assert!(us.consents.is_empty() && us.subject_requests.is_empty());
    let counts: Vec<_> = de
        .subject_requests
        .iter()
        .map(|c| (c.kind, c.status, c.count, c.overdue))
        .collect();
    assert_eq!(
        counts,
        [
            (
                SubjectRequestKind::Erasure as i32,
                SubjectRequestStatus::PartiallyCompleted as i32,
                1,
                0
            ),
            (
                SubjectRequestKind::Restriction as i32,
                SubjectRequestStatus::Completed as i32,
                1,
                0
            ),
        ]
    );
    assert_eq!(de.open_requests.len(), 1);
    assert_eq!(de.open_requests_total, 1);
    assert_eq!(de.open_requests[0].request_id, held.request_id);
    assert_eq!(de.open_requests[0].due_at, held.due_at);

    // Time passes: the held erasure's due date is behind us. It is counted overdue.
    let conn = fed.node("eu-de").unwrap().connect()?;
    conn.execute(
        "UPDATE subject_requests SET due_at = $1 WHERE request_id = $2",
        [Value::Int(now - 60), Value::Text(&held.request_id)],
    )?;
    drop(conn);
    let overview = gw
        .get_overview(GetOverviewRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let erasure = overview.regions[0]
        .report
        .as_ref()
        .unwrap()
        .subject_requests[0];
    assert_eq!(
        (erasure.kind, erasure.overdue),
        (SubjectRequestKind::Erasure as i32, 1)
    );

    // Bad windows are refused with the field at fault.
    for (bucket, since, field) in [
        (10, None, "bucket_seconds"),
        (60, ts(now - 30 * 86_400), "bucket_seconds"),
        (3_600, ts(now + 3_600), "since"),
    ] {
        let err = gw
            .get_overview(GetOverviewRequest {
                tenant_id: TENANT.into(),
                since,
                bucket_seconds: bucket,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    let err = gw
        .get_overview(GetOverviewRequest {
            tenant_id: "Not A Tenant".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("tenant_id"), "{}", err.message());

    // A stopped region is reported as such; the other still answers.
    fed.stop_node("us").await;
    let overview = gw
        .get_overview(GetOverviewRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(overview.regions[0].call_status, RegionStatus::Ok as i32);
    assert!(overview.regions[0].report.is_some());
    assert_eq!(
        overview.regions[1].call_status,
        RegionStatus::Unavailable as i32
    );
    assert!(overview.regions[1].report.is_none());
    assert!(!overview.regions[1].detail.is_empty());
    // Nothing in the report above is a subject id.
    let text = format!("{overview:?}");
    assert!(!text.contains(&synth::subject_id("DE", 11)));
    fed.shutdown().await;
    Ok(())
}

/// `METHOD path` with `headers` over a fresh connection; the status and the raw answer.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(stream, method, path, headers, body).await
}

/// A client of the federation's gateway that sends `token`.
async fn client_as(fed: &Federation, token: &str) -> anyhow::Result<domicile_client::Gateway> {
    connect_with(
        &fed.gateway_addr.to_string(),
        &ConnectOptions {
            token: Some(token.to_owned()),
            ..Default::default()
        },
    )
    .await
}

/// `GET path` with `authorization: <bearer>`, over a fresh connection.
async fn get(addr: SocketAddr, bearer: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[("authorization", bearer)], "").await
}

/// One HTTP/1.1 request and its answer over `stream`.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    req += body;
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`: keep what came.
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The JSON document after an answer's head.
fn json_body(answer: &str) -> serde_json::Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).expect("a JSON body")
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    tenant: String,
    purposes: Vec<String>,
    operations: Vec<String>,
    dpo: bool,
    exp: u64,
    aud: String,
}

const SECRET: &[u8] = b"a console secret of at least 32 bytes.";

fn token(tenant: &str, operations: &[&str]) -> String {
    let claims = Claims {
        sub: "dpo-desk".into(),
        tenant: tenant.into(),
        purposes: vec!["cx_analytics".into(), "cx_survey".into()],
        operations: operations.iter().map(|o| (*o).to_owned()).collect(),
        dpo: false,
        exp: domicile_proto::domain::unix_now() as u64 + 600,
        aud: "domicile".into(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A one-region federation whose callers need a token signed with `SECRET`; with `tls`, its
/// public listener (and so the console) has the development PKI's certificate.
async fn secured(tls: bool) -> anyhow::Result<(Federation, tempfile::TempDir)> {
    secured_with(tls, None).await
}

/// [`secured`], with `limits` instead of the default ones.
async fn secured_with(
    tls: bool,
    limits: Option<LimitsConfig>,
) -> anyhow::Result<(Federation, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, SECRET)?;
    let mut builder = Federation::builder()
        .region("eu-de", &["DE"])
        .auth(AuthConfig {
            audience: "domicile".into(),
            issuer: None,
            hs256_secret_file: Some(secret),
            jwks_file: None,
            leeway_seconds: 5,
            clients: Vec::new(),
        });
    if tls {
        builder = builder.public_tls();
    }
    if let Some(limits) = limits {
        builder = builder.limits(limits);
    }
    Ok((builder.start().await?, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consoles_overview_is_held_to_the_tenants_limits() -> anyhow::Result<()> {
    // Three calls at once, then one every ten seconds: the console and the API share them.
    let (fed, _dir) = secured_with(
        false,
        Some(LimitsConfig {
            requests_per_second: 0.1,
            burst: 3,
            ..Default::default()
        }),
    )
    .await?;
    let admin = token(TENANT, &["admin"]);
    let bearer = format!("Bearer {admin}");
    let addr = domicile_tests::console(&fed).await?;
    // A refused window costs nothing: it is checked before the limits.
    assert_eq!(get(addr, &bearer, "/api/overview?window=1y").await.0, 400);
    for _ in 0..2 {
        let (status, body) = get(addr, &bearer, "/api/overview").await;
        assert_eq!(status, 200, "{body}");
    }
    // The third call of the burst is the API's.
    let mut gw = client_as(&fed, &admin).await?;
    gw.get_overview(GetOverviewRequest {
        tenant_id: TENANT.into(),
        ..Default::default()
    })
    .await?;
    let (status, body) = get(addr, &bearer, "/api/overview").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate limit"), "{body}");
    // The page and its script are not calls to the regions: still served.
    assert_eq!(get(addr, &bearer, "/").await.0, 200);
    // Another tenant's budget is its own.
    let other = format!("Bearer {}", token("other-tenant", &["admin"]));
    let (status, body) = get(addr, &other, "/api/overview").await;
    assert_eq!(status, 200, "{body}");
    fed.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_an_admin_token_and_shows_its_tenant_only() -> anyhow::Result<()> {
    let (fed, _dir) = secured(false).await?;
    let admin = token(TENANT, &["admin", "consent"]);
    let mut gw = client_as(&fed, &admin).await?;
    gw.record_consent(consent(
        "DE",
        1,
        Purpose::CxSurvey,
        Channel::Phone,
        ConsentAction::Grant,
    ))
    .await?;

    let addr = domicile_tests::console(&fed).await?;

    // No credentials: refused, and the page offers the sign-in form.
    let (status, page) = http(addr, "GET", "/", &[], "").await;
    assert_eq!(status, 401);
    assert!(page.contains("action=\"/login\""));
    for path in [
        "/api/overview",
        "/api/requests",
        "/console.js",
        "/vendor/chart.umd.min.js",
    ] {
        assert_eq!(http(addr, "GET", path, &[], "").await.0, 401, "{path}");
    }
    // A valid token without the admin operation: forbidden.
    let other_ops = format!("Bearer {}", token(TENANT, &["consent"]));
    let (status, body) = get(addr, &other_ops, "/api/overview").await;
    assert_eq!(status, 403);
    assert!(body.contains("admin"), "{body}");
    assert_eq!(get(addr, &other_ops, "/api/requests").await.0, 403);
    // A forged one: unauthorised.
    let forged = format!("Bearer {}x", admin);
    assert_eq!(get(addr, &forged, "/api/overview").await.0, 401);

    // The admin token: the page, and its tenant's figures.
    let bearer = format!("Bearer {admin}");
    let (status, page) = get(addr, &bearer, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    let (status, body) = get(addr, &bearer, "/api/overview?window=7d").await;
    assert_eq!(status, 200, "{body}");
    let json = json_body(&body);
    assert_eq!(json["tenant"], TENANT);
    assert_eq!(json["window"], "7d");
    assert_eq!(json["bucket_seconds"], 6 * 3_600);
    let consents = &json["regions"][0]["report"]["consents"];
    assert_eq!(consents[0]["state"], "granted");
    assert_eq!(consents[0]["subjects"], 1);
    assert_eq!(get(addr, &bearer, "/api/overview?window=2y").await.0, 400);
    // The case queue: every region's counts (nothing open yet), for this tenant only.
    let (status, body) = get(addr, &bearer, "/api/requests?overdue=1").await;
    assert_eq!(status, 200, "{body}");
    let queue = json_body(&body);
    assert_eq!(queue["tenant"], TENANT);
    assert_eq!(queue["receipts"], serde_json::json!([]));
    assert_eq!(
        queue["counts"].as_array().map(Vec::len),
        queue["coverage"].as_array().map(Vec::len)
    );
    assert!(queue["counts"].as_array().is_some_and(|c| !c.is_empty()));
    // Another tenant's admin sees its own (empty) figures, never these.
    let stranger = format!("Bearer {}", token("globex", &["admin"]));
    let (status, body) = get(addr, &stranger, "/api/overview").await;
    assert_eq!(status, 200);
    let json = json_body(&body);
    assert_eq!(json["tenant"], "globex");
    assert_eq!(
        json["regions"][0]["report"]["consents"],
        serde_json::json!([])
    );
    // ... and the `tenant` parameter, which only the insecure mode reads, changes nothing.
    let (_, body) = http(
        addr,
        "GET",
        &format!("/api/overview?tenant={TENANT}"),
        &[("authorization", &stranger)],
        "",
    )
    .await;
    assert!(body.contains("\"tenant\":\"globex\""));

    // Signing in: the form's token becomes an HttpOnly, SameSite cookie that opens the page.
    let form = format!("token={admin}");
    let form_type = ("content-type", "application/x-www-form-urlencoded");
    let (status, answer) = http(addr, "POST", "/login", &[form_type], &form).await;
    assert_eq!(status, 303, "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie is set");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    assert_eq!(http(addr, "GET", "/", &[("cookie", pair)], "").await.0, 200);
    // A refused token sets nothing; a form from another site is refused.
    let (status, answer) = http(addr, "POST", "/login", &[form_type], "token=nope").await;
    assert_eq!(status, 401);
    assert!(!answer.contains("set-cookie"));
    let (status, _) = http(
        addr,
        "POST",
        "/login",
        &[form_type, ("sec-fetch-site", "cross-site")],
        &form,
    )
    .await;
    assert_eq!(status, 403);
    // Writes are not served; unknown paths are not found.
    assert_eq!(
        http(
            addr,
            "DELETE",
            "/api/overview",
            &[("authorization", &bearer)],
            ""
        )
        .await
        .0,
        405
    );
    assert_eq!(get(addr, &bearer, "/etc/passwd").await.0, 404);

    // Counted by path and status; a path the console does not serve is "other".
    let metrics = fed.gateway.metrics().encode();
    for line in [
        "domicile_gateway_console_requests_total{path=\"/api/overview\",status=\"401\"} 2",
        "domicile_gateway_console_requests_total{path=\"other\",status=\"404\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains("passwd"));

    // The gRPC call behind it: the admin operation and the caller's own tenant.
    let err = gw
        .get_overview(GetOverviewRequest {
            tenant_id: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    fed.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_console_is_https_with_the_gateways_certificate() -> anyhow::Result<()> {
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let (fed, _dir) = secured(true).await?;
    let addr = domicile_tests::console(&fed).await?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(fed.pki.ca())? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    };
    let admin = format!("Bearer {}", token(TENANT, &["admin"]));
    let (status, _) = exchange(tls().await, "GET", "/", &[("authorization", &admin)], "").await;
    assert_eq!(status, 200);
    let (status, _) = exchange(tls().await, "GET", "/api/overview", &[], "").await;
    assert_eq!(status, 401);
    // Signed in over TLS, the cookie is marked Secure.
    let form = format!("token={}", token(TENANT, &["admin"]));
    let (status, answer) = exchange(
        tls().await,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!(status, 303, "{answer}");
    assert!(answer.contains("; Secure"), "{answer}");
    // Plain HTTP gets no page.
    let (status, _) = get(addr, &admin, "/").await;
    assert_ne!(status, 200);
    fed.shutdown().await;
    Ok(())
}
