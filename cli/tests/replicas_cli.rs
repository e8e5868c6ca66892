//! Stateless replicas: two `domicile node` processes of one region over one database, behind
//! the gateway, which balances between them. One is killed with SIGKILL under load. The calls
//! it had in flight fail with a retryable answer (`REGION_UNAVAILABLE`, "retry with the same
//! idempotency key"); retried, and everything after, the other replica serves. In the end every
//! record is stored exactly once, and the audit chain both processes wrote verifies.
//!
//! On SQLite the shared database is one file, which both processes open on one machine. On
//! PostgreSQL each replica has a directory of its own, as it would on its own machine, holding
//! only copies of the region's key files; the data and the key vault are two databases of a
//! throwaway cluster that both replicas use.

mod common;
use common::{NodeProcess, free_port, node_config};
use domicile_node::store::Backend;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use domicile::synth::{self, SynthSpec};
use domicile_gateway::{Gateway, GatewayConfig, RegionConfig};
use domicile_proto::{
    pb::{IngestRequest, ListRegionsRequest, RecordStatus, RegionHealth, RejectReason},
    seal::{EnvelopeSealer, PublicSealingKey},
};

const TENANT: &str = "acme";

/// Starts a replica listening on `listen`, with its files (keys, and the SQLite database
/// unless `extra` names other storage) in `dir`.
fn replica(dir: &Path, name: &str, listen: SocketAddr, extra: &str) -> NodeProcess {
    let config = dir.join(format!("{name}.toml"));
    node_config(&config, listen, &dir.join("eu-de.sqlite"), extra);
    NodeProcess::start(&config)
}

/// Waits until the replica at `addr` answers `GetRegionInfo`: its port is bound before it
/// opens its keys and database, so an open port alone does not mean its key files exist.
async fn listening(addr: SocketAddr) {
    use domicile_proto::pb::{GetRegionInfoRequest, regional_node_client::RegionalNodeClient};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = RegionalNodeClient::connect(format!("http://{addr}")).await
            && c.get_region_info(GetRegionInfoRequest {}).await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_nothing_on_sqlite() -> anyhow::Result<()> {
    a_killed_replica_loses_nothing(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_nothing_on_postgres() -> anyhow::Result<()> {
    let cluster = domicile_pg_cluster::PgCluster::start()?;
    a_killed_replica_loses_nothing(Some(&cluster)).await
}

async fn a_killed_replica_loses_nothing(
    cluster: Option<&domicile_pg_cluster::PgCluster>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a_addr, b_addr) = (free_port(), free_port());
    // Where each replica keeps its files, and what the data is on.
    let (a_dir, b_dir, data, extra) = match cluster {
        None => (
            dir.path().to_owned(),
            dir.path().to_owned(),
            Backend::Sqlite(dir.path().join("eu-de.sqlite")),
            String::new(),
        ),
        Some(c) => {
            let (a_dir, b_dir) = (dir.path().join("machine-a"), dir.path().join("machine-b"));
            std::fs::create_dir_all(&a_dir)?;
            std::fs::create_dir_all(&b_dir)?;
            let data = c.create_database("data")?;
            let vault = c.create_database("vault")?;
            let extra = format!("storage = \"{data}\"\nkey_vault = \"{vault}\"\n");
            (a_dir, b_dir, Backend::Postgres(data), extra)
        }
    };
    // One after the other: the first creates the keys both then use.
    let a = replica(&a_dir, "a", a_addr, &extra);
    listening(a_addr).await;
    if a_dir != b_dir {
        // The operator installs the region's keys on the second machine.
        for entry in std::fs::read_dir(&a_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "key" || e == "kek") {
                std::fs::copy(&path, b_dir.join(path.file_name().unwrap()))?;
            }
        }
    }
    let b = replica(&b_dir, "b", b_addr, &extra);
    listening(b_addr).await;

    let mut config = GatewayConfig::new(vec![RegionConfig {
        id: "eu-de".into(),
        countries: vec!["DE".into()],
        endpoints: vec![format!("http://{a_addr}"), format!("http://{b_addr}")],
        identity: None,
    }]);
    config.insecure_no_auth = true;
    config.insecure_plaintext_federation = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = listener.local_addr()?;
    let gateway = Gateway::new(config)?;
    let replicas = gateway.region("eu-de").unwrap().replicas.clone();
    let metrics = gateway.metrics().clone();
    tokio::spawn(domicile_gateway::serve(
        gateway,
        listener,
        std::future::pending(),
    ));
    let mut gw = domicile_client::connect(gateway_addr).await?;
    let regions = gw
        .list_regions(ListRegionsRequest {})
        .await?
        .into_inner()
        .regions;
    assert_eq!(regions[0].health, RegionHealth::Serving as i32);
    let key = PublicSealingKey::from_bytes(&regions[0].sealing_key.as_ref().unwrap().public_key)?;

    let records = synth::generate(&SynthSpec {
        countries: vec!["DE".into()],
        subjects: 200,
        interactions: 3_000,
        seed: 3,
    });
    let mut a = Some(a);
    let mut outcome: HashMap<&str, RecordStatus> = HashMap::new();
    let (mut retried, mut failed_calls, mut batches_after_kill) = (0, 0, 0);
    for (n, chunk) in records.chunks(25).enumerate() {
        if n == 40 {
            drop(a.take()); // SIGKILL, with batches in flight from earlier requests' connections
        }
        let mut pending: Vec<_> = chunk.iter().collect();
        for attempt in 0.. {
            assert!(attempt < 50, "batch {n} never went through");
            let mut sealer = EnvelopeSealer::new(TENANT, "eu-de", &key)?;
            for r in &pending {
                sealer.seal(&r.country, &r.idempotency_key, &r.payload)?;
            }
            let answer = gw
                .ingest(IngestRequest {
                    tenant_id: TENANT.into(),
                    envelopes: vec![sealer.finish()],
                })
                .await?
                .into_inner();
            let mut again = Vec::new();
            for (result, r) in answer.results.iter().zip(&pending) {
                match RecordStatus::try_from(result.status)? {
                    RecordStatus::Accepted | RecordStatus::Duplicate => {
                        outcome.insert(&r.idempotency_key, RecordStatus::try_from(result.status)?);
                    }
                    _ => {
                        // The only failure allowed is the retryable one.
                        assert_eq!(
                            result.reason,
                            RejectReason::RegionUnavailable as i32,
                            "{result:?}"
                        );
                        assert!(
                            result
                                .detail
                                .contains("retry with the same idempotency key")
                        );
                        again.push(*r);
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            retried += again.len();
            failed_calls += 1;
            pending = again;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if a.is_none() {
            batches_after_kill += 1;
        }
    }
    assert_eq!(outcome.len(), records.len(), "every record acknowledged");
    assert!(batches_after_kill > 50, "load went on after the kill");
    // Calls are sent one at a time. The first to find the replica gone ejected it: it failed
    // if it had been sent on the connection the kill broke, and went to the other replica
    // if it failed before being sent (a refused connection, or one already known closed).
    // Every later call went to the other replica. (The gateway's background probe may be
    // the one to find it gone.)
    let resent = metrics
        .encode()
        .contains("domicile_gateway_region_call_retries_total{region=\"eu-de\"} 1");
    assert!(
        failed_calls <= 1,
        "{failed_calls} calls failed after the kill"
    );
    assert_eq!(replicas.ejected(), [format!("http://{a_addr}")]);
    assert!(
        metrics
            .encode()
            .contains("domicile_gateway_region_endpoints_ejected_total{region=\"eu-de\"} 1"),
        "the ejection is counted"
    );
    println!(
        "{}: {failed_calls} call(s) failed after the kill, {retried} records retried, the first call sent again by the gateway: {resent}",
        data.describe()
    );

    // The replica comes back on its address: probed, it is put back in service.
    let _a = replica(&a_dir, "a", a_addr, &extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replicas.ejected().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the restarted replica was not taken back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(_a);

    drop(b);
    let conn = data.connect_read_write()?;
    let stored: i64 = conn.query_row(
        "SELECT COUNT(*) FROM ingest_keys WHERE tenant = $1",
        [TENANT],
        |r| r.get(0),
    )?;
    assert_eq!(
        stored as usize,
        records.len(),
        "each record stored exactly once"
    );
    let interactions: i64 =
        conn.query_row("SELECT COUNT(*) FROM interactions", [], |r| r.get(0))?;
    assert_eq!(interactions, 3_000);
    drop(conn);
    let out = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["audit", "verify", "--config"])
        .arg(b_dir.join("b.toml"))
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the shared audit chain verifies:\n{text}"
    );
    Ok(())
}
