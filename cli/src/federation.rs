//! A whole federation in one process: a gateway and N regional nodes on loopback, each node
//! with its own SQLite file, or its own database in a throwaway PostgreSQL cluster. Used by `domicile dev` and by the integration-test harness.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use domicile_gateway::{
    Gateway, GatewayConfig, RegionConfig,
    auth::AuthConfig,
    config::{FederationTlsConfig, PublicTlsConfig},
    limits::LimitsConfig,
};
use domicile_node::{Node, NodeConfig, config::NodeTls, store::Backend};
use domicile_ops::metrics::Source;

use crate::certs::{self, Pki};
use domicile_pg_cluster::PgCluster;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// A region to start.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// Region id.
    pub id: String,
    /// Countries it serves.
    pub countries: Vec<String>,
    /// When true, the region's port accepts connections but never answers (a hung node).
    pub unresponsive: bool,
}

/// Builds a [`Federation`].
#[derive(Debug, Clone)]
pub struct FederationBuilder {
    regions: Vec<RegionSpec>,
    data_dir: Option<PathBuf>,
    gateway_addr: SocketAddr,
    min_group_size: u32,
    default_deadline: Duration,
    max_deadline: Option<Duration>,
    auth: Option<AuthConfig>,
    limits: Option<LimitsConfig>,
    otlp: Option<domicile_ops::otlp::OtlpConfig>,
    public_tls: bool,
    postgres: bool,
    dpo_tenants: Vec<String>,
    policy_dir: Option<PathBuf>,
    clock: Option<domicile_ops::clock::SharedClock>,
    local_principals: Vec<(String, domicile_node::config::LocalRole)>,
}

/// Tenants whose DPO key a federation registers by default (the tests', `dev`'s, the Python
/// example's and the benchmark's).
pub const DPO_TENANTS: &[&str] = &["acme", "globex", "demo", "pyexample", "bench"];

/// The variable that puts a federation's node data in PostgreSQL (`postgres`) rather than in
/// SQLite files (`sqlite`, the default): how CI runs the whole test suite on each backend.
pub const STORAGE_VAR: &str = "DOMICILE_FEDERATION_STORAGE";

/// Whether [`STORAGE_VAR`] asks for PostgreSQL; an unknown value is an error, not a default.
pub fn postgres_from_env() -> anyhow::Result<bool> {
    match std::env::var(STORAGE_VAR).as_deref() {
        Err(_) | Ok("" | "sqlite") => Ok(false),
        Ok("postgres") => Ok(true),
        Ok(other) => anyhow::bail!("{STORAGE_VAR}={other:?}: expected sqlite or postgres"),
    }
}

impl Default for FederationBuilder {
    fn default() -> Self {
        Self {
            regions: Vec::new(),
            data_dir: None,
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            min_group_size: 5,
            default_deadline: Duration::from_secs(5),
            max_deadline: None,
            auth: None,
            limits: None,
            otlp: None,
            public_tls: false,
            postgres: false,
            dpo_tenants: DPO_TENANTS.iter().map(|t| (*t).to_owned()).collect(),
            policy_dir: None,
            clock: None,
            local_principals: Vec::new(),
        }
    }
}

impl FederationBuilder {
    /// Adds a region serving `countries`.
    pub fn region(mut self, id: &str, countries: &[&str]) -> Self {
        self.regions.push(RegionSpec {
            id: id.to_owned(),
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
            unresponsive: false,
        });
        self
    }

    /// Adds a region whose node accepts connections but never answers.
    pub fn unresponsive_region(mut self, id: &str, countries: &[&str]) -> Self {
        self.regions.push(RegionSpec {
            id: id.to_owned(),
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
            unresponsive: true,
        });
        self
    }

    /// Keeps the nodes' data in PostgreSQL: a throwaway cluster (from the machine's
    /// `postgresql` binaries) started with the federation, one database per region. Also set by
    /// `DOMICILE_FEDERATION_STORAGE=postgres` ([`STORAGE_VAR`]).
    pub fn postgres(mut self, on: bool) -> Self {
        self.postgres = on;
        self
    }

    /// Registers the federation's DPO key for `tenant` too (besides [`DPO_TENANTS`]).
    pub fn dpo_tenant(mut self, tenant: &str) -> Self {
        self.dpo_tenants.push(tenant.to_owned());
        self
    }

    /// The nodes' and the gateway's clock, for what depends on which days have closed, on
    /// expiries and deadlines (default: the system's).
    pub fn clock(mut self, clock: domicile_ops::clock::SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Reads the country policies from `dir` (default: the shipped ones).
    pub fn policy_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.policy_dir = Some(dir.into());
        self
    }

    /// Keeps node files under `dir` (default: a temporary directory removed on drop).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The gateway's listen address (default `127.0.0.1:0`, an ephemeral port).
    pub fn gateway_addr(mut self, addr: SocketAddr) -> Self {
        self.gateway_addr = addr;
        self
    }

    /// The nodes' *k* (default 5).
    pub fn min_group_size(mut self, k: u32) -> Self {
        self.min_group_size = k;
        self
    }

    /// Authenticate callers at the gateway with `auth`. Without it the federation's gateway runs
    /// in the explicit insecure mode (`insecure_no_auth`), as tests of other features need.
    pub fn auth(mut self, auth: AuthConfig) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Serve the gateway's public listener with TLS (the federation PKI's gateway certificate,
    /// valid for `gateway.domicile`, `localhost` and `127.0.0.1`), accepting client
    /// certificates from the same CA.
    pub fn public_tls(mut self) -> Self {
        self.public_tls = true;
        self
    }

    /// Export the gateway's and every node's RPC spans to this OTLP collector (default: off).
    pub fn otlp(mut self, otlp: domicile_ops::otlp::OtlpConfig) -> Self {
        self.otlp = Some(otlp);
        self
    }

    /// The gateway's admission limits (default: the configuration's defaults).
    pub fn limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The gateway's cap on any caller's deadline (default 30 s, or the default deadline if
    /// larger).
    pub fn max_deadline(mut self, d: Duration) -> Self {
        self.max_deadline = Some(d);
        self
    }

    /// The gateway's deadline for calls that carry none (default 5 s).
    pub fn default_deadline(mut self, d: Duration) -> Self {
        self.default_deadline = d;
        self
    }

    /// Serves every node's in-country listener over mutual TLS (a development CA for the
    /// in-country staff, `local-pki` in the data directory, apart from the federation's),
    /// admitting only these identities, each in its role ([`Federation::local_pki`] has their
    /// certificates). Without it the listeners are plaintext on loopback, every caller in every
    /// role.
    pub fn local_principals(
        mut self,
        principals: &[(&str, domicile_node::config::LocalRole)],
    ) -> Self {
        self.local_principals = principals
            .iter()
            .map(|(id, role)| ((*id).to_owned(), *role))
            .collect();
        self
    }

    /// Starts every node, then the gateway, and waits until all listeners are bound.
    ///
    /// With `DOMICILE_TEST_LOG` set (a `tracing` filter, e.g. `error`), the process logs to
    /// the test output: how to see why a node answered `UNAVAILABLE` in a test.
    pub async fn start(self) -> anyhow::Result<Federation> {
        if let Ok(filter) = std::env::var("DOMICILE_TEST_LOG") {
            let mut filter = tracing_subscriber::EnvFilter::new(filter);
            for cap in domicile_node::store::db::LOG_CAPS {
                filter = filter.add_directive(cap.parse()?);
            }
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let (tempdir, data_dir) = match &self.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().context("creating a temporary data directory")?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        // Mutual TLS between gateway and nodes, always: a development PKI per federation.
        let region_ids: Vec<String> = self.regions.iter().map(|r| r.id.clone()).collect();
        let pki = certs::reuse_or_generate(&data_dir.join("pki"), &region_ids)
            .context("generating the federation's certificates")?;
        // The tenants' DPO key (one for all, made once per data directory), registered with
        // every node: access, portability, erasure, holds and incidents must carry its signature.
        let dpo = crate::trust::DevDpo::reuse_or_generate(&data_dir.join("dpo"), &self.dpo_tenants)
            .context("setting up the development DPO key")?;
        // The in-country staff's PKI, apart from the federation's.
        let local_pki = if self.local_principals.is_empty() {
            None
        } else {
            let dir = data_dir.join("local-pki");
            let names: Vec<&str> = self
                .local_principals
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            let complete = dir.join("ca.pem").exists()
                && names.iter().all(|n| dir.join(format!("{n}.pem")).exists());
            if complete {
                Some(Pki { dir })
            } else {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
                Some(certs::generate_local(&dir, &names)?)
            }
        };
        let postgres = if self.postgres || postgres_from_env()? {
            Some(
                tokio::task::spawn_blocking(PgCluster::start)
                    .await?
                    .context("starting a PostgreSQL cluster for the nodes' data")?,
            )
        } else {
            None
        };
        let mut nodes = Vec::new();
        let mut region_configs = Vec::new();
        for spec in &self.regions {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let addr = listener.local_addr()?;
            let database = data_dir.join(format!("{}.sqlite", spec.id));
            let backend = match &postgres {
                Some(cluster) => {
                    Backend::Postgres(cluster.create_database(&database_name(&spec.id))?)
                }
                None => Backend::Sqlite(database.clone()),
            };
            let (tx, rx) = oneshot::channel::<()>();
            let mut handle = None;
            let mut local_addr = None;
            let task = if spec.unresponsive {
                // Hold the socket open without ever accepting: connections hang in the backlog.
                tokio::spawn(async move {
                    let _listener = listener;
                    let _ = rx.await;
                    Ok(())
                })
            } else {
                let countries: Vec<&str> = spec.countries.iter().map(String::as_str).collect();
                let mut config = NodeConfig::new(&spec.id, &countries, database.clone());
                config.listen = addr;
                config.min_group_size = self.min_group_size;
                config.dpo_keys_file = Some(dpo.keys_file.clone());
                config.policy_dir = self.policy_dir.clone();
                config.otlp = self.otlp.clone();
                if let Backend::Postgres(url) = &backend {
                    config.storage = Some(url.clone());
                }
                let (cert_file, key_file) = pki.pair(&format!("node-{}", spec.id));
                config.tls = Some(NodeTls {
                    cert_file,
                    key_file,
                    client_ca_file: pki.ca(),
                    gateway_identity: certs::GATEWAY_IDENTITY.to_owned(),
                });
                if let Some(local) = &local_pki {
                    let (cert_file, key_file) = local.pair("local");
                    config.local_tls = Some(domicile_node::config::LocalTls {
                        cert_file,
                        key_file,
                        client_ca_file: local.ca(),
                    });
                    config.local_principals = self
                        .local_principals
                        .iter()
                        .map(|(identity, role)| domicile_node::config::LocalPrincipal {
                            identity: identity.clone(),
                            role: *role,
                        })
                        .collect();
                }
                // A new region's keys are made here, explicitly, as `domicile keygen` makes
                // them; a data directory used before keeps its own (the node only loads keys).
                domicile_node::store::keys::create_if_new(&config)?;
                let clock = self
                    .clock
                    .clone()
                    .unwrap_or_else(domicile_ops::clock::system);
                let node =
                    tokio::task::spawn_blocking(move || Node::open_with_clock(config, clock))
                        .await?
                        .with_context(|| format!("opening node {}", spec.id))?;
                handle = Some(node.clone());
                // The in-country listener, for tests that act as in-country staff.
                let local = TcpListener::bind(("127.0.0.1", 0)).await?;
                local_addr = Some(local.local_addr()?);
                tokio::spawn(async move {
                    let (stop_local, local_stopped) = oneshot::channel::<()>();
                    let local_task =
                        tokio::spawn(domicile_node::serve_local(node.clone(), local, async {
                            let _ = local_stopped.await;
                        }));
                    let served = domicile_node::serve(node, listener, async {
                        let _ = rx.await;
                    })
                    .await;
                    let _ = stop_local.send(());
                    let _ = local_task.await;
                    served.map_err(anyhow::Error::from)
                })
            };
            region_configs.push(RegionConfig {
                id: spec.id.clone(),
                countries: spec.countries.clone(),
                endpoints: vec![format!("https://{addr}")],
                identity: None,
            });
            nodes.push(RunningNode {
                region_id: spec.id.clone(),
                addr,
                database,
                backend,
                node: handle,
                local_addr,
                shutdown: Some(tx),
                task: Some(task),
            });
        }
        // The federation trust bundle, from each region's identity key, as the regions'
        // operators would export it (`domicile trust export`) and hand it out of band.
        let mut trust_bundle = domicile_proto::trust::TrustBundle::new();
        for n in &nodes {
            if let Some(node) = &n.node {
                trust_bundle.insert(&n.region_id, &node.audit().public_key(), None);
            }
        }
        let trust_bundle_file = data_dir.join("trust-bundle.json");
        std::fs::write(&trust_bundle_file, trust_bundle.to_json())
            .with_context(|| format!("writing {}", trust_bundle_file.display()))?;
        let mut config = GatewayConfig::new(region_configs);
        config.audit_witness_file = Some(data_dir.join("audit-witness.json"));
        let (cert_file, key_file) = pki.pair("gateway");
        if self.public_tls {
            config.tls = Some(PublicTlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: Some(pki.ca()),
            });
        }
        config.federation_tls = Some(FederationTlsConfig {
            ca_file: pki.ca(),
            cert_file,
            key_file,
        });
        config.insecure_no_auth = self.auth.is_none();
        config.auth = self.auth.clone();
        if let Some(limits) = &self.limits {
            config.limits = limits.clone();
        }
        config.otlp = self.otlp.clone();
        config.default_deadline_ms = self.default_deadline.as_millis() as u64;
        config.max_deadline_ms = match self.max_deadline {
            Some(d) => d.as_millis() as u64,
            None => config.max_deadline_ms.max(config.default_deadline_ms),
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("gateway configuration: {e}"))?;
        let listener = TcpListener::bind(self.gateway_addr)
            .await
            .with_context(|| format!("binding the gateway to {}", self.gateway_addr))?;
        let gateway_addr = listener.local_addr()?;
        config.listen = gateway_addr;
        let mut gateway = Gateway::new(config)?;
        if let Some(clock) = &self.clock {
            gateway = gateway.with_clock(clock.clone());
        }
        let (tx, rx) = oneshot::channel::<()>();
        let serving = gateway.clone();
        let gateway_task = tokio::spawn(async move {
            domicile_gateway::serve(serving, listener, async {
                let _ = rx.await;
            })
            .await
            .map_err(anyhow::Error::from)
        });
        Ok(Federation {
            gateway_addr,
            gateway,
            pki,
            trust_bundle,
            trust_bundle_file,
            dpo,
            data_dir,
            nodes,
            local_pki,
            gateway_shutdown: Some(tx),
            gateway_task: Some(gateway_task),
            postgres,
            clock: self
                .clock
                .clone()
                .unwrap_or_else(domicile_ops::clock::system),
            _tempdir: tempdir,
        })
    }
}

/// The PostgreSQL database of a region's node.
fn database_name(region: &str) -> String {
    format!("node_{}", region.replace('-', "_"))
}

/// A node started by a [`Federation`].
#[derive(Debug)]
pub struct RunningNode {
    /// Its region.
    pub region_id: String,
    /// Its federation address.
    pub addr: SocketAddr,
    /// Its SQLite file (the base of its key files' paths when its data is in PostgreSQL).
    pub database: PathBuf,
    /// Where its data is.
    pub backend: Backend,
    /// The node itself, for in-process inspection (`None` for an unresponsive region).
    pub node: Option<Node>,
    /// Its in-country `LocalNode` listener (`None` for an unresponsive region).
    pub local_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningNode {
    /// A connection of its own to the node's database, whichever the backend: for tests that
    /// look at (or tamper with) what the node stored.
    pub fn connect(&self) -> anyhow::Result<domicile_node::store::db::Connection> {
        Ok(self.backend.connect_read_write()?)
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // Graceful shutdown waits for open connections; do not wait for ever.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// A running federation; everything stops when it is dropped.
#[derive(Debug)]
pub struct Federation {
    /// The gateway's address.
    pub gateway_addr: SocketAddr,
    /// The gateway itself, for in-process inspection (metrics) and reloads.
    pub gateway: Gateway,
    /// The development PKI of its mutual TLS (CA, gateway, nodes, a client).
    pub pki: Pki,
    /// The federation trust bundle: each region's identity key. Clients verify sealing keys
    /// with it.
    pub trust_bundle: domicile_proto::trust::TrustBundle,
    /// Where it is written (`trust-bundle.json` in the data directory).
    pub trust_bundle_file: PathBuf,
    /// The tenants' development DPO key, registered with every node.
    pub dpo: crate::trust::DevDpo,
    /// Where the nodes keep their files.
    pub data_dir: PathBuf,
    /// The nodes, in the order their regions were added.
    pub nodes: Vec<RunningNode>,
    /// The in-country staff's PKI (CA, the listeners' certificate `local`, one per identity),
    /// when [`FederationBuilder::local_principals`] was set.
    pub local_pki: Option<Pki>,
    gateway_shutdown: Option<oneshot::Sender<()>>,
    gateway_task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The PostgreSQL cluster holding the nodes' data, when they use one; stopped and
    /// deleted with the federation.
    pub postgres: Option<PgCluster>,
    /// The nodes' clock.
    clock: domicile_ops::clock::SharedClock,
    _tempdir: Option<tempfile::TempDir>,
}

impl Federation {
    /// A builder with no regions yet.
    pub fn builder() -> FederationBuilder {
        FederationBuilder::default()
    }

    /// Every byte the node of `region` keeps on disk for its data: its SQLite file and WAL, or
    /// its PostgreSQL database's files and the cluster's WAL. For scans of what is at rest.
    pub fn database_bytes(&self, region: &str) -> anyhow::Result<Vec<u8>> {
        let node = self.node(region).context("no such region")?;
        match (&node.backend, &self.postgres) {
            (Backend::Postgres(_), Some(cluster)) => cluster.database_bytes(&database_name(region)),
            _ => {
                let mut bytes = std::fs::read(&node.database)?;
                if let Ok(wal) = std::fs::read(node.database.with_extension("sqlite-wal")) {
                    bytes.extend(wal);
                }
                Ok(bytes)
            }
        }
    }

    /// A copy of the node of `region`'s database, as a backup would hold it, that the node
    /// does not use: the SQLite file and WAL copied into `dir`, or a `pg_dump` restored into a
    /// new database of the cluster. `name` (letters, digits, `_`) tells copies apart.
    pub fn copy_database(
        &self,
        region: &str,
        dir: &std::path::Path,
        name: &str,
    ) -> anyhow::Result<Backend> {
        let node = self.node(region).context("no such region")?;
        match (&node.backend, &self.postgres) {
            (Backend::Postgres(_), Some(cluster)) => {
                let dump = dir.join(format!("{region}-{name}.pgdump"));
                cluster.dump(&database_name(region), &dump)?;
                let copy = format!("{}_{name}", database_name(region));
                cluster.restore(&dump, &copy)?;
                Ok(Backend::Postgres(cluster.url(&copy)))
            }
            _ => {
                let copy = dir.join(format!("{region}-{name}.sqlite"));
                std::fs::copy(&node.database, &copy)?;
                let wal = node.database.with_extension("sqlite-wal");
                if wal.exists() {
                    std::fs::copy(wal, copy.with_extension("sqlite-wal"))?;
                }
                Ok(Backend::Sqlite(copy))
            }
        }
    }

    /// `request` signed now by the federation's DPO key.
    pub fn signed<R: domicile_proto::trust::DpoSigned>(&self, request: R) -> R {
        domicile_proto::trust::signed(request, &self.dpo.key)
    }

    /// The node of `region_id`.
    pub fn node(&self, region_id: &str) -> Option<&RunningNode> {
        self.nodes.iter().find(|n| n.region_id == region_id)
    }

    /// The metrics of the gateway (at `/metrics`) and of every running node (at
    /// `/metrics/<region>`), for [`domicile_ops::metrics::serve`].
    pub fn metrics_sources(&self) -> BTreeMap<String, Source> {
        let mut sources = BTreeMap::new();
        sources.insert("/metrics".to_owned(), self.gateway.metrics().source());
        for n in &self.nodes {
            if let Some(node) = &n.node {
                sources.insert(format!("/metrics/{}", n.region_id), node.metrics().source());
            }
        }
        sources
    }

    /// Stops one region's node (its listener closes; the gateway sees it as unavailable).
    pub async fn stop_node(&mut self, region_id: &str) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.region_id == region_id) {
            n.stop().await;
        }
    }

    /// Starts a node stopped with [`Federation::stop_node`] again, on the same address and
    /// data, as a supervisor would after a crash (its in-country listener is not restarted).
    pub async fn restart_node(&mut self, region_id: &str) -> anyhow::Result<()> {
        let clock = self.clock.clone();
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.region_id == region_id)
            .with_context(|| format!("no region {region_id}"))?;
        anyhow::ensure!(n.task.is_none(), "region {region_id} is running");
        let config = n
            .node
            .take()
            .with_context(|| format!("region {region_id} has no node to restart"))?
            .config()
            .clone();
        let node = tokio::task::spawn_blocking(move || Node::open_with_clock(config, clock))
            .await?
            .with_context(|| format!("reopening node {region_id}"))?;
        // The same port: the gateway's configuration names it.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(n.addr)?;
        let listener = socket.listen(1024)?;
        let (tx, rx) = oneshot::channel::<()>();
        let serving = node.clone();
        n.task = Some(tokio::spawn(async move {
            domicile_node::serve(serving, listener, async {
                let _ = rx.await;
            })
            .await
            .map_err(anyhow::Error::from)
        }));
        n.shutdown = Some(tx);
        n.node = Some(node);
        Ok(())
    }

    /// Stops the gateway and every node.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.gateway_shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.gateway_task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for n in &mut self.nodes {
            n.stop().await;
        }
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        if let Some(tx) = self.gateway_shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.gateway_task.take() {
            task.abort();
        }
        for n in &mut self.nodes {
            if let Some(tx) = n.shutdown.take() {
                let _ = tx.send(());
            }
            if let Some(task) = n.task.take() {
                task.abort();
            }
        }
    }
}
