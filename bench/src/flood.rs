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
    cluster::{Cluster, Region},
    data::TENANT,
};

/// The size of each request's one record.
const REQUEST_BYTES: usize = 8 << 20;
/// The tenant's rate limit at the gateway, calls per second (and burst).
const RATE: u32 = 5;
/// Requests in flight from the flooding caller.
const IN_FLIGHT: usize = 32;

/// The flood scenario.
pub async fn flood(args: &Args) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let regions = vec![Region::new("eu-de", &["DE"])];
    let cluster = Cluster::start_limited(dir.path(), &regions, None, Some(RATE))?;
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
                ciphertext: vec![0x5a; REQUEST_BYTES],
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
    let calls: u64 = codes.values().sum();
    let refused = codes.get("ResourceExhausted").copied().unwrap_or(0);
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    Ok(format!(
        "| requests in flight | seconds | requests | refused over the rate (`RESOURCE_EXHAUSTED`) | other answers | MiB offered | gateway RSS idle | gateway peak RSS |\n|---:|---:|---:|---:|---|---:|---:|---:|\n| {IN_FLIGHT} | {:.1} | {calls} | {refused} | {} | {} | {idle:.0} MiB | {peak:.0} MiB |\n\nTarget: the gateway's peak RSS under the flood ≤ 100 MiB: {peak:.0} MiB, {}; ≤ 30 MiB (every scenario, issue 25): {}.\n\nOne region (DE) and the gateway, whose tenant rate limit is {RATE} calls per second with a burst of {RATE}. One caller of that tenant sends `Ingest` requests of one {} MiB record, {IN_FLIGHT} at a time, as fast as the loopback carries them. A request over the rate is refused from its headers, before its body is read; the few within the rate are read, decoded and forwarded, and the node answers them with their record rejected (`Ok` among the other answers). Peak RSS is the gateway's high-water mark during the flood (reset before it); how much of it the admitted requests hold (each 8 MiB, read, decoded and encoded again for the node) is not broken down here.",
        elapsed.as_secs_f64(),
        codes
            .iter()
            .filter(|(c, _)| c.as_str() != "ResourceExhausted")
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        (calls as usize * REQUEST_BYTES) >> 20,
        verdict(peak <= 100.0),
        verdict(peak <= 30.0),
        REQUEST_BYTES >> 20,
    ))
}
