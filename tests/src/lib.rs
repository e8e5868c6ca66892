//! The integration-test harness: one call starts a gateway and N regional nodes in-process on
//! ephemeral loopback ports, each node with its own SQLite file in a temporary directory, and
//! tears everything down on drop.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let fed = domicile_tests::federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
//! let mut gateway = domicile_tests::gateway_client(&fed).await?;
//! # Ok(()) }
//! ```
//!
//! It also holds an independent, brute-force implementation of the aggregate metrics over the
//! generated records, to check the federation's merged answers against.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    sync::{Arc, Mutex},
};

pub use domicile_pg_cluster as postgres;

pub use domicile::{
    client,
    federation::{Federation, FederationBuilder, RunningNode},
    synth::{self, SynthRecord, SynthSpec},
};
use domicile_proto::pb::{
    AggregateStats, Channel as CxChannel, InteractionRecord, PseudonymisedInteraction,
    QueryRecordsRequest, QueryRecordsSummary, RecordPayload, SubjectRecord, SurveyAnswer,
    record_payload::Record, regional_node_client::RegionalNodeClient,
};
use prost::Message;
use tonic::transport::Channel;

/// The tenant the tests load data under.
pub const TENANT: &str = "acme";

/// Waits until `done` holds, checking every few milliseconds: a test waits for a condition
/// (a call in flight, a server draining), never for time to pass. Panics naming `what` after
/// 30 s.
pub async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Starts a federation with the given regions and default settings.
pub async fn federation(regions: &[(&str, &[&str])]) -> anyhow::Result<Federation> {
    let mut b = Federation::builder();
    for (id, countries) in regions {
        b = b.region(id, countries);
    }
    b.start().await
}

/// Serves the gateway's console on a loopback port until the test ends; its address.
pub async fn console(fed: &Federation) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(domicile_gateway::api::console::serve(
        fed.gateway.clone(),
        listener,
        std::future::pending(),
    ));
    Ok(addr)
}

/// A client of the federation's gateway.
pub async fn gateway_client(fed: &Federation) -> anyhow::Result<domicile_client::Gateway> {
    client::connect(fed.gateway_addr).await
}

/// A direct client of one region's federation listener (bypassing the gateway), presenting the
/// gateway's client certificate as the node requires (mutual TLS).
pub async fn node_client(
    fed: &Federation,
    region: &str,
) -> anyhow::Result<RegionalNodeClient<Channel>> {
    let (cert, key) = fed.pki.pair("gateway");
    node_client_as(fed, region, Some((cert, key))).await
}

/// A direct client of one region's federation listener presenting the certificate and key
/// files `identity` (or none).
pub async fn node_client_as(
    fed: &Federation,
    region: &str,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> anyhow::Result<RegionalNodeClient<Channel>> {
    Ok(RegionalNodeClient::new(
        node_channel(fed, region, identity).await?,
    ))
}

/// A TLS channel to one region's federation listener presenting `identity` (or none).
pub async fn node_channel(
    fed: &Federation,
    region: &str,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> anyhow::Result<Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let node = fed
        .node(region)
        .ok_or_else(|| anyhow::anyhow!("no region {region}"))?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(fed.pki.ca())?))
        .domain_name(domicile::certs::node_identity(region));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(
        tonic::transport::Endpoint::from_shared(format!("https://{}", node.addr))?
            .tls_config(tls)?
            .connect()
            .await?,
    )
}

/// A client of one region's in-country `LocalNode` listener. With the federation's in-country
/// PKI ([`FederationBuilder::local_principals`]) it speaks mutual TLS presenting `identity`'s
/// certificate (`None`: none); without, plaintext on loopback.
pub async fn local_client(
    fed: &Federation,
    region: &str,
    identity: Option<&str>,
) -> anyhow::Result<domicile_proto::pb::local_node_client::LocalNodeClient<Channel>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let addr = fed
        .node(region)
        .and_then(|n| n.local_addr)
        .ok_or_else(|| anyhow::anyhow!("no in-country listener for {region}"))?;
    let channel = match &fed.local_pki {
        Some(pki) => {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(pki.ca())?))
                .domain_name("localhost");
            if let Some(id) = identity {
                let (cert, key) = pki.pair(id);
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(cert)?,
                    std::fs::read(key)?,
                ));
            }
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(tls)?
                .connect()
                .await?
        }
        None => {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?
        }
    };
    Ok(domicile_proto::pb::local_node_client::LocalNodeClient::new(
        channel,
    ))
}

/// Generates data for `countries` and ingests it through the gateway; panics on any rejection.
pub async fn load(
    fed: &Federation,
    countries: &[&str],
    subjects: usize,
    interactions: usize,
    seed: u64,
) -> anyhow::Result<Vec<SynthRecord>> {
    let mut gw = gateway_client(fed).await?;
    let regions = client::regions(&mut gw).await?;
    let mut all = Vec::new();
    for c in countries {
        all.extend(synth::generate(&SynthSpec {
            countries: vec![(*c).to_owned()],
            subjects,
            interactions,
            seed,
        }));
    }
    let summary = client::ingest(&gw, TENANT, &regions, &fed.trust_bundle, &all, 500).await?;
    anyhow::ensure!(
        summary.rejected_total() == 0,
        "rejected: {:?}",
        summary.rejected
    );
    Ok(all)
}

/// Ingests hand-made records through the gateway; fails on any rejection.
pub async fn ingest_records(fed: &Federation, records: &[SynthRecord]) -> anyhow::Result<()> {
    let mut gw = gateway_client(fed).await?;
    let regions = client::regions(&mut gw).await?;
    let summary = client::ingest(&gw, TENANT, &regions, &fed.trust_bundle, records, 500).await?;
    anyhow::ensure!(
        summary.rejected_total() == 0,
        "rejected: {:?}",
        summary.rejected
    );
    Ok(())
}

/// A customer profile record.
pub fn person(
    country: &str,
    external_id: &str,
    full_name: &str,
    email: &str,
    phone: &str,
    postal_code: &str,
    birth_year: u32,
) -> SynthRecord {
    SynthRecord {
        country: country.to_owned(),
        idempotency_key: format!("s-{external_id}"),
        payload: RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: external_id.to_owned(),
                full_name: full_name.to_owned(),
                email: email.to_owned(),
                phone: phone.to_owned(),
                postal_code: postal_code.to_owned(),
                language: "de-DE".to_owned(),
                birth_year,
            })),
        },
    }
}

/// An interaction record with a survey answer carrying `comment`.
pub fn touch(
    country: &str,
    interaction_id: &str,
    subject: &str,
    started_at: i64,
    comment: &str,
) -> SynthRecord {
    SynthRecord {
        country: country.to_owned(),
        idempotency_key: format!("i-{interaction_id}"),
        payload: RecordPayload {
            record: Some(Record::Interaction(InteractionRecord {
                interaction_id: interaction_id.to_owned(),
                subject_external_id: subject.to_owned(),
                channel: CxChannel::Phone as i32,
                started_at: Some(prost_types::Timestamp {
                    seconds: started_at,
                    nanos: 0,
                }),
                handle_time_seconds: 300,
                outcome: "resolved".to_owned(),
                survey: Some(SurveyAnswer {
                    survey_id: "post-call".to_owned(),
                    nps: Some(9),
                    comment: comment.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        },
    }
}

/// Runs `QueryRecords` through the gateway to the end: the records and the final summary.
pub async fn query_records(
    gw: &mut domicile_client::Gateway,
    req: QueryRecordsRequest,
) -> anyhow::Result<(Vec<PseudonymisedInteraction>, QueryRecordsSummary)> {
    let mut stream = gw.query_records(req).await?.into_inner();
    let mut records = Vec::new();
    let mut summary = None;
    while let Some(msg) = stream.message().await? {
        anyhow::ensure!(summary.is_none(), "a message after the summary");
        records.extend(msg.records);
        summary = msg.summary;
    }
    Ok((
        records,
        summary.ok_or_else(|| anyhow::anyhow!("no summary"))?,
    ))
}

/// A protobuf timestamp of `seconds` since the Unix epoch.
pub fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// "YYYY-MM" of a Unix time, computed independently of SQLite.
pub fn month_of(unix: i64) -> String {
    let (y, m, _) = domicile_proto::domain::civil_from_days(unix.div_euclid(86_400));
    format!("{y:04}-{m:02}")
}

/// A brute-force group key: (region, country, channel, period).
pub type Key = (String, String, i32, String);

/// The minimum group size the shipped policy of `country` sets.
pub fn policy_k(country: &str) -> u32 {
    domicile_node::domain::policy::PolicySet::load(None, &[country.to_owned()])
        .expect("shipped policy")
        .max_min_group_size()
}

/// Computes, record by record, what the federation should answer: per region and key the
/// statistics, suppressed below `k_of(region)` distinct subjects, then summed across regions.
/// `key_of` maps (region, country, channel, started_at) to the group key.
pub fn brute_force(
    records: &[(String, SynthRecord)],
    k_of: impl Fn(&str) -> u64,
    key_of: impl Fn(&str, &str, i32, i64) -> Key,
) -> (BTreeMap<Key, AggregateStats>, u64) {
    let mut per_region: BTreeMap<(String, Key), (AggregateStats, BTreeSet<String>)> =
        BTreeMap::new();
    for (region, r) in records {
        let Some(Record::Interaction(i)) = &r.payload.record else {
            continue;
        };
        let started = i.started_at.as_ref().map_or(0, |t| t.seconds);
        let key = key_of(region, &r.country, i.channel, started);
        let (s, subjects) = per_region.entry((region.clone(), key)).or_default();
        s.interactions += 1;
        subjects.insert(i.subject_external_id.clone());
        if let Some(sv) = &i.survey {
            if let Some(n) = sv.nps {
                if s.nps_histogram.is_empty() {
                    s.nps_histogram = vec![0; 11];
                }
                s.nps_histogram[n as usize] += 1;
            }
            if let Some(c) = sv.csat {
                s.csat_sum += u64::from(c);
                s.csat_responses += 1;
            }
            if let Some(c) = sv.ces {
                s.ces_sum += u64::from(c);
                s.ces_responses += 1;
            }
        }
        if i.handle_time_seconds > 0 {
            s.handle_time_sum_seconds += u64::from(i.handle_time_seconds);
            s.handle_time_count += 1;
        }
    }
    let mut merged: BTreeMap<Key, AggregateStats> = BTreeMap::new();
    let mut suppressed = 0;
    for ((region, key), (mut stats, subjects)) in per_region {
        stats.distinct_subjects = subjects.len() as u64;
        if stats.distinct_subjects < k_of(&region) {
            suppressed += 1;
            continue;
        }
        merged.entry(key).or_default().merge(&stats);
    }
    (merged, suppressed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn months() {
        assert_eq!(super::month_of(0), "1970-01");
        assert_eq!(super::month_of(1_793_491_199), "2026-10");
        assert_eq!(super::month_of(1_709_164_800), "2024-02"); // 2024-02-29
    }
}

/// Bytes captured from the federation boundary: messages, statuses and, as a `tracing` writer,
/// log lines (`.with_writer(move || capture.clone())`).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Appends `bytes` and a newline.
    pub fn add(&self, bytes: &[u8]) {
        let mut all = self.0.lock().unwrap();
        all.extend_from_slice(bytes);
        all.push(b'\n');
    }

    /// Appends a message, encoded and as text.
    pub fn message<M: Message + std::fmt::Debug>(&self, m: &M) {
        self.add(&m.encode_to_vec());
        // The text form too, as a client would print it.
        self.add(format!("{m:?}").as_bytes());
    }

    /// Appends a status: code, message, details and metadata.
    pub fn status(&self, s: &tonic::Status) {
        self.add(format!("{:?} {}", s.code(), s.message()).as_bytes());
        self.add(s.details());
        for kv in s.metadata().iter() {
            self.add(format!("{kv:?}").as_bytes());
        }
    }

    /// Appends a call's answer or its error; the answer, if any.
    pub fn result<M: Message + std::fmt::Debug>(
        &self,
        r: Result<tonic::Response<M>, tonic::Status>,
    ) -> Option<M> {
        match r {
            Ok(resp) => {
                let m = resp.into_inner();
                self.message(&m);
                Some(m)
            }
            Err(s) => {
                self.status(&s);
                None
            }
        }
    }

    /// Everything captured so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
