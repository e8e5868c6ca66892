//! The region directory: each configured region with its federation channel, the country
//! routing table, and the latest probe of each region (health and sealing key).

use std::{collections::HashMap, sync::Arc, time::Duration};

use dashmap::DashMap;
use domicile_ops::rpc::Instrumented;
use domicile_proto::pb::{
    GetRegionInfoRequest, RecordResult, RegionHealth, RegionInfo, RegionalNodeIngestResponse,
    SealedEnvelope, SealingKey, SignedSealingKey, regional_node_client::RegionalNodeClient,
};
use http::uri::PathAndQuery;
use tonic::{GrpcMethod, Status};
use tonic_prost::ProstCodec;

use crate::{
    config::{GatewayConfig, RegionConfig},
    federation::{
        conn::{self, Endpoint},
        forward,
        replicas::Replicas,
    },
    metrics::{GatewayMetrics, RegionLabels},
};

/// The channel to a region: over its replicas, ejecting one whose connection fails
/// ([`Replicas`]), instrumented (metrics per region and method, `traceparent` on every call).
pub type RegionChannel = Instrumented<Replicas>;

/// A region and its federation client.
#[derive(Debug)]
pub struct Region {
    /// Region id.
    pub id: String,
    /// Countries routed here.
    pub countries: Vec<String>,
    /// The endpoints the client balances over.
    pub endpoints: Vec<String>,
    /// A client balanced over the region's endpoints; cheap to clone.
    pub client: RegionalNodeClient<RegionChannel>,
    /// The channel under `client`, for calls made without the generated client
    /// ([`Region::ingest`]).
    pub channel: RegionChannel,
    /// The replicas the client calls, for their state (which are ejected).
    pub replicas: Replicas,
}

impl Region {
    /// `RegionalNode.Ingest` of `envelope` for `tenant_id`, under `deadline`: the node's
    /// results, one per record. The same call as the generated client's, but framed by
    /// [`forward::ingest_frame`], which sends large ciphertexts without copying them.
    pub async fn ingest(
        &self,
        tenant_id: &str,
        envelope: SealedEnvelope,
        deadline: Duration,
    ) -> Result<Vec<RecordResult>, Status> {
        let frame = forward::ingest_frame(tenant_id, envelope)
            .map_err(|e| Status::invalid_argument(format!("envelope: {e}")))?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_REGION_RESPONSE_BYTES);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("region not ready: {e}")))?;
        // tonic encodes `()` as an empty message; `Replicas` puts the frame in its place.
        let mut req = crate::deadline::request((), deadline);
        req.extensions_mut().insert(frame);
        req.extensions_mut()
            .insert(GrpcMethod::new("domicile.v1.RegionalNode", "Ingest"));
        let codec = ProstCodec::<(), RegionalNodeIngestResponse>::default();
        let path = PathAndQuery::from_static("/domicile.v1.RegionalNode/Ingest");
        Ok(grpc.unary(req, path, codec).await?.into_inner().results)
    }
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
    /// The sealing key as the region signed it (relayed to clients, who verify it).
    pub signed_sealing_key: Option<SignedSealingKey>,
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
    metrics: GatewayMetrics,
}

/// HTTP/2 receive window per stream from a region: bounds what a `QueryRecords` stream can
/// buffer in the gateway per region while the client is not reading (about 1,500 records).
const REGION_STREAM_WINDOW: u32 = 256 * 1024;

/// Receive window of a connection to a region, shared by its streams.
const REGION_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Why a directory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An endpoint URL or TLS setting that cannot be used.
    #[error("{0}")]
    Endpoint(String),
    /// A TLS file that cannot be read.
    #[error("{0}")]
    Files(String),
}

/// The client TLS settings towards regions, from `[federation_tls]`: the federation's CA as
/// the only root, the gateway's certificate and key, ALPN `h2`.
fn federation_tls(
    config: &GatewayConfig,
) -> Result<Option<tokio_rustls::TlsConnector>, BuildError> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let Some(t) = &config.federation_tls else {
        return Ok(None);
    };
    let unreadable = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        BuildError::Files(format!("federation_tls.{what}: {}: {e}", path.display()))
    };
    // Every certificate of a PEM file, at least one.
    let certificates = |what: &str, path: &std::path::Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| unreadable(what, path, &e))
            .and_then(|certs| {
                if certs.is_empty() {
                    Err(unreadable(what, path, &"no certificate in the file"))
                } else {
                    Ok(certs)
                }
            })
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates("ca_file", &t.ca_file)? {
        roots
            .add(cert)
            .map_err(|e| unreadable("ca_file", &t.ca_file, &e))?;
    }
    let chain = certificates("cert_file", &t.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&t.key_file)
        .map_err(|e| unreadable("key_file", &t.key_file, &e))?;
    let mut tls =
        ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| BuildError::Endpoint(format!("federation_tls: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| BuildError::Endpoint(format!("federation_tls.key_file: {e}")))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        tls,
    ))))
}

/// The replicas at `endpoints`, each connected on its first call; with `tls`, each endpoint
/// verifies the region's certificate for `identity` and presents the gateway's.
fn channel(
    endpoints: &[String],
    tls: Option<&tokio_rustls::TlsConnector>,
    identity: &str,
    ejections: prometheus_client::metrics::counter::Counter,
    retries: prometheus_client::metrics::counter::Counter,
) -> Result<Replicas, BuildError> {
    let tls = match tls {
        Some(connector) => Some(conn::Tls {
            connector: connector.clone(),
            name: rustls_pki_types::ServerName::try_from(identity.to_owned())
                .map_err(|e| BuildError::Endpoint(format!("identity {identity}: {e}")))?,
        }),
        None => None,
    };
    let settings = conn::Settings {
        stream_window: REGION_STREAM_WINDOW,
        connection_window: REGION_CONNECTION_WINDOW,
    };
    let endpoints = endpoints
        .iter()
        .map(|url| {
            Endpoint::new(url, tls.clone(), settings)
                .map_err(|e| BuildError::Endpoint(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Replicas::new(endpoints, ejections, retries))
}

/// Largest response the gateway decodes from a region.
const MAX_REGION_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl Directory {
    /// Builds the directory from validated configuration. Connections are made lazily, so a
    /// region that is down does not hold up the gateway's start.
    pub fn new(config: &GatewayConfig, metrics: GatewayMetrics) -> Result<Self, BuildError> {
        Self::build(config, metrics, None)
    }

    /// The directory for a new configuration, keeping the connections and the latest state of
    /// every region whose id, countries and endpoints are unchanged.
    pub fn rebuild(&self, config: &GatewayConfig) -> Result<Self, BuildError> {
        Self::build(config, self.metrics.clone(), Some(self))
    }

    fn build(
        config: &GatewayConfig,
        metrics: GatewayMetrics,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        let tls = federation_tls(config)?;
        let mut regions = Vec::with_capacity(config.regions.len());
        let mut by_country = HashMap::new();
        let mut by_id = HashMap::new();
        let state = DashMap::new();
        for (i, rc) in config.regions.iter().enumerate() {
            let RegionConfig {
                id,
                countries,
                endpoints,
                ..
            } = rc;
            // TLS settings are re-read on every build, so a reload also rotates certificates;
            // only plaintext regions keep their connections.
            let kept = previous.filter(|_| tls.is_none()).and_then(|p| {
                p.region(id)
                    .filter(|r| r.countries == *countries && r.endpoints == *endpoints)
                    .map(|r| (r.clone(), p.state.get(id).map(|s| s.clone())))
            });
            let region = match kept {
                Some((region, last)) => {
                    if let Some(last) = last {
                        state.insert(id.clone(), last);
                    }
                    region
                }
                None => {
                    let labels = RegionLabels { region: id.clone() };
                    let ejections = metrics.endpoints_ejected.get_or_create(&labels).clone();
                    let retries = metrics.region_retries.get_or_create(&labels).clone();
                    let replicas =
                        channel(endpoints, tls.as_ref(), &rc.identity(), ejections, retries)?;
                    let channel = Instrumented::new(replicas.clone(), id, metrics.regions.clone());
                    Arc::new(Region {
                        id: id.clone(),
                        countries: countries.clone(),
                        endpoints: endpoints.clone(),
                        client: RegionalNodeClient::new(channel.clone())
                            .max_decoding_message_size(MAX_REGION_RESPONSE_BYTES),
                        channel,
                        replicas,
                    })
                }
            };
            for c in countries {
                by_country.insert(c.clone(), i);
            }
            by_id.insert(id.clone(), i);
            regions.push(region);
        }
        // A region that left the directory is no longer reported as up or down.
        if let Some(p) = previous {
            for r in p.regions.iter().filter(|r| !by_id.contains_key(&r.id)) {
                metrics.region_up.remove(&RegionLabels {
                    region: r.id.clone(),
                });
            }
        }
        metrics.regions_configured.set(regions.len() as i64);
        Ok(Self {
            regions,
            by_country,
            by_id,
            state,
            metrics,
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
        let request = crate::deadline::request(GetRegionInfoRequest {}, timeout);
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
                        signed_sealing_key: info.signed_sealing_key,
                        detail: String::new(),
                    }
                }
            }
            Ok(Err(status)) => failed(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => failed(format!("no answer within {} ms", timeout.as_millis())),
        };
        self.metrics
            .region_up
            .get_or_create(&RegionLabels {
                region: region.id.clone(),
            })
            .set(i64::from(state.health == RegionHealth::Serving));
        self.state.insert(region.id.clone(), state.clone());
        state
    }

    /// The latest known state of region `id` (`None` before its first probe).
    pub fn state(&self, id: &str) -> Option<RegionState> {
        self.state.get(id).map(|s| s.clone())
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
                signed_sealing_key: state.signed_sealing_key,
            }
        });
        futures::future::join_all(probes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FederationTlsConfig;

    #[test]
    fn unusable_federation_tls_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gateway.domicile".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let good = FederationTlsConfig {
            ca_file: write("ca.pem", &cert.pem()),
            cert_file: write("cert.pem", &cert.pem()),
            key_file: write("key.pem", &key.serialize_pem()),
        };
        let toml = "insecure_no_auth = true\ninsecure_plaintext_federation = true\n[[regions]]\nid = \"eu-de\"\ncountries = [\"DE\"]\nendpoints = [\"http://127.0.0.1:1\"]\n";
        let mut config = GatewayConfig::from_toml_with_env(toml, |_| None).unwrap();
        config.federation_tls = Some(good.clone());
        assert!(federation_tls(&config).unwrap().is_some());

        let empty = write("empty.pem", "");
        let not_a_key = write("not-a-key.pem", &cert.pem());
        for (field, broken) in [
            (
                "ca_file",
                FederationTlsConfig {
                    ca_file: empty.clone(),
                    ..good.clone()
                },
            ),
            (
                "cert_file",
                FederationTlsConfig {
                    cert_file: empty.clone(),
                    ..good.clone()
                },
            ),
            (
                "key_file",
                FederationTlsConfig {
                    key_file: not_a_key.clone(),
                    ..good.clone()
                },
            ),
            (
                "ca_file",
                FederationTlsConfig {
                    ca_file: dir.path().join("missing.pem"),
                    ..good.clone()
                },
            ),
        ] {
            config.federation_tls = Some(broken);
            let Err(error) = federation_tls(&config) else {
                panic!("{field}: accepted");
            };
            let error = error.to_string();
            assert!(
                error.starts_with(&format!("federation_tls.{field}: ")),
                "{error}"
            );
        }
    }
}
