//! The region directory: each configured region with its federation channel, the country
//! routing table, and the latest probe of each region (health and sealing key).

use std::{collections::HashMap, sync::Arc, time::Duration};

use dashmap::DashMap;
use domicile_proto::pb::{
    GetRegionInfoRequest, RegionHealth, RegionInfo, SealingKey,
    regional_node_client::RegionalNodeClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::config::{GatewayConfig, RegionConfig};

/// A region and its federation client.
#[derive(Debug)]
pub struct Region {
    /// Region id.
    pub id: String,
    /// Countries routed here.
    pub countries: Vec<String>,
    /// A client balanced over the region's endpoints; cheap to clone.
    pub client: RegionalNodeClient<Channel>,
}

/// The latest known state of a region.
#[derive(Debug, Clone, Default)]
pub struct RegionState {
    /// Health from the latest probe.
    pub health: RegionHealth,
    /// The latest sealing key seen (kept across failed probes).
    pub sealing_key: Option<SealingKey>,
    /// The region's audit public key, from its latest good answer.
    pub audit_public_key: Vec<u8>,
    /// Why it is not serving.
    pub detail: String,
}

/// All regions of the federation.
#[derive(Debug)]
pub struct Directory {
    regions: Vec<Arc<Region>>,
    by_country: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
    state: DashMap<String, RegionState>,
}

/// HTTP/2 receive window per stream from a region: bounds what a `QueryRecords` stream can
/// buffer in the gateway per region while the client is not reading (about 1,500 records).
const REGION_STREAM_WINDOW: u32 = 256 * 1024;

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .initial_stream_window_size(REGION_STREAM_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// Largest response the gateway decodes from a region.
const MAX_REGION_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl Directory {
    /// Builds the directory from validated configuration. Connections are made lazily, so a
    /// region that is down does not hold up the gateway's start.
    pub fn new(config: &GatewayConfig) -> Result<Self, tonic::transport::Error> {
        let mut regions = Vec::with_capacity(config.regions.len());
        let mut by_country = HashMap::new();
        let mut by_id = HashMap::new();
        for (
            i,
            RegionConfig {
                id,
                countries,
                endpoints,
            },
        ) in config.regions.iter().enumerate()
        {
            let channel = if endpoints.len() == 1 {
                endpoint(&endpoints[0])?.connect_lazy()
            } else {
                let eps = endpoints
                    .iter()
                    .map(|e| endpoint(e))
                    .collect::<Result<Vec<_>, _>>()?;
                Channel::balance_list(eps.into_iter())
            };
            for c in countries {
                by_country.insert(c.clone(), i);
            }
            by_id.insert(id.clone(), i);
            regions.push(Arc::new(Region {
                id: id.clone(),
                countries: countries.clone(),
                client: RegionalNodeClient::new(channel)
                    .max_decoding_message_size(MAX_REGION_RESPONSE_BYTES),
            }));
        }
        Ok(Self {
            regions,
            by_country,
            by_id,
            state: DashMap::new(),
        })
    }

    /// All regions, in configuration order.
    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// The region that serves `country`.
    pub fn region_for_country(&self, country: &str) -> Option<&Arc<Region>> {
        self.by_country.get(country).map(|i| &self.regions[*i])
    }

    /// The region with id `id`.
    pub fn region(&self, id: &str) -> Option<&Arc<Region>> {
        self.by_id.get(id).map(|i| &self.regions[*i])
    }

    /// Probes one region (`GetRegionInfo`) within `timeout` and records the result.
    pub async fn probe(&self, region: &Region, timeout: Duration) -> RegionState {
        let request = crate::fanout::request(GetRegionInfoRequest {}, timeout);
        let mut client = region.client.clone();
        // A failed probe keeps the keys of the last good one.
        let previous = self
            .state
            .get(&region.id)
            .map(|s| s.clone())
            .unwrap_or_default();
        let failed = |detail: String| RegionState {
            health: RegionHealth::NotServing,
            detail,
            ..previous.clone()
        };
        let state = match tokio::time::timeout(timeout, client.get_region_info(request)).await {
            Ok(Ok(resp)) => {
                let info = resp.into_inner();
                if info.region_id != region.id {
                    failed(format!(
                        "misconfigured: the endpoint serves region {}, not {}",
                        info.region_id, region.id
                    ))
                } else if let Some(c) = region
                    .countries
                    .iter()
                    .find(|c| !info.countries.contains(c))
                {
                    failed(format!(
                        "misconfigured: the node's jurisdiction does not include {c}"
                    ))
                } else {
                    RegionState {
                        health: RegionHealth::Serving,
                        sealing_key: info.sealing_key,
                        audit_public_key: info.audit_public_key,
                        detail: String::new(),
                    }
                }
            }
            Ok(Err(status)) => failed(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => failed(format!("no answer within {} ms", timeout.as_millis())),
        };
        self.state.insert(region.id.clone(), state.clone());
        state
    }

    /// Probes every region concurrently and returns them as `ListRegions` reports them.
    pub async fn probe_all(&self, timeout: Duration) -> Vec<RegionInfo> {
        let probes = self.regions.iter().map(|r| async move {
            let state = self.probe(r, timeout).await;
            RegionInfo {
                region_id: r.id.clone(),
                countries: r.countries.clone(),
                health: state.health as i32,
                sealing_key: state.sealing_key,
                detail: state.detail,
                audit_public_key: state.audit_public_key,
            }
        });
        futures::future::join_all(probes).await
    }
}
