//! The Domicile benchmark suite (issue 10). Each scenario starts what it measures itself — the
//! gateway and each node as processes of their own (this binary, re-run with `__serve`), nginx
//! and DuckDB as baselines — generates its data deterministically, and prints a Markdown table;
//! `--write` also puts it in `BENCHMARKS.md`.
//!
//! ```sh
//! cargo run --release -p domicile-bench -- all --write      # the full suite
//! cargo run --release -p domicile-bench -- fanout --write   # one scenario
//! cargo run --release -p domicile-bench -- all --quick      # seconds, small data; what CI runs
//! ```
//!
//! Scenarios:
//! - `proxy`: `CheckContactPermission` for one subject, sent straight to a node, through the
//!   gateway (authenticating, authorising, routing, recording metrics), and through nginx's
//!   `grpc_pass` in front of the same node; concurrency 1 and 64; p50, p99 and calls per
//!   second, and what each proxy adds to the direct p50 and p99.
//! - `fanout`: `Aggregate` across 1 to 32 regions.
//! - `dashboard`: NPS, CSAT and volume by country × channel × month on 3 × 1M and 10M rows,
//!   against the same rows in one SQLite file and in DuckDB; peak memory of gateway and nodes.
//! - `ingest`: sealed interactions per second through the gateway, batches of 1, 100 and 1,000.
//! - `erasure`: erasing subjects with 1, 100 and 10,000 interactions.
//! - `console`: `GetOverview` and the console's `/api/overview` on three regions with a
//!   history (consents, subject requests, releases, incidents).
//! - `cases`: the subject-request queue (`ListSubjectRequests`) with 10,000 open requests.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use domicile::certs::{Pki, node_identity};
use domicile_proto::pb::{
    Channel as CxChannel, CheckContactPermissionRequest, Purpose,
    RegionalNodeCheckContactPermissionRequest, SubjectRef,
    regional_node_client::RegionalNodeClient,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod cases;
mod cluster;
mod data;
mod flood;
mod scenarios;
mod soak;

#[derive(Debug, Parser)]
#[command(name = "domicile-bench", about = "Domicile's benchmark suite")]
pub struct Args {
    /// The scenario: `proxy`, `fanout`, `dashboard`, `ingest`, `erasure`, `console`, `redact`,
    /// `flood`, `soak`, `cases`, or `all`.
    scenario: String,
    /// Seconds, small data: checks that the suite runs (CI), not the numbers.
    #[arg(long)]
    quick: bool,
    /// Runs per measurement; the table reports medians. Default 5 (1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Also write the table into BENCHMARKS.md (replacing this scenario's section).
    #[arg(long)]
    write: bool,
    /// Where Domicile's nodes keep their data: `sqlite` (default) or `postgres` (a throwaway
    /// cluster from the machine's PostgreSQL binaries; `dashboard`, `ingest` and `console`
    /// only, each written to a section of its own).
    #[arg(long, default_value = "sqlite")]
    storage: String,
}

/// One run's latencies and throughput.
#[derive(Debug, Clone, Copy)]
struct Run {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

fn median<T: Copy + PartialOrd>(mut xs: Vec<T>) -> T {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    xs[xs.len() / 2]
}

/// Runs `calls` calls of `call` with `concurrency` workers; latencies of every call.
async fn measure<F, Fut>(calls: usize, concurrency: usize, call: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let per_worker = calls / concurrency;
    let workers = (0..concurrency).map(|w| {
        let call = call.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let t = Instant::now();
                call(w * per_worker + i).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        })
    });
    let mut all = Vec::with_capacity(calls);
    for w in futures::future::join_all(workers).await {
        all.extend(w??);
    }
    let wall = started.elapsed();
    all.sort();
    Ok(Run {
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        per_second: all.len() as f64 / wall.as_secs_f64(),
    })
}

/// nginx (Debian's `nginx-light`) as a gRPC proxy in front of `node`, presenting the gateway's
/// client certificate as the node requires; stopped when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn start_nginx(dir: &Path, node: SocketAddr, region: &str, pki: &Pki) -> anyhow::Result<Nginx> {
    let addr = free_port()?;
    let (cert, key) = pki.pair("gateway");
    let d = dir.display();
    // keepalive_requests high on both sides, or nginx closes each connection after 1,000.
    let conf = format!(
        r#"worker_processes 2;
error_log stderr warn;
pid {d}/nginx.pid;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream node {{
    server {node};
    keepalive 128;
    keepalive_requests 100000000;
  }}
  server {{
    listen {addr} http2;
    keepalive_requests 100000000;
    location / {{
      grpc_pass grpcs://node;
      grpc_ssl_certificate {cert};
      grpc_ssl_certificate_key {key};
      grpc_ssl_trusted_certificate {ca};
      grpc_ssl_verify on;
      grpc_ssl_name {name};
      grpc_ssl_server_name on;
      grpc_ssl_session_reuse on;
    }}
  }}
}}
"#,
        cert = cert.display(),
        key = key.display(),
        ca = pki.ca().display(),
        name = node_identity(region),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Command::new(p).arg("-v").output().is_ok())
        .context("nginx not found: install Debian's nginx-light")?;
    let log = std::fs::File::create(dir.join("error.log"))?;
    let child = Command::new(nginx)
        .args(["-c", &path.display().to_string(), "-p", &d.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting nginx")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nginx did not start on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Nginx { child, addr })
}

/// A TLS channel to a node as the gateway (its client certificate).
async fn node_channel(addr: SocketAddr, region: &str, pki: &Pki) -> anyhow::Result<Channel> {
    let (cert, key) = pki.pair("gateway");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.ca())?))
        .identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ))
        .domain_name(node_identity(region));
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tcp_nodelay(true)
        .tls_config(tls)?
        .connect()
        .await?)
}

fn question(i: usize) -> CheckContactPermissionRequest {
    CheckContactPermissionRequest {
        tenant_id: "bench".into(),
        subject: Some(SubjectRef {
            country: "DE".into(),
            external_id: format!("bench-{:05}", i % 10_000),
        }),
        purpose: Purpose::Marketing as i32,
        channel: CxChannel::Email as i32,
    }
}

/// One `CheckContactPermission` on a node's API (direct, or through nginx) per call.
fn node_call(
    client: &RegionalNodeClient<Channel>,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
+ Clone
+ Send
+ 'static {
    let client = client.clone();
    move |i| {
        let mut c = client.clone();
        Box::pin(async move {
            c.check_contact_permission(RegionalNodeCheckContactPermissionRequest {
                request: Some(question(i)),
            })
            .await?;
            Ok(())
        })
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn proxy(args: &Args) -> anyhow::Result<String> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 });
    let dir = tempfile::tempdir()?;
    let regions = [cluster::Region::new("eu-de", &["DE"])];
    let cluster = cluster::Cluster::start(dir.path(), &regions, None)?;
    let pki = cluster::pki(dir.path(), &regions)?;
    let node = cluster.nodes[0].addr;
    let nginx_dir = dir.path().join("nginx");
    for sub in ["", "body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(nginx_dir.join(sub))?;
    }
    let nginx = start_nginx(&nginx_dir, node, "eu-de", &pki)?;

    let direct = RegionalNodeClient::new(node_channel(node, "eu-de", &pki).await?);
    let via_nginx = RegionalNodeClient::new(
        Endpoint::from_shared(format!("http://{}", nginx.addr))?
            .tcp_nodelay(true)
            .connect()
            .await?,
    );
    let gateway = cluster.client().await?;
    cluster.reset_peak_rss();

    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut direct_at_1 = 0.0;
    for concurrency in [1usize, 64] {
        let calls = match (args.quick, concurrency) {
            (true, 1) => 200,
            (true, _) => 2_000,
            (false, 1) => 5_000,
            (false, _) => 50_000,
        };
        let mut results: Vec<(&str, Vec<Run>)> =
            vec![("direct", vec![]), ("gateway", vec![]), ("nginx", vec![])];
        for _ in 0..runs {
            // Interleaved, so that drift on the shared machine hits all three alike.
            results[0]
                .1
                .push(measure(calls, concurrency, node_call(&direct)).await?);
            let g = gateway.clone();
            results[1].1.push(
                measure(calls, concurrency, move |i| {
                    let mut g = g.clone();
                    async move {
                        g.check_contact_permission(question(i)).await?;
                        Ok(())
                    }
                })
                .await?,
            );
            results[2]
                .1
                .push(measure(calls, concurrency, node_call(&via_nginx)).await?);
        }
        let summary: Vec<(&str, Duration, Duration, f64)> = results
            .iter()
            .map(|(name, rs)| {
                (
                    *name,
                    median(rs.iter().map(|r| r.p50).collect()),
                    median(rs.iter().map(|r| r.p99).collect()),
                    median(rs.iter().map(|r| r.per_second).collect()),
                )
            })
            .collect();
        let (direct_p50, direct_p99) = (summary[0].1, summary[0].2);
        let added = |i: usize, p99: bool| {
            let (x, base) = if p99 {
                (summary[i].2, direct_p99)
            } else {
                (summary[i].1, direct_p50)
            };
            (x.as_secs_f64() - base.as_secs_f64()) * 1e6
        };
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let (g50, n50, g99, n99) = (
            added(1, false),
            added(2, false),
            added(1, true),
            added(2, true),
        );
        if concurrency == 1 {
            targets.push(format!(
                "- concurrency 1: gateway added p50 {g50:+.0} µs ≤ nginx's {n50:+.0} µs: {}; added p99 {g99:+.0} µs ≤ nginx's {n99:+.0} µs: {}.",
                verdict(g50 <= n50),
                verdict(g99 <= n99),
            ));
            direct_at_1 = summary[0].3;
        } else {
            let (direct, gateway, nginx) = (summary[0].3, summary[1].3, summary[2].3);
            targets.push(format!(
                "- concurrency {concurrency}: gateway {gateway:.0} calls/s ≥ nginx's {nginx:.0}: {}; the node direct {direct:.0} calls/s ≥ its {:.0} at concurrency 1: {}.",
                verdict(gateway >= nginx),
                direct_at_1,
                verdict(direct >= direct_at_1),
            ));
        }
        for (name, p50, p99, rps) in &summary {
            let added = |x: Duration, base: Duration| {
                if *name == "direct" {
                    "—".to_owned()
                } else {
                    format!("{:+.0} µs", (x.as_secs_f64() - base.as_secs_f64()) * 1e6)
                }
            };
            rows.push(format!(
                "| {concurrency} | {name} | {calls} | {} | {} | {:.0} | {} | {} |",
                us(*p50),
                us(*p99),
                rps,
                added(*p50, direct_p50),
                added(*p99, direct_p99),
            ));
        }
    }
    targets.push(cluster.gateway_rss_target());
    drop(nginx);
    drop(cluster);
    Ok(format!(
        "| concurrency | path | calls per run | p50 | p99 | calls/s | added p50 | added p99 |\n|---:|---|---:|---:|---:|---:|---:|---:|\n{}\n\nTargets (issue 25):\n\n{}\n\nMedians of {runs} run(s). The node, the gateway and nginx are each a process of their own; the client is the benchmark process. *direct*: the client calls the node's federation listener over mutual TLS with the gateway's certificate. *gateway*: plaintext to the gateway with a bearer token, which authenticates, authorises, admits, routes, records metrics and calls the node over mutual TLS. *nginx*: plaintext to Debian's nginx 1.22 (`grpc_pass grpcs://`, upstream keepalive, 2 workers) presenting the gateway's certificate to the same node. Every call asks about one of 10,000 subjects with nothing on file. At concurrency 64 the node process saturates the shared cores; *direct* multiplexes all 64 streams over the client's one TLS connection, nginx spreads them over several upstream connections, which is why it can beat *direct* there.",
        rows.join("\n"),
        targets.join("\n")
    ))
}

/// Replaces (or appends) the section headed `heading` in BENCHMARKS.md.
fn write_section(path: &Path, heading: &str, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.find(heading);
    let (before, after) = match start {
        Some(s) => {
            let rest = &text[s + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(text.len(), |e| s + heading.len() + e + 1);
            (&text[..s], &text[end..])
        }
        None => (text.as_str(), ""),
    };
    let mut out = before.trim_end().to_owned();
    out.push_str("\n\n");
    out.push_str(heading);
    out.push_str("\n\n");
    out.push_str(body.trim());
    out.push('\n');
    if !after.is_empty() {
        out.push('\n');
        out.push_str(after);
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

const SCENARIOS: [(&str, &str); 10] = [
    (
        "proxy",
        "## Proxy overhead: CheckContactPermission direct, via the gateway, via nginx",
    ),
    ("fanout", "## Fan-out: Aggregate across 1 to 32 regions"),
    (
        "dashboard",
        "## Dashboard query: Domicile vs one centralised SQLite file vs DuckDB",
    ),
    (
        "ingest",
        "## Ingest: sealed interactions per second through the gateway, durable",
    ),
    (
        "erasure",
        "## Erasure: latency by the subject's number of interactions",
    ),
    (
        "console",
        "## Console: GetOverview and the console's JSON, three regions with a history",
    ),
    ("redact", "## Redaction: comments per second on one core"),
    (
        "flood",
        "## Flood: 8 MiB requests from a caller over its rate limit",
    ),
    (
        "soak",
        "## Soak: a mixed workload at 70% of capacity while a node is killed and the gateway restarted",
    ),
    (
        "cases",
        "## Cases: the subject-request queue with 10,000 open requests across three regions",
    ),
];

async fn run(args: &Args, scenario: &str) -> anyhow::Result<String> {
    match scenario {
        "proxy" => proxy(args).await,
        "fanout" => scenarios::fanout(args).await,
        "dashboard" => scenarios::dashboard(args).await,
        "ingest" => scenarios::ingest(args).await,
        "erasure" => scenarios::erasure(args).await,
        "console" => scenarios::console(args).await,
        "cases" => cases::cases(args).await,
        "redact" => scenarios::redact(args).await,
        "flood" => flood::flood(args).await,
        "soak" => soak::soak(args).await,
        other => anyhow::bail!(
            "unknown scenario {other:?}; known: proxy, fanout, dashboard, ingest, erasure, console, redact, flood, soak, all"
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("__serve") {
        // As `domicile` does, before any thread starts: the processes measured run like it
        // (the benchmark's own client keeps glibc's defaults).
        domicile_ops::alloc::tune();
        // The runtime `domicile gateway` and `domicile node` run on: tokio's default.
        let kind = raw.get(2).map(|k| k.to_uppercase()).unwrap_or_default();
        let threads: usize = std::env::var(format!("DOMICILE_BENCH_THREADS_{kind}"))
            .or_else(|_| std::env::var("DOMICILE_BENCH_THREADS"))
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let mut rt = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            tokio::runtime::Builder::new_multi_thread()
        };
        if threads > 1 {
            rt.worker_threads(threads);
        }
        return rt.enable_all().build()?.block_on(cluster::serve(&raw[2..]));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(suite())
}

async fn suite() -> anyhow::Result<()> {
    let args = Args::parse();
    let postgres = match args.storage.as_str() {
        "sqlite" => None,
        "postgres" => {
            anyhow::ensure!(
                matches!(args.scenario.as_str(), "dashboard" | "ingest" | "console"),
                "--storage postgres runs the dashboard, ingest and console scenarios"
            );
            let cluster = domicile_pg_cluster::PgCluster::start()?;
            let url = cluster.url("postgres");
            let base = url.trim_end_matches("/postgres").to_owned();
            // Read by `Cluster::start` (each node process gets its database's URL).
            cluster::PG_BASE
                .set(base)
                .map_err(|_| anyhow::anyhow!("the PostgreSQL server is set once"))?;
            Some(cluster)
        }
        other => anyhow::bail!("--storage {other:?}: expected sqlite or postgres"),
    };
    let chosen: Vec<(&str, &str)> = match args.scenario.as_str() {
        "all" => SCENARIOS.to_vec(),
        name => vec![
            *SCENARIOS
                .iter()
                .find(|(n, _)| *n == name)
                .with_context(|| format!("unknown scenario {name:?}; known: proxy, fanout, dashboard, ingest, erasure, console, redact, flood, soak, all"))?,
        ],
    };
    for (name, heading) in chosen {
        let table = run(&args, name).await?;
        let mut mode = if args.quick { " --quick" } else { "" }.to_owned();
        let heading = if postgres.is_some() {
            mode.push_str(" --storage postgres");
            format!("{heading} (PostgreSQL)")
        } else {
            heading.to_owned()
        };
        let body = format!(
            "`cargo run --release -p domicile-bench -- {name}{mode}` — {} — {}\n\n{table}",
            today(),
            machine()
        );
        println!("{heading}\n\n{body}\n");
        if args.write {
            let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md"));
            write_section(&path, &heading, &body)?;
        }
    }
    Ok(())
}
