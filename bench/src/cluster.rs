//! A federation of separate processes — each node and the gateway a child of the benchmark, so
//! that each one's peak memory can be read — started by re-running this binary with the hidden
//! `__serve` command. Nodes and gateway talk mutual TLS, the gateway wants a token: the same
//! set-up as production, on loopback.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use domicile::{
    certs::{self, Pki},
    token::{DEV_AUDIENCE, TokenClaims, mint},
};
use domicile_gateway::{
    Gateway, GatewayConfig,
    auth::AuthConfig,
    config::{FederationTlsConfig, RegionConfig},
    limits::LimitsConfig,
};
use domicile_node::{Node, config::NodeConfig, config::NodeTls};
use domicile_ops::lifecycle::terminated;
use tokio::net::TcpListener;

/// One region of a cluster: its id and countries.
#[derive(Debug, Clone)]
pub struct Region {
    /// Region id.
    pub id: String,
    /// Countries it serves.
    pub countries: Vec<String>,
}

impl Region {
    /// A region serving `countries`.
    pub fn new(id: &str, countries: &[&str]) -> Self {
        Self {
            id: id.to_owned(),
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

/// A child process, stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Its listen address.
    pub addr: SocketAddr,
    /// How it was started, to start it again ([`Proc::restart`]).
    args: Vec<String>,
    log: PathBuf,
    storage: Option<String>,
}

impl Proc {
    /// Stops the process — at once with SIGKILL (`kill`), as a crash would, or with SIGTERM
    /// (its graceful shutdown) — and starts it again `down` later with the same arguments,
    /// address and data. Returns once it accepts connections again.
    pub fn restart(&mut self, kill: bool, down: Duration) -> anyhow::Result<()> {
        let signal = if kill { "-KILL" } else { "-TERM" };
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        self.child.wait()?;
        std::thread::sleep(down);
        let log = self.log.with_extension(format!(
            "{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ));
        let fresh = spawn_with(&self.args, self.addr, &log, self.storage.as_deref())?;
        *self = fresh;
        Ok(())
    }

    /// Resident set size now (`VmRSS`), in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_kb("VmRSS:").map_or(f64::NAN, |kb| kb / 1024.0)
    }

    fn status_kb(&self, field: &str) -> Option<f64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
    }

    /// Peak resident set size so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kb("VmHWM:").map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

/// CPU seconds (user + system) used so far by process `pid` (`self` for this one).
pub fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces), from field 3 on.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

impl Drop for Proc {
    fn drop(&mut self) {
        // One already waited for (restarted) has no process any more: its id may be another's.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A running federation of processes.
pub struct Cluster {
    /// The nodes, in region order.
    pub nodes: Vec<Proc>,
    /// The gateway.
    pub gateway: Proc,
    /// The gateway's console (plain HTTP on loopback).
    pub console: SocketAddr,
    /// A token for the tenant `bench` with every operation and purpose.
    pub token: String,
    /// The DPO key every node has registered for the tenant `bench`.
    pub dpo: domicile::trust::DevDpo,
}

/// Issue 25's bound on the gateway's peak RSS in every scenario, MiB (linkerd2-proxy's class).
pub const GATEWAY_RSS_TARGET_MIB: f64 = 30.0;

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A PostgreSQL server's base URL (`postgres://user@host:port`): when set, each node of a
/// [`Cluster`] keeps its data in a new database there.
pub static PG_BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The variable that hands a node process its storage URL.
const NODE_STORAGE_VAR: &str = "DOMICILE_BENCH_NODE_STORAGE";

/// How the nodes of a [`Cluster`] store their data, for the tables' notes (an open
/// parenthesis: the note goes on).
pub fn storage_note() -> &'static str {
    if PG_BASE.get().is_some() {
        "its own database of one PostgreSQL 15 server on the same machine (`synchronous_commit = on`, `fsync = on`: a batch is on disk before it is acknowledged"
    } else {
        "its own SQLite file (WAL, `synchronous = FULL`: a batch is on disk before it is acknowledged"
    }
}

/// A new database on the server of [`PG_VAR`] for `region`, if that is set.
fn postgres_database(region: &str) -> anyhow::Result<Option<String>> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(base) = PG_BASE.get() else {
        return Ok(None);
    };
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("bench_{}_{n}", region.replace('-', "_"));
    let admin = domicile_node::store::db::Connection::postgres(&format!("{base}/postgres"))?;
    admin.execute_batch(&format!("CREATE DATABASE {name}"))?;
    Ok(Some(format!("{base}/{name}")))
}

fn spawn(args: &[String], addr: SocketAddr, log: &Path) -> anyhow::Result<Proc> {
    spawn_with(args, addr, log, None)
}

fn spawn_with(
    args: &[String],
    addr: SocketAddr,
    log: &Path,
    storage: Option<&str>,
) -> anyhow::Result<Proc> {
    let mut command = Command::new(std::env::current_exe()?);
    if let Some(url) = storage {
        command.env(NODE_STORAGE_VAR, url);
    }
    let child = command
        .arg("__serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting a child process")?;
    let proc = Proc {
        child,
        addr,
        args: args.to_vec(),
        log: log.to_owned(),
        storage: storage.map(str::to_owned),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{args:?} did not start on {addr}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

/// The configuration of a node process of `region` with its data in `dir`.
pub fn node_config(dir: &Path, pki: &Pki, region: &Region, policies: Option<&Path>) -> NodeConfig {
    let countries: Vec<&str> = region.countries.iter().map(String::as_str).collect();
    let mut config = NodeConfig::new(
        &region.id,
        &countries,
        dir.join(format!("{}.sqlite", region.id)),
    );
    config.policy_dir = policies.map(Path::to_owned);
    config.dpo_keys_file = Some(dpo_dir(dir).join("dpo-keys.toml"));
    let (cert_file, key_file) = pki.pair(&format!("node-{}", region.id));
    config.tls = Some(NodeTls {
        cert_file,
        key_file,
        client_ca_file: pki.ca(),
        gateway_identity: certs::GATEWAY_IDENTITY.to_owned(),
    });
    config
}

/// Where a cluster in `dir` keeps its DPO key and the nodes' `dpo_keys_file`.
fn dpo_dir(dir: &Path) -> PathBuf {
    dir.join("dpo")
}

/// The development PKI of a cluster in `dir`.
pub fn pki(dir: &Path, regions: &[Region]) -> anyhow::Result<Pki> {
    let ids: Vec<String> = regions.iter().map(|r| r.id.clone()).collect();
    certs::reuse_or_generate(&dir.join("pki"), &ids)
}

impl Cluster {
    /// Starts a node process per region (data in `dir`, policies from `policies` or the shipped
    /// ones) and a gateway process in front of them.
    pub fn start(dir: &Path, regions: &[Region], policies: Option<&Path>) -> anyhow::Result<Self> {
        Self::start_limited(dir, regions, policies, None)
    }

    /// [`Cluster::start`] with the gateway's per-tenant rate limit at `rate` = (calls per
    /// second, burst), rather than lifted.
    pub fn start_limited(
        dir: &Path,
        regions: &[Region],
        policies: Option<&Path>,
        rate: Option<(f64, u32)>,
    ) -> anyhow::Result<Self> {
        pki(dir, regions)?;
        let dpo = domicile::trust::DevDpo::reuse_or_generate(&dpo_dir(dir), &["bench".to_owned()])?;
        let secret = dir.join("hs256.secret");
        std::fs::write(&secret, b"benchmark secret of at least thirty-two bytes")?;
        let mut nodes = Vec::new();
        let mut route = Vec::new();
        for r in regions {
            let addr = free_port()?;
            let mut args = vec![
                "node".to_owned(),
                dir.display().to_string(),
                r.id.clone(),
                r.countries.join(","),
                addr.to_string(),
            ];
            if let Some(p) = policies {
                args.push(p.display().to_string());
            }
            let storage = postgres_database(&r.id)?;
            nodes.push(spawn_with(
                &args,
                addr,
                &dir.join(format!("{}.log", r.id)),
                storage.as_deref(),
            )?);
            route.push(format!("{}={}@{addr}", r.id, r.countries.join(",")));
        }
        let addr = free_port()?;
        let console = free_port()?;
        let mut args = vec![
            "gateway".to_owned(),
            dir.display().to_string(),
            addr.to_string(),
            route.join(";"),
            console.to_string(),
        ];
        if let Some((per_second, burst)) = rate {
            args.extend([per_second.to_string(), burst.to_string()]);
        }
        let gateway = spawn(&args, addr, &dir.join("gateway.log"))?;
        let token = mint(
            &std::fs::read(&secret)?,
            &TokenClaims::everything("bench", 4),
        )?;
        Ok(Self {
            nodes,
            gateway,
            console,
            token,
            dpo,
        })
    }

    /// `request` signed now by the cluster's DPO key.
    pub fn signed<R: domicile_proto::trust::DpoSigned>(&self, request: R) -> R {
        domicile_proto::trust::signed(request, &self.dpo.key)
    }

    /// A client of the gateway with the cluster's token.
    pub async fn client(&self) -> anyhow::Result<domicile_client::Gateway> {
        domicile_client::connect_with(
            &self.gateway.addr.to_string(),
            &domicile_client::ConnectOptions {
                token: Some(self.token.clone()),
                ..Default::default()
            },
        )
        .await
    }

    /// Starts the peak-RSS marks afresh (`echo 5 > /proc/<pid>/clear_refs`), so that a
    /// measurement covers one phase only.
    pub fn reset_peak_rss(&self) {
        for p in self.nodes.iter().chain([&self.gateway]) {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", p.child.id()), "5");
        }
    }

    /// CPU seconds used so far: the gateway, all nodes together, and this process (the client).
    pub fn cpu(&self) -> (f64, f64, f64) {
        let nodes = self
            .nodes
            .iter()
            .map(|n| cpu_seconds(&n.child.id().to_string()))
            .sum();
        (
            cpu_seconds(&self.gateway.child.id().to_string()),
            nodes,
            cpu_seconds("self"),
        )
    }

    /// The issue 25 target line for the gateway's peak RSS ([`GATEWAY_RSS_TARGET_MIB`]) since the last
    /// [`Self::reset_peak_rss`].
    pub fn gateway_rss_target(&self) -> String {
        let peak = self.gateway.peak_rss_mib();
        format!(
            "- the gateway's peak RSS during the runs: {peak:.0} MiB ≤ 30 MiB (every scenario, issue 25): {}.",
            if peak <= GATEWAY_RSS_TARGET_MIB {
                "met"
            } else {
                "**missed**"
            }
        )
    }

    /// Peak RSS of the gateway and of the largest node, MiB.
    pub fn peak_rss(&self) -> (f64, f64) {
        let node = self
            .nodes
            .iter()
            .map(Proc::peak_rss_mib)
            .fold(0.0, f64::max);
        (self.gateway.peak_rss_mib(), node)
    }
}

/// The hidden `__serve node|gateway …` command: one process of a [`Cluster`].
pub async fn serve(args: &[String]) -> anyhow::Result<()> {
    match args {
        [kind, dir, id, countries, listen, rest @ ..] if kind == "node" => {
            let dir = PathBuf::from(dir);
            let countries: Vec<&str> = countries.split(',').collect();
            let region = Region::new(id, &countries);
            let pki = Pki {
                dir: dir.join("pki"),
            };
            let policies = rest.first().map(PathBuf::from);
            let mut config = node_config(&dir, &pki, &region, policies.as_deref());
            config.listen = listen.parse()?;
            config.storage = std::env::var(NODE_STORAGE_VAR).ok();
            let listener = TcpListener::bind(config.listen).await?;
            domicile_node::store::keys::create_if_new(&config)?;
            let node = Node::open(config)?;
            domicile_node::serve(node, listener, terminated()).await?;
        }
        [kind, dir, listen, route, console, rate @ ..] if kind == "gateway" => {
            let dir = PathBuf::from(dir);
            let mut regions = Vec::new();
            for part in route.split(';') {
                let (id, rest) = part.split_once('=').context("route: id=countries@addr")?;
                let (countries, addr) = rest.split_once('@').context("route: countries@addr")?;
                regions.push(RegionConfig {
                    id: id.to_owned(),
                    countries: countries.split(',').map(str::to_owned).collect(),
                    endpoints: vec![format!("https://{addr}")],
                    identity: None,
                });
            }
            let pki = Pki {
                dir: dir.join("pki"),
            };
            let mut config = GatewayConfig::new(regions);
            config.listen = listen.parse()?;
            let (cert_file, key_file) = pki.pair("gateway");
            config.federation_tls = Some(FederationTlsConfig {
                ca_file: pki.ca(),
                cert_file,
                key_file,
            });
            config.auth = Some(AuthConfig {
                audience: DEV_AUDIENCE.into(),
                issuer: None,
                hs256_secret_file: Some(dir.join("hs256.secret")),
                jwks_file: None,
                leeway_seconds: 30,
                clients: Vec::new(),
            });
            // One tenant at full speed: its rate limit lifted (unless one is given), in-flight
            // limits kept.
            let (per_second, burst) = match rate {
                [per_second, burst] => (per_second.parse()?, burst.parse()?),
                _ => (1e9, u32::MAX),
            };
            config.limits = LimitsConfig {
                requests_per_second: per_second,
                burst,
                max_concurrent_per_tenant: 1024,
                max_in_flight: 4096,
                ..Default::default()
            };
            config.max_deadline_ms = 600_000;
            config.default_deadline_ms = 600_000;
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("gateway configuration: {e}"))?;
            let listener = TcpListener::bind(config.listen).await?;
            let console = TcpListener::bind(console.parse::<SocketAddr>()?).await?;
            let gateway = Gateway::new(config)?;
            tokio::spawn(domicile_gateway::api::console::serve(
                gateway.clone(),
                console,
                terminated(),
            ));
            domicile_gateway::serve(gateway, listener, terminated()).await?;
        }
        _ => anyhow::bail!(
            "__serve node <dir> <id> <countries> <listen> [policies] | gateway <dir> <listen> <route> <console> [per-second burst]"
        ),
    }
    Ok(())
}
