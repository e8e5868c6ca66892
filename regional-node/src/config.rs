//! Node configuration, read from TOML (`domicile node --config node.toml`).
//!
//! ```toml
//! region_id = "eu-de"          # required
//! countries = ["DE"]           # required: the jurisdiction, ISO 3166-1 alpha-2
//! listen = "127.0.0.1:50061"   # federation listener
//! database = "/var/lib/domicile/eu-de.sqlite"
//! sealing_key_file = "/etc/domicile/eu-de.sealing.key"
//! pseudonym_secret_file = "/etc/domicile/eu-de.pseudonym.key"
//! policy_dir = "/etc/domicile/policies"   # <CC>.toml per country; unset: the shipped examples
//! kek_file = "/etc/domicile/eu-de.kek"   # or kek_env = "DOMICILE_KEK" (64 hex characters),
//!                                        # or [kek_pkcs11] (a key in an HSM)
//! key_vault = "/var/lib/domicile/eu-de.keys.sqlite"
//! audit_key_file = "/etc/domicile/eu-de.audit.key"
//! audit_checkpoint_every = 1000
//! audit_checkpoint_seconds = 300
//! local_listen = "127.0.0.1:50071"  # in-country LocalNode listener; unset: none
//!                                    # off loopback: [local_tls] and [[local_principals]]
//! min_group_size = 2           # a floor under every country policy's k
//! max_records_per_envelope = 1000
//! metrics_listen = "127.0.0.1:9465"  # Prometheus /metrics; unset: none
//! shutdown_grace_ms = 0        # NOT_SERVING before the listener closes, on SIGTERM
//! drain_timeout_ms = 30000     # longest wait for calls in flight
//! ```

use std::{net::SocketAddr, path::PathBuf};

use domicile_proto::domain::{is_country_code, is_region_id};
use serde::Deserialize;

/// Configuration of one regional node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Region id, e.g. `eu-de`: 1 to 63 of `a-z 0-9 -`. Required.
    pub region_id: String,
    /// Countries whose subjects this node holds (ISO 3166-1 alpha-2, upper case). Required,
    /// at least one. Records for any other country are refused.
    pub countries: Vec<String>,
    /// Address of the federation listener. Default `127.0.0.1:50061`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Path of the SQLite database file; created if missing. Default `domicile-node.sqlite`.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// Where the data is, as a URL: `sqlite:///path/node.sqlite` (the same as `database`) or
    /// `postgres://user@host:port/db` for PostgreSQL, which several replicas of the region's
    /// node can share. Unset: the SQLite file `database`. With PostgreSQL, `database` only
    /// places the key files that default to "beside the database".
    #[serde(default)]
    pub storage: Option<String>,
    /// Path of the region's sealing private key (32 raw bytes, from `domicile keygen`). The node
    /// refuses to start when it is missing. Default `sealing.key` beside the database.
    #[serde(default)]
    pub sealing_key_file: Option<PathBuf>,
    /// The previous sealing key (32 raw bytes) after a rotation: envelopes sealed to it are
    /// still accepted until `previous_sealing_key_until`, so that clients holding the old key
    /// are not refused while they refresh (`ListRegions` shows only the current key).
    #[serde(default)]
    pub previous_sealing_key_file: Option<PathBuf>,
    /// The end of the previous key's grace period, e.g. `2026-12-01T00:00:00Z`; required with
    /// `previous_sealing_key_file`. After it, envelopes sealed to the previous key are refused
    /// with `UNKNOWN_KEY`.
    #[serde(default)]
    pub previous_sealing_key_until: Option<toml::value::Datetime>,
    /// Path of the region's pseudonym secret (32 raw bytes), the HMAC key of pseudonymised
    /// records. It never leaves the node. Made by `domicile keygen`; required. Default
    /// `pseudonym.key` beside the database.
    #[serde(default)]
    pub pseudonym_secret_file: Option<PathBuf>,
    /// Directory of country policies, one `<CC>.toml` per country served. Default: the example
    /// policies shipped in `deploy/policies/`, compiled into the binary.
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
    /// Path of the region's key-encryption key (32 raw bytes) that wraps every subject's data
    /// key. Made by `domicile keygen`; required unless `kek_env` or `[kek_pkcs11]` is set.
    /// Default `kek` beside the database.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Name of an environment variable holding the key-encryption key as 64 hex characters;
    /// replaces `kek_file` when set, and the variable must then be set. Default unset.
    #[serde(default)]
    pub kek_env: Option<String>,
    /// The KEK as a key in a PKCS#11 token (an HSM, or a cloud KMS's PKCS#11 library): subject
    /// keys are wrapped and unwrapped inside the token and the KEK never enters the node's
    /// memory. Replaces `kek_file` and `kek_env`. Default unset.
    #[serde(default)]
    pub kek_pkcs11: Option<Pkcs11Config>,
    /// The KEK being replaced, during a rotation (`domicile node rotate-kek`): subject keys it
    /// wrapped still open until the rotation has re-wrapped them all. Default unset.
    #[serde(default)]
    pub previous_kek: Option<KekSource>,
    /// The key vault, the database of wrapped per-subject data keys: a SQLite file's path, or a
    /// `postgres://` URL of a database apart from the data's (what replicas on several
    /// machines share). Keep it apart from data backups: erasure destroys keys here. Default
    /// `keys.sqlite` beside the database.
    #[serde(default)]
    pub key_vault: Option<PathBuf>,
    /// Path of the region's Ed25519 audit signing key (a 32-byte seed, from `domicile keygen`);
    /// required. Default `audit.key` beside the database.
    #[serde(default)]
    pub audit_key_file: Option<PathBuf>,
    /// The DPO keys registered per tenant (TOML, see `authority`): access, portability and
    /// erasure requests, legal holds and incident reports must carry a signature by one of
    /// them. Re-read when it changes. Default: none, and every such request is refused.
    #[serde(default)]
    pub dpo_keys_file: Option<PathBuf>,
    /// How long each signed statement of the sealing key holds (`ListRegions`), in hours: a
    /// client trusts the key no longer without a fresh statement. Default 24, 1 to 720.
    #[serde(default = "default_statement_hours")]
    pub sealing_key_statement_hours: u64,
    /// A signed audit checkpoint every this many entries. Default 1000, at least 1.
    #[serde(default = "default_checkpoint_every")]
    pub audit_checkpoint_every: u64,
    /// And every this many seconds while serving, if the log moved. Default 300, at least 1.
    #[serde(default = "default_checkpoint_seconds")]
    pub audit_checkpoint_seconds: u64,
    /// Seconds between retention sweeps while serving. Default 86400 (daily), at least 60.
    #[serde(default = "default_sweep_seconds")]
    pub retention_sweep_seconds: u64,
    /// Address of the in-country `LocalNode` listener (incident notification lists, …). Unset:
    /// no local listener. Never expose it beyond the region's own network.
    #[serde(default)]
    pub local_listen: Option<SocketAddr>,
    /// Mutual TLS on the in-country listener (`[local_tls]`): the listener's certificate and
    /// the CA of the region's own staff and systems (apart from the gateway's). Required when
    /// `local_listen` is not a loopback address; without it, on loopback, every local caller
    /// has every role (development and tests only; the node warns).
    #[serde(default)]
    pub local_tls: Option<LocalTls>,
    /// Who may call the in-country listener, and as what (`[[local_principals]]`): the DNS
    /// name their client certificate is valid for, and a role. Anyone else is refused.
    #[serde(default)]
    pub local_principals: Vec<LocalPrincipal>,
    /// How long a subject pseudonym released by `QueryRecords` can open a follow-up: it
    /// resolves only while the subject has an interaction within this many days. Default 30,
    /// 1 to 365.
    #[serde(default = "default_follow_up_window_days")]
    pub follow_up_window_days: u32,
    /// A floor under every country policy's minimum group size *k*: the node applies the larger.
    /// Default 2, at least 2.
    #[serde(default = "default_k")]
    pub min_group_size: u32,
    /// Most records accepted in one envelope. Default 1000.
    #[serde(default = "default_max_records")]
    pub max_records_per_envelope: usize,
    /// Address of the Prometheus endpoint (`GET /metrics`; HTTPS with `[metrics_access]`). Unset: none.
    /// Bind it where only the monitoring network reaches.
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
    /// On SIGTERM or Ctrl-C, how long health reports `NOT_SERVING` while calls are still
    /// accepted, in milliseconds. Default 0.
    #[serde(default)]
    pub shutdown_grace_ms: u64,
    /// Then, the longest wait for calls in flight before they are cut, in milliseconds.
    /// Default 30000.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Mutual TLS on the federation listener. Required unless `insecure_plaintext` is set.
    #[serde(default)]
    pub tls: Option<NodeTls>,
    /// Serve the federation listener in plaintext, to any client: for local development and
    /// tests only; the node logs a warning at start. Default false.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Per tenant (`[vocabulary.<tenant>]`), the closed lists of codes its interactions'
    /// `outcome`, `agent_team` and `survey_id` may take. A list left out admits any code
    /// (`domicile_proto::domain::is_code`); a value outside a list is refused per record, with
    /// the field named. Unset: codes only, no list.
    #[serde(default)]
    pub vocabulary: std::collections::BTreeMap<String, Vocabulary>,
}

/// `[vocabulary.<tenant>]`: the codes a tenant's interactions may carry (docs/erasure.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    /// Allowed `outcome` codes (an empty outcome is always allowed).
    pub outcomes: Option<Vec<String>>,
    /// Allowed `agent_team` codes (an empty team is always allowed).
    pub agent_teams: Option<Vec<String>>,
    /// Allowed `survey_id` codes.
    pub survey_ids: Option<Vec<String>>,
}

impl Vocabulary {
    /// The lists, by field name.
    pub fn lists(&self) -> [(&'static str, Option<&[String]>); 3] {
        [
            ("outcome", self.outcomes.as_deref()),
            ("agent_team", self.agent_teams.as_deref()),
            ("survey.survey_id", self.survey_ids.as_deref()),
        ]
    }
}

/// `[tls]`: the federation listener's certificate, and who may call it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTls {
    /// The node's certificate chain (PEM), valid for the name the gateway verifies
    /// (`<region_id>.node.domicile` unless the gateway's region says otherwise).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA (PEM) that signs client certificates: a client without one is refused in the
    /// handshake.
    pub client_ca_file: PathBuf,
    /// The DNS name the gateway's client certificate must be valid for, e.g.
    /// `gateway.domicile`: any other certificate, even from the same CA, is refused with
    /// `PERMISSION_DENIED` before a handler runs.
    pub gateway_identity: String,
}

/// `[local_tls]`: the in-country listener's certificate and its callers' CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTls {
    /// The listener's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA (PEM) of the region's own identity provider that signs the staff's and the
    /// in-country systems' client certificates: a client without one is refused in the
    /// handshake.
    pub client_ca_file: PathBuf,
}

/// A caller of the in-country listener (`[[local_principals]]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalPrincipal {
    /// The DNS name the caller's client certificate must be valid for, e.g.
    /// `agent-7.eu-de.cx.example`.
    pub identity: String,
    /// What it may do.
    pub role: LocalRole,
}

/// The roles of the in-country API.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LocalRole {
    /// A contact-centre agent.
    Agent,
    /// An agents' supervisor: the region's exact reports.
    Supervisor,
    /// The regional data-protection officer: exact reports and incident notification lists.
    RegionalDpo,
    /// An in-country system (the contact-centre platform, the CRM).
    Integration,
}

impl LocalRole {
    /// The name in configuration and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Supervisor => "supervisor",
            Self::RegionalDpo => "regional_dpo",
            Self::Integration => "integration",
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50061))
}
fn default_database() -> PathBuf {
    PathBuf::from("domicile-node.sqlite")
}
fn default_statement_hours() -> u64 {
    24
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_seconds() -> u64 {
    300
}
fn default_sweep_seconds() -> u64 {
    86_400
}
fn default_follow_up_window_days() -> u32 {
    30
}
fn default_k() -> u32 {
    2
}
fn default_max_records() -> usize {
    1000
}
fn default_drain_timeout_ms() -> u64 {
    30_000
}

/// Every option, as named in the file (and, upper-cased, in `DOMICILE_NODE_*` overrides).
pub const OPTIONS: &[&str] = &[
    "region_id",
    "countries",
    "listen",
    "database",
    "storage",
    "sealing_key_file",
    "previous_sealing_key_file",
    "previous_sealing_key_until",
    "pseudonym_secret_file",
    "policy_dir",
    "kek_file",
    "kek_env",
    "key_vault",
    "audit_key_file",
    "dpo_keys_file",
    "sealing_key_statement_hours",
    "audit_checkpoint_every",
    "audit_checkpoint_seconds",
    "retention_sweep_seconds",
    "local_listen",
    "follow_up_window_days",
    "min_group_size",
    "max_records_per_envelope",
    "metrics_listen",
    "shutdown_grace_ms",
    "drain_timeout_ms",
    "insecure_plaintext",
];

/// A TOML offset date-time in Unix seconds; `None` without a date, a time or an offset.
pub fn unix_seconds(t: &toml::value::Datetime) -> Option<i64> {
    let (date, time, offset) = (t.date?, t.time?, t.offset?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, d) = (
        i64::from(date.year) - i64::from(date.month <= 2),
        i64::from(date.month),
        i64::from(date.day),
    );
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    Some(
        days * 86_400
            + i64::from(time.hour) * 3600
            + i64::from(time.minute) * 60
            + i64::from(time.second)
            - offset_minutes * 60,
    )
}

/// A configuration error, with the path of the offending option.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The option, e.g. `countries[1]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl NodeConfig {
    /// A configuration with defaults for everything but the region and its countries.
    pub fn new(region_id: &str, countries: &[&str], database: PathBuf) -> Self {
        Self {
            region_id: region_id.to_owned(),
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
            listen: default_listen(),
            database,
            storage: None,
            sealing_key_file: None,
            previous_sealing_key_file: None,
            previous_sealing_key_until: None,
            pseudonym_secret_file: None,
            policy_dir: None,
            kek_file: None,
            kek_env: None,
            kek_pkcs11: None,
            previous_kek: None,
            key_vault: None,
            audit_key_file: None,
            dpo_keys_file: None,
            sealing_key_statement_hours: default_statement_hours(),
            audit_checkpoint_every: default_checkpoint_every(),
            audit_checkpoint_seconds: default_checkpoint_seconds(),
            retention_sweep_seconds: default_sweep_seconds(),
            local_listen: None,
            local_tls: None,
            local_principals: Vec::new(),
            follow_up_window_days: default_follow_up_window_days(),
            min_group_size: default_k(),
            max_records_per_envelope: default_max_records(),
            metrics_listen: None,
            metrics_access: None,
            otlp: None,
            shutdown_grace_ms: 0,
            drain_timeout_ms: default_drain_timeout_ms(),
            tls: None,
            insecure_plaintext: false,
            vocabulary: Default::default(),
        }
    }

    /// Parses and validates a TOML document with overrides from the environment: every option
    /// can be set by `DOMICILE_NODE_<OPTION>` (upper case), e.g. `DOMICILE_NODE_LISTEN=0.0.0.0:50061`
    /// or `DOMICILE_NODE_COUNTRIES=DE,AT`. Values are TOML literals, or plain strings (lists as
    /// comma-separated strings). `env` looks a variable up (`|k| std::env::var(k).ok()`), so
    /// tests can pass their own.
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
        domicile_ops::config::parse_with_env(text, "DOMICILE_NODE", OPTIONS, &["countries"], env)
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

    /// The end of the previous sealing key's grace period, in Unix seconds.
    pub fn previous_key_until(&self) -> Option<i64> {
        self.previous_sealing_key_until
            .as_ref()
            .and_then(unix_seconds)
    }

    /// How the listeners drain on shutdown.
    pub fn drain(&self) -> domicile_ops::lifecycle::Drain {
        domicile_ops::lifecycle::Drain {
            grace: std::time::Duration::from_millis(self.shutdown_grace_ms),
            timeout: std::time::Duration::from_millis(self.drain_timeout_ms),
        }
    }

    /// Where the data is: `storage` when set, else the SQLite file `database`. An invalid
    /// `storage` is refused by [`NodeConfig::validate`]; here it falls back to `database`.
    pub fn backend(&self) -> Backend {
        self.storage
            .as_deref()
            .and_then(|s| Backend::parse(s).ok())
            .unwrap_or_else(|| Backend::Sqlite(self.database.clone()))
    }

    /// The sealing key file: the configured one, or `sealing.key` beside the database.
    pub fn sealing_key_path(&self) -> PathBuf {
        self.sealing_key_file.clone().unwrap_or_else(|| {
            let mut p = self.database.clone();
            p.set_extension("sealing.key");
            p
        })
    }

    /// The pseudonym secret file: the configured one, or `pseudonym.key` beside the database.
    pub fn pseudonym_secret_path(&self) -> PathBuf {
        self.pseudonym_secret_file.clone().unwrap_or_else(|| {
            let mut p = self.database.clone();
            p.set_extension("pseudonym.key");
            p
        })
    }

    /// The KEK file: the configured one, or `kek` beside the database.
    pub fn kek_path(&self) -> PathBuf {
        self.kek_file.clone().unwrap_or_else(|| {
            let mut p = self.database.clone();
            p.set_extension("kek");
            p
        })
    }

    /// Where the key vault is: a PostgreSQL database when `key_vault` is a `postgres://` URL,
    /// else the SQLite file [`NodeConfig::key_vault_path`].
    pub fn key_vault_backend(&self) -> Backend {
        let path = self.key_vault_path();
        match path.to_str().map(Backend::parse) {
            Some(Ok(backend @ Backend::Postgres(_))) => backend,
            _ => Backend::Sqlite(path),
        }
    }

    /// The key vault as configured (a path, or a URL), or `keys.sqlite` beside the database.
    pub fn key_vault_path(&self) -> PathBuf {
        self.key_vault.clone().unwrap_or_else(|| {
            let mut p = self.database.clone();
            p.set_extension("keys.sqlite");
            p
        })
    }

    /// The audit key file: the configured one, or `audit.key` beside the database.
    pub fn audit_key_path(&self) -> PathBuf {
        self.audit_key_file.clone().unwrap_or_else(|| {
            let mut p = self.database.clone();
            p.set_extension("audit.key");
            p
        })
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
        let mut err = |path: &str, message: &str| {
            out.push(ConfigError {
                path: path.to_owned(),
                message: message.to_owned(),
            })
        };
        if let Err((path, message)) = domicile_ops::metrics::MetricsAccessConfig::validate(
            self.metrics_access.as_ref(),
            self.metrics_listen,
        ) {
            err(&path, &message);
        }
        if let Some(Err((path, message))) = self.otlp.as_ref().map(|o| o.validate()) {
            err(&path, &message);
        }
        if let Some(local) = self.local_listen
            && !local.ip().is_loopback()
            && self.local_tls.is_none()
        {
            err(
                "local_tls",
                "local_listen is not a loopback address: the in-country listener returns \
                 personal data and needs mutual TLS ([local_tls] and [[local_principals]])",
            );
        }
        if self.local_tls.is_some() && self.local_principals.is_empty() {
            err(
                "local_principals",
                "with [local_tls], name at least one caller and its role",
            );
        }
        for (i, p) in self.local_principals.iter().enumerate() {
            if rustls_pki_types::ServerName::try_from(p.identity.as_str()).is_err() {
                err(
                    &format!("local_principals[{i}].identity"),
                    "must be a DNS name",
                );
            }
        }
        if !is_region_id(&self.region_id) {
            err(
                "region_id",
                "must be 1 to 63 characters of a-z, 0-9 and '-'",
            );
        }
        if let Some(Err(e)) = self.storage.as_deref().map(Backend::parse) {
            err("storage", &e);
        }
        // A `postgres://` vault that does not parse must not fall back to a SQLite file of
        // that name (`key_vault_backend`).
        if let Some(url) = self.key_vault.as_deref().and_then(|p| p.to_str())
            && (url.starts_with("postgres://") || url.starts_with("postgresql://"))
            && let Err(e) = Backend::parse(url)
        {
            err("key_vault", &e);
        }
        if self.countries.is_empty() {
            err("countries", "at least one country is required");
        }
        if !(1..=720).contains(&self.sealing_key_statement_hours) {
            err("sealing_key_statement_hours", "must be 1 to 720");
        }
        for (i, c) in self.countries.iter().enumerate() {
            if !is_country_code(c) {
                err(
                    &format!("countries[{i}]"),
                    "must be an ISO 3166-1 alpha-2 code in upper case",
                );
            }
        }
        if self.audit_checkpoint_every == 0 {
            err("audit_checkpoint_every", "must be at least 1");
        }
        if self.audit_checkpoint_seconds == 0 {
            err("audit_checkpoint_seconds", "must be at least 1");
        }
        match (
            &self.previous_sealing_key_file,
            &self.previous_sealing_key_until,
        ) {
            (Some(_), None) => err(
                "previous_sealing_key_until",
                "required with previous_sealing_key_file: when the grace period ends",
            ),
            (None, Some(_)) => err(
                "previous_sealing_key_file",
                "required with previous_sealing_key_until",
            ),
            (Some(_), Some(until)) if unix_seconds(until).is_none() => err(
                "previous_sealing_key_until",
                "must be a date and time with its offset, e.g. 2026-12-01T00:00:00Z",
            ),
            _ => {}
        }
        for (tenant, vocabulary) in &self.vocabulary {
            if domicile_proto::domain::TenantId::parse(tenant, "tenant").is_err() {
                err(&format!("vocabulary.{tenant}"), "not a valid tenant id");
            }
            for (field, list) in vocabulary.lists() {
                let name = field.rsplit('.').next().unwrap_or(field);
                for (i, code) in list.unwrap_or_default().iter().enumerate() {
                    if !domicile_proto::domain::is_code(code) {
                        err(
                            &format!("vocabulary.{tenant}.{name}s[{i}]"),
                            &format!("must be {}", domicile_proto::domain::CODE_RULE),
                        );
                    }
                }
            }
        }
        if self.shutdown_grace_ms > 300_000 {
            err("shutdown_grace_ms", "must be at most 300000 (5 minutes)");
        }
        if self.drain_timeout_ms > 3_600_000 {
            err("drain_timeout_ms", "must be at most 3600000 (1 hour)");
        }
        match (&self.tls, self.insecure_plaintext) {
            (None, false) => err(
                "tls",
                "required: configure [tls] (mutual TLS with the gateway), or set insecure_plaintext = true for local development",
            ),
            (Some(_), true) => err("insecure_plaintext", "cannot be set together with [tls]"),
            (Some(t), false) => {
                if rustls_pki_types::ServerName::try_from(t.gateway_identity.as_str()).is_err() {
                    err("tls.gateway_identity", "must be a DNS name");
                }
            }
            (None, true) => {}
        }
        if self.retention_sweep_seconds < 60 {
            err("retention_sweep_seconds", "must be at least 60");
        }
        if !(1..=365).contains(&self.follow_up_window_days) {
            err("follow_up_window_days", "must be 1 to 365");
        }
        if self.min_group_size < 2 {
            err("min_group_size", "must be at least 2");
        }
        if self.max_records_per_envelope == 0 || self.max_records_per_envelope > 100_000 {
            err("max_records_per_envelope", "must be 1 to 100000");
        }
        out
    }

    /// True when `country` is in this node's jurisdiction.
    pub fn serves(&self, country: &str) -> bool {
        self.countries.iter().any(|c| c == country)
    }
}

/// Where a node keeps its data: the `storage` setting of its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (`sqlite:///var/lib/domicile/eu-de.sqlite`, or the `database` path).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user@host:port/db`), which several node replicas
    /// may share.
    Postgres(String),
}

impl Backend {
    /// Parses a storage URL: `sqlite://<path>` or `postgres://…` / `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "sqlite:// needs a path, e.g. sqlite:///var/lib/domicile/node.sqlite".into(),
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            PgTarget::parse(url)?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err("expected sqlite://<path> or postgres://<user>@<host>:<port>/<database>".into())
    }

    /// True for a PostgreSQL server reached in plaintext over a network (not loopback, not a
    /// local socket): personal data would cross it unencrypted. The store warns at open.
    pub fn plaintext_over_network(&self) -> bool {
        match self {
            Self::Sqlite(_) => false,
            Self::Postgres(url) => {
                PgTarget::parse(url).is_ok_and(|t| t.root_cert.is_none() && !t.is_local())
            }
        }
    }

    /// A description for logs: the SQLite path, or PostgreSQL's host, port and database
    /// (never the password).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(p) => p.display().to_string(),
            Self::Postgres(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                format!("postgres://{}", rest.split('?').next().unwrap_or(rest))
            }
        }
    }
}

/// How the node reaches a PostgreSQL server: the URL the client library gets, and whether the
/// connection is TLS, from the storage URL's `sslmode` and `sslrootcert` (libpq's names).
///
/// - no `sslmode`, or `sslmode=disable`: plaintext (for a server on loopback or a socket);
/// - `sslmode=verify-full&sslrootcert=<CA file>`: TLS, the server's certificate checked against
///   that CA and its name against the URL's host (an IP address must be in the certificate as
///   one), as libpq's `verify-full`.
///
/// Modes that encrypt without checking who answers (`require`, `prefer`, `allow`,
/// `verify-ca`) are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// The URL for the client library: the node's own options taken out, `sslmode=require`
    /// when TLS is on.
    pub url: String,
    /// `Some(CA file)`: TLS, verified against that CA and the host name.
    pub root_cert: Option<PathBuf>,
    /// The host the URL names (empty when it names none: a local socket).
    pub host: String,
}

impl PgTarget {
    /// Reads a `postgres://` URL's TLS options.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut mode, mut root_cert, mut kept) = (None, None, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("sslmode", v) => mode = Some(v),
                ("sslrootcert", v) if !v.is_empty() => root_cert = Some(PathBuf::from(v)),
                ("sslrootcert", _) => return Err("sslrootcert: a CA file is needed".into()),
                _ => kept.push(pair),
            }
        }
        let root_cert = match (mode, root_cert) {
            (None | Some("disable"), None) => None,
            (Some("verify-full"), Some(ca)) => {
                kept.push("sslmode=require");
                Some(ca)
            }
            (Some("verify-full"), None) => {
                return Err("sslmode=verify-full needs sslrootcert=<the server's CA file>".into());
            }
            (None | Some("disable"), Some(_)) => {
                return Err("sslrootcert is set: use sslmode=verify-full with it".into());
            }
            (Some(other), _) => {
                return Err(format!(
                    "sslmode={other}: use verify-full (TLS, the server's certificate and name \
                     checked; with sslrootcert=<CA file>) or disable (plaintext, for a server \
                     on loopback)"
                ));
            }
        };
        let authority = base.split_once("://").map_or(base, |(_, r)| r);
        let authority = authority.split('/').next().unwrap_or("");
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match hostport.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => hostport.split(':').next().unwrap_or(""),
        };
        Ok(Self {
            url: if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            },
            root_cert,
            host: host.to_owned(),
        })
    }

    /// Whether the connection stays on this machine (loopback or a local socket), where
    /// plaintext does not cross a network.
    pub fn is_local(&self) -> bool {
        self.host.is_empty()
            || self.host == "localhost"
            || self.host.starts_with('/')
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Where a PKCS#11 KEK lives (`[kek_pkcs11]` in the node's configuration).
///
/// ```toml
/// [kek_pkcs11]
/// module = "/usr/lib/softhsm/libsofthsm2.so"   # the vendor's PKCS#11 library
/// token_label = "domicile-eu-de"
/// key_label = "domicile-kek"
/// pin_file = "/run/secrets/hsm-pin"           # or pin_env = "DOMICILE_HSM_PIN"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 library.
    pub module: PathBuf,
    /// Label of the token that holds the key.
    pub token_label: String,
    /// Label of the AES-256 secret key (`CKA_LABEL`).
    pub key_label: String,
    /// A file holding the user PIN (trailing whitespace ignored).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// An environment variable holding the user PIN; used when `pin_file` is unset.
    #[serde(default)]
    pub pin_env: Option<String>,
}

/// A KEK being rotated out (`[previous_kek]`): exactly one of its fields.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KekSource {
    /// A file of 32 raw bytes.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable of 64 hex characters.
    #[serde(default)]
    pub env: Option<String>,
    /// A key in a PKCS#11 token.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_take_tls_options_or_are_refused() {
        let plain = PgTarget::parse("postgres://u@127.0.0.1:5432/d?connect_timeout=5").unwrap();
        assert_eq!(plain.url, "postgres://u@127.0.0.1:5432/d?connect_timeout=5");
        assert_eq!(
            (&plain.root_cert, plain.host.as_str()),
            (&None, "127.0.0.1")
        );
        let tls = PgTarget::parse(
            "postgresql://u:pw@db.eu-de.internal:5432/d?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=n",
        )
        .unwrap();
        assert_eq!(
            tls.url,
            "postgresql://u:pw@db.eu-de.internal:5432/d?application_name=n&sslmode=require"
        );
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.host, "db.eu-de.internal");
        assert!(!tls.is_local());
        assert!(plain.is_local());
        assert_eq!(
            PgTarget::parse("postgres://u@[::1]:5/d").unwrap().host,
            "::1"
        );
        for (url, says) in [
            ("postgres://h/d?sslmode=require", "sslmode=require"),
            (
                "postgres://h/d?sslmode=verify-ca&sslrootcert=/ca",
                "sslmode=verify-ca",
            ),
            ("postgres://h/d?sslmode=prefer", "sslmode=prefer"),
            ("postgres://h/d?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://h/d?sslrootcert=/ca", "use sslmode=verify-full"),
            (
                "postgres://h/d?sslmode=verify-full&sslrootcert=",
                "a CA file",
            ),
        ] {
            let e = PgTarget::parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(Backend::parse(url).is_err(), "{url}");
        }
        // Refused in either setting, naming it: a vault URL never falls back to a file.
        for (option, name) in [("storage", "storage"), ("key_vault", "key_vault")] {
            let toml = format!(
                "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
                 {option} = \"postgres://h/d?sslmode=require\"\n"
            );
            let problems = NodeConfig::from_toml_with_env(&toml, |_| None)
                .map(|c| c.problems())
                .map_err(|e| e.to_string());
            let text = format!("{problems:?}");
            assert!(
                text.contains(name) && text.contains("sslmode=require"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let env = |k: &str| match k {
            "DOMICILE_NODE_LISTEN" => Some("0.0.0.0:6000".to_owned()),
            "DOMICILE_NODE_COUNTRIES" => Some("DE, AT".to_owned()),
            "DOMICILE_NODE_MIN_GROUP_SIZE" => Some("7".to_owned()),
            _ => None,
        };
        let c = NodeConfig::from_toml_with_env(
            "region_id = \"eu-de\"\ncountries = [\"DE\"]\nmin_group_size = 3\ninsecure_plaintext = true\n",
            env,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:6000");
        assert_eq!(c.countries, ["DE", "AT"]);
        assert_eq!(c.min_group_size, 7);
        let bad = NodeConfig::from_toml_with_env(
            "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n",
            |k| (k == "DOMICILE_NODE_MIN_GROUP_SIZE").then(|| "1".to_owned()),
        )
        .unwrap_err();
        assert_eq!(bad.path, "min_group_size");
    }

    #[test]
    fn parses_with_defaults_and_names_bad_options() {
        let c = NodeConfig::from_toml(
            "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n",
        )
        .unwrap();
        assert_eq!(c.min_group_size, 2);
        let e = NodeConfig::from_toml(
            "region_id = \"eu-de\"\ncountries = [\"DE\", \"fr\"]\ninsecure_plaintext = true\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "countries[1]");
        let e = NodeConfig::from_toml("region_id = \"eu-de\"\ncountries = [\"DE\"]\nbogus = 1\n")
            .unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn a_tenant_vocabulary_refuses_values_outside_it_naming_the_field() {
        use crate::{
            domain::ingest::{Verdict, check_vocabulary},
            domain::stored::{RecordBody, StoredRecord},
        };
        use domicile_proto::{
            domain::{Interaction, Survey},
            pb::{Channel, Direction},
        };
        let c = NodeConfig::from_toml(
            "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
             [vocabulary.acme]\noutcomes = [\"resolved\", \"escalated\"]\nsurvey_ids = [\"post-call\"]\n",
        )
        .unwrap();
        let e = NodeConfig::from_toml(
            "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
             [vocabulary.acme]\nagent_teams = [\"billing\", \"Jane Doe\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "vocabulary.acme.agent_teams[1]");
        let record = |outcome: &str, team: &str, survey: &str| {
            Verdict::Store(Box::new(StoredRecord {
                idempotency_key: "k".into(),
                sealed_id: None,
                country: "DE".into(),
                body: RecordBody::Interaction(Interaction {
                    interaction_id: "i".into(),
                    subject_id: "s".into(),
                    channel: Channel::Phone,
                    direction: Direction::Inbound,
                    started_at: 1_780_000_000,
                    ended_at: None,
                    handle_time_seconds: 60,
                    outcome: outcome.into(),
                    agent_team: team.into(),
                    recorded: false,
                    survey: Some(Survey {
                        survey_id: survey.into(),
                        nps: Some(9),
                        csat: None,
                        ces: None,
                        comment: String::new(),
                    }),
                }),
            }))
        };
        let mut verdicts = vec![
            record("resolved", "anyteam", "post-call"),
            record("", "", "post-call"),
            record("callback", "", "post-call"),
            record("resolved", "", "relational"),
        ];
        check_vocabulary(c.vocabulary.get("acme"), "envelope.records", &mut verdicts);
        let rejected: Vec<String> = verdicts
            .iter()
            .map(|v| match v {
                Verdict::Store(_) => String::new(),
                Verdict::Reject(_, detail) => detail.clone(),
            })
            .collect();
        assert_eq!(
            rejected,
            [
                "",
                "",
                "envelope.records[2].payload.interaction.outcome: not in this tenant's vocabulary",
                "envelope.records[3].payload.interaction.survey.survey_id: not in this tenant's \
                 vocabulary",
            ]
        );
        // Another tenant has no vocabulary: codes pass.
        let mut other = vec![record("callback", "x", "relational")];
        check_vocabulary(c.vocabulary.get("other"), "envelope.records", &mut other);
        assert!(matches!(other[0], Verdict::Store(_)));
    }
}
