//! Development tokens: HS256 JWTs with Domicile's claims, signed with a shared secret. For
//! production, tokens come from your identity provider (RS256 or ES256, checked against its
//! JWKS).

use std::time::{SystemTime, UNIX_EPOCH};

use domicile_gateway::auth::Operation;
use domicile_proto::pb::Purpose;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

/// The audience `domicile dev` configures.
pub const DEV_AUDIENCE: &str = "domicile";

/// Every purpose's name in tokens (`cx_analytics` for `PURPOSE_CX_ANALYTICS`).
pub fn all_purposes() -> Vec<String> {
    (1..)
        .map_while(|n| Purpose::try_from(n).ok())
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("PURPOSE_")
                .to_ascii_lowercase()
        })
        .collect()
}

/// What a token grants.
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    /// The caller's service identity.
    pub sub: String,
    /// Its tenant.
    pub tenant: String,
    /// Its purposes.
    pub purposes: Vec<String>,
    /// Its operations.
    pub operations: Vec<String>,
    /// Whether it acts for the DPO.
    pub dpo: bool,
    /// Audience.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
}

impl TokenClaims {
    /// Every purpose and operation for `tenant`, with the DPO's authority, for `hours`.
    pub fn everything(tenant: &str, hours: u64) -> Self {
        Self {
            sub: "domicile-dev".into(),
            tenant: tenant.into(),
            purposes: all_purposes(),
            operations: Operation::ALL.iter().map(|o| o.name().to_owned()).collect(),
            dpo: true,
            aud: DEV_AUDIENCE.into(),
            exp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + hours * 3600,
        }
    }
}

/// An HS256 token for `claims`, signed with `secret`.
pub fn mint(secret: &[u8], claims: &TokenClaims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_purpose_is_named_as_the_gateway_parses_it() {
        let all = all_purposes();
        assert_eq!(all.len(), 6);
        for p in &all {
            assert!(domicile_gateway::auth::parse_purpose(p).is_some(), "{p}");
        }
    }
}
