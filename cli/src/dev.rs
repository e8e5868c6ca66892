//! `domicile dev`: a gateway and three regional nodes (DE, FR, US) on loopback, loaded with a
//! synthetic CX data set, with an example cross-region aggregate and a few pseudonymised records
//! printed as tables.

use std::{net::SocketAddr, path::PathBuf, time::Instant};

use anyhow::Context;
use domicile_gateway::auth::AuthConfig;
use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, AggregateResponse, Channel, ConsentAction, ConsentSource,
    DataCategory, Dimension, FollowUp, FollowUpPriority, ListFollowUpsRequest, Metric,
    OpenFollowUpRequest, PlaceLegalHoldRequest, PseudonymisedInteraction, Purpose,
    QueryRecordsRequest, RecordConsentRequest, RecordQuery, RegionStatus, ReportIncidentRequest,
    SubjectRef, SubjectRequestKind, SubmitSubjectRequestRequest, TimeRange, WithdrawConsentRequest,
};

use crate::{
    client,
    federation::Federation,
    synth, table,
    token::{self, TokenClaims},
};

/// Options of `domicile dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Gateway listen address.
    pub listen: SocketAddr,
    /// Data directory; a temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Subjects per region.
    pub subjects: usize,
    /// Interactions per region.
    pub interactions: usize,
    /// Generator seed.
    pub seed: u64,
    /// Tenant to load the data under.
    pub tenant: String,
    /// Serve the gateway without authentication (logs a warning). Mutual TLS between gateway
    /// and nodes stays on.
    pub insecure: bool,
    /// Keep the nodes' data in a throwaway PostgreSQL cluster rather than SQLite files.
    pub postgres: bool,
}

/// A running `domicile dev`: the federation, and the token that calls it.
#[derive(Debug)]
pub struct Dev {
    /// The federation.
    pub federation: Federation,
    /// A token for the dev tenant with every purpose and operation (`None` with `insecure`).
    pub token: Option<String>,
    /// The HS256 secret file, for `domicile token --secret-file` (`None` with `insecure`).
    pub secret_file: Option<std::path::PathBuf>,
    /// Whether the data directory held a data set from an earlier start (served, not reloaded).
    pub reused: bool,
    _auth_dir: Option<tempfile::TempDir>,
}

/// The development HS256 secret in `dir` (made, mode 0600, when missing).
fn dev_secret(dir: &std::path::Path) -> anyhow::Result<(std::path::PathBuf, Vec<u8>)> {
    let path = dir.join("hs256.secret");
    if !path.exists() {
        std::fs::create_dir_all(dir)?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
        crate::certs::write_private(&path, hex::encode(bytes).as_bytes())?;
    }
    let secret = std::fs::read(&path)?;
    Ok((path, secret))
}

/// The regions `dev` starts.
pub const DEV_REGIONS: &[(&str, &[&str])] =
    &[("eu-de", &["DE"]), ("eu-fr", &["FR"]), ("us", &["US"])];

/// The example query: NPS, CSAT and volume by country and channel.
pub fn example_request(tenant: &str) -> AggregateRequest {
    AggregateRequest {
        tenant_id: tenant.to_owned(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![
                Metric::Count as i32,
                Metric::DistinctSubjects as i32,
                Metric::Nps as i32,
                Metric::CsatMean as i32,
                Metric::HandleTimeMean as i32,
            ],
            group_by: vec![Dimension::Country as i32, Dimension::Channel as i32],
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: false,
    }
}

fn fmt_value(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

fn channel_name(raw: i32) -> String {
    Channel::try_from(raw)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("CHANNEL_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// An aggregate answer as JSON for scripts: groups (key and metric values), privacy,
/// coverage and the attestation's releases.
pub fn aggregate_json(resp: &AggregateResponse) -> serde_json::Value {
    let groups: Vec<_> = resp
        .groups
        .iter()
        .map(|g| {
            let key = g.key.clone().unwrap_or_default();
            let values: serde_json::Map<String, serde_json::Value> = g
                .values
                .iter()
                .map(|v| {
                    (
                        Metric::try_from(v.metric)
                            .map_or_else(|_| v.metric.to_string(), |m| m.as_str_name().to_owned()),
                        serde_json::json!(v.value),
                    )
                })
                .collect();
            serde_json::json!({
                "region": key.region_id, "country": key.country,
                "channel": channel_name(key.channel), "period": key.period,
                "values": values,
            })
        })
        .collect();
    let coverage: Vec<_> = resp
        .coverage
        .iter()
        .map(|c| {
            serde_json::json!({
                "region": c.region_id,
                "status": RegionStatus::try_from(c.status).map_or("", |s| s.as_str_name()),
                "detail": c.detail, "latency_ms": c.latency_ms,
            })
        })
        .collect();
    let privacy = resp.privacy.unwrap_or_default();
    serde_json::json!({
        "groups": groups,
        "suppressed_groups": resp.suppressed_groups,
        "min_group_size": privacy.min_group_size,
        "epsilon": privacy.epsilon,
        "coverage": coverage,
    })
}

/// Renders an aggregate answer (groups and coverage) for a terminal. Key columns appear when
/// some group has a value for them.
pub fn render_aggregate(resp: &AggregateResponse) -> String {
    let keys: Vec<_> = resp
        .groups
        .iter()
        .map(|g| g.key.clone().unwrap_or_default())
        .collect();
    let show = [
        keys.iter().any(|k| !k.region_id.is_empty()),
        keys.iter().any(|k| !k.country.is_empty()),
        keys.iter().any(|k| k.channel != 0),
        keys.iter().any(|k| !k.period.is_empty()),
    ];
    let rows: Vec<Vec<String>> = resp
        .groups
        .iter()
        .zip(&keys)
        .map(|(g, key)| {
            let parts = [
                key.region_id.clone(),
                key.country.clone(),
                channel_name(key.channel),
                key.period.clone(),
            ];
            let mut row: Vec<String> = parts
                .into_iter()
                .zip(show)
                .filter(|(_, shown)| *shown)
                .map(|(p, _)| p)
                .collect();
            for v in &g.values {
                let decimals = match Metric::try_from(v.metric) {
                    Ok(Metric::Count | Metric::DistinctSubjects) => 0,
                    Ok(Metric::CsatMean) => 2,
                    _ => 1,
                };
                row.push(fmt_value(v.value, decimals));
            }
            row
        })
        .collect();
    let mut headers: Vec<&str> = ["region", "country", "channel", "period"]
        .into_iter()
        .zip(show)
        .filter(|(_, shown)| *shown)
        .map(|(h, _)| h)
        .collect();
    headers.extend([
        " interactions",
        " subjects",
        " NPS",
        " CSAT",
        " handle time (s)",
    ]);
    let mut out = table::render(&headers, &rows);
    out.push_str(&format!(
        "\n{} groups released, {} suppressed (fewer than k = {} distinct subjects)\n",
        resp.groups.len(),
        resp.suppressed_groups,
        resp.privacy.as_ref().map_or(0, |p| p.min_group_size)
    ));
    // Every cross-border figure is noised: say so, and what this answer spent.
    let regions = resp
        .attestation
        .as_ref()
        .map(|a| a.regions.as_slice())
        .unwrap_or_default();
    let releases: usize = regions.iter().map(|r| r.derived_from.len()).sum();
    let spent = regions.iter().map(|r| r.epsilon).fold(0.0, f64::max);
    let through = regions
        .iter()
        .filter_map(|r| r.released_through.as_ref())
        .map(|t| t.seconds)
        .max();
    out.push_str(&format!(
        "Figures carry calibrated noise (differential privacy): summed from {releases} noisy \
         releases of closed months, each charged once to its month of data; epsilon newly \
         spent by this call: at most {spent:.1} in one region{}\n",
        through.map_or(String::new(), |t| format!(
            "; data up to {}",
            domicile_node::domain::rollup::day_label(t.div_euclid(86_400))
        ))
    ));
    let coverage: Vec<Vec<String>> = resp
        .coverage
        .iter()
        .map(|c| {
            let status = RegionStatus::try_from(c.status)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("REGION_STATUS_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            vec![
                c.region_id.clone(),
                status,
                c.latency_ms.to_string(),
                c.groups_released.to_string(),
            ]
        })
        .collect();
    out.push_str("\nCoverage:\n");
    out.push_str(&table::render(
        &["region", "status", " ms", " groups"],
        &coverage,
    ));
    out
}

/// Starts the federation (mutual TLS between gateway and nodes; callers authenticated by a
/// development token unless `insecure`), loads it, prints the example, and returns it running.
pub async fn start(opts: &DevOptions) -> anyhow::Result<Dev> {
    let mut builder = Federation::builder()
        .gateway_addr(opts.listen)
        .postgres(opts.postgres);
    for (id, countries) in DEV_REGIONS {
        builder = builder.region(id, countries);
    }
    // The in-country listeners speak mutual TLS with their own CA, one certificate per role.
    builder = builder.local_principals(&DEV_LOCAL_PRINCIPALS);
    if let Some(dir) = &opts.data_dir {
        builder = builder.data_dir(dir);
    }
    let (auth_dir, token, secret_file) = if opts.insecure {
        tracing::warn!("--insecure: the gateway serves without authentication");
        (None, None, None)
    } else {
        let (guard, dir) = match &opts.data_dir {
            Some(d) => (None, d.join("auth")),
            None => {
                let t = tempfile::tempdir()?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        let (path, secret) = dev_secret(&dir)?;
        builder = builder.auth(AuthConfig {
            audience: token::DEV_AUDIENCE.into(),
            issuer: None,
            hs256_secret_file: Some(path.clone()),
            jwks_file: None,
            leeway_seconds: 30,
            clients: Vec::new(),
        });
        let minted = token::mint(&secret, &TokenClaims::everything(&opts.tenant, 12))?;
        (guard, Some(minted), Some(path))
    };
    let federation = builder.start().await?;
    println!("Domicile dev federation");
    println!(
        "  gateway  {}  (domicile.v1.Gateway, health, reflection)",
        federation.gateway_addr
    );
    for n in &federation.nodes {
        println!(
            "  node     {}  region {:<6} {}",
            n.addr,
            n.region_id,
            n.backend.describe()
        );
    }

    let mut gw = client::connect_with(
        &federation.gateway_addr.to_string(),
        &client::ConnectOptions {
            token: token.clone(),
            ..Default::default()
        },
    )
    .await?;
    // A data directory `domicile dev` loaded before is served as it is: no reload (the
    // records would be duplicates, and the erasure and incident of the activity are done).
    let marker = opts.data_dir.as_ref().map(|d| d.join(LOADED_MARKER));
    let reused = marker.as_ref().is_some_and(|m| m.exists());
    if reused {
        println!(
            "\nServing the data already in {} (loaded by an earlier `domicile dev`; remove the \
             directory for a fresh load)",
            opts.data_dir
                .as_ref()
                .map_or(String::new(), |d| d.display().to_string())
        );
    } else {
        load(&mut gw, opts, &federation).await?;
    }

    let response = gw
        .aggregate(example_request(&opts.tenant))
        .await?
        .into_inner();
    println!("\nExample: Aggregate NPS, CSAT and volume by country and channel, all regions:\n");
    print!("{}", render_aggregate(&response));
    let sample = sample_records(&mut gw, &opts.tenant).await?;
    if !reused {
        activity(&mut gw, &opts.tenant, opts.subjects, &federation.dpo.key)
            .await
            .context("recording the consents, requests and incident of the dev data set")?;
        if let Some(m) = &marker {
            std::fs::write(m, "loaded by domicile dev\n")
                .with_context(|| format!("writing {}", m.display()))?;
        }
    }
    println!(
        "\nExample: QueryRecords, pseudonymised interactions with redacted comments (a sample):\n"
    );
    print!("{}", render_records(&sample));
    let follow_ups = if reused {
        gw.list_follow_ups(ListFollowUpsRequest {
            tenant_id: opts.tenant.clone(),
            open_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .follow_ups
    } else {
        open_follow_ups(&mut gw, &opts.tenant, &federation.trust_bundle)
            .await
            .context("opening the dev follow-ups")?
    };
    print!("{}", render_closed_loop(&federation, &follow_ups));
    println!(
        "\nTrust outside the gateway:\n  trust bundle  {}  (clients verify each region's sealing key with it before sealing)\n  DPO key       {}  (signs access, portability, erasure, holds and incidents; registered for tenant {:?} in {})",
        federation.trust_bundle_file.display(),
        federation.dpo.key_file.display(),
        opts.tenant,
        federation.dpo.keys_file.display(),
    );
    match &token {
        Some(t) => println!(
            "\nGateway and nodes talk mutual TLS; callers need a token. For tenant {:?}, every purpose and operation, 12 hours:\n\ntoken: {t}\n\nTry it with grpcurl (reflection is on):\n  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {} domicile.v1.Gateway/ListRegions\nMore tokens: domicile token --secret-file {} --tenant <tenant>",
            opts.tenant,
            federation.gateway_addr,
            secret_file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        ),
        None => println!(
            "\nTry it with grpcurl (reflection is on; --insecure: no token needed):\n  grpcurl -plaintext {} domicile.v1.Gateway/ListRegions",
            federation.gateway_addr
        ),
    }
    Ok(Dev {
        federation,
        token,
        secret_file,
        reused,
        _auth_dir: auth_dir,
    })
}

/// The in-country staff of the dev federation: one certificate per role, valid in every region.
pub const DEV_LOCAL_PRINCIPALS: [(&str, domicile_node::config::LocalRole); 4] = [
    (
        "agent.dev.domicile",
        domicile_node::config::LocalRole::Agent,
    ),
    (
        "supervisor.dev.domicile",
        domicile_node::config::LocalRole::Supervisor,
    ),
    (
        "dpo.dev.domicile",
        domicile_node::config::LocalRole::RegionalDpo,
    ),
    (
        "integration.dev.domicile",
        domicile_node::config::LocalRole::Integration,
    ),
];

/// Opens a follow-up through the gateway for one detractor (NPS 6 or below) of each region,
/// from records released under `PURPOSE_SERVICE` (a call back to put things right), as an
/// analyst would; the cases opened. The synthetic data set ends on a fixed day, older than the
/// follow-up window, so a few of its subjects first answer a survey today.
pub async fn open_follow_ups(
    gw: &mut domicile_client::Gateway,
    tenant: &str,
    bundle: &domicile_proto::trust::TrustBundle,
) -> anyhow::Result<Vec<FollowUp>> {
    let now = domicile_proto::domain::unix_now();
    let mut today = Vec::new();
    for (_, countries) in DEV_REGIONS {
        for &country in *countries {
            for i in 7..10 {
                let id = format!("dev-followup-{}-{i}", country.to_ascii_lowercase());
                today.push(synth::SynthRecord {
                    country: country.to_owned(),
                    idempotency_key: id.clone(),
                    payload: domicile_proto::pb::RecordPayload {
                        record: Some(domicile_proto::pb::record_payload::Record::Interaction(
                            domicile_proto::pb::InteractionRecord {
                                interaction_id: id,
                                subject_external_id: synth::subject_id(country, i),
                                channel: Channel::Phone as i32,
                                started_at: Some(domicile_proto::domain::whole_seconds(
                                    now - 7_200,
                                )),
                                handle_time_seconds: 900,
                                outcome: "unresolved".into(),
                                survey: Some(domicile_proto::pb::SurveyAnswer {
                                    survey_id: "post-call".into(),
                                    nps: Some(2),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        )),
                    },
                });
            }
        }
    }
    let regions = client::regions(gw).await?;
    client::ingest(gw, tenant, &regions, bundle, &today, 100).await?;
    let request = QueryRecordsRequest {
        tenant_id: tenant.to_owned(),
        query: Some(RecordQuery {
            purpose: Purpose::Service as i32,
            time_range: Some(TimeRange {
                start: Some(domicile_proto::domain::whole_seconds(now - 86_400)),
                end: None,
            }),
            limit: 5_000,
            ..Default::default()
        }),
        regions: Vec::new(),
    };
    let mut stream = gw.query_records(request).await?.into_inner();
    let mut detractors = Vec::new();
    while let Some(msg) = stream.message().await? {
        detractors.extend(
            msg.records
                .into_iter()
                .filter(|r| r.nps.is_some_and(|n| n <= 6)),
        );
    }
    let mut opened = Vec::new();
    for (region, _) in DEV_REGIONS {
        for r in detractors
            .iter()
            .filter(|r| r.region_id == *region)
            .take(20)
        {
            let answer = gw
                .open_follow_up(OpenFollowUpRequest {
                    tenant_id: tenant.to_owned(),
                    region_id: r.region_id.clone(),
                    subject_pseudonym: r.subject_pseudonym.clone(),
                    purpose: Purpose::Service as i32,
                    channels: vec![Channel::Phone as i32, Channel::Email as i32],
                    reason: "nps-detractor".into(),
                    priority: FollowUpPriority::High as i32,
                })
                .await;
            // A subject who objected is refused: try the next detractor.
            if let Ok(a) = answer {
                opened.extend(a.into_inner().follow_up);
                break;
            }
        }
    }
    Ok(opened)
}

/// The file that says a data directory was loaded by `domicile dev`.
const LOADED_MARKER: &str = "dev-loaded";

/// Loads the synthetic data set through the gateway, with a progress bar.
async fn load(
    gw: &mut domicile_client::Gateway,
    opts: &DevOptions,
    federation: &Federation,
) -> anyhow::Result<()> {
    let regions = client::regions(gw).await?;
    let started = Instant::now();
    let mut records = Vec::new();
    for (_, countries) in DEV_REGIONS {
        records.extend(synth::generate(&synth::SynthSpec {
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
            subjects: opts.subjects,
            interactions: opts.interactions,
            seed: opts.seed,
        }));
    }
    // A progress bar on standard error (drawn only on a terminal).
    let bar = indicatif::ProgressBar::new(records.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records sealed and ingested ({per_sec})",
        )
        .expect("a valid template"),
    );
    let summary = client::ingest_with_progress(
        gw,
        &opts.tenant,
        &regions,
        &federation.trust_bundle,
        &records,
        1000,
        &|n| bar.inc(n),
    )
    .await
    .context("loading the synthetic data set")?;
    bar.finish_and_clear();
    println!(
        "\nLoaded tenant {:?}: {} records sealed and ingested through the gateway in {:.1} s ({} accepted, {} already present, {} rejected)",
        opts.tenant,
        records.len(),
        started.elapsed().as_secs_f64(),
        summary.accepted,
        summary.duplicate,
        summary.rejected_total()
    );
    anyhow::ensure!(
        summary.rejected_total() == 0,
        "records were rejected: {:?}",
        summary.rejected
    );

    Ok(())
}

/// A consent change for synthetic subject `i` of `country`, as from a web form (a grant carries
/// the hash of a wording).
pub fn synthetic_consent(
    tenant: &str,
    country: &str,
    i: usize,
    purpose: Purpose,
    channel: Channel,
    action: ConsentAction,
) -> RecordConsentRequest {
    RecordConsentRequest {
        tenant_id: tenant.to_owned(),
        subject: Some(SubjectRef {
            country: country.to_owned(),
            external_id: synth::subject_id(country, i),
        }),
        purpose: purpose as i32,
        channel: channel as i32,
        action: action as i32,
        source: ConsentSource::WebForm as i32,
        wording_sha256: if action == ConsentAction::Grant {
            vec![0x5a; 32]
        } else {
            Vec::new()
        },
        actor: "synthetic:web-form".into(),
        token_ttl_seconds: 0,
    }
}

/// What a federation in use has on file besides interactions, so that the console has
/// something to show: consents (granted, pending double opt-in, withdrawn, refused), a noisy
/// aggregate (privacy budget spent), subject requests of every kind (an erasure waiting on a
/// legal hold among them), and an incident. Synthetic subjects only.
pub async fn activity(
    gw: &mut domicile_client::Gateway,
    tenant: &str,
    subjects: usize,
    dpo: &ed25519_dalek::SigningKey,
) -> anyhow::Result<()> {
    let sign = |mut r| {
        domicile_proto::trust::sign_request(&mut r, dpo, domicile_proto::domain::unix_now());
        r
    };
    let subject = |country: &str, i: usize| {
        Some(SubjectRef {
            country: country.to_owned(),
            external_id: synth::subject_id(country, i),
        })
    };
    let consent = |country: &str, i: usize, purpose: Purpose, channel: Channel, action| {
        synthetic_consent(tenant, country, i, purpose, channel, action)
    };
    let now = domicile_proto::domain::unix_now();
    for (_, countries) in DEV_REGIONS {
        for &country in *countries {
            for i in 0..subjects.min(120) {
                let (purpose, channel, action) = match i % 6 {
                    0 | 1 => (Purpose::CxSurvey, Channel::Email, ConsentAction::Grant),
                    2 => (Purpose::Marketing, Channel::Email, ConsentAction::Grant),
                    3 => (Purpose::CxSurvey, Channel::Phone, ConsentAction::Grant),
                    4 => (Purpose::Marketing, Channel::Sms, ConsentAction::Refuse),
                    _ => (Purpose::CxSurvey, Channel::Sms, ConsentAction::Grant),
                };
                gw.record_consent(consent(country, i, purpose, channel, action))
                    .await?;
                if i % 10 == 0 {
                    gw.withdraw_consent(WithdrawConsentRequest {
                        tenant_id: tenant.to_owned(),
                        subject: subject(country, i),
                        purpose: purpose as i32,
                        channel: channel as i32,
                        source: ConsentSource::EmailLink as i32,
                        actor: "dev:activity".into(),
                    })
                    .await?;
                }
            }
            let request = |i: usize, kind: SubjectRequestKind| SubmitSubjectRequestRequest {
                verification: Some(domicile_proto::rights::verified_by_platform(
                    "dev-portal-session",
                    "dev:portal",
                )),
                tenant_id: tenant.to_owned(),
                subject: subject(country, i),
                kind: kind as i32,
                recipient_public_key: if matches!(
                    kind,
                    SubjectRequestKind::Access | SubjectRequestKind::Portability
                ) {
                    domicile_proto::seal::SealingKeyPair::generate()
                        .public()
                        .as_bytes()
                        .to_vec()
                } else {
                    Vec::new()
                },
                purposes: if kind == SubjectRequestKind::Objection {
                    vec![Purpose::Marketing as i32]
                } else {
                    Vec::new()
                },
                actor: "dev:dpo-desk".into(),
                ..Default::default()
            };
            for (i, kind) in [
                (subjects.saturating_sub(1), SubjectRequestKind::Access),
                (subjects.saturating_sub(2), SubjectRequestKind::Portability),
                (subjects.saturating_sub(3), SubjectRequestKind::Restriction),
                (subjects.saturating_sub(4), SubjectRequestKind::Objection),
                (subjects.saturating_sub(5), SubjectRequestKind::Erasure),
            ] {
                gw.submit_subject_request(sign(request(i, kind))).await?;
            }
            // Evidence in a dispute: the erasure waits for the hold (an open request).
            let held = subjects.saturating_sub(6);
            let mut hold = PlaceLegalHoldRequest {
                tenant_id: tenant.to_owned(),
                subject: subject(country, held),
                reason: "dev: case 2026-0042".into(),
                interactions: None,
                expires_at: Some(domicile_proto::domain::whole_seconds(now + 60 * 86_400)),
                dpo_signature: None,
            };
            domicile_proto::trust::sign_request(&mut hold, dpo, domicile_proto::domain::unix_now());
            gw.place_legal_hold(hold).await?;
            gw.submit_subject_request(sign(request(held, SubjectRequestKind::Erasure)))
                .await?;
        }
    }
    // Grouped by day: the day releases, for the console's charts.
    let mut by_day = example_request(tenant);
    if let Some(q) = by_day.query.as_mut() {
        q.group_by = vec![domicile_proto::pb::Dimension::Day as i32];
        q.time_range = Some(TimeRange {
            start: Some(domicile_proto::domain::whole_seconds(now - 14 * 86_400)),
            end: Some(domicile_proto::domain::whole_seconds(now)),
        });
    }
    gw.aggregate(by_day).await?;
    let mut incident = ReportIncidentRequest {
        tenant_id: tenant.to_owned(),
        regions: Vec::new(),
        window: Some(TimeRange {
            start: Some(domicile_proto::domain::whole_seconds(now - 30 * 86_400)),
            // The end is exclusive and in whole seconds: records stored in this very second
            // (a small federation loads in well under one) must still count as exposed.
            end: Some(domicile_proto::domain::whole_seconds(
                domicile_proto::domain::unix_now() + 1,
            )),
        }),
        categories: vec![
            DataCategory::ContactDetails as i32,
            DataCategory::Interactions as i32,
        ],
        description: "dev: an export bucket was world-readable (synthetic)".into(),
        detected_at: Some(domicile_proto::domain::whole_seconds(now - 5 * 3_600)),
        dpo_signature: None,
    };
    domicile_proto::trust::sign_request(&mut incident, dpo, domicile_proto::domain::unix_now());
    gw.report_incident(incident).await?;
    Ok(())
}

/// A few records with comments from each region, preferring ones the redaction touched.
async fn sample_records(
    gw: &mut domicile_client::Gateway,
    tenant: &str,
) -> anyhow::Result<Vec<PseudonymisedInteraction>> {
    let request = QueryRecordsRequest {
        tenant_id: tenant.to_owned(),
        query: Some(RecordQuery {
            purpose: Purpose::CxAnalytics as i32,
            limit: 3_000,
            ..Default::default()
        }),
        regions: Vec::new(),
    };
    let mut stream = gw.query_records(request).await?.into_inner();
    let mut all = Vec::new();
    while let Some(msg) = stream.message().await? {
        all.extend(msg.records);
    }
    let mut sample = Vec::new();
    for (region, _) in DEV_REGIONS {
        let mut mine: Vec<_> = all
            .iter()
            .filter(|r| r.region_id == *region && !r.comment_redacted.is_empty())
            .collect();
        mine.sort_by_key(|r| !r.comment_redacted.contains('['));
        sample.extend(mine.into_iter().take(2).cloned());
    }
    Ok(sample)
}

/// The closed loop for a terminal: the open follow-ups, and where the in-country listeners are
/// with the staff's certificates.
pub fn render_closed_loop(federation: &Federation, follow_ups: &[FollowUp]) -> String {
    let mut out = String::from(
        "\nThe closed loop: follow-ups opened through the gateway for detractors (no identity crossed):\n",
    );
    for f in follow_ups {
        out.push_str(&format!("  follow-up  {}\n", f.follow_up_id));
    }
    out.push_str("In-country listeners (LocalNode, mutual TLS with the regions' own CA):\n");
    for n in &federation.nodes {
        if let Some(addr) = n.local_addr {
            out.push_str(&format!(
                "  in-country {:<6} localhost:{}\n",
                n.region_id,
                addr.port()
            ));
        }
    }
    if let Some(pki) = &federation.local_pki {
        let (cert, key) = pki.pair(DEV_LOCAL_PRINCIPALS[0].0);
        out.push_str(&format!(
            "  agent certificate {}\n  agent key         {}\n  CA                {}\n  (supervisor, dpo and integration certificates beside it)\n",
            cert.display(),
            key.display(),
            pki.ca().display()
        ));
    }
    out
}

/// Renders pseudonymised records for a terminal.
pub fn render_records(records: &[PseudonymisedInteraction]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.subject_pseudonym.chars().take(12).collect(),
                r.region_id.clone(),
                r.country.clone(),
                r.birth_decade.to_string(),
                r.postal_prefix.clone(),
                r.nps.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                r.comment_redacted.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "subject", "region", "country", " born", "postal", " nps", "comment",
        ],
        &rows,
    )
}
