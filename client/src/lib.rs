//! A Rust client of the Domicile gateway.
//!
//! It seals each record to its region's public key (the format in `records.proto`; the gateway
//! never sees a payload) — but only after verifying the key the gateway relays against the
//! federation trust bundle ([`TrustBundle`]): a key not signed by the region's identity is
//! refused before a byte is sealed. It routes records by country, sends them in batches with the regions
//! concurrently, and retries what a region could not take (`REGION_UNAVAILABLE`) with backoff,
//! and once with fresh keys when a region rotated its sealing key (`UNKNOWN_KEY`). Used by the
//! `domicile` CLI, `domicile dev` and the integration tests.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use domicile_client::{Client, Record};
//! use domicile_proto::pb::{RecordPayload, SubjectRecord, record_payload::Record as Payload};
//!
//! let bundle = domicile_proto::trust::TrustBundle::load("trust-bundle.json".as_ref())?;
//! let client = Client::connect("127.0.0.1:50051".parse()?).await?.with_trust_bundle(bundle);
//! let record = Record {
//!     country: "DE".into(),
//!     idempotency_key: "subject/c-42".into(),
//!     payload: RecordPayload {
//!         record: Some(Payload::Subject(SubjectRecord {
//!             external_id: "c-42".into(),
//!             full_name: "Erika Mustermann".into(),
//!             ..Default::default()
//!         })),
//!     },
//! };
//! let summary = client.ingest("acme", &[record]).await?;
//! assert_eq!(summary.rejected_total(), 0);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use anyhow::{Context, bail};
pub use domicile_proto::trust::{TrustBundle, TrustError, TrustedSealingKey};
use domicile_proto::{
    pb::{
        IngestRequest, ListRegionsRequest, RecordPayload, RecordStatus, RegionInfo, RejectReason,
    },
    seal::EnvelopeSealer,
};

mod channel;

pub use channel::{ConnectOptions, Gateway, GatewayChannel, connect_with};

/// Attempts per record for what a region could not take, the first included.
pub const MAX_ATTEMPTS: u32 = 3;

/// A record to ingest: its routing metadata and its plaintext payload (sealed before it
/// leaves the client).
#[derive(Clone)]
pub struct Record {
    /// Country of the subject; routes the record.
    pub country: String,
    /// Idempotency key: a surrogate, never personal data.
    pub idempotency_key: String,
    /// The record.
    pub payload: RecordPayload,
}

/// Counts of what an ingest did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestSummary {
    /// Newly stored.
    pub accepted: u64,
    /// Already stored before.
    pub duplicate: u64,
    /// Refused for good (after retries), by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Records sent again after a region could not take them.
    pub retried: u64,
    /// Each record refused for good: its idempotency key, the reason and the node's detail
    /// (which names a field, never a value).
    pub rejections: Vec<Rejection>,
}

/// One record refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The record's idempotency key.
    pub idempotency_key: String,
    /// `RejectReason` name.
    pub reason: String,
    /// What the region said.
    pub detail: String,
}

impl IngestSummary {
    /// Total refused.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn add(&mut self, other: IngestSummary) {
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.retried += other.retried;
        self.rejections.extend(other.rejections);
        for (k, v) in other.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
    }
}

/// Connects to a gateway at `addr` (e.g. `127.0.0.1:50051`) in plaintext without credentials
/// (a gateway in its insecure mode); see [`connect_with`] for TLS and tokens.
pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Gateway> {
    connect_with(&addr.to_string(), &ConnectOptions::default()).await
}

/// The regions with their health and sealing keys.
pub async fn regions(client: &mut Gateway) -> anyhow::Result<Vec<RegionInfo>> {
    Ok(client
        .list_regions(ListRegionsRequest {})
        .await?
        .into_inner()
        .regions)
}

/// Seals one region's records in batches and sends them; what the region could not take is
/// retried with backoff. Returns the summary and the records refused for an unknown key (to be
/// sent again with fresh keys).
async fn ingest_region<'a>(
    mut client: Gateway,
    tenant: &str,
    region: &RegionInfo,
    bundle: &TrustBundle,
    records: Vec<&'a Record>,
    batch: usize,
    progress: &Progress<'_>,
) -> anyhow::Result<(IngestSummary, Vec<&'a Record>)> {
    let mut summary = IngestSummary::default();
    let mut stale_key = Vec::new();
    if records.is_empty() {
        return Ok((summary, stale_key));
    }
    if region.signed_sealing_key.is_none() && region.sealing_key.is_none() {
        bail!(
            "region {} has no sealing key yet: {}",
            region.region_id,
            region.detail
        );
    }
    // Nothing is sealed to a key the region's identity did not sign, nor for a country the
    // region's own statement does not name (the gateway's routing table is not evidence).
    let trusted = verified_key(bundle, region)?;
    if let Some(r) = records
        .iter()
        .find(|r| !trusted.countries.contains(&r.country))
    {
        bail!(
            "refusing to seal for region {}: its signed statement does not name country {} (the gateway routed it there)",
            region.region_id,
            r.country
        );
    }
    let key = trusted.key;
    let mut pending = records;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut again = Vec::new();
        for chunk in pending.chunks(batch.max(1)) {
            let mut sealer = EnvelopeSealer::new(tenant, &region.region_id, &key)?;
            for r in chunk {
                sealer.seal(&r.country, &r.idempotency_key, &r.payload)?;
            }
            let response = client
                .ingest(IngestRequest {
                    tenant_id: tenant.to_owned(),
                    envelopes: vec![sealer.finish()],
                })
                .await?
                .into_inner();
            if attempt == 1 {
                progress(chunk.len() as u64);
            }
            for (result, record) in response.results.iter().zip(chunk) {
                match RecordStatus::try_from(result.status) {
                    Ok(RecordStatus::Accepted) => summary.accepted += 1,
                    Ok(RecordStatus::Duplicate) => summary.duplicate += 1,
                    _ => match RejectReason::try_from(result.reason) {
                        Ok(RejectReason::RegionUnavailable) if attempt < MAX_ATTEMPTS => {
                            again.push(*record)
                        }
                        Ok(RejectReason::UnknownKey) => stale_key.push(*record),
                        reason => {
                            let name = reason.map_or_else(
                                |_| "unknown".to_owned(),
                                |r| r.as_str_name().to_owned(),
                            );
                            *summary.rejected.entry(name.clone()).or_default() += 1;
                            summary.rejections.push(Rejection {
                                idempotency_key: record.idempotency_key.clone(),
                                reason: name,
                                detail: result.detail.clone(),
                            });
                        }
                    },
                }
            }
        }
        if again.is_empty() {
            break;
        }
        summary.retried += again.len() as u64;
        // Idempotency keys make the retry safe even if the region stored some of them.
        tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1))).await;
        pending = again;
    }
    Ok((summary, stale_key))
}

/// The region's sealing key, verified against `bundle` now; an error names the region and why.
pub fn verified_key(
    bundle: &TrustBundle,
    region: &RegionInfo,
) -> anyhow::Result<TrustedSealingKey> {
    bundle
        .verify_region(region, domicile_proto::domain::unix_now())
        .with_context(|| {
            format!(
                "refusing to seal for region {}: its sealing key is not trusted",
                region.region_id
            )
        })
}

/// A callback told how many records each batch carried, once, as batches are answered.
pub type Progress<'a> = dyn Fn(u64) + Sync + 'a;

/// Seals `records` to their regions and ingests them, `batch` records per request, the regions
/// concurrently, retrying what a region could not take. Each region's key is verified against
/// `bundle` before anything is sealed to it.
pub async fn ingest(
    client: &Gateway,
    tenant: &str,
    regions: &[RegionInfo],
    bundle: &TrustBundle,
    records: &[Record],
    batch: usize,
) -> anyhow::Result<IngestSummary> {
    ingest_with_progress(client, tenant, regions, bundle, records, batch, &|_| {}).await
}

/// [`ingest`], calling `progress` as batches are answered (for a progress bar).
pub async fn ingest_with_progress(
    client: &Gateway,
    tenant: &str,
    regions: &[RegionInfo],
    bundle: &TrustBundle,
    records: &[Record],
    batch: usize,
    progress: &Progress<'_>,
) -> anyhow::Result<IngestSummary> {
    let (summary, stale) = ingest_once(
        client,
        tenant,
        regions,
        bundle,
        records.iter().collect(),
        batch,
        progress,
    )
    .await?;
    if stale.is_empty() {
        return Ok(summary);
    }
    // A region rotated its key since `regions` was read: fetch the keys again, once.
    let mut fresh_client = client.clone();
    let fresh = self::regions(&mut fresh_client).await?;
    let (mut retry, still) =
        ingest_once(client, tenant, &fresh, bundle, stale, batch, &|_| {}).await?;
    for record in still {
        let name = RejectReason::UnknownKey.as_str_name().to_owned();
        *retry.rejected.entry(name.clone()).or_default() += 1;
        retry.rejections.push(Rejection {
            idempotency_key: record.idempotency_key.clone(),
            reason: name,
            detail: "the region's sealing key changed twice during the ingest".into(),
        });
    }
    let mut total = summary;
    total.add(retry);
    Ok(total)
}

async fn ingest_once<'a>(
    client: &Gateway,
    tenant: &str,
    regions: &[RegionInfo],
    bundle: &TrustBundle,
    records: Vec<&'a Record>,
    batch: usize,
    progress: &Progress<'_>,
) -> anyhow::Result<(IngestSummary, Vec<&'a Record>)> {
    let mut region_of_country = HashMap::new();
    for (i, r) in regions.iter().enumerate() {
        for c in &r.countries {
            region_of_country.insert(c.as_str(), i);
        }
    }
    let mut per_region: Vec<Vec<&Record>> = vec![Vec::new(); regions.len()];
    for r in records {
        let Some(i) = region_of_country.get(r.country.as_str()) else {
            bail!("no region serves {}", r.country);
        };
        per_region[*i].push(r);
    }
    let loads = per_region.into_iter().enumerate().map(|(i, recs)| {
        ingest_region(
            client.clone(),
            tenant,
            &regions[i],
            bundle,
            recs,
            batch,
            progress,
        )
    });
    let mut total = IngestSummary::default();
    let mut stale = Vec::new();
    for result in futures::future::join_all(loads).await {
        let (summary, mut s) = result?;
        total.add(summary);
        stale.append(&mut s);
    }
    Ok((total, stale))
}

/// A connected client that keeps the regions and their keys.
#[derive(Debug, Clone)]
pub struct Client {
    gateway: Gateway,
    bundle: Option<TrustBundle>,
}

impl Client {
    /// Connects to the gateway at `addr` (plaintext, no credentials).
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            gateway: connect(addr).await?,
            bundle: None,
        })
    }

    /// Connects to the gateway at `addr` (`host:port`) with TLS and credentials as `options`
    /// say.
    pub async fn connect_with(addr: &str, options: &ConnectOptions) -> anyhow::Result<Self> {
        Ok(Self {
            gateway: connect_with(addr, options).await?,
            bundle: None,
        })
    }

    /// The federation trust bundle to verify regions' sealing keys with: required to ingest.
    pub fn with_trust_bundle(mut self, bundle: TrustBundle) -> Self {
        self.bundle = Some(bundle);
        self
    }

    /// The trust bundle, or an error saying how to get one.
    pub fn trust_bundle(&self) -> anyhow::Result<&TrustBundle> {
        self.bundle.as_ref().context(
            "no federation trust bundle: sealing needs one to verify the regions' keys \
             (`domicile trust bundle`; `domicile dev` prints where its bundle is)",
        )
    }

    /// The generated gRPC client, for every other call.
    pub fn gateway(&self) -> Gateway {
        self.gateway.clone()
    }

    /// The regions with their health and keys.
    pub async fn regions(&self) -> anyhow::Result<Vec<RegionInfo>> {
        regions(&mut self.gateway.clone()).await
    }

    /// Seals, routes and ingests `records` in batches of 500, retrying what a region could not
    /// take.
    pub async fn ingest(&self, tenant: &str, records: &[Record]) -> anyhow::Result<IngestSummary> {
        let bundle = self.trust_bundle()?;
        let regions = self.regions().await?;
        ingest(&self.gateway, tenant, &regions, bundle, records, 500).await
    }
}

/// The latest audit head a client has verified per region (a client-side witness): a head
/// from the gateway is accepted only when the bundle's identity key signed it and it does not
/// go back ([`TrustBundle::verify_checkpoint`]).
#[derive(Debug, Default)]
pub struct HeadWitness {
    heads: std::sync::Mutex<HashMap<String, domicile_proto::pb::AuditCheckpoint>>,
}

impl HeadWitness {
    /// Checks `checkpoint` for `region_id` and remembers it when it verifies.
    pub fn observe(
        &self,
        bundle: &TrustBundle,
        region_id: &str,
        checkpoint: &domicile_proto::pb::AuditCheckpoint,
    ) -> Result<(), TrustError> {
        let mut heads = self.heads.lock().expect("witness lock");
        bundle.verify_checkpoint(region_id, checkpoint, heads.get(region_id))?;
        heads.insert(region_id.to_owned(), checkpoint.clone());
        Ok(())
    }
}
