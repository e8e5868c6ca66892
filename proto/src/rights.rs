//! Validated data-subject requests and legal holds, shared by the gateway (which routes them)
//! and the node (which fulfils them).

use crate::{
    consent::{actor, tenant},
    domain::{TenantId, is_country_code, is_region_id, is_valid_id},
    error::Violations,
    pb::{
        PlaceLegalHoldRequest, Purpose, SealedEnvelope, SubjectRequestKind,
        SubmitSubjectRequestRequest,
    },
    seal::PublicSealingKey,
};

/// Longest legal-hold reason, in characters.
pub const MAX_HOLD_REASON: usize = 500;

/// A validated `SubmitSubjectRequest`.
#[derive(Debug, Clone)]
pub struct RightsRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The subject's country; `None` when unknown (every region is asked).
    pub country: Option<String>,
    /// The subject's external id.
    pub external_id: String,
    /// The right.
    pub kind: SubjectRequestKind,
    /// Access and portability: where to seal the export.
    pub recipient: Option<PublicSealingKey>,
    /// Rectification: the sealed patch.
    pub rectification: Option<SealedEnvelope>,
    /// Objection: the purposes.
    pub purposes: Vec<Purpose>,
    /// Who filed it.
    pub actor: String,
}

impl RightsRequest {
    /// Validates a request; every violation names its field.
    pub fn parse(r: &SubmitSubjectRequestRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = tenant(&r.tenant_id, &mut v);
        let (country, external_id) = match &r.subject {
            None => {
                v.add("subject", "required");
                (None, String::new())
            }
            Some(s) => {
                let country = if s.country.is_empty() {
                    None
                } else if is_country_code(&s.country) {
                    Some(s.country.clone())
                } else {
                    v.add(
                        "subject.country",
                        "an ISO 3166-1 alpha-2 code in upper case, or empty when unknown",
                    );
                    None
                };
                if !is_valid_id(&s.external_id) {
                    v.add(
                        "subject.external_id",
                        "must be 1 to 128 bytes without control characters",
                    );
                }
                (country, s.external_id.clone())
            }
        };
        let kind = match SubjectRequestKind::try_from(r.kind) {
            Ok(SubjectRequestKind::Unspecified) | Err(_) => {
                v.add("kind", "required: a known SubjectRequestKind");
                SubjectRequestKind::Unspecified
            }
            Ok(k) => k,
        };
        let exports = matches!(
            kind,
            SubjectRequestKind::Access | SubjectRequestKind::Portability
        );
        let recipient = match (
            exports,
            PublicSealingKey::from_bytes(&r.recipient_public_key),
        ) {
            (true, Ok(k)) => Some(k),
            (true, Err(_)) => {
                v.add(
                    "recipient_public_key",
                    "required for access and portability: a 32-byte X25519 public key",
                );
                None
            }
            (false, _) if r.recipient_public_key.is_empty() => None,
            (false, _) => {
                v.add("recipient_public_key", "only for access and portability");
                None
            }
        };
        let rectification = match (kind, &r.rectification) {
            (SubjectRequestKind::Rectification, Some(e)) if e.records.len() == 1 => Some(e.clone()),
            (SubjectRequestKind::Rectification, _) => {
                v.add(
                    "rectification",
                    "required for rectification: an envelope with exactly one sealed SubjectRecord",
                );
                None
            }
            (_, None) => None,
            (_, Some(_)) => {
                v.add("rectification", "only for rectification");
                None
            }
        };
        let mut purposes = Vec::new();
        for (i, raw) in r.purposes.iter().enumerate() {
            match Purpose::try_from(*raw) {
                Ok(Purpose::Unspecified) | Err(_) => v.add(
                    format!("purposes[{i}]"),
                    "a known Purpose other than UNSPECIFIED",
                ),
                Ok(p) if purposes.contains(&p) => v.add(format!("purposes[{i}]"), "duplicate"),
                Ok(p) => purposes.push(p),
            }
        }
        if kind == SubjectRequestKind::Objection && r.purposes.is_empty() {
            v.add(
                "purposes",
                "required for an objection: at least one purpose",
            );
        }
        let actor = actor(&r.actor, &mut v);
        v.into_result(Self {
            tenant,
            country,
            external_id,
            kind,
            recipient,
            rectification,
            purposes,
            actor,
        })
    }
}

/// A validated `PlaceLegalHold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSpec {
    /// The tenant.
    pub tenant: TenantId,
    /// The subject's country.
    pub country: String,
    /// The subject's external id.
    pub external_id: String,
    /// The reason.
    pub reason: String,
    /// `None`: the whole subject; else interactions started in `[start, end)`.
    pub interactions: Option<(i64, i64)>,
    /// When it ends by itself (Unix seconds).
    pub expires_at: i64,
}

impl HoldSpec {
    /// Validates a request; `now` is the current Unix time (expiry must be later).
    pub fn parse(r: &PlaceLegalHoldRequest, now: i64) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = tenant(&r.tenant_id, &mut v);
        let subject = crate::consent::Subject::parse(r.subject.as_ref(), "subject", &mut v);
        if r.reason.trim().is_empty()
            || r.reason.chars().count() > MAX_HOLD_REASON
            || r.reason.chars().any(char::is_control)
        {
            v.add(
                "reason",
                "required: at most 500 characters without control characters (no personal data)",
            );
        }
        let interactions = match &r.interactions {
            None => None,
            Some(range) => match (&range.start, &range.end) {
                (Some(s), Some(e)) if s.seconds < e.seconds => Some((s.seconds, e.seconds)),
                _ => {
                    v.add("interactions", "both start and end, start before end");
                    None
                }
            },
        };
        let expires_at = match &r.expires_at {
            Some(t) if t.seconds > now => t.seconds,
            _ => {
                v.add("expires_at", "required, in the future");
                0
            }
        };
        v.into_result(Self {
            tenant,
            country: subject.country,
            external_id: subject.external_id,
            reason: r.reason.clone(),
            interactions,
            expires_at,
        })
    }
}

/// The region of an id `"<region>.<prefix>-<32 hex>"`, or a violation of `field`.
pub fn region_of_id(id: &str, prefix: &str, field: &str) -> Result<String, Violations> {
    let bad = || {
        Violations::one(
            field,
            format!("not an id of this kind: expected \"<region>.{prefix}-<32 hex>\""),
        )
    };
    let (region, rest) = id.split_once('.').ok_or_else(bad)?;
    let hex = rest
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .ok_or_else(bad)?;
    if is_region_id(region)
        && hex.len() == 32
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(region.to_owned())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::SubjectRef;

    #[test]
    fn each_kind_needs_its_own_fields() {
        let base = SubmitSubjectRequestRequest {
            tenant_id: "acme".into(),
            subject: Some(SubjectRef {
                country: String::new(),
                external_id: "c-1".into(),
            }),
            kind: SubjectRequestKind::Access as i32,
            actor: "dpo".into(),
            ..Default::default()
        };
        let err = RightsRequest::parse(&base).unwrap_err();
        assert_eq!(err.0[0].field, "recipient_public_key");
        let mut objection = base.clone();
        objection.kind = SubjectRequestKind::Objection as i32;
        assert_eq!(
            RightsRequest::parse(&objection).unwrap_err().0[0].field,
            "purposes"
        );
        let mut erasure = base;
        erasure.kind = SubjectRequestKind::Erasure as i32;
        let ok = RightsRequest::parse(&erasure).unwrap();
        assert_eq!(ok.country, None);
    }

    #[test]
    fn ids_carry_their_region() {
        let id = format!("eu-de.sr-{}", "a1".repeat(16));
        assert_eq!(region_of_id(&id, "sr", "request_id").unwrap(), "eu-de");
        assert!(region_of_id(&id, "hold", "hold_id").is_err());
        assert!(region_of_id("eu-de.sr-xyz", "sr", "request_id").is_err());
    }
}
