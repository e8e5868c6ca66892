//! Validated data-subject requests and legal holds, shared by the gateway (which routes them)
//! and the node (which fulfils them).

use crate::{
    consent::{actor, actor_at, tenant},
    domain::{TenantId, is_country_code, is_region_id, is_valid_id},
    error::Violations,
    pb::{
        IdentityVerification, ListSubjectRequestsRequest, PlaceLegalHoldRequest, Purpose,
        SealedEnvelope, SubjectRequestKind, SubjectRequestStatus, SubmitSubjectRequestRequest,
        UpdateSubjectRequestRequest, VerificationMethod, update_subject_request_request::Action,
    },
    seal::PublicSealingKey,
};

/// Longest legal-hold reason, in characters.
pub const MAX_HOLD_REASON: usize = 500;
/// Longest reason for a step of a request's case (extension, refusal, waiting), in characters.
pub const MAX_CASE_REASON: usize = 500;
/// Longest evidence reference of an identity verification, in characters.
pub const MAX_EVIDENCE_REFERENCE: usize = 200;
/// Receipts per page of `ListSubjectRequests` unless asked otherwise.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most receipts per page of `ListSubjectRequests`.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Furthest `due_within_days` of `ListSubjectRequests`.
pub const MAX_DUE_WITHIN_DAYS: u32 = 366;

/// Whether a request of this kind acts on the person's whole record: the DPO must sign it (and
/// each step of its case), and it waits for identity verification.
pub fn needs_dpo(kind: SubjectRequestKind) -> bool {
    matches!(
        kind,
        SubjectRequestKind::Access | SubjectRequestKind::Portability | SubjectRequestKind::Erasure
    )
}

/// A validated identity verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// How.
    pub method: VerificationMethod,
    /// Where the evidence is, in the tenant's systems.
    pub evidence_reference: String,
    /// Who verified.
    pub verified_by: String,
}

impl Verification {
    /// Validates `raw` at `field`.
    pub fn parse(raw: &IdentityVerification, field: &str, v: &mut Violations) -> Self {
        let method = match VerificationMethod::try_from(raw.method) {
            Ok(VerificationMethod::Unspecified) | Err(_) => {
                v.add(
                    format!("{field}.method"),
                    "required: a known VerificationMethod",
                );
                VerificationMethod::Unspecified
            }
            Ok(m) => m,
        };
        text(
            &raw.evidence_reference,
            MAX_EVIDENCE_REFERENCE,
            &format!("{field}.evidence_reference"),
            v,
        );
        let verified_by = actor_at(&raw.verified_by, &format!("{field}.verified_by"), v);
        Self {
            method,
            evidence_reference: raw.evidence_reference.clone(),
            verified_by,
        }
    }
}

/// The statement that the tenant's platform verified the requester (signed in to their
/// account) before submitting: `evidence_reference` where the platform keeps the proof,
/// `verified_by` the system's code.
pub fn verified_by_platform(evidence_reference: &str, verified_by: &str) -> IdentityVerification {
    IdentityVerification {
        method: VerificationMethod::AccountLogin as i32,
        evidence_reference: evidence_reference.to_owned(),
        verified_by: verified_by.to_owned(),
        verified_at: None,
    }
}

impl Verification {
    /// As the receipt says it, recorded at `at`.
    pub fn recorded_at(&self, at: i64) -> IdentityVerification {
        IdentityVerification {
            method: self.method as i32,
            evidence_reference: self.evidence_reference.clone(),
            verified_by: self.verified_by.clone(),
            verified_at: Some(crate::domain::whole_seconds(at)),
        }
    }
}

/// Checks a free-text field the tenant writes (a reason, a reference): 1 to `max`
/// characters, no control characters.
fn text(raw: &str, max: usize, field: &str, v: &mut Violations) {
    if raw.trim().is_empty() || raw.chars().count() > max || raw.chars().any(char::is_control) {
        v.add(
            field,
            format!(
                "required: 1 to {max} characters without control characters (no personal data)"
            ),
        );
    }
}

/// Whether `id` is a federation-wide request id: "dsr-" and 32 lowercase hex digits.
pub fn is_federation_request_id(id: &str) -> bool {
    id.strip_prefix("dsr-").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

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
    /// The federation-wide id the client chose, if any.
    pub federation_id: Option<String>,
    /// The platform's identity verification, if it verified before submitting.
    pub verification: Option<Verification>,
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
        let federation_id = if r.request_id.is_empty() {
            None
        } else if is_federation_request_id(&r.request_id) {
            Some(r.request_id.clone())
        } else {
            v.add(
                "request_id",
                "\"dsr-\" and 32 lowercase hex digits, or empty",
            );
            None
        };
        let verification = r
            .verification
            .as_ref()
            .map(|raw| Verification::parse(raw, "verification", &mut v));
        v.into_result(Self {
            tenant,
            country,
            external_id,
            kind,
            recipient,
            rectification,
            purposes,
            actor,
            federation_id,
            verification,
        })
    }
}

/// One validated step of a request's case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The requester's identity is verified; fulfil.
    Verify(Verification),
    /// Waiting for the subject, for this reason.
    AwaitSubject(String),
    /// Extend the deadline, for this reason.
    Extend(String),
    /// Refuse, for this reason.
    Refuse(String),
}

impl Step {
    /// The action's name in the request's history.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Verify(_) => "verified",
            Step::AwaitSubject(_) => "awaiting_subject",
            Step::Extend(_) => "extended",
            Step::Refuse(_) => "refused",
        }
    }
}

/// A validated `UpdateSubjectRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseUpdate {
    /// The tenant.
    pub tenant: TenantId,
    /// The region's request id.
    pub request_id: String,
    /// The step.
    pub step: Step,
    /// Who takes it.
    pub actor: String,
}

impl CaseUpdate {
    /// Validates a request; every violation names its field.
    pub fn parse(r: &UpdateSubjectRequestRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = tenant(&r.tenant_id, &mut v);
        if let Err(e) = region_of_id(&r.request_id, "sr", "request_id") {
            v.0.extend(e.0);
        }
        let reason = |raw: &str, field: &str, v: &mut Violations| {
            text(raw, MAX_CASE_REASON, field, v);
            raw.to_owned()
        };
        let step = match &r.action {
            None => {
                v.add(
                    "action",
                    "required: one of verify, await_subject, extend, refuse",
                );
                Step::Refuse(String::new())
            }
            Some(Action::Verify(raw)) => Step::Verify(Verification::parse(raw, "verify", &mut v)),
            Some(Action::AwaitSubject(a)) => {
                Step::AwaitSubject(reason(&a.reason, "await_subject.reason", &mut v))
            }
            Some(Action::Extend(e)) => Step::Extend(reason(&e.reason, "extend.reason", &mut v)),
            Some(Action::Refuse(e)) => Step::Refuse(reason(&e.reason, "refuse.reason", &mut v)),
        };
        let actor = actor(&r.actor, &mut v);
        v.into_result(Self {
            tenant,
            request_id: r.request_id.clone(),
            step,
            actor,
        })
    }
}

/// A validated `ListSubjectRequests`, less its regions and page token (the gateway's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseQuery {
    /// The tenant.
    pub tenant: TenantId,
    /// The statuses asked for (never empty: the open ones by default).
    pub statuses: Vec<SubjectRequestStatus>,
    /// Open and past due only.
    pub overdue_only: bool,
    /// Due within this many days (0: any).
    pub due_within_days: u32,
    /// Receipts per page.
    pub page_size: u32,
}

/// The statuses of an open request.
pub const OPEN_STATUSES: [SubjectRequestStatus; 4] = [
    SubjectRequestStatus::Received,
    SubjectRequestStatus::AwaitingSubject,
    SubjectRequestStatus::InProgress,
    SubjectRequestStatus::PartiallyCompleted,
];

impl CaseQuery {
    /// Validates a request; every violation names its field.
    pub fn parse(r: &ListSubjectRequestsRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = tenant(&r.tenant_id, &mut v);
        let mut statuses = Vec::new();
        for (i, raw) in r.statuses.iter().enumerate() {
            match SubjectRequestStatus::try_from(*raw) {
                Ok(SubjectRequestStatus::Unspecified) | Err(_) => v.add(
                    format!("statuses[{i}]"),
                    "a known SubjectRequestStatus other than UNSPECIFIED",
                ),
                Ok(s) if statuses.contains(&s) => v.add(format!("statuses[{i}]"), "duplicate"),
                Ok(s) => statuses.push(s),
            }
        }
        if r.statuses.is_empty() {
            statuses = OPEN_STATUSES.to_vec();
        }
        if r.due_within_days > MAX_DUE_WITHIN_DAYS {
            v.add("due_within_days", format!("at most {MAX_DUE_WITHIN_DAYS}"));
        }
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                v.add("page_size", format!("at most {MAX_PAGE_SIZE}"));
                MAX_PAGE_SIZE
            }
            n => n,
        };
        v.into_result(Self {
            tenant,
            statuses,
            overdue_only: r.overdue_only,
            due_within_days: r.due_within_days,
            page_size,
        })
    }
}

/// Where a page of `ListSubjectRequests` starts: after this due date and request id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageStart {
    /// Due date, Unix seconds.
    pub due_at: i64,
    /// Request id; empty for the first page.
    pub request_id: String,
}

impl PageStart {
    /// The token for the page after this receipt.
    pub fn token(&self) -> String {
        hex::encode(format!("{}:{}", self.due_at, self.request_id))
    }

    /// Decodes a token (empty: the first page), or a violation of `page_token`.
    pub fn parse(token: &str) -> Result<Self, Violations> {
        if token.is_empty() {
            return Ok(Self::default());
        }
        let bad = || Violations::one("page_token", "not a token from next_page_token");
        let raw = hex::decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (due, id) = raw.split_once(':').ok_or_else(bad)?;
        let due_at = due.parse().map_err(|_| bad())?;
        region_of_id(id, "sr", "page_token").map_err(|_| bad())?;
        Ok(Self {
            due_at,
            request_id: id.to_owned(),
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
    fn case_steps_and_queries_name_the_field_at_fault() {
        use crate::pb::{ExtendDeadline, IdentityVerification};
        let id = format!("eu-de.sr-{}", "ab".repeat(16));
        let mut update = UpdateSubjectRequestRequest {
            tenant_id: "acme".into(),
            request_id: id.clone(),
            action: Some(Action::Verify(IdentityVerification {
                method: VerificationMethod::DocumentCheck as i32,
                evidence_reference: "ticket 4411".into(),
                verified_by: "agent-7".into(),
                verified_at: None,
            })),
            actor: "dpo".into(),
            dpo_signature: None,
        };
        assert!(matches!(
            CaseUpdate::parse(&update).unwrap().step,
            Step::Verify(_)
        ));
        update.action = Some(Action::Verify(IdentityVerification::default()));
        let fields: Vec<_> = CaseUpdate::parse(&update)
            .unwrap_err()
            .0
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(
            fields,
            [
                "verify.method",
                "verify.evidence_reference",
                "verify.verified_by"
            ]
        );
        update.action = Some(Action::Extend(ExtendDeadline {
            reason: "x".repeat(MAX_CASE_REASON + 1),
        }));
        assert_eq!(
            CaseUpdate::parse(&update).unwrap_err().0[0].field,
            "extend.reason"
        );
        update.action = None;
        assert_eq!(CaseUpdate::parse(&update).unwrap_err().0[0].field, "action");
        update.request_id = "dsr-00".into();
        assert_eq!(
            CaseUpdate::parse(&update).unwrap_err().0[0].field,
            "request_id"
        );

        let mut list = ListSubjectRequestsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        };
        let q = CaseQuery::parse(&list).unwrap();
        assert_eq!(q.statuses, OPEN_STATUSES);
        assert_eq!(q.page_size, DEFAULT_PAGE_SIZE);
        list.page_size = MAX_PAGE_SIZE + 1;
        list.statuses = vec![0];
        list.due_within_days = MAX_DUE_WITHIN_DAYS + 1;
        let fields: Vec<_> = CaseQuery::parse(&list)
            .unwrap_err()
            .0
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["statuses[0]", "due_within_days", "page_size"]);

        let start = PageStart {
            due_at: 1_800_000_000,
            request_id: id,
        };
        assert_eq!(PageStart::parse(&start.token()).unwrap(), start);
        assert_eq!(PageStart::parse("").unwrap(), PageStart::default());
        for bad in ["zz", &hex::encode("12:eu-de.sr-1"), &hex::encode("x:y")] {
            assert_eq!(PageStart::parse(bad).unwrap_err().0[0].field, "page_token");
        }
    }

    #[test]
    fn a_federation_request_id_is_checked_and_a_verification_named() {
        use crate::pb::IdentityVerification;
        let mut r = SubmitSubjectRequestRequest {
            tenant_id: "acme".into(),
            subject: Some(SubjectRef {
                country: "DE".into(),
                external_id: "c-1".into(),
            }),
            kind: SubjectRequestKind::Erasure as i32,
            actor: "dpo".into(),
            request_id: format!("dsr-{}", "0f".repeat(16)),
            ..Default::default()
        };
        let ok = RightsRequest::parse(&r).unwrap();
        assert_eq!(ok.federation_id.as_deref(), Some(r.request_id.as_str()));
        assert_eq!(ok.verification, None);
        r.request_id = "dsr-0F".into();
        r.verification = Some(IdentityVerification {
            method: VerificationMethod::AccountLogin as i32,
            evidence_reference: "session 81".into(),
            verified_by: "web portal".into(),
            verified_at: None,
        });
        let fields: Vec<_> = RightsRequest::parse(&r)
            .unwrap_err()
            .0
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["request_id", "verification.verified_by"]);
    }

    #[test]
    fn ids_carry_their_region() {
        let id = format!("eu-de.sr-{}", "a1".repeat(16));
        assert_eq!(region_of_id(&id, "sr", "request_id").unwrap(), "eu-de");
        assert!(region_of_id(&id, "hold", "hold_id").is_err());
        assert!(region_of_id("eu-de.sr-xyz", "sr", "request_id").is_err());
    }
}
