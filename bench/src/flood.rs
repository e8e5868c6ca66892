//! `flood`: a caller over its rate limit sends 8 MiB requests as fast as it can, and the
//! gateway's memory is watched. The gateway decides the rate before it reads a body (its
//! `Admit` layer), so a refused request's 8 MiB should never be buffered.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use domicile_proto::pb::{IngestRequest, SealedEnvelope, SealedRecord};
use tonic::Code;

use crate::{
    Args,
    cluster::{Cluster, GATEWAY_RSS_TARGET_MIB, Region},
    data::TENANT,
};

/// The size of each request's one record.
const REQUEST_BYTES: usize = 8 << 20;
/// Requests in flight from the flooding caller.
const IN_FLIGHT: usize = 32;

/// One run of the flood against a gateway with the given tenant rate limit.
struct Phase {
    /// What the row says about the limit.
    limit: &'static str,
    /// Calls per second and burst.
    rate: (f64, u32),
}

/// What one phase measured.
struct Measured {
    elapsed: Duration,
    codes: BTreeMap<String, u64>,
    idle: f64,
    peak: f64,
}

/// The flood scenario: a caller whose few admitted requests are read and forwarded, then one
/// whose every request after the first is over the limit.
pub async fn flood(args: &Args) -> anyhow::Result<String> {
    let phases = [
        Phase {
            limit: "5 calls/s, burst 5",
            rate: (5.0, 5),
        },
        Phase {
            limit: "1 call per 1,000 s, burst 1",
            rate: (0.001, 1),
        },
    ];
    let mut rows = String::new();
    let mut verdicts = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    for phase in &phases {
        let m = run(args, phase.rate).await?;
        let calls: u64 = m.codes.values().sum();
        let refused = m.codes.get("ResourceExhausted").copied().unwrap_or(0);
        rows.push_str(&format!(
            "| {} | {IN_FLIGHT} | {:.1} | {calls} | {refused} | {} | {} | {:.0} MiB | {:.0} MiB |\n",
            phase.limit,
            m.elapsed.as_secs_f64(),
            m.codes
                .iter()
                .filter(|(c, _)| c.as_str() != "ResourceExhausted")
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            (calls as usize * REQUEST_BYTES) >> 20,
            m.idle,
            m.peak,
        ));
        verdicts.push(m.peak);
    }
    let (admitting, refusing) = (verdicts[0], verdicts[1]);
    Ok(format!(
        "| tenant rate limit | requests in flight | seconds | requests | refused over the rate (`RESOURCE_EXHAUSTED`) | other answers | MiB offered | gateway RSS idle | gateway peak RSS |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n{rows}\nTargets: a caller over its limit (second row) leaves the gateway's peak RSS ≤ 100 MiB: {refusing:.0} MiB, {}; ≤ 30 MiB (every scenario, issue 25): {}. With a few requests admitted (first row): {admitting:.0} MiB, ≤ 100 MiB {}, ≤ 30 MiB {}.\n\nOne region (DE) and the gateway, started afresh for each row with the tenant's rate limit shown. One caller of that tenant sends `Ingest` requests of one {} MiB record, {IN_FLIGHT} at a time, as fast as the loopback carries them. A request over the rate is refused from its headers, before its body is read; one within the rate is read, decoded and forwarded, and the node answers it with its record rejected (`Ok` among the other answers). In the first row about 5 requests a second are admitted, each 8 MiB read, decoded and forwarded with its ciphertext as a slice of the buffer it was read into (`federation::forward`), and they are what the peak holds; in the second only the first request is. Peak RSS is the gateway's high-water mark during the flood (reset before it).",
        verdict(refusing <= 100.0),
        verdict(refusing <= GATEWAY_RSS_TARGET_MIB && admitting <= GATEWAY_RSS_TARGET_MIB),
        verdict(admitting <= 100.0),
        verdict(admitting <= GATEWAY_RSS_TARGET_MIB),
        REQUEST_BYTES >> 20,
    ))
}

/// Floods a fresh one-region cluster whose gateway limits the tenant to `rate`.
async fn run(args: &Args, rate: (f64, u32)) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let regions = vec![Region::new("eu-de", &["DE"])];
    let cluster = Cluster::start_limited(dir.path(), &regions, None, Some(rate))?;
    let client = cluster.client().await?;
    // What the record holds does not matter: past the limit it is never read, and within it
    // the node rejects it (it opens with no key).
    let request = IngestRequest {
        tenant_id: TENANT.into(),
        envelopes: vec![SealedEnvelope {
            region_id: "eu-de".into(),
            key_id: "flood".into(),
            encapsulated_key: vec![1; 32],
            records: vec![SealedRecord {
                seq: 0,
                idempotency_key: "flood".into(),
                country: "DE".into(),
                kind: 1,
                ciphertext: vec![0x5a; REQUEST_BYTES].into(),
            }],
        }],
    };
    let idle = cluster.gateway.rss_mib();
    cluster.reset_peak_rss();
    let how_long = Duration::from_secs(if args.quick { 5 } else { 30 });
    let end = Instant::now() + how_long;
    let codes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let started = Instant::now();
    let callers = (0..IN_FLIGHT).map(|_| {
        let mut client = client.clone();
        let request = request.clone();
        let codes = codes.clone();
        async move {
            while Instant::now() < end {
                let code = match client.ingest(request.clone()).await {
                    Ok(_) => Code::Ok,
                    Err(s) => s.code(),
                };
                *codes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(format!("{code:?}"))
                    .or_default() += 1;
            }
        }
    });
    futures::future::join_all(callers).await;
    let elapsed = started.elapsed();
    let peak = cluster.gateway.peak_rss_mib();
    let codes = codes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Measured {
        elapsed,
        codes,
        idle,
        peak,
    })
}
