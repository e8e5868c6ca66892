//! `cases`: the DPO's queue of subject requests under load (issue 23). 10,000 open requests
//! (300 with `--quick`) across three regions, received over 30 days; then the queue's first
//! page, the overdue list, the due-within-7-days list and a walk through every page, each
//! through the gateway, with p50 and p99.
//!
//! The federation runs in this process (`domicile::federation`: the gateway and three nodes,
//! each node on its own SQLite file, talking over loopback with mutual TLS) rather than as
//! separate processes: the requests must age (be received on different days, then become
//! overdue), which takes the nodes' clock, and only an in-process federation takes one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use domicile::{federation::Federation, synth::SynthRecord};
use domicile_gateway::limits::LimitsConfig;
use domicile_ops::clock::ManualClock;
use domicile_proto::pb::{
    ListSubjectRequestsRequest, RecordPayload, SubjectRecord, SubjectRef, SubjectRequestKind,
    SubmitSubjectRequestRequest, record_payload::Record,
};

use crate::{Args, ms, percentile};

const TENANT: &str = "bench";
/// (region, country).
const REGIONS: [(&str, &str); 3] = [("eu-de", "DE"), ("eu-fr", "FR"), ("us", "US")];
/// Days over which the requests are received.
const DAYS: usize = 30;
/// Submissions in flight while loading.
const LOADERS: usize = 16;
/// Calls per measured query.
const CALLS: usize = 200;
/// The target (issue 23): listing and overdue queries, p99.
const TARGET: Duration = Duration::from_millis(50);

/// The cases scenario.
pub async fn cases(args: &Args) -> anyhow::Result<String> {
    let total = if args.quick { 300 } else { 10_000 };
    // Day 0 at 09:00 UTC, 2027-01-04.
    let start = domicile_proto::domain::days_from_civil(2027, 1, 4) * 86_400 + 9 * 3_600;
    let clock = ManualClock::at(start);
    // The tenant at full speed: its rate limit lifted, as in the other scenarios.
    let mut builder = Federation::builder()
        .dpo_tenant(TENANT)
        .clock(Arc::new(clock.clone()))
        .limits(LimitsConfig {
            requests_per_second: 1e9,
            burst: u32::MAX,
            max_concurrent_per_tenant: 1024,
            max_in_flight: 4096,
            ..Default::default()
        });
    for (region, country) in REGIONS {
        builder = builder.region(region, &[country]);
    }
    let fed = builder.start().await?;
    let mut gw = domicile::client::connect(fed.gateway_addr).await?;
    let regions = domicile::client::regions(&mut gw).await?;
    let subject = |i: usize| (REGIONS[i % 3].1, format!("case-{i}"));
    let records: Vec<SynthRecord> = (0..total)
        .map(|i| {
            let (country, id) = subject(i);
            SynthRecord {
                country: country.to_owned(),
                idempotency_key: format!("s-{id}"),
                payload: RecordPayload {
                    record: Some(Record::Subject(SubjectRecord {
                        external_id: id,
                        full_name: "Case Subject".into(),
                        email: "case@example.org".into(),
                        ..Default::default()
                    })),
                },
            }
        })
        .collect();
    domicile::client::ingest(&gw, TENANT, &regions, &fed.trust_bundle, &records, 500).await?;

    // Erasure requests, none verified yet (they stay open), a thirtieth of them each day.
    let loaded = Instant::now();
    let per_day = total.div_ceil(DAYS);
    let fed = Arc::new(fed);
    for day in 0..DAYS {
        let next = Arc::new(AtomicUsize::new(day * per_day));
        let end = ((day + 1) * per_day).min(total);
        let loaders = (0..LOADERS).map(|_| {
            let (next, fed, mut gw) = (next.clone(), fed.clone(), gw.clone());
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return anyhow::Ok(());
                    }
                    let (country, id) = subject(i);
                    gw.submit_subject_request(fed.signed(SubmitSubjectRequestRequest {
                        tenant_id: TENANT.into(),
                        subject: Some(SubjectRef {
                            country: country.into(),
                            external_id: id,
                        }),
                        kind: SubjectRequestKind::Erasure as i32,
                        actor: "bench".into(),
                        ..Default::default()
                    }))
                    .await?;
                }
            }
        });
        for r in futures::future::join_all(loaders).await {
            r?;
        }
        clock.advance(86_400);
    }
    let load_seconds = loaded.elapsed().as_secs_f64();
    // Forty-five days after the first: the month-long (DE, FR) requests of the first two weeks
    // are overdue, none of the 45-day (US) ones.
    clock.set(start + 45 * 86_400);

    let query = |overdue_only: bool, due_within_days: u32| ListSubjectRequestsRequest {
        tenant_id: TENANT.into(),
        overdue_only,
        due_within_days,
        page_size: 100,
        ..Default::default()
    };
    let first = gw
        .list_subject_requests(query(false, 0))
        .await?
        .into_inner();
    let open: u64 = first.counts.iter().map(|c| c.open).sum();
    let overdue: u64 = first.counts.iter().map(|c| c.overdue).sum();
    let soon: u64 = first.counts.iter().map(|c| c.due_within_7_days).sum();
    anyhow::ensure!(
        open == total as u64,
        "{open} open requests, {total} submitted"
    );
    let mut rows = Vec::new();
    let mut worst = Duration::ZERO;
    for (what, q) in [
        ("the queue's first page (100, soonest due)", query(false, 0)),
        ("overdue, first page", query(true, 0)),
        ("due within 7 days, first page", query(false, 7)),
    ] {
        let mut times = Vec::with_capacity(CALLS);
        let mut returned = 0;
        for _ in 0..CALLS {
            let t = Instant::now();
            let page = gw.list_subject_requests(q.clone()).await?.into_inner();
            times.push(t.elapsed());
            returned = page.receipts.len();
        }
        times.sort();
        let p99 = percentile(&times, 0.99);
        worst = worst.max(p99);
        rows.push(format!(
            "| {what} | {returned} | {} | {} |",
            ms(percentile(&times, 0.5)),
            ms(p99)
        ));
    }
    // Every page, 100 at a time: what a DPO's export of the queue costs.
    let mut pages = Vec::new();
    let mut token = String::new();
    let mut seen = 0;
    loop {
        let t = Instant::now();
        let page = gw
            .list_subject_requests(ListSubjectRequestsRequest {
                page_token: token,
                ..query(false, 0)
            })
            .await?
            .into_inner();
        pages.push(t.elapsed());
        seen += page.receipts.len();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    anyhow::ensure!(seen == total, "paging returned {seen} of {total}");
    pages.sort();
    let page_p99 = percentile(&pages, 0.99);
    worst = worst.max(page_p99);
    rows.push(format!(
        "| every page, 100 at a time ({} pages) | {seen} | {} | {} |",
        pages.len(),
        ms(percentile(&pages, 0.5)),
        ms(page_p99)
    ));
    let verdict = if worst <= TARGET { "met" } else { "**missed**" };
    Ok(format!(
        "| query (`ListSubjectRequests`, through the gateway) | receipts returned | p50 | p99 |\n|---|---:|---:|---:|\n{}\n\nTarget: listing and overdue queries p99 under 50 ms: worst p99 {}, {verdict}.\n\n{total} erasure requests, none verified (so all open), for {total} subjects spread over three regions (DE, FR, US; each node on its own SQLite file), received over {DAYS} days; queried 45 days after the first, when {overdue} are overdue and {soon} due within 7 days ({open} open in all). Each query also returns each region's counts (open, due within 7 days, overdue). {CALLS} calls per query, one at a time; loading the requests (signed by the DPO, {LOADERS} at a time) took {load_seconds:.1} s. The gateway and the nodes run in the benchmark's process (an in-process federation with a clock the benchmark moves: the requests must age), over loopback with mutual TLS between gateway and nodes.",
        rows.join("\n"),
        ms(worst),
    ))
}
