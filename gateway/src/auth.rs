//! Who is calling, and what they may do.
//!
//! A caller authenticates with a bearer JWT (`authorization: Bearer <token>`: HS256 with a shared
//! secret for development, RS256 or ES256 with keys from a JWKS file for production) or with a
//! TLS client certificate whose DNS name is listed in `[[auth.clients]]`. Either way the caller
//! gets a [`Caller`]: one tenant, the purposes it may process for, the operations it may call,
//! and whether it acts for the data-protection officer. Every RPC then checks its tenant,
//! purpose and operation against it ([`Caller::authorize`]).
//!
//! Tokens and secrets are never logged, and error messages never echo a token.
//!
//! A verified token is remembered until it expires (at most [`VERIFIED_CAPACITY`] of them), so
//! a client that sends the same token on every call pays for one signature check, not one per
//! call. The memory goes with the authenticator: a reload (new keys) starts it empty.

use std::{collections::HashSet, path::PathBuf};

use domicile_proto::pb::Purpose;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tonic::{Request, Status};

/// The operations a caller may be allowed, one per group of RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `ListRegions`.
    Regions,
    /// `Ingest`.
    Ingest,
    /// `Aggregate`.
    Aggregate,
    /// `QueryRecords`.
    Records,
    /// `CheckContactPermission`, `RecordConsent`, `ConfirmConsent`, `WithdrawConsent`,
    /// `GetConsent`.
    Consent,
    /// `SubmitSubjectRequest`, `GetSubjectRequest`, `PlaceLegalHold`, `ReleaseLegalHold`.
    Rights,
    /// `ReportIncident`, `GetIncident`.
    Incident,
    /// `GetAuditCheckpoint`.
    Audit,
    /// `GetOverview` and the console: the federation's state, counts only.
    Admin,
    /// `OpenFollowUp`, `ListFollowUps`: the closed loop.
    FollowUp,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 10] = [
        Operation::Regions,
        Operation::Ingest,
        Operation::Aggregate,
        Operation::Records,
        Operation::Consent,
        Operation::Rights,
        Operation::Incident,
        Operation::Audit,
        Operation::Admin,
        Operation::FollowUp,
    ];

    /// The name in tokens and configuration, e.g. `aggregate`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Regions => "regions",
            Operation::Ingest => "ingest",
            Operation::Aggregate => "aggregate",
            Operation::Records => "records",
            Operation::Consent => "consent",
            Operation::Rights => "rights",
            Operation::Incident => "incident",
            Operation::Audit => "audit",
            Operation::Admin => "admin",
            Operation::FollowUp => "follow_up",
        }
    }

    /// The operation named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

/// The purpose named `name` in tokens and configuration (`cx_analytics` for
/// `PURPOSE_CX_ANALYTICS`).
pub fn parse_purpose(name: &str) -> Option<Purpose> {
    Purpose::from_str_name(&format!("PURPOSE_{}", name.to_ascii_uppercase()))
        .filter(|p| *p != Purpose::Unspecified)
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub` or the certificate's DNS name: a service identity, for logs.
    pub id: String,
    /// The one tenant it acts for.
    pub tenant: String,
    /// The purposes it may process for.
    pub purposes: HashSet<Purpose>,
    /// The operations it may call.
    pub operations: HashSet<Operation>,
    /// Whether it acts for the data-protection officer: needed for access, portability and
    /// erasure requests and for legal holds.
    pub dpo: bool,
}

impl Caller {
    /// Checks that the caller may run `op` for `tenant` (when the request names one) and
    /// `purpose` (when it names one), and, with `needs_dpo`, that it acts for the DPO.
    /// A refusal is `PERMISSION_DENIED` naming what is missing, never echoing other data.
    pub fn authorize(
        &self,
        op: Operation,
        tenant: Option<&str>,
        purpose: Option<Purpose>,
        needs_dpo: bool,
    ) -> Result<(), Status> {
        if !self.operations.contains(&op) {
            return Err(Status::permission_denied(format!(
                "the caller may not call {} operations",
                op.name()
            )));
        }
        if let Some(t) = tenant
            && t != self.tenant
        {
            return Err(Status::permission_denied(
                "tenant_id: the caller acts for another tenant",
            ));
        }
        if let Some(p) = purpose.filter(|p| *p != Purpose::Unspecified)
            && !self.purposes.contains(&p)
        {
            return Err(Status::permission_denied(format!(
                "purpose: the caller may not process for {}",
                p.as_str_name()
            )));
        }
        if needs_dpo && !self.dpo {
            return Err(Status::permission_denied(
                "this request needs the data-protection officer's authority (dpo claim)",
            ));
        }
        Ok(())
    }
}

/// `[auth]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The audience every token must carry in `aud`. Required.
    pub audience: String,
    /// The issuer every token must carry in `iss`, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// A file holding the HS256 shared secret (at least 32 bytes), for development.
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) of RS256 and ES256 public keys, chosen by `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Callers authenticated by TLS client certificate (needs `tls.client_ca_file`).
    #[serde(default)]
    pub clients: Vec<CertClient>,
}

fn default_leeway() -> u64 {
    30
}

/// A caller known by its TLS client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertClient {
    /// The DNS name the certificate must be valid for.
    pub identity: String,
    /// Its tenant.
    pub tenant: String,
    /// Its purposes, e.g. `["cx_analytics"]`.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Its operations, e.g. `["aggregate", "records"]`.
    #[serde(default)]
    pub operations: Vec<String>,
    /// Whether it acts for the DPO.
    #[serde(default)]
    pub dpo: bool,
}

/// The claims Domicile reads from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    #[serde(default)]
    purposes: Vec<String>,
    #[serde(default)]
    operations: Vec<String>,
    #[serde(default)]
    dpo: bool,
    /// Expiry, Unix seconds (required by the validation).
    exp: u64,
}

/// Most verified tokens remembered; beyond it the memory starts again empty.
pub const VERIFIED_CAPACITY: usize = 10_000;

/// Longest `authorization` header read.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Checks tokens and client certificates.
pub struct Authenticator {
    audience: String,
    issuer: Option<String>,
    hs256: Option<DecodingKey>,
    jwks: JwkSet,
    leeway: u64,
    clients: Vec<(ServerName<'static>, Caller)>,
    /// Tokens already verified, with their caller and expiry (Unix seconds, leeway included).
    verified: dashmap::DashMap<Box<str>, (Caller, u64)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .field("hs256", &self.hs256.is_some())
            .field("jwks_keys", &self.jwks.keys.len())
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// Builds a [`Caller`] from names, refusing unknown ones.
fn caller(
    id: String,
    tenant: String,
    purposes: &[String],
    operations: &[String],
    dpo: bool,
) -> Result<Caller, String> {
    let purposes = purposes
        .iter()
        .map(|p| parse_purpose(p).ok_or_else(|| format!("unknown purpose {p:?}")))
        .collect::<Result<_, _>>()?;
    let operations = operations
        .iter()
        .map(|o| Operation::parse(o).ok_or_else(|| format!("unknown operation {o:?}")))
        .collect::<Result<_, _>>()?;
    Ok(Caller {
        id,
        tenant,
        purposes,
        operations,
        dpo,
    })
}

impl Authenticator {
    /// Reads the secret and JWKS files of `config`; errors name the option.
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        let hs256 = match &config.hs256_secret_file {
            Some(path) => {
                let secret = std::fs::read(path)
                    .map_err(|e| format!("auth.hs256_secret_file: {}: {e}", path.display()))?;
                let secret = secret.trim_ascii();
                if secret.len() < 32 {
                    return Err(
                        "auth.hs256_secret_file: the secret must be at least 32 bytes".into(),
                    );
                }
                Some(DecodingKey::from_secret(secret))
            }
            None => None,
        };
        let jwks = match &config.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("auth.jwks_file: {}: {e}", path.display()))?;
                serde_json::from_str::<JwkSet>(&text)
                    .map_err(|e| format!("auth.jwks_file: not a JWKS: {e}"))?
            }
            None => JwkSet { keys: Vec::new() },
        };
        let clients = config
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = ServerName::try_from(c.identity.clone())
                    .map_err(|_| format!("auth.clients[{i}].identity: not a DNS name"))?;
                let who = caller(
                    c.identity.clone(),
                    c.tenant.clone(),
                    &c.purposes,
                    &c.operations,
                    c.dpo,
                )
                .map_err(|e| format!("auth.clients[{i}]: {e}"))?;
                Ok((name, who))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            hs256,
            jwks,
            leeway: config.leeway_seconds,
            clients,
            verified: dashmap::DashMap::new(),
        })
    }

    /// The caller of `request`: from its bearer token when it has an `authorization` header,
    /// else from its TLS client certificate. `UNAUTHENTICATED` when neither identifies one.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            return self.token(value.as_bytes());
        }
        if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
        {
            return self.certificate(leaf);
        }
        Err(Status::unauthenticated(
            "missing credentials: send authorization: Bearer <token>, or a client certificate",
        ))
    }

    /// The caller of an `authorization` header value.
    pub fn token(&self, header: &[u8]) -> Result<Caller, Status> {
        if header.len() > MAX_TOKEN_BYTES {
            return Err(Status::unauthenticated("authorization: token too long"));
        }
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("authorization: expected Bearer <token>"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(hit) = self.verified.get(token) {
            let (caller, expires) = hit.value();
            if now < *expires {
                return Ok(caller.clone());
            }
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Status::unauthenticated("authorization: not a JWT"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone(),
            Algorithm::RS256 | Algorithm::ES256 => header
                .kid
                .as_deref()
                .and_then(|kid| self.jwks.find(kid))
                // The key's own algorithm must be the token's: no algorithm confusion.
                .filter(|jwk| {
                    jwk.common
                        .key_algorithm
                        .is_none_or(|a| a.to_string() == format!("{:?}", header.alg))
                })
                .and_then(|jwk| DecodingKey::from_jwk(jwk).ok()),
            _ => None,
        }
        .ok_or_else(|| {
            Status::unauthenticated("authorization: no key for this token's algorithm and key id")
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.audience]);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            Status::unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "authorization: token expired",
                ErrorKind::ImmatureSignature => "authorization: token not valid yet",
                ErrorKind::InvalidAudience => "authorization: token for another audience",
                ErrorKind::InvalidIssuer => "authorization: token from another issuer",
                ErrorKind::InvalidSignature => "authorization: bad signature",
                ErrorKind::MissingRequiredClaim(_) => "authorization: token lacks exp, aud or sub",
                _ => "authorization: invalid token",
            })
        })?;
        let c = data.claims;
        let expires = c.exp.saturating_add(self.leeway);
        let who = caller(c.sub, c.tenant, &c.purposes, &c.operations, c.dpo)
            .map_err(|e| Status::unauthenticated(format!("authorization: {e}")))?;
        if self.verified.len() >= VERIFIED_CAPACITY {
            self.verified.clear();
        }
        self.verified.insert(token.into(), (who.clone(), expires));
        Ok(who)
    }

    /// The caller of a TLS client certificate (already verified against the client CA by the
    /// TLS handshake), by the DNS name it is valid for.
    fn certificate(&self, leaf: &CertificateDer<'_>) -> Result<Caller, Status> {
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|_| Status::unauthenticated("client certificate unreadable"))?;
        self.clients
            .iter()
            .find(|(name, _)| cert.verify_is_valid_for_subject_name(name).is_ok())
            .map(|(_, c)| c.clone())
            .ok_or_else(|| {
                Status::unauthenticated("client certificate: identity not in auth.clients")
            })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};

    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &[u8], exp: u64) -> String {
        let claims = serde_json::json!({
            "sub": "svc", "tenant": "acme", "aud": "domicile",
            "purposes": ["cx_analytics"], "operations": ["aggregate"], "exp": exp,
        });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn authenticator(dir: &std::path::Path, secret: &[u8]) -> Authenticator {
        let file = dir.join("secret");
        std::fs::write(&file, secret).unwrap();
        Authenticator::from_config(&AuthConfig {
            audience: "domicile".into(),
            issuer: None,
            hs256_secret_file: Some(file),
            jwks_file: None,
            leeway_seconds: 30,
            clients: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b"a secret of at least thirty-two bytes!!";
        let auth = authenticator(dir.path(), secret);
        let good = token(secret, now() + 600);
        let header = format!("Bearer {good}");
        let first = auth.token(header.as_bytes()).unwrap();
        assert_eq!(auth.verified.len(), 1);
        assert_eq!(auth.token(header.as_bytes()).unwrap(), first);
        assert_eq!(
            auth.verified.get(good.as_str()).unwrap().1,
            now() + 600 + 30
        );

        // A remembered entry past its expiry is not trusted: the token is checked again, and
        // this one (signed with another secret) fails.
        let forged = token(b"another secret of thirty-two bytes or more", now() + 600);
        auth.verified
            .insert(forged.as_str().into(), (first.clone(), now() - 1));
        let err = auth
            .token(format!("Bearer {forged}").as_bytes())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        // A token that fails is never remembered; the memory stays bounded.
        assert!(auth.verified.get(forged.as_str()).unwrap().1 < now());
        for i in 0..VERIFIED_CAPACITY + 5 {
            auth.verified
                .insert(format!("t{i}").into(), (first.clone(), now() + 60));
        }
        let fresh = token(secret, now() + 601);
        auth.token(format!("Bearer {fresh}").as_bytes()).unwrap();
        assert_eq!(auth.verified.len(), 1, "full: started again empty");
    }
}
