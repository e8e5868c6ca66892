//! The federation scenarios: fan-out, dashboard query (against a centralised SQLite file and
//! DuckDB), ingest and erasure, each on a [`Cluster`] of processes, with peak memory.

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use domicile_proto::{
    pb::{
        AggregateQuery, AggregateRequest, AggregateStats, Channel, ConsentAction, ConsentSource,
        Dimension, IngestRequest, Metric, Purpose, RecordConsentRequest, RecordStatus, RegionInfo,
        SubjectRef, SubjectRequestKind, SubjectRequestStatus, SubmitSubjectRequestRequest,
        TimeRange,
    },
    seal::PublicSealingKey,
};
use futures::{StreamExt, stream};

use crate::{
    Args,
    cluster::{Cluster, Region},
    data::{Generator, PERIOD_END, PERIOD_START, Row, TENANT, seal},
    measure, median, ms, percentile,
};

/// Sends `rows` of each region through the gateway, `batch` records per request and
/// `in_flight` requests per region at once; returns records accepted and the wall time.
pub(crate) async fn load(
    cluster: &Cluster,
    per_region: Vec<(RegionInfo, Box<dyn Iterator<Item = Row> + Send>)>,
    batch: usize,
    in_flight: usize,
) -> anyhow::Result<(u64, Duration)> {
    let client = cluster.client().await?;
    let started = Instant::now();
    let loads = per_region.into_iter().map(|(region, rows)| {
        let client = client.clone();
        async move {
            let key = region
                .sealing_key
                .as_ref()
                .context("a region without a sealing key")?;
            let key = PublicSealingKey::from_bytes(&key.public_key)?;
            let mut rows = rows.peekable();
            let batches = std::iter::from_fn(move || {
                rows.peek()?;
                Some(rows.by_ref().take(batch).collect::<Vec<Row>>())
            });
            let results = stream::iter(batches)
                .map(|chunk| {
                    let mut client = client.clone();
                    let envelope = seal(&region.region_id, &key, &chunk);
                    async move {
                        let response = client
                            .ingest(IngestRequest {
                                tenant_id: TENANT.into(),
                                envelopes: vec![envelope?],
                            })
                            .await?
                            .into_inner();
                        let accepted = response
                            .results
                            .iter()
                            .filter(|r| r.status == RecordStatus::Accepted as i32)
                            .count();
                        anyhow::ensure!(
                            accepted == chunk.len(),
                            "only {accepted} of {} records accepted: {:?}",
                            chunk.len(),
                            response
                                .results
                                .iter()
                                .find(|r| r.status != RecordStatus::Accepted as i32)
                        );
                        anyhow::Ok(accepted as u64)
                    }
                })
                .buffer_unordered(in_flight)
                .collect::<Vec<_>>()
                .await;
            results.into_iter().sum::<anyhow::Result<u64>>()
        }
    });
    let mut accepted = 0;
    for r in futures::future::join_all(loads).await {
        accepted += r?;
    }
    Ok((accepted, started.elapsed()))
}

pub(crate) async fn regions_of(cluster: &Cluster) -> anyhow::Result<Vec<RegionInfo>> {
    let mut client = cluster.client().await?;
    domicile_client::regions(&mut client).await
}

/// The dashboard query: NPS, CSAT and volume by country × channel × month over the twelve
/// months.
pub(crate) fn dashboard_query() -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![
                Metric::Count as i32,
                Metric::DistinctSubjects as i32,
                Metric::Nps as i32,
                Metric::CsatMean as i32,
            ],
            group_by: vec![
                Dimension::Country as i32,
                Dimension::Channel as i32,
                Dimension::Month as i32,
            ],
            time_range: Some(TimeRange {
                start: Some(prost_types::Timestamp {
                    seconds: PERIOD_START,
                    nanos: 0,
                }),
                end: Some(prost_types::Timestamp {
                    seconds: PERIOD_END,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: true,
    }
}

/// The same query over all rows in one table (SQLite dialect; DuckDB's differs in the month).
fn central_sql(month: &str) -> String {
    let mut nps = String::new();
    for s in 0..=10 {
        nps.push_str(&format!(", SUM(CASE WHEN nps = {s} THEN 1 ELSE 0 END)"));
    }
    format!(
        "SELECT country, channel, {month} AS month, COUNT(*), COUNT(DISTINCT subject_id){nps}, \
         SUM(csat), COUNT(csat) FROM interactions \
         WHERE tenant = 'bench' AND started_at >= {PERIOD_START} AND started_at < {PERIOD_END} \
         AND subject_id NOT IN (SELECT subject_id FROM opted_out) \
         GROUP BY 1, 2, 3"
    )
}

/// Groups of the dashboard query: (country, channel, month) → the exact statistics.
type Groups = BTreeMap<(String, i32, String), AggregateStats>;

/// A centralised copy of every region's rows: one SQLite file, and a CSV for DuckDB.
struct Central {
    db: rusqlite::Connection,
    csv: std::io::BufWriter<std::fs::File>,
}

impl Central {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        let db = rusqlite::Connection::open(dir.join("central.sqlite"))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE interactions (tenant TEXT NOT NULL, interaction_id TEXT NOT NULL,
               subject_id TEXT NOT NULL, country TEXT NOT NULL, channel INTEGER NOT NULL,
               started_at INTEGER NOT NULL, handle_time INTEGER NOT NULL, nps INTEGER,
               csat INTEGER, ces INTEGER, PRIMARY KEY (tenant, interaction_id));
             CREATE INDEX interactions_by_time ON interactions (tenant, started_at);
             CREATE TABLE opted_out (subject_id TEXT PRIMARY KEY);",
        )?;
        let mut csv = std::io::BufWriter::new(std::fs::File::create(dir.join("central.csv"))?);
        writeln!(
            csv,
            "tenant,interaction_id,subject_id,country,channel,started_at,handle_time,nps,csat,ces"
        )?;
        Ok(Self { db, csv })
    }

    fn add(&mut self, rows: impl Iterator<Item = Row>) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO interactions VALUES ('bench', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let opt = |v: Option<u32>| v.map_or(String::new(), |v| v.to_string());
            for r in rows {
                insert.execute(rusqlite::params![
                    r.id,
                    r.subject,
                    r.country,
                    r.channel as i32,
                    r.started_at,
                    r.handle_time,
                    r.nps,
                    r.csat,
                    r.ces
                ])?;
                writeln!(
                    self.csv,
                    "bench,{},{},{},{},{},{},{},{},{}",
                    r.id,
                    r.subject,
                    r.country,
                    r.channel as i32,
                    r.started_at,
                    r.handle_time,
                    opt(r.nps),
                    opt(r.csat),
                    opt(r.ces)
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// (country, channel, month) → the exact statistics, and the query's latencies.
    fn query(&self, runs: usize) -> anyhow::Result<(Groups, Vec<Duration>)> {
        let sql = central_sql("strftime('%Y-%m', started_at, 'unixepoch')");
        let mut times = Vec::new();
        let mut groups = BTreeMap::new();
        for _ in 0..runs {
            let t = Instant::now();
            let mut stmt = self.db.prepare(&sql)?;
            groups = stmt
                .query_map([], |r| {
                    let n = |i: usize| -> rusqlite::Result<u64> {
                        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0) as u64)
                    };
                    Ok((
                        (r.get(0)?, r.get(1)?, r.get(2)?),
                        AggregateStats {
                            interactions: n(3)?,
                            distinct_subjects: n(4)?,
                            nps_histogram: (5..16).map(n).collect::<Result<_, _>>()?,
                            csat_sum: n(16)?,
                            csat_responses: n(17)?,
                            ..Default::default()
                        },
                    ))
                })?
                .collect::<Result<_, _>>()?;
            times.push(t.elapsed());
        }
        Ok((groups, times))
    }
}

/// A Python with the `duckdb` package: `DOMICILE_BENCH_PYTHON`, or a venv made in `dir` with
/// `duckdb` from PyPI.
fn duckdb_python(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    if let Ok(p) = std::env::var("DOMICILE_BENCH_PYTHON") {
        return Ok(p.into());
    }
    let venv = dir.join("venv");
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "duckdb==1.4.2"])
            .status()?
            .success();
    anyhow::ensure!(
        ok,
        "could not install duckdb from PyPI into {}",
        venv.display()
    );
    Ok(venv.join("bin/python"))
}

/// Loads the CSV into an in-memory DuckDB table (not timed) and times the query `runs` times.
fn duckdb_query(python: &Path, dir: &Path, runs: usize) -> anyhow::Result<(u64, Vec<Duration>)> {
    let sql = central_sql("strftime(to_timestamp(started_at), '%Y-%m')")
        .replace("FROM opted_out", "FROM read_csv_auto('OPTED', header=true)");
    let script = format!(
        r#"
import duckdb, json, time
con = duckdb.connect()
con.execute("CREATE TABLE interactions AS SELECT * FROM read_csv_auto('{csv}', header=true)")
sql = """{sql}""".replace("OPTED", "{opted}")
times = []
for _ in range({runs}):
    t = time.perf_counter()
    rows = con.execute(sql).fetchall()
    times.append(time.perf_counter() - t)
print(json.dumps({{"times": times, "volume": sum(r[3] for r in rows)}}))
"#,
        csv = dir.join("central.csv").display(),
        opted = dir.join("opted_out.csv").display(),
    );
    let out = Command::new(python).arg("-c").arg(script).output()?;
    anyhow::ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let times = text
        .split("\"times\": [")
        .nth(1)
        .and_then(|t| t.split(']').next())
        .context("duckdb: no times")?
        .split(',')
        .map(|s| s.trim().parse::<f64>().map(Duration::from_secs_f64))
        .collect::<Result<Vec<_>, _>>()?;
    let volume = text
        .split("\"volume\": ")
        .nth(1)
        .and_then(|t| t.trim().trim_end_matches('}').parse::<u64>().ok())
        .context("duckdb: no volume")?;
    Ok((volume, times))
}

/// Sends the same request `calls` times after `warmup` calls; sorted latencies.
async fn time_aggregate(
    client: &mut domicile_client::Gateway,
    request: &AggregateRequest,
    warmup: usize,
    calls: usize,
) -> anyhow::Result<(Vec<Duration>, domicile_proto::pb::AggregateResponse)> {
    let mut last = None;
    for _ in 0..warmup {
        last = Some(client.aggregate(request.clone()).await?.into_inner());
    }
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        last = Some(client.aggregate(request.clone()).await?.into_inner());
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times, last.context("no call made")?))
}

/// Subjects who object to analytics: one in a hundred, through the gateway, as a CX platform
/// would record them. Returns their ids.
async fn object(
    cluster: &Cluster,
    regions: &[Region],
    subjects: usize,
) -> anyhow::Result<Vec<String>> {
    let mut client = cluster.client().await?;
    let mut ids = Vec::new();
    for r in regions {
        for s in (0..subjects).step_by(100) {
            let country = &r.countries[s % r.countries.len()];
            let id = domicile::synth::subject_id(country, s);
            client
                .record_consent(RecordConsentRequest {
                    tenant_id: TENANT.into(),
                    subject: Some(SubjectRef {
                        country: country.clone(),
                        external_id: id.clone(),
                    }),
                    purpose: Purpose::CxAnalytics as i32,
                    channel: Channel::Unspecified as i32,
                    action: ConsentAction::Object as i32,
                    source: ConsentSource::WebForm as i32,
                    actor: "bench".into(),
                    ..Default::default()
                })
                .await?;
            ids.push(id);
        }
    }
    Ok(ids)
}

pub(crate) fn three_regions() -> Vec<Region> {
    vec![
        Region::new("eu-de", &["DE"]),
        Region::new("eu-fr", &["FR"]),
        Region::new("us", &["US"]),
    ]
}

/// Dashboard query on 3 regions at two sizes, against one centralised SQLite file and DuckDB.
pub async fn dashboard(args: &Args) -> anyhow::Result<String> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 });
    let (sizes, subjects) = if args.quick {
        ([30_000usize, 60_000], 2_000)
    } else {
        ([3_000_000usize, 10_000_000], 100_000)
    };
    let dir = tempfile::tempdir()?;
    let regions = three_regions();
    let cluster = Cluster::start(dir.path(), &regions, None)?;
    let infos = regions_of(&cluster).await?;
    let opted = object(&cluster, &regions, subjects).await?;
    let mut central = Central::create(dir.path())?;
    let mut opted_csv = std::fs::File::create(dir.path().join("opted_out.csv"))?;
    writeln!(opted_csv, "subject_id")?;
    for id in &opted {
        central
            .db
            .execute("INSERT INTO opted_out VALUES (?1)", [id])?;
        writeln!(opted_csv, "{id}")?;
    }
    let python = duckdb_python(dir.path())?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut loaded = 0usize;
    let mut p50s = Vec::new();
    let mut service_p50s = Vec::new();
    let mut utility = Utility::default();
    for (pass, total) in sizes.iter().enumerate() {
        let per_region = (total - loaded) / regions.len();
        let gens = |r: &Region| Generator::new(&r.countries, subjects, per_region, pass as u32, 7);
        let sources = regions
            .iter()
            .zip(&infos)
            .map(|(r, info)| {
                (
                    info.clone(),
                    Box::new(gens(r)) as Box<dyn Iterator<Item = Row> + Send>,
                )
            })
            .collect();
        let (accepted, took) = load(&cluster, sources, 1_000, 2).await?;
        for r in &regions {
            central.add(gens(r))?;
        }
        central.csv.flush()?;
        loaded += per_region * regions.len();
        let total = loaded;
        notes.push(format!(
            "{accepted} interactions loaded through the gateway in {:.1} s ({:.0}/s)",
            took.as_secs_f64(),
            accepted as f64 / took.as_secs_f64()
        ));

        cluster.reset_peak_rss();
        let mut client = cluster.client().await?;
        let calls = if args.quick { 5 } else { 50 };
        // The first call makes the releases it needs (twelve months per region, once); every
        // later call sums stored cells.
        let t = Instant::now();
        client.aggregate(dashboard_query()).await?;
        let first_call = t.elapsed();
        notes.push(format!(
            "at {total} rows: the first call, which makes the differentially private releases (12 months × 3 regions, each a pass over that month's rows), took {}",
            ms(first_call)
        ));
        let mut fed_p50 = Vec::new();
        let mut fed_p99 = Vec::new();
        let mut answer = None;
        for _ in 0..runs {
            let (times, a) = time_aggregate(&mut client, &dashboard_query(), 3, calls).await?;
            fed_p50.push(percentile(&times, 0.5));
            fed_p99.push(percentile(&times, 0.99));
            answer = Some(a);
        }
        // The same query under `service`, for which nobody objected: the gate drops no
        // subject, so this isolates the cells from the consent correction.
        let mut service = dashboard_query();
        service.query.as_mut().expect("a query").purpose = Purpose::Service as i32;
        let mut service_p50 = Vec::new();
        for _ in 0..runs {
            let (times, _) = time_aggregate(&mut client, &service, 3, calls).await?;
            service_p50.push(percentile(&times, 0.5));
        }
        let service_p50 = median(service_p50);
        service_p50s.push(service_p50);
        let (gateway_rss, node_rss) = cluster.peak_rss();
        let answer = answer.context("no answer")?;
        let (central_groups, central_times) = central.query(runs)?;
        // Utility: each released group against the exact centralised figures, by size (the
        // first pass only: rows loaded later into months already released are not in them).
        let mut volume = 0;
        for g in answer.groups.iter().filter(|_| pass == 0) {
            let key = g.key.clone().unwrap_or_default();
            let stats = g.stats.clone().unwrap_or_default();
            let exact = central_groups
                .get(&(key.country.clone(), key.channel, key.period.clone()))
                .with_context(|| format!("group {key:?} missing centrally"))?;
            utility.add(exact, &stats);
            volume += stats.interactions;
        }
        let (duck_volume, duck_times) = duckdb_query(&python, dir.path(), runs.max(3))?;
        let central_volume: u64 = central_groups.values().map(|v| v.interactions).sum();
        anyhow::ensure!(
            central_volume == duck_volume,
            "volumes differ: SQLite {central_volume}, DuckDB {duck_volume}"
        );
        if pass == 0 {
            notes.push(format!(
                "at {total} rows: the federation's released volume {volume}, the exact {central_volume} ({:+.2}%; groups below k withheld)",
                100.0 * (volume as f64 - central_volume as f64) / central_volume.max(1) as f64
            ));
        }
        let fed = median(fed_p50.clone());
        p50s.push(fed);
        let sqlite = median(central_times);
        let duck = median(duck_times);
        rows.push(format!(
            "| {total} | Domicile (3 regions, through the gateway) | {} | {} | {} groups, {} suppressed | {gateway_rss:.0} MiB / {node_rss:.0} MiB |",
            ms(fed),
            ms(median(fed_p99)),
            answer.groups.len(),
            answer.suppressed_groups,
        ));
        rows.push(format!(
            "| {total} | Domicile, same query under `service` (the gate drops nobody) | {} | — | — | — |",
            ms(service_p50),
        ));
        rows.push(format!(
            "| {total} | one centralised SQLite file | {} | — | {:.0}× slower | — |",
            ms(sqlite),
            sqlite.as_secs_f64() / fed.as_secs_f64()
        ));
        rows.push(format!(
            "| {total} | DuckDB (in memory, centralised) | {} | — | {:.1}× slower | — |",
            ms(duck),
            duck.as_secs_f64() / fed.as_secs_f64()
        ));
        if pass == 0 {
            let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
            notes.push(format!(
                "target at {total} rows: p50 {} ≤ 50 ms: {}; ≥ 2× faster than DuckDB ({}): {}",
                ms(fed),
                verdict(fed <= Duration::from_millis(50)),
                ms(duck),
                verdict(duck.as_secs_f64() >= 2.0 * fed.as_secs_f64()),
            ));
        }
    }
    let growth = p50s[1].as_secs_f64() / p50s[0].as_secs_f64();
    notes.push(format!(
        "growth under `service` (no consent correction): {:.2}×",
        service_p50s[1].as_secs_f64() / service_p50s[0].as_secs_f64()
    ));
    notes.push(format!(
        "growth from {} to {} rows: {growth:.2}× < 2×: {}",
        sizes[0],
        sizes[1],
        if growth < 2.0 { "met" } else { "**missed**" }
    ));
    Ok(format!(
        "| rows | where | p50 | p99 | answer | peak RSS gateway / node |\n|---:|---|---:|---:|---|---:|\n{}\n\n{}\n\n{}\n\nMedians of {runs} run(s) of {} calls. The query: volume, distinct subjects, NPS and CSAT by country × channel × month over twelve months for purpose `cx_analytics`; one subject in a hundred has objected, and is left out everywhere (Domicile by its consent gate, the baselines by a `NOT IN`). Data: {subjects} subjects per region, 30% with a survey answer, generated in time order and loaded through the gateway at 1,000 records per request. Across the border every figure is summed from differentially private releases (docs/privacy-model.md): the utility table compares each released group with the exact centralised figures. DuckDB {} reads the same rows from a CSV into an in-memory table first (not timed). Peak RSS is the high-water mark of each process during the queries (reset after loading). Each Domicile node keeps its data in {}).",
        rows.join("\n"),
        notes
            .iter()
            .map(|n| format!("- {n}"))
            .collect::<Vec<_>>()
            .join("\n"),
        utility.table(),
        if args.quick { 5 } else { 50 },
        "1.4.2",
        crate::cluster::storage_note(),
    ))
}

/// The error of released groups against the exact figures, by group size.
#[derive(Default)]
struct Utility {
    /// By size class: relative errors of volume and of distinct subjects, absolute errors of
    /// NPS (points) and of the CSAT mean.
    classes: BTreeMap<usize, [Vec<f64>; 4]>,
}

impl Utility {
    const CLASSES: [(&'static str, u64); 3] =
        [("< 100", 100), ("100 – 999", 1_000), ("≥ 1,000", u64::MAX)];

    fn add(&mut self, exact: &AggregateStats, noisy: &AggregateStats) {
        let class = Self::CLASSES
            .iter()
            .position(|(_, below)| exact.distinct_subjects < *below)
            .unwrap_or(2);
        let e = self.classes.entry(class).or_default();
        let rel = |n: u64, x: u64| (n as f64 - x as f64).abs() / (x.max(1) as f64);
        e[0].push(rel(noisy.interactions, exact.interactions));
        e[1].push(rel(noisy.distinct_subjects, exact.distinct_subjects));
        let nps = |s: &AggregateStats| domicile_proto::merge::metric_value(Metric::Nps, s).value;
        if let (Some(a), Some(b)) = (nps(noisy), nps(exact)) {
            e[2].push((a - b).abs());
        }
        let csat =
            |s: &AggregateStats| domicile_proto::merge::metric_value(Metric::CsatMean, s).value;
        if let (Some(a), Some(b)) = (csat(noisy), csat(exact)) {
            e[3].push((a - b).abs());
        }
    }

    fn table(&self) -> String {
        let q = |v: &[f64], p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        let mut out = String::from(
            "Utility of the released groups (median / 95th percentile of the error against the exact figures):\n\n| distinct subjects per group | groups | volume | distinct subjects | NPS (points) | CSAT mean |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for (class, e) in &self.classes {
            out.push_str(&format!(
                "| {} | {} | {:.2}% / {:.2}% | {:.2}% / {:.2}% | {:.1} / {:.1} | {:.3} / {:.3} |\n",
                Self::CLASSES[*class].0,
                e[0].len(),
                100.0 * q(&e[0], 0.5),
                100.0 * q(&e[0], 0.95),
                100.0 * q(&e[1], 0.5),
                100.0 * q(&e[1], 0.95),
                q(&e[2], 0.5),
                q(&e[2], 0.95),
                q(&e[3], 0.5),
                q(&e[3], 0.95),
            ));
        }
        out
    }
}

/// Aggregate across 1 to 32 regions, small data each.
pub async fn fanout(args: &Args) -> anyhow::Result<String> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 });
    let counts: &[usize] = if args.quick {
        &[1, 4]
    } else {
        &[1, 2, 4, 8, 16, 32]
    };
    const COUNTRIES: [&str; 32] = [
        "DE", "FR", "US", "GB", "ES", "IT", "NL", "BR", "JP", "IN", "AT", "BE", "CH", "DK", "FI",
        "IE", "NO", "PL", "PT", "SE", "CZ", "GR", "HU", "RO", "CA", "MX", "AU", "NZ", "SG", "KR",
        "ZA", "AR",
    ];
    let template = domicile_node::domain::policy::SHIPPED
        .iter()
        .find(|(c, _)| *c == "DE")
        .context("the DE policy")?
        .1;
    let mut rows = Vec::new();
    let mut p50s = Vec::new();
    let mut gateway_ms = f64::NAN;
    let mut gateway_peak = 0.0f64;
    for &n in counts {
        let dir = tempfile::tempdir()?;
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies)?;
        // One policy per country, shaped after DE's (k = 10), for the test federation only.
        for c in &COUNTRIES[..n] {
            std::fs::write(
                policies.join(format!("{c}.toml")),
                template.replace("country = \"DE\"", &format!("country = \"{c}\"")),
            )?;
        }
        let regions: Vec<Region> = (0..n)
            .map(|i| Region::new(&format!("r{i:02}"), &[COUNTRIES[i]]))
            .collect();
        let cluster = Cluster::start(dir.path(), &regions, Some(&policies))?;
        let infos = regions_of(&cluster).await?;
        let sources = regions
            .iter()
            .zip(&infos)
            .map(|(r, info)| {
                (
                    info.clone(),
                    Box::new(Generator::new(&r.countries, 50, 500, 0, 11))
                        as Box<dyn Iterator<Item = Row> + Send>,
                )
            })
            .collect();
        load(&cluster, sources, 500, 1).await?;
        let mut request = dashboard_query();
        request.query.as_mut().expect("a query").group_by = vec![Dimension::Country as i32];
        let mut client = cluster.client().await?;
        let calls = if args.quick { 20 } else { 300 };
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        cluster.reset_peak_rss();
        let before = cluster.cpu();
        for _ in 0..runs {
            let (times, answer) = time_aggregate(&mut client, &request, 10, calls).await?;
            anyhow::ensure!(
                answer.groups.len() == n,
                "{} groups from {n} regions",
                answer.groups.len()
            );
            p50.push(percentile(&times, 0.5));
            p99.push(percentile(&times, 0.99));
        }
        let after = cluster.cpu();
        gateway_peak = gateway_peak.max(cluster.peak_rss().0);
        let per_call = |a: f64, b: f64| (a - b) / ((calls + 10) * runs) as f64 * 1e3;
        let p50 = median(p50);
        p50s.push(p50);
        gateway_ms = per_call(after.0, before.0);
        rows.push(format!(
            "| {n} | {} | {} | {:.2}× | {:.2} ms | {:.2} ms |",
            ms(p50),
            ms(median(p99)),
            p50.as_secs_f64() / p50s[0].as_secs_f64(),
            gateway_ms,
            per_call(after.1, before.1),
        ));
    }
    let ratio = p50s[p50s.len() - 1].as_secs_f64() / p50s[0].as_secs_f64();
    let most = counts[counts.len() - 1];
    Ok(format!(
        "| regions | p50 | p99 | p50 / p50 at 1 region | gateway CPU per call | all nodes' CPU per call |\n|---:|---:|---:|---:|---:|---:|\n{}\n\nTargets: p50 at {most} regions ≤ 3× the p50 at 1 region: {ratio:.2}×, {}; the gateway's CPU per call at {most} regions ≤ 1.1 ms (issue 25): {gateway_ms:.2} ms, {}; the gateway's peak RSS during the runs, the largest of any region count: {gateway_peak:.0} MiB ≤ 30 MiB (every scenario, issue 25): {}.\n\nEach region is a node process with its own country (policies shaped after DE's), 500 interactions of 50 subjects; the gateway is a process in front of them with mutual TLS. `Aggregate` by country, volume, distinct subjects, NPS and CSAT, every region required. Medians of {runs} run(s) of {} calls after 10 warm-up calls. All the node processes share the machine's two cores with the gateway and the client, so the work of a fan-out, which grows with the number of regions, is done on two cores: the CPU columns (per call, warm-up included) show how much of it is the gateway's.",
        rows.join("\n"),
        if ratio <= 3.0 { "met" } else { "**missed**" },
        if most == 32 && gateway_ms <= 1.1 {
            "met"
        } else if most == 32 {
            "**missed**"
        } else {
            "not measured (fewer regions in --quick)"
        },
        if gateway_peak <= crate::cluster::GATEWAY_RSS_TARGET_MIB {
            "met"
        } else {
            "**missed**"
        },
        if args.quick { 20 } else { 300 },
    ))
}

/// Sealed interactions per second through the gateway into durable storage.
pub async fn ingest(args: &Args) -> anyhow::Result<String> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
    let mut rows = Vec::new();
    let mut best_1000 = 0.0f64;
    for (batch, per_region, in_flight) in [
        (1usize, 2_000usize, 16usize),
        (100, 50_000, 4),
        (1_000, 200_000, 2),
    ] {
        let per_region = if args.quick {
            per_region / 50
        } else {
            per_region
        };
        let mut rates = Vec::new();
        let mut rss = (0.0f64, 0.0f64);
        let mut cpu = (0.0, 0.0, 0.0);
        for run in 0..runs {
            let dir = tempfile::tempdir()?;
            let regions = three_regions();
            let cluster = Cluster::start(dir.path(), &regions, None)?;
            let infos = regions_of(&cluster).await?;
            cluster.reset_peak_rss();
            let sources = regions
                .iter()
                .zip(&infos)
                .map(|(r, info)| {
                    (
                        info.clone(),
                        Box::new(
                            Generator::new(&r.countries, 100_000, per_region, run as u32, 3)
                                .with_comments(),
                        ) as Box<dyn Iterator<Item = Row> + Send>,
                    )
                })
                .collect();
            let before = cluster.cpu();
            let (accepted, took) = load(&cluster, sources, batch, in_flight).await?;
            let after = cluster.cpu();
            rates.push(accepted as f64 / took.as_secs_f64());
            let per_k = |a: f64, b: f64| (a - b) / accepted as f64 * 1e6;
            cpu = (
                per_k(after.0, before.0),
                per_k(after.1, before.1),
                per_k(after.2, before.2),
            );
            let (g, n) = cluster.peak_rss();
            rss = (rss.0.max(g), rss.1.max(n));
        }
        let rate = median(rates);
        if batch == 1_000 {
            best_1000 = rate;
        }
        rows.push(format!(
            "| {batch} | {in_flight} per region | {} | {rate:.0} | {:.1} / {:.1} / {:.1} | {:.0} MiB / {:.0} MiB |",
            per_region * 3,
            cpu.2,
            cpu.0,
            cpu.1,
            rss.0,
            rss.1
        ));
    }
    Ok(format!(
        "| records per request | requests in flight | records per run | records/s | CPU ms per 1,000 records: client / gateway / nodes | peak RSS gateway / node |\n|---:|---:|---:|---:|---:|---:|\n{}\n\nTarget: ≥ 50,000 interactions/s at 1,000 per request: {best_1000:.0}/s, {}.\n\nThree regions (DE, FR, US), each a node process on {}; batches that arrive while a commit is being written share the next one, group commit); the gateway a process in front. The client seals every record (HPKE envelope per request, AEAD per record) on the same 2-core machine, sends each region's batches with the given number of requests in flight, and counts a record only when its region acknowledged it as stored. 30% of interactions carry a survey answer, one in ten of those a comment (sealed at rest with the subject's data key). Medians of {runs} run(s), each on fresh databases.",
        rows.join("\n"),
        if best_1000 >= 50_000.0 {
            "met"
        } else {
            "**missed**"
        },
        crate::cluster::storage_note(),
    ))
}

/// Latency of erasing a subject with 1, 100 and 10,000 interactions, in a region holding
/// other data too.
pub async fn erasure(args: &Args) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let regions = vec![Region::new("eu-de", &["DE"])];
    let cluster = Cluster::start(dir.path(), &regions, None)?;
    let infos = regions_of(&cluster).await?;
    let background = if args.quick { 5_000 } else { 500_000 };
    // (interactions per subject, subjects, sent back to back): a round that is not back to
    // back sends each erasure once the dashboard query after the previous one has answered,
    // that is once its purge is done.
    let rounds: &[(usize, usize, bool)] = if args.quick {
        &[
            (1, 3, false),
            (100, 3, false),
            (1_000, 2, false),
            (1_000, 2, true),
        ]
    } else {
        &[
            (1, 50, false),
            (100, 50, false),
            (10_000, 20, false),
            (10_000, 20, true),
        ]
    };
    let name = |size: usize, back: bool, s: usize| {
        format!("erase-{size}-{}{s}", if back { "b" } else { "" })
    };
    // Background: other subjects' interactions.
    let mut sources: Vec<(RegionInfo, Box<dyn Iterator<Item = Row> + Send>)> = vec![(
        infos[0].clone(),
        Box::new(Generator::new(
            &regions[0].countries,
            50_000,
            background,
            0,
            5,
        )),
    )];
    // The subjects to erase: `count` subjects with `size` interactions each.
    for &(size, count, back) in rounds {
        let rows: Vec<Row> = (0..count)
            .flat_map(|s| {
                let subject = name(size, back, s);
                Generator::new(
                    &regions[0].countries,
                    1,
                    size,
                    1_000 + size as u32 * 100 + s as u32 + if back { 50 } else { 0 },
                    9,
                )
                .map(move |mut r| {
                    r.subject = subject.clone();
                    r.id = format!("{}-{}", r.subject, r.id);
                    r
                })
            })
            .collect();
        sources.push((infos[0].clone(), Box::new(rows.into_iter())));
    }
    load(&cluster, sources, 1_000, 1).await?;
    let mut client = cluster.client().await?;
    // The first dashboard query makes the differentially private releases; the ones measured
    // below sum them.
    client.aggregate(dashboard_query()).await?;
    cluster.reset_peak_rss();
    let mut rows = Vec::new();
    let mut p99_10k = None;
    for &(size, count, back) in rounds {
        let mut times = Vec::new();
        let mut reads = Vec::new();
        for s in 0..count {
            let t = Instant::now();
            let receipt = client
                .submit_subject_request(cluster.signed(SubmitSubjectRequestRequest {
                    verification: Some(domicile_proto::rights::verified_by_platform(
                        "test-session",
                        "test-platform",
                    )),
                    tenant_id: TENANT.into(),
                    subject: Some(SubjectRef {
                        country: "DE".into(),
                        external_id: name(size, back, s),
                    }),
                    kind: SubjectRequestKind::Erasure as i32,
                    actor: "bench".into(),
                    ..Default::default()
                }))
                .await?
                .into_inner();
            times.push(t.elapsed());
            anyhow::ensure!(
                receipt.receipts.first().map(|r| r.status)
                    == Some(SubjectRequestStatus::Completed as i32),
                "erasure of a {size}-interaction subject did not complete"
            );
            if !back {
                let t = Instant::now();
                client.aggregate(dashboard_query()).await?;
                reads.push(t.elapsed());
            }
        }
        times.sort();
        reads.sort();
        let p99 = percentile(&times, 0.99);
        if size == 10_000 && !back {
            p99_10k = Some(p99);
        }
        let read = if reads.is_empty() {
            "— (not sent)".to_owned()
        } else {
            format!(
                "{} / {}",
                ms(percentile(&reads, 0.5)),
                ms(percentile(&reads, 0.99))
            )
        };
        rows.push(format!(
            "| {size}{} | {count} | {} | {} | {} | {read} |",
            if back { " (back to back)" } else { "" },
            ms(percentile(&times, 0.5)),
            ms(p99),
            ms(*times.last().expect("some"))
        ));
    }
    let target = match p99_10k {
        Some(p) => format!(
            "Target: p99 ≤ 20 ms for 10,000 interactions: {}, {}.",
            ms(p),
            if p <= Duration::from_millis(20) {
                "met"
            } else {
                "**missed**"
            }
        ),
        None => "Quick mode: the 10,000-interaction size is not run.".to_owned(),
    };
    let rss = cluster.gateway_rss_target();
    Ok(format!(
        "| interactions of the subject | erasures | p50 | p99 | max | dashboard query sent at the answer: p50 / p99 |\n|---:|---:|---:|---:|---:|---:|\n{}\n\n{target}\n\n{rss}\n\nOne region (DE) holding {background} other interactions of 50,000 subjects. Each erasure is a `SubmitSubjectRequest` of kind ERASURE through the gateway, answered once the node has deleted the subject's profile, consent records, flags and follow-ups, written the suppressions it keeps, queued the subject's interactions for deletion, recorded and audited the request and committed (`synchronous = FULL`), and deleted the subject's vault entry (crypto-shredding). The interactions (with their comments, rollup cells and subject numbers) and idempotency keys are then deleted by the node's purge worker, 1,000 interactions per transaction, and the WAL checkpointed; until that is done every read of interactions waits. The last column is the dashboard query (the differentially private releases already made, so a steady-state call) sent as soon as the erasure answered: it answers once the purge is done, so it measures how long the rows outlive the answer. The next erasure is sent after it, except in the back-to-back round, where erasures follow each other while the purges run. p99 of 20 or 50 samples is close to the maximum.",
        rows.join("\n")
    ))
}

/// Runs `calls`, `in_flight` at once; the first error, if any.
async fn all_of<F>(calls: impl Iterator<Item = F>, in_flight: usize) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let results: Vec<anyhow::Result<()>> = stream::iter(calls)
        .buffer_unordered(in_flight)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What the console asks for, at the size of a federation with a history: `GetOverview`
/// through the gateway (every region reports on itself) and the console's JSON view of it.
pub async fn console(args: &Args) -> anyhow::Result<String> {
    use domicile_proto::pb::{
        DataCategory, GetOverviewRequest, QueryRecordsRequest, RecordQuery, ReportIncidentRequest,
    };
    use prost::Message;
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 });
    // Per region: subjects with consent on file, subject requests, aggregate releases (each
    // `Aggregate` is a release in every region), incidents.
    let (consents, requests, releases, incidents, calls) = if args.quick {
        (300, 30, 40, 2, 5)
    } else {
        (50_000, 2_000, 5_000, 20, 50)
    };
    // Subjects with interactions (ten each, on average): those under a legal hold need data.
    const SUBJECTS: usize = 1_000;
    let dir = tempfile::tempdir()?;
    let regions = three_regions();
    let cluster = Cluster::start(dir.path(), &regions, None)?;
    let infos = regions_of(&cluster).await?;
    let sources = infos
        .iter()
        .zip(&regions)
        .map(|(info, r)| {
            let rows: Box<dyn Iterator<Item = Row> + Send> =
                Box::new(Generator::new(&r.countries, SUBJECTS, 10_000, 0, 11));
            (info.clone(), rows)
        })
        .collect();
    load(&cluster, sources, 1_000, 2).await?;
    let client = cluster.client().await?;
    let started = Instant::now();
    // Consents: grants, refusals and double opt-ins waiting, over purposes and channels.
    let work = regions.iter().flat_map(|r| {
        let country = r.countries[0].clone();
        (0..consents).map(move |i| (country.clone(), i))
    });
    let consenting = work.map(|(country, i)| {
        let mut client = client.clone();
        async move {
            let (purpose, channel, action) = match i % 5 {
                0 | 1 => (Purpose::CxSurvey, Channel::Email, ConsentAction::Grant),
                2 => (Purpose::Marketing, Channel::Email, ConsentAction::Grant),
                3 => (Purpose::Marketing, Channel::Sms, ConsentAction::Refuse),
                _ => (
                    Purpose::CxAnalytics,
                    Channel::Unspecified,
                    ConsentAction::Object,
                ),
            };
            let request =
                domicile::dev::synthetic_consent(TENANT, &country, i, purpose, channel, action);
            client.record_consent(request).await?;
            anyhow::Ok(())
        }
    });
    all_of(consenting, 32).await?;
    let consent_time = started.elapsed();
    // Subject requests: restrictions and objections (completed at once), and erasures of
    // subjects under a legal hold (open, waiting on the hold).
    let work = regions.iter().flat_map(|r| {
        let country = r.countries[0].clone();
        (0..requests).map(move |i| (country.clone(), i))
    });
    let signer = &cluster;
    let requesting = work.map(|(country, i)| {
        let mut client = client.clone();
        async move {
            // Erasures (held) of subjects 0, 1, 2, …; the other requests from the second
            // half of the subjects, several each.
            let s = if i % 10 == 0 {
                i / 10
            } else {
                SUBJECTS / 2 + i % (SUBJECTS / 2)
            };
            let subject = Some(SubjectRef {
                external_id: domicile::synth::subject_id(&country, s),
                country,
            });
            let kind = match i % 10 {
                0 => SubjectRequestKind::Erasure,
                1..=5 => SubjectRequestKind::Restriction,
                _ => SubjectRequestKind::Objection,
            };
            if kind == SubjectRequestKind::Erasure {
                client
                    .place_legal_hold(signer.signed(domicile_proto::pb::PlaceLegalHoldRequest {
                        dpo_signature: None,
                        tenant_id: TENANT.into(),
                        subject: subject.clone(),
                        reason: "bench: a dispute".into(),
                        interactions: None,
                        expires_at: Some(domicile_proto::domain::whole_seconds(
                            domicile_proto::domain::unix_now() + 60 * 86_400,
                        )),
                    }))
                    .await?;
            }
            client
                .submit_subject_request(signer.signed(SubmitSubjectRequestRequest {
                    verification: Some(domicile_proto::rights::verified_by_platform(
                        "test-session",
                        "test-platform",
                    )),
                    tenant_id: TENANT.into(),
                    subject,
                    kind: kind as i32,
                    purposes: if kind == SubjectRequestKind::Objection {
                        vec![Purpose::Marketing as i32]
                    } else {
                        Vec::new()
                    },
                    actor: "bench".into(),
                    ..Default::default()
                }))
                .await?;
            anyhow::Ok(())
        }
    });
    all_of(requesting, 16).await?;
    // Releases: aggregates, one record query in ten.
    let releasing = (0..releases).map(|i| {
        let mut client = client.clone();
        async move {
            if i % 10 == 9 {
                let mut answer = client
                    .query_records(QueryRecordsRequest {
                        tenant_id: TENANT.into(),
                        query: Some(RecordQuery {
                            purpose: Purpose::CxAnalytics as i32,
                            limit: 20,
                            ..Default::default()
                        }),
                        regions: Vec::new(),
                    })
                    .await?
                    .into_inner();
                while answer.message().await?.is_some() {}
            } else {
                client.aggregate(dashboard_query()).await?;
            }
            anyhow::Ok(())
        }
    });
    all_of(releasing, 8).await?;
    let mut gw = client.clone();
    let now = domicile_proto::domain::unix_now();
    for i in 0..incidents {
        gw.report_incident(cluster.signed(ReportIncidentRequest {
            dpo_signature: None,
            tenant_id: TENANT.into(),
            regions: Vec::new(),
            window: Some(TimeRange {
                start: Some(domicile_proto::domain::whole_seconds(PERIOD_START)),
                end: Some(domicile_proto::domain::whole_seconds(PERIOD_END)),
            }),
            categories: vec![DataCategory::Interactions as i32],
            description: format!("bench incident {i}"),
            detected_at: Some(domicile_proto::domain::whole_seconds(now - 3_600)),
        }))
        .await?;
    }
    let history = started.elapsed();
    cluster.reset_peak_rss();
    let mut rows = Vec::new();
    for (window, seconds, bucket) in [("24h", 86_400, 3_600u32), ("30d", 30 * 86_400, 86_400)] {
        let request = GetOverviewRequest {
            tenant_id: TENANT.into(),
            since: Some(domicile_proto::domain::whole_seconds(now - seconds)),
            bucket_seconds: bucket,
        };
        // The answer is checked once: every region reports, with what was done.
        let answer = gw.get_overview(request.clone()).await?.into_inner();
        for region in &answer.regions {
            let report = region.report.as_ref().with_context(|| {
                format!("{} did not report: {}", region.region_id, region.detail)
            })?;
            let released: u64 = report.releases.iter().map(|b| b.releases).sum();
            anyhow::ensure!(
                released >= releases as u64,
                "{}: {released} releases reported, {releases} made",
                region.region_id
            );
            let consented: u64 = report.consents.iter().map(|c| c.subjects).sum();
            anyhow::ensure!(
                consented >= consents as u64,
                "{}: {consented} consents reported, {consents} recorded",
                region.region_id
            );
            anyhow::ensure!(
                report.open_requests_total == (requests as u64).div_ceil(10),
                "{}: {} open requests reported",
                region.region_id,
                report.open_requests_total
            );
        }
        // The console's data, as the page asks for it: a new connection per call.
        let console = cluster.console;
        let path = format!("/api/overview?window={window}");
        let bearer = format!("Bearer {}", cluster.token);
        let json = move || {
            let (path, bearer) = (path.clone(), bearer.clone());
            async move {
                let (status, body) = domicile_ops::metrics::scrape_with(
                    console,
                    &path,
                    &[("authorization", &bearer)],
                )
                .await?;
                anyhow::ensure!(status == 200, "/api/overview answered {status}: {body}");
                anyhow::Ok(body.len())
            }
        };
        let json_bytes = json().await?;
        let mut grpc = Vec::new();
        let mut http = Vec::new();
        for _ in 0..runs {
            let (gw, request) = (gw.clone(), request.clone());
            grpc.push(
                measure(calls, 1, move |_| {
                    let (mut gw, request) = (gw.clone(), request.clone());
                    async move {
                        gw.get_overview(request).await?;
                        Ok(())
                    }
                })
                .await?,
            );
            let json = json.clone();
            http.push(
                measure(calls, 1, move |_| {
                    let call = json();
                    async move { call.await.map(drop) }
                })
                .await?,
            );
        }
        for (call, results, bytes) in [
            ("`GetOverview` (gRPC)", grpc, answer.encoded_len()),
            ("console `/api/overview` (JSON over HTTP)", http, json_bytes),
        ] {
            let p50 = median(results.iter().map(|r| r.p50).collect());
            let p99 = median(results.iter().map(|r| r.p99).collect());
            rows.push(format!(
                "| {window} | {call} | {} | {} | {bytes} |",
                ms(p50),
                ms(p99)
            ));
        }
    }
    let (gateway_mib, node_mib) = cluster.peak_rss();
    Ok(format!(
        "| window | call | p50 | p99 | answer bytes |\n|---|---|---:|---:|---:|\n{}\n\nPeak RSS while answering: gateway {gateway_mib:.0} MiB, largest node {node_mib:.0} MiB.\n\nMedians of {runs} run(s) of {calls} sequential calls each. Three regions, each keeping its data in {}), and each holding: 10,000 interactions of 1,000 subjects; {consents} subjects with a consent on file (grants, refusals, objections); {requests} subject requests, one in ten an erasure held open by a legal hold; {releases} releases in its audit log (aggregates, one record query in ten); {incidents} incidents. That history was written through the gateway in {:.1} s (consents at {:.0}/s, 32 in flight). Every call asks all three regions, which each answer from their audit log, request, incident and consent tables (counts only). The JSON view adds the gateway's rendering and a fresh HTTP connection per call, as the console's page makes every 30 s. The first answer of each window is checked against what was done.",
        rows.join("\n"),
        crate::cluster::storage_note(),
        history.as_secs_f64(),
        (3 * consents) as f64 / consent_time.as_secs_f64()
    ))
}

/// Redaction throughput on one core: the comments of the labelled corpus and of the hard cases
/// (`regional-node/tests/data`), each redacted with its country's rules and its subject's
/// name, as `QueryRecords` does before a comment leaves a region. Median of 5 runs.
pub async fn redact(args: &Args) -> anyhow::Result<String> {
    use domicile_node::privacy::redact::Redactor;
    const TARGET: f64 = 200_000.0;
    let corpora = [
        (
            "labelled corpus (540 comments, 9 locales)",
            include_str!("../../regional-node/tests/data/redaction_corpus.jsonl"),
        ),
        (
            "hard cases (234 comments, 9 locales)",
            include_str!("../../regional-node/tests/data/redaction_hard_cases.jsonl"),
        ),
    ];
    let lines_per_run = if args.quick { 20_000 } else { 400_000 };
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    for (label, corpus) in corpora {
        let comments: Vec<(String, String, String)> = corpus
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                Ok((field("country"), field("name"), field("text")))
            })
            .collect::<anyhow::Result<_>>()?;
        let bytes: usize = comments.iter().map(|(_, _, t)| t.len()).sum();
        // On this thread, alone: one core's worth.
        let mut rates = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let mut spans = 0usize;
            for i in 0..lines_per_run {
                let (country, name, text) = &comments[i % comments.len()];
                let out = Redactor::for_country(country).redact(text, &[name.as_str()]);
                spans += std::hint::black_box(out.spans.len());
            }
            anyhow::ensure!(spans > 0, "the corpus has identifiers to redact");
            rates.push(lines_per_run as f64 / started.elapsed().as_secs_f64());
        }
        let rate = median(rates);
        rows.push(format!(
            "| {label} | {:.0} | {lines_per_run} | {:.0} |",
            rate,
            bytes as f64 / comments.len() as f64
        ));
        verdicts.push(format!(
            "{label}: {:.0} lines/s, {}",
            rate,
            if rate >= TARGET { "met" } else { "**missed**" }
        ));
    }
    Ok(format!(
        "| comments | lines/s on one core (median of 5) | lines per run | mean bytes per line |\n|---|---:|---:|---:|\n{}\n\nTarget: at least {TARGET:.0} lines/s per core. {}.",
        rows.join("\n"),
        verdicts.join("; ")
    ))
}
