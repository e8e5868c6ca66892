//! `CheckContactPermission` at the node for warm subjects: the latency a CX platform pays per
//! "may I contact this customer?" question, without the network.
//!
//! `cargo bench -p domicile-node --bench contact_permission`
//!
//! Loads 10,000 subjects with consent ledgers (grants, refusals, pending double opt-ins and
//! nothing at all) into a fresh node, warms the read path, then times 50,000 sequential checks
//! through `Node::check_contact_permission` (validation, policy lookup, the blocking-pool hop and
//! the SQLite read) and prints percentiles as a Markdown table.

use std::time::Instant;

use domicile_node::{Node, NodeConfig, domain::consent};
use domicile_proto::{
    consent::{ConsentChange, ConsentQuestion},
    pb::{
        Channel, CheckContactPermissionRequest, ConsentAction, ConsentSource, Purpose,
        RecordConsentRequest, SubjectRef,
    },
};

const SUBJECTS: usize = 10_000;
const CHECKS: usize = 50_000;

fn subject(i: usize) -> Option<SubjectRef> {
    Some(SubjectRef {
        country: "DE".into(),
        external_id: format!("bench-{i:05}"),
    })
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut config = NodeConfig::new("eu-de", &["DE"], dir.path().join("bench.sqlite"));
    config.insecure_plaintext = true; // in-process only: the node never serves here
    domicile_node::store::keys::create_region_keys(&config)?;
    let node = Node::open(config)?;

    // Ledgers: a quarter each granted, refused, pending double opt-in, and empty.
    let policy = node.policies().get("DE").expect("DE policy").clone();
    let started = Instant::now();
    node.store().write(|tx| {
        for i in 0..SUBJECTS {
            let (purpose, channel, action) = match i % 4 {
                0 => (Purpose::CxSurvey, Channel::Phone, ConsentAction::Grant),
                1 => (Purpose::CxSurvey, Channel::Phone, ConsentAction::Refuse),
                2 => (Purpose::Marketing, Channel::Email, ConsentAction::Grant),
                _ => continue,
            };
            let change = ConsentChange::from_record(&RecordConsentRequest {
                tenant_id: "acme".into(),
                subject: subject(i),
                purpose: purpose as i32,
                channel: channel as i32,
                action: action as i32,
                source: ConsentSource::WebForm as i32,
                wording_sha256: vec![9; 32],
                actor: "bench".into(),
                token_ttl_seconds: 0,
            })?;
            consent::record(tx, "eu-de", &policy, &change, node.now())?;
        }
        Ok(())
    })?;
    let load = started.elapsed();

    let question = |i: usize| {
        ConsentQuestion::from_check(&CheckContactPermissionRequest {
            tenant_id: "acme".into(),
            subject: subject(i),
            purpose: Purpose::CxSurvey as i32,
            channel: Channel::Phone as i32,
        })
        .expect("valid")
    };
    let mut latencies = Vec::with_capacity(CHECKS);
    let allowed = runtime.block_on(async {
        for i in 0..2_000 {
            node.check_contact_permission(question(i % SUBJECTS))
                .await?;
        }
        let mut allowed = 0usize;
        for i in 0..CHECKS {
            // A spread of subjects: 7919 is prime, so the walk visits all of them.
            let q = question(i * 7919 % SUBJECTS);
            let t = Instant::now();
            let answer = node.check_contact_permission(q).await?;
            latencies.push(t.elapsed());
            allowed += usize::from(answer.allowed);
        }
        anyhow::Ok(allowed)
    })?;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let mean = latencies.iter().sum::<std::time::Duration>() / latencies.len() as u32;
    println!("| subjects | checks | p50 | p99 | p99.9 | mean | max | allowed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {SUBJECTS} | {CHECKS} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {allowed} |",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        pct(0.999).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
        latencies[latencies.len() - 1].as_secs_f64() * 1e6,
    );
    println!(
        "\n(ledgers for {SUBJECTS} subjects loaded in {:.2} s)",
        load.as_secs_f64()
    );
    Ok(())
}
