//! The console: one read-only web page for the data-protection officer and the operators,
//! served on its own HTTP listener (`console_listen`).
//!
//! The page and its script are embedded in the binary (no build step; the chart library,
//! Chart.js, is vendored unmodified under `console/vendor/`). Its data is one JSON view of
//! `GetOverview` (`GET /api/overview`), the RPC a client would call, so the console shows what
//! the gateway may hold and nothing else: counts, parameters, ids the system made, audit
//! checkpoints. The browser checks each checkpoint's Ed25519 signature itself.
//!
//! Authentication is the API's: a bearer token (`authorization: Bearer …`, or the
//! `domicile_console` cookie that `POST /login` sets from a pasted token) with the `admin`
//! operation; the tenant is the token's. In the explicit insecure mode (`insecure_no_auth`)
//! the console, like the API, trusts a `tenant` query parameter.
//!
//! With `[tls]` the console is served over TLS with the gateway's certificate; otherwise it is
//! plain HTTP: bind it to loopback or put it behind a TLS-terminating proxy.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use domicile_proto::{
    domain::TenantId,
    pb::{
        Channel, ConsentState, DataCategory, GetOverviewRequest, GetOverviewResponse,
        ListSubjectRequestsRequest, ListSubjectRequestsResponse, Purpose, RegionStatus,
        ReleaseKind, SubjectRequestKind, SubjectRequestStatus,
    },
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderMap, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::{TlsAcceptor, rustls};

use crate::{auth::Operation, config::GatewayConfig, gateway::Gateway};

/// The cookie that carries the token after `POST /login`.
pub const COOKIE: &str = "domicile_console";

/// Every path the console serves (`/api/overview` takes `window` and, without authentication,
/// `tenant`).
pub const PATHS: &[&str] = &[
    "/",
    "/login",
    "/console.js",
    "/console.css",
    "/vendor/chart.umd.min.js",
    "/api/overview",
    "/api/requests",
];

const INDEX: &[u8] = include_bytes!("../../console/index.html");
const LOGIN: &str = include_str!("../../console/login.html");
const SCRIPT: &[u8] = include_bytes!("../../console/console.js");
const STYLE: &[u8] = include_bytes!("../../console/console.css");
const CHART: &[u8] = include_bytes!("../../console/vendor/chart.umd.min.js");

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Largest login form accepted.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Scripts only from the console itself, no inline code, no framing, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Why the console could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A TLS file named in `[tls]` cannot be used.
    #[error("console TLS: {0}")]
    Tls(String),
}

/// The TLS acceptor for the console from `[tls]` (the public listener's certificate), or
/// `None` without `[tls]`.
pub fn tls_acceptor(config: &GatewayConfig) -> Result<Option<TlsAcceptor>, ConsoleError> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let Some(t) = &config.tls else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(&t.cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConsoleError::Tls(format!("tls.cert_file: {}: {e}", t.cert_file.display())))?;
    let key = PrivateKeyDer::from_pem_file(&t.key_file)
        .map_err(|e| ConsoleError::Tls(format!("tls.key_file: {}: {e}", t.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConsoleError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConsoleError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Serves the console on `listener` until `shutdown` completes.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let tls = tls_acceptor(&gateway.config())?;
    if gateway.authenticator().is_none() {
        tracing::warn!("insecure_no_auth: the console serves any caller, for any tenant");
    }
    let secure = tls.is_some();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "console listener: accept failed");
                    continue;
                }
            },
        };
        let gateway = gateway.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(respond(&gateway, req, secure).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.max_buf_size(16 * 1024)
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let served = match tls {
                Some(tls) => {
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            http.serve_connection(TokioIo::new(stream), service).await
                        }
                        _ => return,
                    }
                }
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "console connection ended with an error");
            }
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    r
}

fn json_error(status: StatusCode, message: &str) -> Answer {
    answer(
        status,
        "application/json",
        json!({ "error": message }).to_string(),
    )
}

/// The login page, with `notice` (a fixed text, never input) in its message slot.
fn login_page(status: StatusCode, notice: &str) -> Answer {
    answer(
        status,
        "text/html; charset=utf-8",
        LOGIN.replace("<!--notice-->", notice),
    )
}

fn redirect(to: &'static str, cookie: Option<String>) -> Answer {
    let mut r = answer(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// Who may look, and at which tenant.
enum Access {
    /// Authenticated with the `admin` operation: the token's tenant.
    Tenant(String),
    /// No authentication configured (insecure mode): the caller names the tenant.
    Open,
}

/// The bearer token from the `authorization` header or the console cookie.
fn credentials(headers: &HeaderMap) -> Option<Vec<u8>> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        return Some(v.as_bytes().to_vec());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| format!("Bearer {value}").into_bytes())
        })
}

/// Checks the caller as the API would for `GetOverview`: a valid token with `admin`.
fn access(gateway: &Gateway, headers: &HeaderMap) -> Result<Access, (StatusCode, String)> {
    let Some(auth) = gateway.authenticator() else {
        return Ok(Access::Open);
    };
    let token = credentials(headers).ok_or((
        StatusCode::UNAUTHORIZED,
        "missing credentials: sign in with a token, or send authorization: Bearer <token>"
            .to_owned(),
    ))?;
    let caller = auth
        .token(&token)
        .map_err(|s| (StatusCode::UNAUTHORIZED, s.message().to_owned()))?;
    caller
        .authorize(Operation::Admin, None, None, false)
        .map_err(|s| (StatusCode::FORBIDDEN, s.message().to_owned()))?;
    Ok(Access::Tenant(caller.tenant))
}

/// The value of `name` in a query string or form body (`+` and `%XX` decoded).
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The release windows the page offers: name, length and bucket width in seconds.
const WINDOWS: &[(&str, i64, u32)] = &[
    ("1h", 3_600, 60),
    ("24h", 86_400, 3_600),
    ("7d", 7 * 86_400, 6 * 3_600),
    ("30d", 30 * 86_400, 86_400),
];

async fn respond(gateway: &Gateway, req: Request<Incoming>, secure: bool) -> Answer {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    let answer = match (path.as_str(), read) {
        ("/login", true) => login_page(StatusCode::OK, ""),
        ("/login", false) if method == Method::POST => login(gateway, req, secure).await,
        ("/logout", false) if method == Method::POST => redirect(
            "/login",
            Some(format!(
                "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
            )),
        ),
        ("/console.css", true) => answer(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        (
            "/" | "/console.js" | "/vendor/chart.umd.min.js" | "/api/overview" | "/api/requests",
            true,
        ) => match access(gateway, req.headers()) {
            Err((status, message)) if path.starts_with("/api/") => json_error(status, &message),
            Err((StatusCode::UNAUTHORIZED, _)) if path == "/" => login_page(
                StatusCode::UNAUTHORIZED,
                "Sign in with a token that has the admin operation.",
            ),
            Err((status, _)) if path == "/" => login_page(
                status,
                "This token may not open the console: it lacks the admin operation.",
            ),
            Err((status, message)) => answer(status, "text/plain; charset=utf-8", message),
            Ok(access) => match path.as_str() {
                "/" => answer(StatusCode::OK, "text/html; charset=utf-8", INDEX),
                "/console.js" => answer(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
                "/vendor/chart.umd.min.js" => {
                    answer(StatusCode::OK, "text/javascript; charset=utf-8", CHART)
                }
                "/api/requests" => requests(gateway, access, &query).await,
                _ => overview(gateway, access, &query).await,
            },
        },
        (p, _) if PATHS.contains(&p) || p == "/logout" => answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        ),
        _ => answer(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    };
    let known = PATHS.contains(&path.as_str()) || path == "/logout";
    gateway
        .metrics()
        .console_requests
        .get_or_create(&crate::metrics::ConsoleLabels {
            // Paths are the caller's: only the console's own become label values.
            path: if known {
                path.clone()
            } else {
                "other".to_owned()
            },
            status: answer.status().as_u16().to_string(),
        })
        .inc();
    tracing::debug!(known, status = answer.status().as_u16(), "console request");
    answer
}

/// `POST /login`: checks the pasted token as the API would and keeps it in a cookie.
async fn login(gateway: &Gateway, req: Request<Incoming>, secure: bool) -> Answer {
    // A form posted from another site is refused (the browser says where it comes from).
    if let Some(site) = req.headers().get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return login_page(
            StatusCode::FORBIDDEN,
            "Sign in from the console's own page.",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return login_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
        }
    };
    let form = String::from_utf8_lossy(&body);
    let token = param(&form, "token").unwrap_or_default();
    let token = token.trim();
    if gateway.authenticator().is_none() {
        return redirect("/", None);
    }
    let mut headers = HeaderMap::new();
    match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(v) if !token.is_empty() && !token.contains(';') => {
            headers.insert(header::AUTHORIZATION, v);
        }
        _ => return login_page(StatusCode::UNAUTHORIZED, "That is not a token."),
    }
    match access(gateway, &headers) {
        Ok(_) => redirect(
            "/",
            Some(format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
                if secure { "; Secure" } else { "" }
            )),
        ),
        Err((StatusCode::FORBIDDEN, _)) => login_page(
            StatusCode::FORBIDDEN,
            "This token may not open the console: it lacks the admin operation.",
        ),
        Err(_) => login_page(
            StatusCode::UNAUTHORIZED,
            "The token was refused (expired, or not signed by a key the gateway trusts).",
        ),
    }
}

/// `GET /api/overview?window=24h`: `GetOverview` for the caller's tenant, as JSON.
async fn overview(gateway: &Gateway, access: Access, query: &str) -> Answer {
    let window = param(query, "window").unwrap_or_else(|| "24h".to_owned());
    let Some(&(name, length, bucket)) = WINDOWS.iter().find(|(n, _, _)| *n == window) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "window: must be 1h, 24h, 7d or 30d",
        );
    };
    let (tenant, _admission) = match admitted(gateway, access, query) {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
    let now = gateway.now();
    let request = GetOverviewRequest {
        tenant_id: tenant.clone(),
        since: Some(domicile_proto::domain::whole_seconds(now - length)),
        bucket_seconds: bucket,
    };
    match gateway
        .overview(request, gateway.config().default_deadline())
        .await
    {
        Ok(resp) => answer(
            StatusCode::OK,
            "application/json",
            overview_json(&tenant, name, &resp).to_string(),
        ),
        Err(e) => gateway_error(e),
    }
}

/// The tenant a console call is for, admitted under the API's limits, or the error to answer.
///
/// The API's limits, keyed as the API keys them: the authenticated tenant, else one budget
/// for every caller. A page left open in many tabs, or a script with an admin token, fans out
/// to the regions no more often than the tenant's own calls may.
fn admitted(
    gateway: &Gateway,
    access: Access,
    query: &str,
) -> Result<(String, crate::limits::Admission), Box<Answer>> {
    let key = match &access {
        Access::Tenant(t) => t.as_str(),
        Access::Open => "",
    };
    let admission = gateway.limiter().admit(key).map_err(|status| {
        let http = match status.code() {
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Box::new(json_error(http, status.message()))
    })?;
    let tenant = match access {
        Access::Tenant(t) => t,
        Access::Open => match param(query, "tenant").map(|t| TenantId::parse(&t, "tenant")) {
            Some(Ok(t)) => t.as_str().to_owned(),
            Some(Err(v)) => {
                return Err(Box::new(json_error(
                    StatusCode::BAD_REQUEST,
                    &v.to_string(),
                )));
            }
            None => {
                return Err(Box::new(json_error(
                    StatusCode::BAD_REQUEST,
                    "tenant: required when the gateway runs without authentication",
                )));
            }
        },
    };
    Ok((tenant, admission))
}

/// A gateway error as the console's JSON error.
fn gateway_error(e: crate::error::GatewayError) -> Answer {
    let status = tonic::Status::from(e);
    let http = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    json_error(http, status.message())
}

/// `GET /api/requests[?overdue=1]`: the case queue (`ListSubjectRequests`, open requests,
/// soonest due first, the first 200) for the caller's tenant, with each region's counts.
async fn requests(gateway: &Gateway, access: Access, query: &str) -> Answer {
    let (tenant, _admission) = match admitted(gateway, access, query) {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
    let request = ListSubjectRequestsRequest {
        tenant_id: tenant.clone(),
        overdue_only: param(query, "overdue").is_some_and(|v| v == "1"),
        page_size: 200,
        ..Default::default()
    };
    match gateway
        .list_subject_requests(request, gateway.config().default_deadline())
        .await
    {
        Ok(resp) => answer(
            StatusCode::OK,
            "application/json",
            requests_json(&tenant, gateway.now(), &resp).to_string(),
        ),
        Err(e) => gateway_error(e),
    }
}

/// The JSON view of the case queue that the page draws: ids, kinds, statuses and dates only.
pub fn requests_json(tenant: &str, now: i64, resp: &ListSubjectRequestsResponse) -> Value {
    let status = |raw: i32| {
        enum_name::<SubjectRequestStatus>(raw, "SUBJECT_REQUEST_STATUS_", |e| e.as_str_name())
    };
    json!({
        "tenant": tenant,
        "at": now,
        "receipts": resp.receipts.iter().map(|r| json!({
            "request_id": r.request_id,
            "region_id": r.region_id,
            "kind": enum_name::<SubjectRequestKind>(r.kind, "SUBJECT_REQUEST_KIND_", |e| e.as_str_name()),
            "status": status(r.status),
            "submitted_at": seconds(r.submitted_at.as_ref()),
            "due_at": seconds(r.due_at.as_ref()),
            "overdue": r.overdue,
            "paused_since": seconds(r.paused_since.as_ref()),
            "extended": !r.extension_reason.is_empty(),
        })).collect::<Vec<_>>(),
        "more": !resp.next_page_token.is_empty(),
        "counts": resp.counts.iter().map(|c| json!({
            "region_id": c.region_id,
            "open": c.open,
            "due_within_7_days": c.due_within_7_days,
            "overdue": c.overdue,
        })).collect::<Vec<_>>(),
        "coverage": resp.coverage.iter().map(|c| json!({
            "region_id": c.region_id,
            "status": enum_name::<RegionStatus>(c.status, "REGION_STATUS_", |e| e.as_str_name()),
        })).collect::<Vec<_>>(),
    })
}

/// An enum value's name without its type prefix, lower case: `REGION_STATUS_OK` → `ok`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn enum_name<E: TryFrom<i32>>(raw: i32, prefix: &str, name: impl Fn(E) -> &'static str) -> String {
    E::try_from(raw).map_or_else(|_| raw.to_string(), |e| short(name(e), prefix))
}

fn seconds(t: Option<&prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| json!(t.seconds))
}

/// The JSON view of an overview that the page draws.
pub fn overview_json(tenant: &str, window: &str, resp: &GetOverviewResponse) -> Value {
    let purpose = |p: i32| enum_name::<Purpose>(p, "PURPOSE_", |e| e.as_str_name());
    let regions: Vec<Value> = resp
        .regions
        .iter()
        .map(|r| {
            let report = r.report.as_ref().map(|rep| {
                let checkpoint = rep.checkpoint.as_ref().map_or(Value::Null, |c| {
                    json!({
                        "region_id": c.region_id,
                        // A string: a JSON number loses precision above 2^53.
                        "seq": c.seq.to_string(),
                        "at": seconds(c.at.as_ref()),
                        "head_hash": hex::encode(&c.head_hash),
                        "signature": hex::encode(&c.signature),
                        "public_key": hex::encode(&c.public_key),
                    })
                });
                let releases: Vec<Value> = rep
                    .releases
                    .iter()
                    .map(|b| {
                        json!({
                            "start": seconds(b.start.as_ref()),
                            "purpose": purpose(b.purpose),
                            "kind": enum_name::<ReleaseKind>(b.kind, "RELEASE_KIND_", |e| e.as_str_name()),
                            "releases": b.releases,
                            "groups_released": b.groups_released,
                            "groups_suppressed": b.groups_suppressed,
                            "rows_released": b.rows_released,
                            "epsilon": b.epsilon,
                        })
                    })
                    .collect();
                let requests: Vec<Value> = rep
                    .subject_requests
                    .iter()
                    .map(|c| {
                        json!({
                            "kind": enum_name::<SubjectRequestKind>(c.kind, "SUBJECT_REQUEST_KIND_", |e| e.as_str_name()),
                            "status": enum_name::<SubjectRequestStatus>(c.status, "SUBJECT_REQUEST_STATUS_", |e| e.as_str_name()),
                            "count": c.count,
                            "overdue": c.overdue,
                        })
                    })
                    .collect();
                let open: Vec<Value> = rep
                    .open_requests
                    .iter()
                    .map(|o| {
                        json!({
                            "request_id": o.request_id,
                            "kind": enum_name::<SubjectRequestKind>(o.kind, "SUBJECT_REQUEST_KIND_", |e| e.as_str_name()),
                            "status": enum_name::<SubjectRequestStatus>(o.status, "SUBJECT_REQUEST_STATUS_", |e| e.as_str_name()),
                            "submitted_at": seconds(o.submitted_at.as_ref()),
                            "due_at": seconds(o.due_at.as_ref()),
                        })
                    })
                    .collect();
                let category = |c: i32| enum_name::<DataCategory>(c, "DATA_CATEGORY_", |e| e.as_str_name());
                let incidents: Vec<Value> = rep
                    .incidents
                    .iter()
                    .map(|i| {
                        json!({
                            "incident_id": i.incident_id,
                            "detected_at": seconds(i.detected_at.as_ref()),
                            "deadline": seconds(i.deadline.as_ref()),
                            "categories": i.categories.iter().map(|c| category(*c)).collect::<Vec<_>>(),
                            "affected": i.affected.iter().map(|a| json!({
                                "country": a.country,
                                "category": category(a.category),
                                "subjects": a.subjects,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let consents: Vec<Value> = rep
                    .consents
                    .iter()
                    .map(|c| {
                        json!({
                            "country": c.country,
                            "purpose": purpose(c.purpose),
                            "channel": enum_name::<Channel>(c.channel, "CHANNEL_", |e| e.as_str_name()),
                            "state": enum_name::<ConsentState>(c.state, "CONSENT_STATE_", |e| e.as_str_name()),
                            "subjects": c.subjects,
                        })
                    })
                    .collect();
                let budget = rep.budget.clone().unwrap_or_default();
                let follow_ups = rep.follow_ups.unwrap_or_default();
                json!({
                    "policy_versions": rep.policy_versions,
                    "sealing_key_id": rep.sealing_key_id,
                    "sealing_key_since": seconds(rep.sealing_key_since.as_ref()),
                    "checkpoint": checkpoint,
                    "releases": releases,
                    "budget": {
                        "month": budget.month,
                        "epsilon_per_month": budget.epsilon_per_month,
                        "spent": budget.spent,
                        "remaining": budget.remaining,
                    },
                    "subject_requests": requests,
                    "open_requests": open,
                    "open_requests_total": rep.open_requests_total,
                    "incidents": incidents,
                    "consents": consents,
                    "follow_ups": {
                        "open": follow_ups.open,
                        "overdue": follow_ups.overdue,
                        "resolved": follow_ups.resolved,
                        "cancelled": follow_ups.cancelled,
                    },
                })
            });
            json!({
                "region_id": r.region_id,
                "countries": r.countries,
                "status": enum_name::<RegionStatus>(r.call_status, "REGION_STATUS_", |e| e.as_str_name()),
                "detail": r.detail,
                "health": enum_name::<domicile_proto::pb::RegionHealth>(r.health, "REGION_HEALTH_", |e| e.as_str_name()),
                "audit_public_key": hex::encode(&r.audit_public_key),
                "audit_witness": r.audit_witness.as_ref().map(|w| json!({
                    "status": enum_name::<domicile_proto::pb::AuditWitnessStatus>(w.status, "AUDIT_WITNESS_STATUS_", |e| e.as_str_name()),
                    "witnessed_seq": w.witnessed_seq,
                    "witnessed_hash": hex::encode(&w.witnessed_hash),
                    "detail": w.detail,
                })),
                "report": report,
            })
        })
        .collect();
    json!({
        "tenant": tenant,
        "window": window,
        "at": seconds(resp.at.as_ref()),
        "since": seconds(resp.since.as_ref()),
        "bucket_seconds": resp.bucket_seconds,
        "regions": regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            param("a=1&token=ab%2Ecd+e", "token").as_deref(),
            Some("ab.cd e")
        );
        assert_eq!(param("window=7d", "window").as_deref(), Some("7d"));
        assert_eq!(param("window", "window").as_deref(), Some(""));
        assert_eq!(param("x=1", "window"), None);
        // A truncated or invalid escape is kept as it is, never a panic.
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
        assert_eq!(percent_decode("%é1"), "%é1");
    }

    proptest::proptest! {
        /// Query strings, forms and cookies are untrusted bytes: any of them parses without a
        /// panic, and a percent-encoded value decodes to itself.
        #[test]
        fn any_query_parses(query in ".{0,64}", value in ".{0,32}") {
            let _ = param(&query, "token");
            let _ = percent_decode(&query);
            let encoded: String = value
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect();
            proptest::prop_assert_eq!(param(&format!("a=1&token={encoded}"), "token"), Some(value));
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&query) {
                h.insert(header::COOKIE, v);
                let _ = credentials(&h);
            }
        }
    }

    #[test]
    fn the_cookie_is_read_when_no_header_is_sent() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; domicile_console=t.k.n"),
        );
        assert_eq!(credentials(&h), Some(b"Bearer t.k.n".to_vec()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(credentials(&h), Some(b"Bearer x".to_vec()));
        assert_eq!(credentials(&HeaderMap::new()), None);
    }
}
