//! A small client of the public API: seals records to their regions' keys and ingests them in
//! batches through the gateway. Used by `domicile dev` and the integration tests.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail};
use domicile_proto::{
    pb::{
        IngestRequest, ListRegionsRequest, RecordStatus, RegionInfo, RejectReason,
        gateway_client::GatewayClient,
    },
    seal::{EnvelopeSealer, PublicSealingKey},
};
use tonic::transport::Channel;

use crate::synth::SynthRecord;

/// Counts of what an ingest did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestSummary {
    /// Newly stored.
    pub accepted: u64,
    /// Already stored before.
    pub duplicate: u64,
    /// Refused, by reason.
    pub rejected: BTreeMap<String, u64>,
}

impl IngestSummary {
    /// Total refused.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Connects to a gateway at `addr` (e.g. `127.0.0.1:50051`).
pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<GatewayClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to the gateway at {addr}"))?;
    Ok(GatewayClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// The regions with their health and sealing keys.
pub async fn regions(client: &mut GatewayClient<Channel>) -> anyhow::Result<Vec<RegionInfo>> {
    Ok(client
        .list_regions(ListRegionsRequest {})
        .await?
        .into_inner()
        .regions)
}

/// Seals `records` to their regions and ingests them, `batch` records per request, the regions
/// concurrently.
pub async fn ingest(
    client: &GatewayClient<Channel>,
    tenant: &str,
    regions: &[RegionInfo],
    records: &[SynthRecord],
    batch: usize,
) -> anyhow::Result<IngestSummary> {
    let mut region_of_country = HashMap::new();
    for (i, r) in regions.iter().enumerate() {
        for c in &r.countries {
            region_of_country.insert(c.as_str(), i);
        }
    }
    let mut per_region: Vec<Vec<&SynthRecord>> = vec![Vec::new(); regions.len()];
    for r in records {
        let i = *region_of_country
            .get(r.country.as_str())
            .with_context(|| format!("no region serves {}", r.country))?;
        per_region[i].push(r);
    }
    for (i, recs) in per_region.iter().enumerate() {
        let r = &regions[i];
        if !recs.is_empty() && r.sealing_key.is_none() {
            bail!(
                "region {} has no sealing key yet: {}",
                r.region_id,
                r.detail
            );
        }
    }
    let loads = per_region.into_iter().enumerate().map(|(i, recs)| {
        let mut client = client.clone();
        let region = &regions[i];
        async move {
            let mut summary = IngestSummary::default();
            if recs.is_empty() {
                return anyhow::Ok(summary);
            }
            let key = region.sealing_key.as_ref().context("no sealing key")?;
            let key = PublicSealingKey::from_bytes(&key.public_key)?;
            for chunk in recs.chunks(batch.max(1)) {
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
                for result in response.results {
                    match RecordStatus::try_from(result.status) {
                        Ok(RecordStatus::Accepted) => summary.accepted += 1,
                        Ok(RecordStatus::Duplicate) => summary.duplicate += 1,
                        _ => {
                            let reason = RejectReason::try_from(result.reason).map_or_else(
                                |_| "unknown".to_owned(),
                                |r| r.as_str_name().to_owned(),
                            );
                            *summary.rejected.entry(reason).or_default() += 1;
                        }
                    }
                }
            }
            anyhow::Ok(summary)
        }
    });
    let mut total = IngestSummary::default();
    for s in futures::future::join_all(loads).await {
        let s = s?;
        total.accepted += s.accepted;
        total.duplicate += s.duplicate;
        for (k, v) in s.rejected {
            *total.rejected.entry(k).or_default() += v;
        }
    }
    Ok(total)
}
