//! The analyst's attacks on aggregates (issue 21), with a valid token: differencing a total and
//! its groups, overlapping time ranges, a filter that isolates one group, repeating a query to
//! average the noise away, and concurrent calls racing the accountant. Every aggregate that
//! crosses the border is summed from noisy cells released once (docs/privacy-model.md), so each
//! attack yields the noise of the cells involved and nothing more, and the budget is never
//! exceeded. Runs on SQLite and (second pass of the README's test command) on PostgreSQL.

use std::collections::BTreeMap;

use domicile_node::domain::release::Cell;
use domicile_proto::pb::{
    AggregateQuery, AggregateRequest, AggregateResponse, Channel, Dimension,
    LocalNodeAggregateRequest, Metric, Purpose, TimeRange, local_node_client::LocalNodeClient,
    record_payload::Record,
};
use domicile_tests::{Federation, SynthRecord, TENANT, person, touch, ts};
use tonic::Code;

/// 2026-10-01T00:00:00Z and 2026-11-01: October 2026, a closed month.
const OCT: i64 = 1_790_812_800;
const NOV: i64 = 1_793_491_200;

fn interaction(id: &str, subject: &str, channel: Channel, at: i64, nps: u32) -> SynthRecord {
    let mut r = touch("DE", id, subject, at, "");
    if let Some(Record::Interaction(i)) = &mut r.payload.record {
        i.channel = channel as i32;
        if let Some(s) = &mut i.survey {
            s.nps = Some(nps);
        }
    }
    r
}

/// The data set, in October: 25 subjects on e-mail, 24 on chat (two interactions
/// each), and one subject with three interactions by post, all with NPS answers.
async fn setup() -> anyhow::Result<Federation> {
    let fed = domicile_tests::federation(&[("eu-de", &["DE"])]).await?;
    let mut records = Vec::new();
    let mut n = 0;
    let mut add = |subject: String, channel: Channel, count: usize, nps: u32| {
        records.push(person("DE", &subject, "A B", "", "", "10115", 1980));
        for j in 0..count {
            n += 1;
            records.push(interaction(
                &format!("i-{n}"),
                &subject,
                channel,
                OCT + 86_400 * (1 + (n % 27) as i64) + j as i64,
                nps,
            ));
        }
    };
    for s in 0..25 {
        add(format!("e-{s}"), Channel::Email, 2, 9);
    }
    for s in 0..24 {
        add(format!("c-{s}"), Channel::Chat, 2, 10);
    }
    add("the-one".into(), Channel::Post, 3, 0);
    domicile_tests::ingest_records(&fed, &records).await?;
    Ok(fed)
}

fn query(group_by: &[Dimension], channels: &[Channel], range: (i64, i64)) -> AggregateRequest {
    AggregateRequest {
        tenant_id: TENANT.into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![
                Metric::Count as i32,
                Metric::DistinctSubjects as i32,
                Metric::Nps as i32,
            ],
            group_by: group_by.iter().map(|d| *d as i32).collect(),
            time_range: Some(TimeRange {
                start: ts(range.0),
                end: ts(range.1),
            }),
            channels: channels.iter().map(|c| *c as i32).collect(),
            ..Default::default()
        }),
        regions: Vec::new(),
        require_all_regions: true,
    }
}

/// Interactions per group key (channel, period), from the merged answer's statistics.
fn counts(answer: &AggregateResponse) -> BTreeMap<(i32, String), u64> {
    answer
        .groups
        .iter()
        .map(|g| {
            let key = g.key.clone().unwrap_or_default();
            (
                (key.channel, key.period),
                g.stats.as_ref().map_or(0, |s| s.interactions),
            )
        })
        .collect()
}

/// The stored noisy cells of eu-de's October release for cx_analytics, per channel.
/// (Signed: a cell keeps its noisy value, an answer clamps its sum at zero once.)
fn stored_cells(fed: &Federation) -> anyhow::Result<BTreeMap<i32, Cell>> {
    let conn = fed.node("eu-de").unwrap().connect()?;
    let mut stmt = conn.prepare(&format!(
        "SELECT channel, stats FROM dp_release_cells WHERE tenant = $1 AND purpose = {} AND grain = 2",
        Purpose::CxAnalytics as i32
    ))?;
    let mut rows = stmt.query([TENANT])?;
    let mut out = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let channel: i64 = row.get(0)?;
        out.insert(channel as i32, Cell::decode(&row.get::<_, Vec<u8>>(1)?)?);
    }
    Ok(out)
}

fn spent(fed: &Federation) -> anyhow::Result<i64> {
    let conn = fed.node("eu-de").unwrap().connect()?;
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(spent_milli), 0) FROM dp_budget WHERE tenant = $1",
        [TENANT],
        |r| r.get(0),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_minus_its_groups_is_only_noise() -> anyhow::Result<()> {
    let fed = setup().await?;
    let mut gw = domicile_tests::gateway_client(&fed).await?;
    let three = [Channel::Email, Channel::Chat, Channel::Post];
    let total = gw
        .aggregate(query(&[], &three, (OCT, NOV)))
        .await?
        .into_inner();
    let by_channel = gw
        .aggregate(query(&[Dimension::Channel], &three, (OCT, NOV)))
        .await?
        .into_inner();
    // Which groups pass k depends on their noisy distinct counts (the post cell's one subject
    // passes k = 10 with probability ≈ 0.17 at the shipped scale); whatever the draw, the
    // attack obtains exactly the stored noisy cells of the groups it did not see.
    let released = counts(&by_channel);
    let cells = stored_cells(&fed)?;
    assert_eq!(cells.len(), 8, "a cell for every channel, empty ones too");
    for (channel, n) in &released {
        assert_eq!(*n as i64, cells[&channel.0].0[0], "{channel:?}");
    }
    let Some(total_group) = total.groups.first() else {
        // The total's own noisy subject figure fell under k (rare with 51 subjects, but noise
        // is drawn afresh for each federation): it is withheld, and there is nothing to
        // subtract from.
        assert_eq!(total.suppressed_groups, 1);
        return Ok(());
    };
    let total_n = total_group.stats.as_ref().unwrap().interactions;
    let difference = total_n as i64 - released.values().sum::<u64>() as i64;
    let unseen: i64 = three
        .iter()
        .filter(|c| !released.contains_key(&(**c as i32, String::new())))
        .map(|c| cells[&(*c as i32)].0[0])
        .sum();
    assert_eq!(difference, unseen, "{released:?}");
    let sum: i64 = three.iter().map(|c| cells[&(*c as i32)].0[0]).sum();
    assert_eq!(total_n as i64, sum, "the total is the sum of its parts");
    // What the difference says about the person is what the noisy cell says: their 3
    // interactions plus discrete Laplace noise of scale b = L·14/(3·ε) = 5·14/9 ≈ 7.8 (the
    // shipped DE policy: L = 5, a month release of ε = 3 with weight 3/14 on volume). The
    // noise distribution itself is tested in `regional-node/src/release.rs`.
    // The NPS histogram likewise: per score, the sum of the three cells' noisy counts.
    let histogram = &total_group.stats.as_ref().unwrap().nps_histogram;
    for (score, n) in histogram.iter().enumerate() {
        let cells_sum: i64 = three.iter().map(|c| cells[&(*c as i32)].0[2 + score]).sum();
        assert_eq!(*n as i64, cells_sum.max(0), "score {score}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_shifting_or_filtering_a_query_learns_nothing_new() -> anyhow::Result<()> {
    let fed = setup().await?;
    let mut gw = domicile_tests::gateway_client(&fed).await?;
    let first = gw
        .aggregate(query(&[Dimension::Channel], &[], (OCT, NOV)))
        .await?
        .into_inner();
    let spent_once = spent(&fed)?;
    assert_eq!(spent_once, 3_000, "one month release at the shipped ε = 3");
    // The same query twenty times: the same figures, nothing more spent, nothing to average.
    for _ in 0..20 {
        let again = gw
            .aggregate(query(&[Dimension::Channel], &[], (OCT, NOV)))
            .await?
            .into_inner();
        assert_eq!(counts(&again), counts(&first));
        let release = &again.attestation.as_ref().unwrap().regions[0];
        assert_eq!(
            release.epsilon, 0.0,
            "answered from the release made before"
        );
        assert_eq!(release.derived_from[0].id, "month:2026-10");
    }
    assert_eq!(spent(&fed)?, spent_once);
    // Overlapping ranges (a day shifted at either end) are widened to the same month.
    for range in [
        (OCT + 86_400, NOV),
        (OCT, NOV - 86_400),
        (OCT + 3_600, NOV - 1),
    ] {
        let shifted = gw
            .aggregate(query(&[Dimension::Channel], &[], range))
            .await?
            .into_inner();
        assert_eq!(counts(&shifted), counts(&first), "{range:?}");
    }
    // A filter that isolates the small group answers from its cell: its stored noisy value,
    // or nothing when k withholds it, the same as in the grouped answer.
    let isolated = gw
        .aggregate(query(&[], &[Channel::Post], (OCT, NOV)))
        .await?
        .into_inner();
    let post = counts(&first)
        .get(&(Channel::Post as i32, String::new()))
        .copied();
    assert_eq!(
        isolated
            .groups
            .first()
            .map(|g| g.stats.as_ref().unwrap().interactions),
        post
    );
    // Asking for an epsilon, or for none, changes nothing: every answer is from the release.
    let mut exact_please = query(&[Dimension::Channel], &[], (OCT, NOV));
    exact_please.query.as_mut().unwrap().epsilon = Some(10.0);
    let answer = gw.aggregate(exact_please).await?.into_inner();
    assert_eq!(counts(&answer), counts(&first));
    // In country, on the LocalNode listener, the exact figures.
    let local = fed.node("eu-de").unwrap().local_addr.unwrap();
    let mut local = LocalNodeClient::connect(format!("http://{local}")).await?;
    let exact = local
        .aggregate(LocalNodeAggregateRequest {
            tenant_id: TENANT.into(),
            query: query(&[Dimension::Channel], &[], (OCT, NOV)).query,
        })
        .await?
        .into_inner();
    let post = exact
        .groups
        .iter()
        .find(|g| g.key.as_ref().unwrap().channel == Channel::Post as i32)
        .unwrap();
    assert_eq!(post.stats.as_ref().unwrap().interactions, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_make_each_release_once() -> anyhow::Result<()> {
    let fed = setup().await?;
    let gw = domicile_tests::gateway_client(&fed).await?;
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut gw = gw.clone();
            tokio::spawn(async move {
                let group_by: &[Dimension] = if i % 2 == 0 {
                    &[Dimension::Day]
                } else {
                    &[Dimension::Channel]
                };
                gw.aggregate(query(group_by, &[], (OCT, NOV)))
                    .await
                    .map(|a| counts(&a.into_inner()))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await?);
    }
    for a in &answers {
        assert!(a.is_ok(), "{a:?}");
    }
    // Every day-grouped answer is the same, and every channel-grouped one.
    for pair in answers.chunks(2).collect::<Vec<_>>().windows(2) {
        assert_eq!(pair[0][0].as_ref().unwrap(), pair[1][0].as_ref().unwrap());
        assert_eq!(pair[0][1].as_ref().unwrap(), pair[1][1].as_ref().unwrap());
    }
    // One month release and 31 day releases, each made and charged once.
    let conn = fed.node("eu-de").unwrap().connect()?;
    let releases: i64 = conn.query_row("SELECT COUNT(*) FROM dp_releases", [], |r| r.get(0))?;
    assert_eq!(releases, 32);
    assert_eq!(spent(&fed)?, 3_000 + 31 * 500);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_refuses_every_new_release_and_keeps_the_old_ones() -> anyhow::Result<()> {
    // A policy with room for the month release and two day releases of October's data.
    let dir = tempfile::tempdir()?;
    let de = std::fs::read_to_string(format!(
        "{}/../deploy/policies/DE.toml",
        env!("CARGO_MANIFEST_DIR")
    ))?
    .replace("epsilon_per_month = 20.0", "epsilon_per_month = 4.0");
    std::fs::write(dir.path().join("DE.toml"), de)?;
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .policy_dir(dir.path())
        .start()
        .await?;
    let mut gw = domicile_tests::gateway_client(&fed).await?;
    let month = gw
        .aggregate(query(&[Dimension::Channel], &[], (OCT, NOV)))
        .await?
        .into_inner();
    assert_eq!(spent(&fed)?, 3_000);
    // Two days fit (2 × 0.5); the third does not.
    let day = |d: i64| {
        query(
            &[Dimension::Day],
            &[],
            (OCT + d * 86_400, OCT + (d + 1) * 86_400),
        )
    };
    gw.aggregate(day(0)).await?;
    gw.aggregate(day(1)).await?;
    assert_eq!(spent(&fed)?, 4_000);
    for attempt in [
        day(2),
        query(&[Dimension::Day], &[], (OCT, NOV)),
        query(
            &[Dimension::Day, Dimension::Channel],
            &[],
            (OCT + 5 * 86_400, NOV),
        ),
    ] {
        let err = gw.aggregate(attempt).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("2026-10"), "{err:?}");
    }
    // All or nothing: the refused calls made and charged nothing.
    assert_eq!(spent(&fed)?, 4_000);
    let conn = fed.node("eu-de").unwrap().connect()?;
    let releases: i64 = conn.query_row("SELECT COUNT(*) FROM dp_releases", [], |r| r.get(0))?;
    assert_eq!(releases, 3);
    // What was released stays available, unchanged, for free.
    let again = gw
        .aggregate(query(&[Dimension::Channel], &[], (OCT, NOV)))
        .await?
        .into_inner();
    assert_eq!(counts(&again), counts(&month));
    gw.aggregate(day(1)).await?;
    assert_eq!(spent(&fed)?, 4_000);
    Ok(())
}

/// The dashboard's queries as the console makes them at `now`: NPS, volume and subjects by
/// country × channel × month over the last twelve months, and the last 30 days by day.
fn dashboard(now: i64) -> [AggregateRequest; 3] {
    [
        query(
            &[Dimension::Country, Dimension::Channel, Dimension::Month],
            &[],
            (now - 365 * 86_400, now),
        ),
        query(&[Dimension::Day], &[], (now - 30 * 86_400, now)),
        // An analyst's: by channel, last month.
        query(&[Dimension::Channel], &[], (now - 31 * 86_400, now)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_month_of_console_refreshes_stays_within_budget() -> anyhow::Result<()> {
    // September 2026, simulated: the nodes' clock moves a day at a time (no sleeping).
    const SEP: i64 = 1_788_220_800;
    let clock = domicile_ops::clock::ManualClock::at(SEP);
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .clock(std::sync::Arc::new(clock.clone()))
        .start()
        .await?;
    domicile_tests::load(&fed, &["DE", "US"], 300, 3_000, 5).await?;
    let mut gw = domicile_tests::gateway_client(&fed).await?;
    let mut calls = 0;
    let mut spent_on_refreshes = 0.0;
    for day in 0..30 {
        // Each day, the console's first refresh, then (as every 30 s all day) the same again.
        for refresh in 0..4 {
            clock.set(SEP + day * 86_400 + 9 * 3_600 + refresh * 30);
            for request in dashboard(SEP + day * 86_400 + 9 * 3_600) {
                let answer = gw.aggregate(request).await?.into_inner();
                calls += 1;
                let spent: f64 = answer
                    .attestation
                    .unwrap()
                    .regions
                    .iter()
                    .map(|r| r.epsilon)
                    .sum();
                if refresh > 0 {
                    spent_on_refreshes += spent;
                }
            }
        }
    }
    assert_eq!(calls, 30 * 4 * 3);
    assert_eq!(
        spent_on_refreshes, 0.0,
        "a refresh within a day releases nothing new"
    );
    // No month of data went past its budget (20 in the shipped policies), in either region.
    for region in ["eu-de", "us"] {
        let conn = fed.node(region).unwrap().connect()?;
        let mut stmt = conn.prepare("SELECT data_month, spent_milli FROM dp_budget")?;
        let mut rows = stmt.query([])?;
        let mut months = 0;
        while let Some(row) = rows.next()? {
            let (month, spent): (i64, i64) = (row.get(0)?, row.get(1)?);
            assert!(spent <= 20_000, "{region}: month {month} spent {spent}");
            months += 1;
        }
        assert!(months >= 12, "{region}: {months} months charged");
        // The releases follow the simulated clock: the last day released is September 29th
        // (the day before the last simulated one), though October's data is stored.
        let last_day: i64 = conn.query_row(
            "SELECT MAX(bucket) FROM dp_releases WHERE grain = 1",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(last_day, SEP / 86_400 + 28, "{region}");
        let last_month: i64 = conn.query_row(
            "SELECT MAX(bucket) FROM dp_releases WHERE grain = 2",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(last_month, (2026 - 1970) * 12 + 7, "{region}: August 2026");
    }
    Ok(())
}
