//! `soak`: a mixed workload held at about 70% of the measured capacity while processes fail.
//!
//! Sealed ingest, contact checks, aggregates, record queries, consent writes and erasures run
//! through the gateway of three regions. One node is killed with SIGKILL and started again
//! twice, and the gateway is restarted once. Each minute's calls per second, p99 by RPC, errors
//! by code and the processes' memory are reported. At the end the data is checked: every
//! acknowledged ingest is stored exactly once, every acknowledged erasure took its subject's
//! rows, every acknowledged consent write is in the ledger, and every region's audit chain
//! verifies.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use domicile_proto::{
    pb::{
        Channel, CheckContactPermissionRequest, ConsentAction, ConsentSource, IngestRequest,
        Purpose, QueryRecordsRequest, RecordConsentRequest, RecordQuery, RecordStatus, RegionInfo,
        RegionStatus, SubjectRef, SubjectRequestKind, SubmitSubjectRequestRequest,
    },
    seal::PublicSealingKey,
};
use tonic::Code;

use crate::{
    Args,
    cluster::{Cluster, Region},
    data::{Generator, Row, TENANT, seal},
    percentile,
    scenarios::{dashboard_query, load, regions_of, three_regions},
};

/// Interactions of each subject of the erasure pool.
const POOL_INTERACTIONS: usize = 20;
/// Interactions each region holds before the soak, besides the erasure pool (`--quick`: 5,000):
/// a node in service has a history, and its SQLite caches (56 MiB at most) fill over it during
/// the first minute, so that memory from minute 2 on shows growth that is not the caches
/// filling. Started nearly empty, the nodes' RSS grew by 33% from minute 2 to the end as their
/// files grew to 270,000 interactions, flat over the last three minutes (BENCHMARKS.md).
const HISTORY: usize = 250_000;
/// Interactions of each subject of the history.
const HISTORY_INTERACTIONS: usize = 10;
/// Records per ingest request.
const INGEST_BATCH: usize = 10;
/// Calls in flight at most.
const WORKERS: usize = 24;
/// How long a killed node stays down before it is started again.
const SUPERVISOR_DELAY: Duration = Duration::from_secs(2);

/// The RPCs of the mix, with their share of the calls (out of 100).
const MIX: [(Rpc, u32); 6] = [
    (Rpc::Ingest, 25),
    (Rpc::Check, 40),
    (Rpc::Aggregate, 10),
    (Rpc::Records, 5),
    (Rpc::Consent, 19),
    (Rpc::Erasure, 1),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    Ingest,
    Check,
    Aggregate,
    Records,
    Consent,
    Erasure,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Self::Ingest => "Ingest",
            Self::Check => "CheckContactPermission",
            Self::Aggregate => "Aggregate",
            Self::Records => "QueryRecords",
            Self::Consent => "RecordConsent",
            Self::Erasure => "erasure",
        }
    }

    /// The `n`-th call's RPC, spread over the mix.
    fn of(n: u64) -> Self {
        let mut at = (n.wrapping_mul(37) % 100) as u32;
        for (rpc, share) in MIX {
            if at < share {
                return rpc;
            }
            at -= share;
        }
        Rpc::Check
    }
}

/// One call: when it started (since the soak began), how long it took, and its gRPC code
/// (`Ok` for an answer).
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rpc: Rpc,
    took: Duration,
    code: Code,
    /// An aggregate or record query answered without every region.
    gap: bool,
}

/// What the workload wrote and had acknowledged, per region (index in `three_regions`).
#[derive(Debug, Default)]
struct Ledger {
    ingested: [AtomicU64; 3],
    erased: [AtomicU64; 3],
    consents_acked: [AtomicU64; 3],
    consents_sent: [AtomicU64; 3],
}

/// Everything the workers share.
struct Shared {
    /// The DPO key erasures are signed with.
    dpo: ed25519_dalek::SigningKey,
    cluster_regions: Vec<Region>,
    infos: Vec<RegionInfo>,
    keys: Vec<PublicSealingKey>,
    samples: Mutex<Vec<Sample>>,
    ledger: Ledger,
    calls: AtomicU64,
    pool_next: [AtomicUsize; 3],
    pool_size: usize,
    /// Interactions of each region's history, loaded before the pool.
    history: usize,
    start: Instant,
    /// Writes still being retried may go on after the calls stop, until this.
    give_up: Mutex<Option<Instant>>,
}

impl Shared {
    fn record(&self, rpc: Rpc, began: Instant, code: Code, gap: bool) {
        let sample = Sample {
            at: began.duration_since(self.start),
            rpc,
            took: began.elapsed(),
            code,
            gap,
        };
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sample);
    }

    fn given_up(&self) -> bool {
        self.give_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() > t)
    }
}

/// The outcome of one attempt: the code and whether regions were missing.
type Attempt = (Code, bool);

fn code_of(e: &anyhow::Error) -> Code {
    let code = e
        .downcast_ref::<tonic::Status>()
        .map_or(Code::Unknown, tonic::Status::code);
    // The table counts codes; an unexpected one is also printed, so that a run says why.
    if !matches!(code, Code::Unavailable | Code::DeadlineExceeded) {
        eprintln!("soak: unexpected {code:?}: {e:#}");
    }
    code
}

/// Runs call `n` of the mix; writes retry until acknowledged (the same idempotency keys, the
/// same erasure), each attempt a sample.
async fn call(shared: &Shared, client: &mut domicile_client::Gateway, n: u64) {
    let rpc = Rpc::of(n);
    let region = (n % 3) as usize;
    let info = &shared.infos[region];
    let country = shared.cluster_regions[region].countries[0].clone();
    match rpc {
        Rpc::Ingest => {
            let rows: Vec<Row> = Generator::new(
                std::slice::from_ref(&country),
                300,
                INGEST_BATCH,
                n as u32,
                7,
            )
            .enumerate()
            .map(|(j, mut r)| {
                r.id = format!("soak-{n}-{j}");
                r.subject = format!("soak-{}-{}", country, (n as usize * 7 + j) % 300);
                r
            })
            .collect();
            let Ok(envelope) = seal(&info.region_id, &shared.keys[region], &rows) else {
                return;
            };
            loop {
                let began = Instant::now();
                let answer = client
                    .ingest(IngestRequest {
                        tenant_id: TENANT.into(),
                        envelopes: vec![envelope.clone()],
                    })
                    .await;
                let acked = match &answer {
                    Ok(r) => r.get_ref().results.iter().all(|r| {
                        r.status == RecordStatus::Accepted as i32
                            || r.status == RecordStatus::Duplicate as i32
                    }),
                    Err(_) => false,
                };
                let code = match answer {
                    Ok(_) if acked => Code::Ok,
                    // Results with a region unavailable: the batch is sent again.
                    Ok(_) => Code::Unavailable,
                    Err(s) => s.code(),
                };
                shared.record(rpc, began, code, false);
                if acked {
                    shared.ledger.ingested[region].fetch_add(rows.len() as u64, Ordering::Relaxed);
                    return;
                }
                if shared.given_up() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Rpc::Erasure => {
            let k = shared.pool_next[region].fetch_add(1, Ordering::Relaxed);
            if k >= shared.pool_size {
                return;
            }
            let mut retried = false;
            loop {
                let began = Instant::now();
                let answer = client
                    .submit_subject_request(domicile_proto::trust::signed(
                        SubmitSubjectRequestRequest {
                            verification: Some(domicile_proto::rights::verified_by_platform(
                                "test-session",
                                "test-platform",
                            )),
                            tenant_id: TENANT.into(),
                            subject: Some(SubjectRef {
                                country: country.clone(),
                                external_id: pool_subject(&country, k),
                            }),
                            kind: SubjectRequestKind::Erasure as i32,
                            actor: "soak".into(),
                            ..Default::default()
                        },
                        &shared.dpo,
                    ))
                    .await;
                let code = match &answer {
                    Ok(_) => Code::Ok,
                    Err(s) => s.code(),
                };
                shared.record(rpc, began, code, false);
                // A retry that finds nothing: the first attempt erased it, unacknowledged.
                if code == Code::Ok || (retried && code == Code::NotFound) {
                    shared.ledger.erased[region].fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if shared.given_up() {
                    return;
                }
                retried = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Rpc::Consent => {
            let began = Instant::now();
            shared.ledger.consents_sent[region].fetch_add(1, Ordering::Relaxed);
            let answer = client
                .record_consent(RecordConsentRequest {
                    tenant_id: TENANT.into(),
                    subject: Some(SubjectRef {
                        country,
                        external_id: format!("consent-{}", n % 5_000),
                    }),
                    purpose: Purpose::Marketing as i32,
                    channel: Channel::Email as i32,
                    action: if n.is_multiple_of(2) {
                        ConsentAction::Grant
                    } else {
                        ConsentAction::Refuse
                    } as i32,
                    wording_sha256: if n.is_multiple_of(2) {
                        vec![7; 32]
                    } else {
                        Vec::new()
                    },
                    source: ConsentSource::WebForm as i32,
                    actor: "soak".into(),
                    ..Default::default()
                })
                .await;
            let code = match answer {
                Ok(_) => {
                    shared.ledger.consents_acked[region].fetch_add(1, Ordering::Relaxed);
                    Code::Ok
                }
                Err(s) => s.code(),
            };
            shared.record(rpc, began, code, false);
        }
        Rpc::Check | Rpc::Aggregate | Rpc::Records => {
            let began = Instant::now();
            let (code, gap): Attempt = match rpc {
                Rpc::Check => match client
                    .check_contact_permission(CheckContactPermissionRequest {
                        tenant_id: TENANT.into(),
                        subject: Some(SubjectRef {
                            country,
                            external_id: format!("consent-{}", n % 5_000),
                        }),
                        purpose: Purpose::Marketing as i32,
                        channel: Channel::Email as i32,
                    })
                    .await
                {
                    Ok(_) => (Code::Ok, false),
                    Err(s) => (s.code(), false),
                },
                Rpc::Aggregate => {
                    let mut q = dashboard_query();
                    q.require_all_regions = false;
                    match client.aggregate(q).await {
                        Ok(a) => (
                            Code::Ok,
                            a.get_ref()
                                .coverage
                                .iter()
                                .any(|c| c.status != RegionStatus::Ok as i32),
                        ),
                        Err(s) => (s.code(), false),
                    }
                }
                _ => match records(client).await {
                    Ok(gap) => (Code::Ok, gap),
                    Err(e) => (code_of(&e), false),
                },
            };
            shared.record(rpc, began, code, gap);
        }
    }
}

/// A record query read to its end: whether a region was missing from it.
async fn records(client: &mut domicile_client::Gateway) -> anyhow::Result<bool> {
    let mut stream = client
        .query_records(QueryRecordsRequest {
            tenant_id: TENANT.into(),
            query: Some(RecordQuery {
                purpose: Purpose::CxAnalytics as i32,
                limit: 100,
                ..Default::default()
            }),
            regions: Vec::new(),
        })
        .await?
        .into_inner();
    let mut gap = false;
    while let Some(m) = stream.message().await? {
        if let Some(s) = m.summary {
            gap = s
                .coverage
                .iter()
                .any(|c| c.status != RegionStatus::Ok as i32);
        }
    }
    Ok(gap)
}

fn pool_subject(country: &str, k: usize) -> String {
    format!("pool-{country}-{k}")
}

/// The soak scenario.
pub async fn soak(args: &Args) -> anyhow::Result<String> {
    let minutes: u64 = if args.quick { 2 } else { 10 };
    let total = Duration::from_secs(minutes * 60);
    let dir = tempfile::tempdir()?;
    let regions = three_regions();
    let cluster = Cluster::start(dir.path(), &regions, None)?;
    let infos = regions_of(&cluster).await?;
    let keys = infos
        .iter()
        .map(|i| {
            PublicSealingKey::from_bytes(
                &i.sealing_key
                    .as_ref()
                    .context("a region without a sealing key")?
                    .public_key,
            )
            .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The history, then the erasure pool: more subjects than the soak can erase.
    let history = if args.quick { 5_000 } else { HISTORY };
    let pool_size = if args.quick { 500 } else { 2_500 };
    let sources = regions
        .iter()
        .zip(&infos)
        .map(|(r, info)| {
            let country = r.countries[0].clone();
            let past = {
                let country = country.clone();
                let subjects = history / HISTORY_INTERACTIONS;
                Generator::new(&r.countries, subjects, history, 11, 3)
                    .enumerate()
                    .map(move |(j, mut row)| {
                        row.subject = format!("hist-{country}-{}", j % subjects);
                        row.id = format!("hist-{country}-{j}");
                        row
                    })
            };
            let pool = Generator::new(&r.countries, pool_size, pool_size * POOL_INTERACTIONS, 9, 5)
                .enumerate()
                .map(move |(j, mut row)| {
                    row.subject = pool_subject(&country, j % pool_size);
                    row.id = format!("pool-{country}-{j}");
                    row
                });
            (
                info.clone(),
                Box::new(past.chain(pool)) as Box<dyn Iterator<Item = Row> + Send>,
            )
        })
        .collect();
    load(&cluster, sources, 1_000, 2).await?;
    let client = cluster.client().await?;
    // The first aggregate makes the differentially private releases; the soak's sum them.
    client.clone().aggregate(dashboard_query()).await?;

    let shared = Arc::new(Shared {
        dpo: cluster.dpo.key.clone(),
        cluster_regions: regions.clone(),
        infos,
        keys,
        samples: Mutex::new(Vec::new()),
        ledger: Ledger::default(),
        calls: AtomicU64::new(0),
        pool_next: Default::default(),
        pool_size,
        history,
        start: Instant::now(),
        give_up: Mutex::new(None),
    });
    // Only the fault schedule touches the processes: the callers never wait for it.
    let cluster = Arc::new(Mutex::new(cluster));

    // Capacity: the mix with every worker calling back to back.
    let calibrate = Duration::from_secs(if args.quick { 5 } else { 20 });
    let before = shared.calls.load(Ordering::Relaxed);
    run_workers(&shared, &client, calibrate, None).await;
    let capacity = (shared.calls.load(Ordering::Relaxed) - before) as f64 / calibrate.as_secs_f64();
    // A fixed rate (DOMICILE_BENCH_SOAK_RATE, calls/s) holds two builds to the same load when
    // they are compared; by default 70% of what was just measured.
    let rate = std::env::var("DOMICILE_BENCH_SOAK_RATE")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
        .unwrap_or(0.7 * capacity);
    shared
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();

    // The soak: the same mix at 70% of that, paced, with the faults on a schedule.
    let soak_start = Instant::now();
    let offset = soak_start.duration_since(shared.start);
    let stopped = Arc::new(AtomicBool::new(false));
    let rss = Arc::new(Mutex::new(Vec::new()));
    let faults = {
        let cluster = cluster.clone();
        let rss = rss.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let mut windows = Vec::new();
            let plan = [
                (0.25, "node eu-de killed (SIGKILL) and started again"),
                (0.55, "node eu-de killed (SIGKILL) and started again"),
                (0.80, "gateway restarted (SIGTERM, then started again)"),
            ];
            let mut next_rss = Duration::ZERO;
            let mut step = 0;
            while !stopped.load(Ordering::Relaxed) {
                let now = soak_start.elapsed();
                if now >= next_rss {
                    let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                    let nodes: Vec<f64> = c.nodes.iter().map(|n| n.rss_mib()).collect();
                    let gateway = c.gateway.rss_mib();
                    drop(c);
                    rss.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((now, gateway, nodes));
                    next_rss += Duration::from_secs(15);
                }
                if step < plan.len() && now >= total.mul_f64(plan[step].0) {
                    let began = soak_start.elapsed();
                    let c = cluster.clone();
                    let node = step < 2;
                    // Waiting for the process to listen again blocks: off the runtime.
                    let restarted = tokio::task::spawn_blocking(move || {
                        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                        if node {
                            c.nodes[0].restart(true, SUPERVISOR_DELAY)
                        } else {
                            c.gateway.restart(false, Duration::ZERO)
                        }
                    })
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r);
                    windows.push((began, soak_start.elapsed(), plan[step].1, restarted.is_ok()));
                    step += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            windows
        })
    };
    run_workers(&shared, &client, total, Some(rate)).await;
    stopped.store(true, Ordering::Relaxed);
    let windows = faults.await?;

    // The checks, on the databases themselves (the processes still running).
    let checks = check(dir.path(), &regions, &shared, pool_size)?;
    let samples: Vec<Sample> = shared
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|s| Sample {
            at: s.at.saturating_sub(offset),
            ..*s
        })
        .collect();
    let rss = rss.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(report(
        minutes,
        capacity,
        rate,
        &samples,
        &windows,
        &rss,
        &checks,
        (history, pool_size),
    ))
}

/// Runs the mix for `how_long` with [`WORKERS`] callers: back to back, or paced at `rate`
/// calls per second (a call whose turn comes while every worker is busy is sent late).
async fn run_workers(
    shared: &Arc<Shared>,
    client: &domicile_client::Gateway,
    how_long: Duration,
    rate: Option<f64>,
) {
    let end = Instant::now() + how_long;
    *shared.give_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(end + Duration::from_secs(60));
    let paced_start = Instant::now();
    let ticket = Arc::new(AtomicU64::new(0));
    let workers = (0..WORKERS).map(|_| {
        let shared = shared.clone();
        let mut client = client.clone();
        let ticket = ticket.clone();
        async move {
            while Instant::now() < end {
                let t = ticket.fetch_add(1, Ordering::Relaxed);
                if let Some(rate) = rate {
                    let due = paced_start + Duration::from_secs_f64(t as f64 / rate);
                    if due > end {
                        return;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                let n = shared.calls.fetch_add(1, Ordering::Relaxed);
                call(&shared, &mut client, n).await;
            }
        }
    });
    futures::future::join_all(workers).await;
}

/// What the end-of-soak checks found, per region.
struct Checks {
    rows: Vec<String>,
    lost: i64,
    duplicated: i64,
    audit_ok: bool,
}

fn check(
    dir: &std::path::Path,
    regions: &[Region],
    shared: &Shared,
    pool_size: usize,
) -> anyhow::Result<Checks> {
    let pki = crate::cluster::pki(dir, regions)?;
    let mut rows = Vec::new();
    let (mut lost, mut duplicated, mut audit_ok) = (0, 0, true);
    for (i, region) in regions.iter().enumerate() {
        let config = crate::cluster::node_config(dir, &pki, region, None);
        let conn =
            domicile_node::store::Backend::Sqlite(config.database.clone()).connect_read_only()?;
        // Erasures answered before the end: their purges finish first.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let queued: i64 =
                conn.query_row("SELECT COUNT(*) FROM erasure_purges", [], |r| r.get(0))?;
            if queued == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}: purges never ended",
                region.id
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let stored: i64 = conn.query_row("SELECT COUNT(*) FROM interactions", [], |r| r.get(0))?;
        let erased = shared.ledger.erased[i].load(Ordering::Relaxed) as i64;
        let ingested = shared.ledger.ingested[i].load(Ordering::Relaxed) as i64;
        let expected = (shared.history + pool_size * POOL_INTERACTIONS) as i64
            - erased * POOL_INTERACTIONS as i64
            + ingested;
        if stored < expected {
            lost += expected - stored;
        } else {
            duplicated += stored - expected;
        }
        let ledger: i64 = conn.query_row(
            "SELECT COUNT(*) FROM consent_ledger WHERE purpose = $1",
            [Purpose::Marketing as i64],
            |r| r.get(0),
        )?;
        let acked = shared.ledger.consents_acked[i].load(Ordering::Relaxed) as i64;
        let sent = shared.ledger.consents_sent[i].load(Ordering::Relaxed) as i64;
        if ledger < acked {
            lost += acked - ledger;
        }
        if ledger > sent {
            duplicated += ledger - sent;
        }
        let seed = domicile_node::store::keys::load_secret(&config.audit_key_path(), "audit")?;
        let log = domicile_node::domain::audit::AuditLog::new(&region.id, &seed, 0);
        let verified =
            domicile_node::domain::audit::verify(&conn, &region.id, &log.public_key())?.is_ok();
        audit_ok &= verified;
        rows.push(format!(
            "| {} | {ingested} | {erased} ({} interactions) | {expected} | {stored} | {acked} of {sent} | {ledger} | {} |",
            region.id,
            erased * POOL_INTERACTIONS as i64,
            if verified { "verifies" } else { "**broken**" }
        ));
    }
    Ok(Checks {
        rows,
        lost,
        duplicated,
        audit_ok,
    })
}

#[allow(clippy::too_many_arguments)]
fn report(
    minutes: u64,
    capacity: f64,
    rate: f64,
    samples: &[Sample],
    windows: &[(Duration, Duration, &str, bool)],
    rss: &[(Duration, f64, Vec<f64>)],
    checks: &Checks,
    (history, pool_size): (usize, usize),
) -> String {
    let share = 100.0 * rate / capacity;
    let rpcs = [
        Rpc::Ingest,
        Rpc::Check,
        Rpc::Aggregate,
        Rpc::Records,
        Rpc::Consent,
        Rpc::Erasure,
    ];
    let mut table = format!(
        "| minute | calls/s | {} | errors by code | answers missing a region | RSS gateway / nodes (MiB, end of minute) |\n|---:|---:|{}---|---:|---|\n",
        rpcs.map(|r| format!("p99 {}", r.name())).join(" | "),
        "---:|".repeat(rpcs.len())
    );
    // A grace of 5 s after a process is back: clients reconnect, the gateway sees the node.
    let grace = Duration::from_secs(5);
    // A call counts as in a window when it was in flight during it.
    let in_window = |s: &Sample| {
        windows
            .iter()
            .any(|(from, to, _, _)| s.at + s.took >= *from && s.at <= *to + grace)
    };
    let mut outside = BTreeMap::<String, u64>::new();
    for s in samples {
        if s.code != Code::Ok && !in_window(s) {
            *outside.entry(format!("{:?}", s.code)).or_default() += 1;
        }
    }
    for m in 0..minutes {
        let from = Duration::from_secs(m * 60);
        let to = from + Duration::from_secs(60);
        let this: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .collect();
        let p99 = |rpc: Rpc| {
            let mut t: Vec<Duration> = this
                .iter()
                .filter(|s| s.rpc == rpc && s.code == Code::Ok)
                .map(|s| s.took)
                .collect();
            t.sort();
            if t.is_empty() {
                "—".to_owned()
            } else {
                crate::ms(percentile(&t, 0.99))
            }
        };
        let mut errors = BTreeMap::<String, u64>::new();
        for s in this.iter().filter(|s| s.code != Code::Ok) {
            *errors.entry(format!("{:?}", s.code)).or_default() += 1;
        }
        let errors = if errors.is_empty() {
            "none".to_owned()
        } else {
            errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let memory =
            rss.iter()
                .rfind(|(at, _, _)| *at < to)
                .map_or("—".to_owned(), |(_, g, n)| {
                    format!(
                        "{g:.0} / {}",
                        n.iter()
                            .map(|x| format!("{x:.0}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
        table.push_str(&format!(
            "| {} | {:.0} | {} | {errors} | {} | {memory} |\n",
            m + 1,
            this.len() as f64 / 60.0,
            rpcs.map(p99).join(" | "),
            this.iter().filter(|s| s.gap).count(),
        ));
    }
    // Memory from minute 2 to the end, per process: the largest change.
    let after_first: Vec<&(Duration, f64, Vec<f64>)> = rss
        .iter()
        .filter(|(at, _, _)| *at >= Duration::from_secs(60))
        .collect();
    let growth = match (after_first.first(), after_first.last()) {
        (Some(a), Some(b)) => {
            let mut worst = (b.1 - a.1) / a.1;
            for (x, y) in a.2.iter().zip(&b.2) {
                worst = worst.max((y - x) / x);
            }
            worst * 100.0
        }
        _ => f64::NAN,
    };
    let faults = windows
        .iter()
        .map(|(from, to, what, ok)| {
            format!(
                "{what} at {:.0} s, back at {:.1} s{}",
                from.as_secs_f64(),
                to.as_secs_f64(),
                if *ok { "" } else { " (**failed to start**)" }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let outside_text = if outside.is_empty() {
        "none".to_owned()
    } else {
        outside
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wrong_codes = samples.iter().any(|s| {
        !matches!(
            s.code,
            Code::Ok | Code::Unavailable | Code::DeadlineExceeded
        )
    });
    format!(
        "{table}\nCapacity, measured first with {WORKERS} callers back to back: {capacity:.0} calls/s; the soak sends {rate:.0} calls/s ({share:.0}%). Faults: {faults}.\n\n| region | records ingested, acknowledged | erasures acknowledged | interactions expected | interactions stored | consent writes acknowledged | consent ledger entries | audit chain |\n|---|---:|---:|---:|---:|---:|---:|---|\n{}\n\n- acknowledged writes lost: {}, stored twice: {}: {}\n- errors of calls not in flight during a fault window (from the fault to 5 s after the process is back): {outside_text}; codes other than UNAVAILABLE / DEADLINE_EXCEEDED: {}: {}\n- audit chains: {}\n- RSS from minute 2 to the end, largest growth of any process: {growth:.1}% (≤ 20%): {}\n\nThree regions (DE, FR, US), each a node process on {}), and the gateway a process in front, on loopback with mutual TLS. Before the soak each region is loaded, through the gateway, with a history of {history} interactions ({HISTORY_INTERACTIONS} per subject), then the erasure pool ({pool_size} subjects of {POOL_INTERACTIONS} interactions). The mix, by share of calls: sealed ingest of {INGEST_BATCH} records 25%, contact checks 40%, the dashboard aggregate (any regions) 10%, record queries (100 records) 5%, consent writes 19%, erasures of a subject with {POOL_INTERACTIONS} interactions 1%. A node is killed with SIGKILL and started again 2 s later, as a supervisor would; the gateway gets SIGTERM (its graceful shutdown) and is started at once. An ingest or erasure that fails is sent again every 200 ms, with the same idempotency keys, until acknowledged (a retried erasure that finds nothing counts: the first attempt did it). A consent write is not retried. The checks read each node's database after the soak: interactions stored against the history and the pool loaded first, less the erased subjects', plus the acknowledged ingests; consent ledger entries between the acknowledged and the sent writes; the audit chain walked and its checkpoints verified. p99 counts answered calls only.",
        checks.rows.join("\n"),
        checks.lost,
        checks.duplicated,
        verdict(checks.lost == 0 && checks.duplicated == 0),
        if wrong_codes { "some" } else { "none" },
        verdict(outside.is_empty() && !wrong_codes),
        if checks.audit_ok {
            "all verify"
        } else {
            "**one is broken**"
        },
        verdict(growth <= 20.0),
        crate::cluster::storage_note(),
    )
}
