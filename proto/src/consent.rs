//! Validated consent requests, shared by the gateway (which routes them) and the node (which
//! records and decides). Every violation names its field; no personal value is ever echoed.

use crate::{
    domain::{TenantId, is_country_code, is_valid_id, purpose_of},
    error::Violations,
    pb::{
        Channel, CheckContactPermissionRequest, ConfirmConsentRequest, ConsentAction,
        ConsentSource, GetConsentRequest, Purpose, RecordConsentRequest, SubjectRef,
        WithdrawConsentRequest,
    },
};

/// Longest actor code.
pub const MAX_ACTOR_LEN: usize = 64;
/// Default lifetime of a double opt-in token: 7 days.
pub const DEFAULT_TOKEN_TTL_SECONDS: u32 = 7 * 86_400;
/// Longest lifetime of a double opt-in token: 30 days.
pub const MAX_TOKEN_TTL_SECONDS: u32 = 30 * 86_400;
/// Longest confirmation token accepted.
pub const MAX_TOKEN_LEN: usize = 128;

/// A validated subject reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The subject's country; routes the call.
    pub country: String,
    /// The tenant's key for the subject.
    pub external_id: String,
}

impl Subject {
    /// Validates the reference at `path`.
    pub fn parse(r: Option<&SubjectRef>, path: &str, v: &mut Violations) -> Self {
        let Some(r) = r else {
            v.add(path, "required");
            return Self {
                country: String::new(),
                external_id: String::new(),
            };
        };
        if !is_country_code(&r.country) {
            v.add(
                format!("{path}.country"),
                "must be an ISO 3166-1 alpha-2 code in upper case",
            );
        }
        if !is_valid_id(&r.external_id) {
            v.add(
                format!("{path}.external_id"),
                "must be 1 to 128 bytes without control characters",
            );
        }
        Self {
            country: r.country.clone(),
            external_id: r.external_id.clone(),
        }
    }
}

/// The tenant at `tenant_id`; a violation (and a placeholder) when invalid, so that every other
/// field is still checked.
pub(crate) fn tenant(raw: &str, v: &mut Violations) -> TenantId {
    TenantId::parse(raw, "tenant_id").unwrap_or_else(|e| {
        v.0.extend(e.0);
        TenantId::parse("invalid", "tenant_id").expect("a valid placeholder")
    })
}

/// A channel; `UNSPECIFIED` allowed (every channel) unless `required`.
fn channel(raw: i32, required: bool, path: &str, v: &mut Violations) -> Channel {
    match Channel::try_from(raw) {
        Ok(Channel::Unspecified) if required => {
            v.add(path, "required: a known Channel other than UNSPECIFIED");
            Channel::Unspecified
        }
        Ok(c) => c,
        Err(_) => {
            v.add(path, format!("unknown enum value {raw}"));
            Channel::Unspecified
        }
    }
}

fn source(raw: i32, default: Option<ConsentSource>, v: &mut Violations) -> ConsentSource {
    match (ConsentSource::try_from(raw), default) {
        (Ok(ConsentSource::Unspecified), Some(d)) => d,
        (Ok(ConsentSource::Unspecified), None) => {
            v.add(
                "source",
                "required: a known ConsentSource other than UNSPECIFIED",
            );
            ConsentSource::Unspecified
        }
        (Ok(s), _) => s,
        (Err(_), _) => {
            v.add("source", format!("unknown enum value {raw}"));
            ConsentSource::Unspecified
        }
    }
}

/// The `actor` code: a system or agent code, never a name.
pub(crate) fn actor(raw: &str, v: &mut Violations) -> String {
    actor_at(raw, "actor", v)
}

/// An agent or system code at `field`; see [`actor`].
pub(crate) fn actor_at(raw: &str, field: &str, v: &mut Violations) -> String {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_ACTOR_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !ok {
        v.add(
            field,
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.' and ':' (a code, not a name)",
        );
    }
    raw.to_owned()
}

/// A validated change to a consent ledger (`RecordConsent` or `WithdrawConsent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentChange {
    /// The tenant.
    pub tenant: TenantId,
    /// The subject.
    pub subject: Subject,
    /// The purpose.
    pub purpose: Purpose,
    /// The channel (`Unspecified`: every channel).
    pub channel: Channel,
    /// Grant, refuse, object or withdraw.
    pub action: ConsentAction,
    /// Where it came from.
    pub source: ConsentSource,
    /// SHA-256 of the wording (grants only).
    pub wording_sha256: Option<[u8; 32]>,
    /// Who recorded it.
    pub actor: String,
    /// Lifetime of a double opt-in token, in seconds.
    pub token_ttl_seconds: u32,
}

impl ConsentChange {
    /// Validates a `RecordConsent` request.
    pub fn from_record(r: &RecordConsentRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = tenant(&r.tenant_id, &mut v);
        let subject = Subject::parse(r.subject.as_ref(), "subject", &mut v);
        let purpose = purpose_of(r.purpose, "purpose", &mut v);
        let channel = channel(r.channel, false, "channel", &mut v);
        let action = match ConsentAction::try_from(r.action) {
            Ok(a @ (ConsentAction::Grant | ConsentAction::Refuse | ConsentAction::Object)) => a,
            _ => {
                v.add(
                    "action",
                    "must be CONSENT_ACTION_GRANT, CONSENT_ACTION_REFUSE or CONSENT_ACTION_OBJECT \
                     (withdraw with WithdrawConsent, confirm with ConfirmConsent)",
                );
                ConsentAction::Unspecified
            }
        };
        let source = source(r.source, None, &mut v);
        let wording_sha256 = match (action, <[u8; 32]>::try_from(r.wording_sha256.as_slice())) {
            (_, Ok(h)) => Some(h),
            (ConsentAction::Grant, Err(_)) => {
                v.add(
                    "wording_sha256",
                    "required for a grant: the 32-byte SHA-256 of the wording shown",
                );
                None
            }
            (_, Err(_)) if r.wording_sha256.is_empty() => None,
            (_, Err(_)) => {
                v.add("wording_sha256", "must be 32 bytes (SHA-256) or empty");
                None
            }
        };
        let actor = actor(&r.actor, &mut v);
        let token_ttl_seconds = match r.token_ttl_seconds {
            0 => DEFAULT_TOKEN_TTL_SECONDS,
            t if t > MAX_TOKEN_TTL_SECONDS => {
                v.add(
                    "token_ttl_seconds",
                    format!("at most {MAX_TOKEN_TTL_SECONDS} (30 days)"),
                );
                t
            }
            t => t,
        };
        v.into_result(Self {
            tenant,
            subject,
            purpose,
            channel,
            action,
            source,
            wording_sha256,
            actor,
            token_ttl_seconds,
        })
    }

    /// Validates a `WithdrawConsent` request.
    pub fn from_withdraw(r: &WithdrawConsentRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let change = Self {
            tenant: tenant(&r.tenant_id, &mut v),
            subject: Subject::parse(r.subject.as_ref(), "subject", &mut v),
            purpose: purpose_of(r.purpose, "purpose", &mut v),
            channel: channel(r.channel, false, "channel", &mut v),
            action: ConsentAction::Withdraw,
            source: source(r.source, None, &mut v),
            wording_sha256: None,
            actor: actor(&r.actor, &mut v),
            token_ttl_seconds: 0,
        };
        v.into_result(change)
    }
}

/// A validated `CheckContactPermission` or `GetConsent` question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentQuestion {
    /// The tenant.
    pub tenant: TenantId,
    /// The subject.
    pub subject: Subject,
    /// The purpose (`Unspecified` in `GetConsent`: all).
    pub purpose: Purpose,
    /// The channel (`Unspecified` in `GetConsent`).
    pub channel: Channel,
}

impl ConsentQuestion {
    /// Validates a `CheckContactPermission` request: purpose and channel required.
    pub fn from_check(r: &CheckContactPermissionRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let q = Self {
            tenant: tenant(&r.tenant_id, &mut v),
            subject: Subject::parse(r.subject.as_ref(), "subject", &mut v),
            purpose: purpose_of(r.purpose, "purpose", &mut v),
            channel: channel(r.channel, true, "channel", &mut v),
        };
        v.into_result(q)
    }

    /// Validates a `GetConsent` request: the purpose is an optional filter.
    pub fn from_get(r: &GetConsentRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let purpose = match Purpose::try_from(r.purpose) {
            Ok(p) => p,
            Err(_) => {
                v.add("purpose", format!("unknown enum value {}", r.purpose));
                Purpose::Unspecified
            }
        };
        let q = Self {
            tenant: tenant(&r.tenant_id, &mut v),
            subject: Subject::parse(r.subject.as_ref(), "subject", &mut v),
            purpose,
            channel: Channel::Unspecified,
        };
        v.into_result(q)
    }
}

/// A validated `ConfirmConsent` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The tenant.
    pub tenant: TenantId,
    /// The region that issued the token (its prefix).
    pub region_id: String,
    /// The whole token.
    pub token: String,
    /// Where the confirmation came from.
    pub source: ConsentSource,
}

impl Confirmation {
    /// Validates a `ConfirmConsent` request; the token is `<region id>.<secret>`.
    pub fn parse(r: &ConfirmConsentRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = tenant(&r.tenant_id, &mut v);
        let region_id = match r.token.split_once('.') {
            Some((region, secret))
                if crate::domain::is_region_id(region)
                    && !secret.is_empty()
                    && r.token.len() <= MAX_TOKEN_LEN
                    && secret
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                region.to_owned()
            }
            _ => {
                v.add(
                    "token",
                    "not a confirmation token: expected \"<region>.<secret>\" as issued by RecordConsent",
                );
                String::new()
            }
        };
        let source = source(r.source, Some(ConsentSource::EmailLink), &mut v);
        v.into_result(Self {
            tenant,
            region_id,
            token: r.token.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_needs_its_wording_hash_and_an_actor_code() {
        let err = ConsentChange::from_record(&RecordConsentRequest {
            tenant_id: "acme".into(),
            subject: Some(SubjectRef {
                country: "de".into(),
                external_id: "c-1".into(),
            }),
            purpose: Purpose::Marketing as i32,
            action: ConsentAction::Grant as i32,
            source: ConsentSource::WebForm as i32,
            actor: "Jane Doe".into(),
            ..Default::default()
        })
        .unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["subject.country", "wording_sha256", "actor"]);
        assert!(!err.to_string().contains("Jane"));
    }

    #[test]
    fn tokens_carry_their_region() {
        let ok = Confirmation::parse(&ConfirmConsentRequest {
            tenant_id: "acme".into(),
            token: "eu-de.AbC_12-x".into(),
            source: 0,
        })
        .unwrap();
        assert_eq!(ok.region_id, "eu-de");
        assert_eq!(ok.source, ConsentSource::EmailLink);
        for bad in ["", "nodot", ".x", "EU.x", "eu-de.", "eu-de.a b"] {
            let r = ConfirmConsentRequest {
                tenant_id: "acme".into(),
                token: bad.into(),
                source: 0,
            };
            assert!(Confirmation::parse(&r).is_err(), "{bad}");
        }
    }
}
