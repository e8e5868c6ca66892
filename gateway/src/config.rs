//! Gateway configuration, read from TOML (`domicile gateway --config gateway.toml`).
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! default_deadline_ms = 5000
//! metrics_listen = "0.0.0.0:9464"   # Prometheus /metrics; unset: none
//! console_listen = "127.0.0.1:8080" # the DPO and operations console; unset: none
//! shutdown_grace_ms = 5000          # NOT_SERVING before the listener closes, on SIGTERM
//!
//! [[regions]]
//! id = "eu-de"
//! countries = ["DE", "AT"]
//! endpoints = ["http://10.0.1.10:50061", "http://10.0.1.11:50061"]
//! ```

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use domicile_proto::domain::{is_country_code, is_region_id};
use serde::Deserialize;

use crate::{
    auth::{AuthConfig, Authenticator},
    limits::LimitsConfig,
};

/// Configuration of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address of the public gRPC listener. Default `127.0.0.1:50051`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The regions of the federation. At least one.
    pub regions: Vec<RegionConfig>,
    /// Deadline applied to a call that carries none, in milliseconds. Default 5000.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Upper bound on any caller's deadline, in milliseconds. Default 30000.
    #[serde(default = "default_max_deadline_ms")]
    pub max_deadline_ms: u64,
    /// Most records accepted in one `Ingest` request, over all envelopes. Default 1000.
    #[serde(default = "default_max_records")]
    pub max_records_per_request: usize,
    /// Timeout of a region health probe (`ListRegions`), in milliseconds. Default 1000.
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// How often every region is probed in the background (health, keys, the `region_up`
    /// metric), in milliseconds. Default 10000.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// Address of the Prometheus endpoint (`GET /metrics`; HTTPS with `[metrics_access]`). Default: none (no
    /// endpoint). Bind it where only the monitoring network reaches.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS and scraper authentication for the metrics endpoint (bearer token and/or client
    /// certificates; see [`domicile_ops::metrics::MetricsAccessConfig`]). Required when
    /// `metrics_listen` is not a loopback address. Default: none (plain HTTP on loopback).
    #[serde(default)]
    pub metrics_access: Option<domicile_ops::metrics::MetricsAccessConfig>,
    /// OTLP export of the RPC spans to the operator's collector (`[otlp]`, see
    /// [`domicile_ops::otlp::OtlpConfig`]). Default: none (no span leaves the process).
    #[serde(default)]
    pub otlp: Option<domicile_ops::otlp::OtlpConfig>,
    /// Address of the console, a read-only web page of the federation's state for the
    /// data-protection officer and the operators (HTTP, or HTTPS with `[tls]`'s certificate).
    /// Callers sign in with a token that has the `admin` operation. Default: none.
    #[serde(default)]
    pub console_listen: Option<SocketAddr>,
    /// On SIGTERM or Ctrl-C, how long health reports `NOT_SERVING` while calls are still
    /// accepted, so that load balancers stop sending first, in milliseconds. Default 0; set it
    /// above the readiness probe period under Kubernetes.
    #[serde(default)]
    pub shutdown_grace_ms: u64,
    /// Then, the longest wait for calls in flight before they are cut, in milliseconds.
    /// Default 30000.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// How callers authenticate (bearer JWTs, client certificates). Required unless
    /// `insecure_no_auth` is set.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Serve without authentication: every caller may do everything. For local development
    /// and tests only; the gateway logs a warning at start. Default false.
    #[serde(default)]
    pub insecure_no_auth: bool,
    /// Per-tenant rate and concurrency limits, and load shedding.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// TLS on the public listener (and client certificates, for `[[auth.clients]]`). Without
    /// it the listener is plaintext: put it behind a TLS-terminating proxy or a service mesh.
    #[serde(default)]
    pub tls: Option<PublicTlsConfig>,
    /// Mutual TLS to the regions. Required unless `insecure_plaintext_federation` is set.
    #[serde(default)]
    pub federation_tls: Option<FederationTlsConfig>,
    /// Call the regions in plaintext, without verifying who answers: for local development
    /// and tests only; the gateway logs a warning at start. Default false.
    #[serde(default)]
    pub insecure_plaintext_federation: bool,
    /// Where the gateway keeps, per region, the latest audit checkpoint it verified (JSON,
    /// written atomically): the audit witness. Every later head must extend it, or the gateway
    /// reports a fork. Default: none, and the witness forgets at restart (a warning is
    /// logged); set it in production.
    #[serde(default)]
    pub audit_witness_file: Option<PathBuf>,
    /// How often the witness asks every region for its audit head, in seconds. Default 60; 0
    /// turns the background rounds off (heads are still witnessed on `GetAuditCheckpoint`).
    #[serde(default = "default_audit_witness_seconds")]
    pub audit_witness_seconds: u64,
}

/// `[tls]`: the public listener's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicTlsConfig {
    /// The gateway's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA (PEM) of callers' client certificates. When set, a caller may authenticate with
    /// a certificate listed in `[[auth.clients]]` (callers with tokens need none).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// `[federation_tls]`: the gateway's client certificate, and the CA its regions' certificates
/// chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationTlsConfig {
    /// The CA (PEM) that signs the nodes' certificates.
    pub ca_file: PathBuf,
    /// The gateway's client certificate (PEM), valid for the identity the nodes pin.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// One region in the gateway's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region id; must equal the node's own `region_id`.
    pub id: String,
    /// Countries routed to this region. Each country belongs to exactly one region.
    pub countries: Vec<String>,
    /// Federation endpoints of the region's node replicas, e.g. `https://10.0.1.10:50061`.
    /// Calls are balanced across them.
    pub endpoints: Vec<String>,
    /// The DNS name the region's certificate must be valid for. Default
    /// `<id>.node.domicile`.
    #[serde(default)]
    pub identity: Option<String>,
}

impl RegionConfig {
    /// The DNS name the region's certificate must be valid for.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .unwrap_or_else(|| format!("{}.node.domicile", self.id))
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_deadline_ms() -> u64 {
    5000
}
fn default_max_deadline_ms() -> u64 {
    30_000
}
fn default_max_records() -> usize {
    1000
}
fn default_probe_timeout_ms() -> u64 {
    1000
}
fn default_probe_interval_ms() -> u64 {
    10_000
}
fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_audit_witness_seconds() -> u64 {
    60
}

/// The top-level options that `DOMICILE_GATEWAY_*` variables override.
pub const OPTIONS: &[&str] = &[
    "listen",
    "default_deadline_ms",
    "max_deadline_ms",
    "max_records_per_request",
    "probe_timeout_ms",
    "probe_interval_ms",
    "metrics_listen",
    "console_listen",
    "shutdown_grace_ms",
    "drain_timeout_ms",
    "insecure_no_auth",
    "insecure_plaintext_federation",
    "audit_witness_file",
    "audit_witness_seconds",
];

/// A configuration error, with the path of the offending option.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The option, e.g. `regions[1].countries[0]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl GatewayConfig {
    /// A configuration with defaults and the given regions.
    pub fn new(regions: Vec<RegionConfig>) -> Self {
        Self {
            listen: default_listen(),
            regions,
            default_deadline_ms: default_deadline_ms(),
            max_deadline_ms: default_max_deadline_ms(),
            max_records_per_request: default_max_records(),
            probe_timeout_ms: default_probe_timeout_ms(),
            probe_interval_ms: default_probe_interval_ms(),
            metrics_listen: None,
            metrics_access: None,
            otlp: None,
            console_listen: None,
            shutdown_grace_ms: 0,
            drain_timeout_ms: default_drain_timeout_ms(),
            auth: None,
            insecure_no_auth: false,
            limits: LimitsConfig::default(),
            tls: None,
            federation_tls: None,
            insecure_plaintext_federation: false,
            audit_witness_file: None,
            audit_witness_seconds: default_audit_witness_seconds(),
        }
    }

    /// Parses and validates a TOML document with overrides from the environment: every
    /// top-level option can be set by `DOMICILE_GATEWAY_<OPTION>` (upper case), e.g.
    /// `DOMICILE_GATEWAY_LISTEN=0.0.0.0:50051`; regions come from the file only. `env` looks a
    /// variable up (`|k| std::env::var(k).ok()`), so tests can pass their own.
    pub fn from_toml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let config = Self::parse_with_env(text, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Like [`Self::from_toml_with_env`] without the validation, for `domicile config check`,
    /// which lists every problem ([`Self::problems`]) rather than the first.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        domicile_ops::config::parse_with_env(text, "DOMICILE_GATEWAY", OPTIONS, &[], env)
            .map_err(|(path, message)| ConfigError { path, message })
    }

    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError {
            path: e
                .span()
                .map_or_else(String::new, |s| format!("byte {}", s.start)),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The default deadline.
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    /// The largest deadline.
    pub fn max_deadline(&self) -> Duration {
        Duration::from_millis(self.max_deadline_ms)
    }

    /// The public listener's TLS settings, read from their files.
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        let Some(t) = &self.tls else {
            return Ok(None);
        };
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("tls.{what}: {}: {e}", path.display()))
        };
        let mut config = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(
                read("cert_file", &t.cert_file)?,
                read("key_file", &t.key_file)?,
            ),
        );
        if let Some(ca) = &t.client_ca_file {
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(read(
                    "client_ca_file",
                    ca,
                )?))
                // Token callers present no certificate.
                .client_auth_optional(true);
        }
        Ok(Some(config))
    }

    /// How the listener drains on shutdown.
    pub fn drain(&self) -> domicile_ops::lifecycle::Drain {
        domicile_ops::lifecycle::Drain {
            grace: Duration::from_millis(self.shutdown_grace_ms),
            timeout: Duration::from_millis(self.drain_timeout_ms),
        }
    }

    /// Checks every option; the first error names its path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem of the configuration, each with its path (`domicile config check`).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut err = |path: String, message: &str| {
            out.push(ConfigError {
                path,
                message: message.to_owned(),
            })
        };
        if self.regions.is_empty() {
            err("regions".into(), "at least one region is required");
        }
        if let Err((path, message)) = domicile_ops::metrics::MetricsAccessConfig::validate(
            self.metrics_access.as_ref(),
            self.metrics_listen,
        ) {
            err(path, &message);
        }
        if let Some(Err((path, message))) = self.otlp.as_ref().map(|o| o.validate()) {
            err(path, &message);
        }
        let mut owner: HashMap<&str, &str> = HashMap::new();
        let mut ids = HashMap::new();
        for (i, r) in self.regions.iter().enumerate() {
            if !is_region_id(&r.id) {
                err(
                    format!("regions[{i}].id"),
                    "must be 1 to 63 characters of a-z, 0-9 and '-'",
                );
            }
            if ids.insert(r.id.as_str(), i).is_some() {
                err(format!("regions[{i}].id"), "duplicate region id");
            }
            if r.countries.is_empty() {
                err(
                    format!("regions[{i}].countries"),
                    "at least one country is required",
                );
            }
            for (j, c) in r.countries.iter().enumerate() {
                if !is_country_code(c) {
                    err(
                        format!("regions[{i}].countries[{j}]"),
                        "must be an ISO 3166-1 alpha-2 code in upper case",
                    );
                }
                if let Some(other) = owner.insert(c, &r.id) {
                    err(
                        format!("regions[{i}].countries[{j}]"),
                        &format!("{c} is already served by region {other}"),
                    );
                }
            }
            if r.endpoints.is_empty() {
                err(
                    format!("regions[{i}].endpoints"),
                    "at least one endpoint is required",
                );
            }
            let scheme = if self.federation_tls.is_some() {
                "https://"
            } else {
                "http://"
            };
            for (j, e) in r.endpoints.iter().enumerate() {
                if endpoint_url(e).is_err() || !e.starts_with(scheme) {
                    err(
                        format!("regions[{i}].endpoints[{j}]"),
                        &format!("must be a URL like {scheme}host:port"),
                    );
                }
            }
            if rustls_pki_types::ServerName::try_from(r.identity()).is_err() {
                err(format!("regions[{i}].identity"), "must be a DNS name");
            }
        }
        if self.default_deadline_ms == 0 || self.default_deadline_ms > self.max_deadline_ms {
            err(
                "default_deadline_ms".into(),
                "must be positive and at most max_deadline_ms",
            );
        }
        if self.max_records_per_request == 0 || self.max_records_per_request > 100_000 {
            err("max_records_per_request".into(), "must be 1 to 100000");
        }
        if self.probe_timeout_ms == 0 {
            err("probe_timeout_ms".into(), "must be positive");
        }
        if self.probe_interval_ms < 100 {
            err("probe_interval_ms".into(), "must be at least 100");
        }
        if self.shutdown_grace_ms > 300_000 {
            err(
                "shutdown_grace_ms".into(),
                "must be at most 300000 (5 minutes)",
            );
        }
        if self.drain_timeout_ms > 3_600_000 {
            err(
                "drain_timeout_ms".into(),
                "must be at most 3600000 (1 hour)",
            );
        }
        match (&self.auth, self.insecure_no_auth) {
            (None, false) => err(
                "auth".into(),
                "required: configure [auth] (tokens or client certificates), or set insecure_no_auth = true for local development",
            ),
            (Some(_), true) => err(
                "insecure_no_auth".into(),
                "cannot be set together with [auth]",
            ),
            (Some(auth), false) => {
                if auth.audience.is_empty() {
                    err("auth.audience".into(), "must not be empty");
                }
                if auth.hs256_secret_file.is_none()
                    && auth.jwks_file.is_none()
                    && auth.clients.is_empty()
                {
                    err(
                        "auth".into(),
                        "no way to authenticate: set hs256_secret_file, jwks_file or [[auth.clients]]",
                    );
                }
                if !auth.clients.is_empty()
                    && self.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none())
                {
                    err(
                        "auth.clients".into(),
                        "client certificates need tls.client_ca_file on the public listener",
                    );
                }
                // Reads the key files: a missing or malformed one is a configuration error.
                if let Err(e) = Authenticator::from_config(auth) {
                    let (path, message) = e.split_once(": ").unwrap_or(("auth", &e));
                    err(path.to_owned(), message);
                }
            }
            (None, true) => {}
        }
        match (&self.federation_tls, self.insecure_plaintext_federation) {
            (None, false) => err(
                "federation_tls".into(),
                "required: configure [federation_tls] (mutual TLS to the regions), or set insecure_plaintext_federation = true for local development",
            ),
            (Some(_), true) => err(
                "insecure_plaintext_federation".into(),
                "cannot be set together with [federation_tls]",
            ),
            // The files are read at start; an unreadable one stops it naming the option.
            _ => {}
        }
        for (path, message) in self.limits.problems() {
            err(path.into(), message);
        }
        out
    }
}

/// The scheme and `host:port` of a region endpoint's URL (`http://host:port` or
/// `https://host:port`, no path): what the gateway connects to
/// ([`crate::federation::conn::Endpoint`]) and what configuration checks accept, so that a
/// file that passes the check also starts.
pub fn endpoint_url(url: &str) -> Result<(http::uri::Scheme, http::uri::Authority), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let scheme = uri
        .scheme()
        .filter(|s| *s == &http::uri::Scheme::HTTP || *s == &http::uri::Scheme::HTTPS)
        .cloned()
        .ok_or_else(|| format!("{url}: the scheme must be http or https"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url}: no host"))?;
    if authority.port_u16().is_none() {
        return Err(format!("{url}: no port"));
    }
    if uri.path() != "/" || uri.query().is_some() {
        return Err(format!("{url}: a path has no place in an endpoint"));
    }
    Ok((scheme, authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_need_a_scheme_a_host_and_a_port_and_nothing_else() {
        for bad in [
            "node:1",
            "http://node",
            "ftp://node:1",
            "http://node:1/api",
            "http://node:1/?x=1",
            "/path",
            "",
        ] {
            assert!(endpoint_url(bad).is_err(), "{bad}");
        }
        let (scheme, authority) = endpoint_url("https://10.0.1.10:50061").unwrap();
        assert_eq!(
            (scheme.as_str(), authority.as_str()),
            ("https", "10.0.1.10:50061")
        );
        assert!(endpoint_url("http://[::1]:50061").is_ok());
    }

    #[test]
    fn an_endpoint_without_a_port_is_refused_by_its_field() {
        let toml = "insecure_no_auth = true\ninsecure_plaintext_federation = true\n[[regions]]\nid = \"eu-de\"\ncountries = [\"DE\"]\nendpoints = [\"http://127.0.0.1:1\", \"http://node\"]\n";
        let e = GatewayConfig::from_toml(toml).unwrap_err();
        assert_eq!(e.path, "regions[0].endpoints[1]", "{e:?}");
    }

    #[test]
    fn the_environment_overrides_top_level_options() {
        let toml = "insecure_no_auth = true\ninsecure_plaintext_federation = true\n[[regions]]\nid = \"eu-de\"\ncountries = [\"DE\"]\nendpoints = [\"http://127.0.0.1:1\"]\n";
        let c = GatewayConfig::from_toml_with_env(toml, |k| {
            (k == "DOMICILE_GATEWAY_DEFAULT_DEADLINE_MS").then(|| "1234".to_owned())
        })
        .unwrap();
        assert_eq!(c.default_deadline_ms, 1234);
        let bad = GatewayConfig::from_toml_with_env(toml, |k| {
            (k == "DOMICILE_GATEWAY_PROBE_TIMEOUT_MS").then(|| "0".to_owned())
        })
        .unwrap_err();
        assert_eq!(bad.path, "probe_timeout_ms");
    }

    #[test]
    fn a_country_belongs_to_one_region() {
        let toml = r#"
            insecure_no_auth = true
            insecure_plaintext_federation = true
            [[regions]]
            id = "eu-de"
            countries = ["DE"]
            endpoints = ["http://127.0.0.1:1"]
            [[regions]]
            id = "eu-fr"
            countries = ["FR", "DE"]
            endpoints = ["http://127.0.0.1:2"]
        "#;
        let e = GatewayConfig::from_toml(toml).unwrap_err();
        assert_eq!(e.path, "regions[1].countries[1]");
        assert!(e.message.contains("eu-de"));
    }
}
