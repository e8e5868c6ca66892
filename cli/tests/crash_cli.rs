//! Durability under crashes: a `domicile node` process ingests under load from concurrent
//! clients and is killed with SIGKILL at random moments, 20 times, restarting on the same files
//! each time. Every record the node acknowledged must be stored exactly once afterwards, and
//! the audit chain must verify. On each backend: SQLite, and PostgreSQL (a throwaway cluster;
//! the node is killed, the database server is not).

mod common;
use common::{NodeProcess, free_port, node_on};
use domicile_node::store::Backend;

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use domicile::synth::{self, SynthSpec};
use domicile_proto::{
    pb::{
        GetRegionInfoRequest, RecordStatus, RegionalNodeIngestRequest, record_payload::Record,
        regional_node_client::RegionalNodeClient,
    },
    seal::{EnvelopeSealer, PublicSealingKey},
};
use rand::{Rng, SeedableRng};

const TENANT: &str = "acme";
const TRIALS: usize = 20;
const CLIENTS: usize = 4;

/// Connects once the node answers `GetRegionInfo`; its sealing key.
async fn ready(
    addr: SocketAddr,
) -> (
    RegionalNodeClient<tonic::transport::Channel>,
    PublicSealingKey,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = RegionalNodeClient::connect(format!("http://{addr}")).await
            && let Ok(info) = c.get_region_info(GetRegionInfoRequest {}).await
        {
            let key = info.into_inner().sealing_key.unwrap();
            return (c, PublicSealingKey::from_bytes(&key.public_key).unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "the node did not come back within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every record in `acked` is stored exactly once in the database, as the last crash left it
/// (opening a SQLite file recovers its write-ahead log as a restarting node would).
fn check(
    backend: &Backend,
    config: &std::path::Path,
    records: &[synth::SynthRecord],
    acked: &HashSet<String>,
) -> anyhow::Result<()> {
    // The database holds the ids in their stored forms: the vault says what they are.
    let vault = domicile_node::store::vault::Vault::open_for(
        &domicile_node::config::NodeConfig::from_toml(&std::fs::read_to_string(config)?)?,
    )?;
    let conn = backend.connect_read_write()?;
    let mut claimed = conn
        .prepare("SELECT COUNT(*) FROM ingest_keys WHERE tenant = $1 AND idempotency_key = $2")?;
    let mut interactions = conn
        .prepare("SELECT COUNT(*) FROM interactions WHERE tenant = $1 AND interaction_id = $2")?;
    let mut subjects =
        conn.prepare("SELECT COUNT(*) FROM subjects WHERE tenant = $1 AND external_id = $2")?;
    for r in records
        .iter()
        .filter(|r| acked.contains(&r.idempotency_key))
    {
        let external = match &r.payload.record {
            Some(Record::Interaction(i)) => i.subject_external_id.as_str(),
            Some(Record::Subject(s)) => s.external_id.as_str(),
            None => unreachable!("the generator makes records"),
        };
        let key = vault.find(TENANT, external)?.unwrap_or_else(|| {
            panic!(
                "acknowledged record {}: its subject has a key",
                r.idempotency_key
            )
        });
        let stored = key.stored_id("idempotency", &r.idempotency_key);
        let n: i64 = claimed.query_row([TENANT, stored.as_str()], |x| x.get(0))?;
        assert_eq!(
            n, 1,
            "acknowledged record {} is stored once",
            r.idempotency_key
        );
        let (table, id) = match &r.payload.record {
            Some(Record::Interaction(i)) => (
                &mut interactions,
                key.stored_id("interaction", &i.interaction_id),
            ),
            _ => (&mut subjects, key.reference.clone()),
        };
        let n: i64 = table.query_row([TENANT, id.as_str()], |x| x.get(0))?;
        assert_eq!(
            n, 1,
            "acknowledged record {} has its row",
            r.idempotency_key
        );
    }
    drop((claimed, interactions, subjects));
    drop(conn);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_on_sqlite() -> anyhow::Result<()> {
    sigkill_trials(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_on_postgres() -> anyhow::Result<()> {
    let cluster = domicile_pg_cluster::PgCluster::start()?;
    sigkill_trials(Some(&cluster)).await
}

async fn sigkill_trials(cluster: Option<&domicile_pg_cluster::PgCluster>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = free_port();
    let (db, config) = node_on(
        cluster,
        dir.path(),
        "crash",
        addr,
        "audit_checkpoint_every = 50\n",
    );
    let records = Arc::new(synth::generate(&SynthSpec {
        countries: vec!["DE".into()],
        subjects: 300,
        interactions: 6_000,
        seed: 11,
    }));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let mut kills_mid_load = 0;
    for trial in 0..TRIALS {
        let mut child = NodeProcess::start(&config);
        let (client, key) = ready(addr).await;
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (mut client, key, records, acked, answered) = (
                    client.clone(),
                    key.clone(),
                    records.clone(),
                    acked.clone(),
                    answered.clone(),
                );
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((trial * CLIENTS + c) as u64);
                tokio::spawn(async move {
                    loop {
                        // Batches of 1 to 50 records from anywhere in the set: new ones and
                        // ones stored before the last crash (those must come back duplicate).
                        let start = rng.random_range(0..records.len());
                        let len = rng.random_range(1..=50).min(records.len() - start);
                        let batch = &records[start..start + len];
                        let mut sealer = EnvelopeSealer::new(TENANT, "eu-de", &key).unwrap();
                        for r in batch {
                            sealer
                                .seal(&r.country, &r.idempotency_key, &r.payload)
                                .unwrap();
                        }
                        let Ok(answer) = client
                            .ingest(RegionalNodeIngestRequest {
                                tenant_id: TENANT.into(),
                                envelope: Some(sealer.finish()),
                            })
                            .await
                        else {
                            return; // the node is gone
                        };
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut acked = acked.lock().unwrap();
                        for (result, r) in answer.into_inner().results.iter().zip(batch) {
                            let status = RecordStatus::try_from(result.status);
                            assert!(
                                matches!(
                                    status,
                                    Ok(RecordStatus::Accepted | RecordStatus::Duplicate)
                                ),
                                "a record was refused: {result:?}"
                            );
                            acked.insert(r.idempotency_key.clone());
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        // A slow start (a loaded machine, PostgreSQL in a debug build) may not have answered a
        // batch yet: the kill waits for the first answer, so that it lands mid-load.
        let deadline = Instant::now() + Duration::from_secs(30);
        while answered.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.crash();
        for c in clients {
            let _ = c.await;
        }
        // Checked after each crash, before the next trial could store a lost record again.
        let acked = acked.lock().unwrap();
        if answered.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            kills_mid_load += 1;
        }
        check(&db, &config, &records, &acked)?;
    }
    assert_eq!(
        kills_mid_load, TRIALS,
        "every trial acknowledged records before its kill"
    );

    // A node restarts on the files the last crash left.
    let mut child = NodeProcess::start(&config);
    let _ = ready(addr).await;
    child.crash();
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 500, "{} records acknowledged", acked.len());
    check(&db, &config, &records, &acked)?;
    // The audit chain, with its checkpoints, survived every crash.
    let out = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "audit verify after the crashes:\n{text}"
    );
    println!(
        "{:?}: {} records acknowledged over {TRIALS} SIGKILLs, all stored once; {text}",
        db,
        acked.len()
    );
    Ok(())
}
