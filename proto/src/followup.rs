//! Validated follow-up requests (followup.proto), shared by the gateway (which routes them) and
//! the node (which resolves and keeps them).

use crate::{
    consent::tenant,
    domain::{TenantId, is_code, is_region_id, purpose_of},
    error::Violations,
    pb::{Channel, FollowUpPriority, FollowUpStatus, OpenFollowUpRequest, Purpose},
    rights::region_of_id,
};

/// Most channels an `OpenFollowUp` may list.
pub const MAX_CHANNELS: usize = 8;
/// Most ids a `ListFollowUps` may name, and most cases a region lists.
pub const MAX_LISTED: usize = 1_000;
/// The id prefix of a follow-up: `<region>.followup-<32 hex>`.
pub const ID_PREFIX: &str = "followup";

/// A validated `OpenFollowUp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUpSpec {
    /// The tenant.
    pub tenant: TenantId,
    /// The region the pseudonym came from.
    pub region_id: String,
    /// The subject pseudonym (32 lower-case hex characters).
    pub pseudonym: String,
    /// The pseudonym's purpose, and the contact's.
    pub purpose: Purpose,
    /// The channels to try, in order (never empty: phone, e-mail by default).
    pub channels: Vec<Channel>,
    /// The reason code.
    pub reason: String,
    /// The priority (never `Unspecified`).
    pub priority: FollowUpPriority,
}

impl FollowUpSpec {
    /// Validates a request, naming every field at fault.
    pub fn parse(r: &OpenFollowUpRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = tenant(&r.tenant_id, &mut v);
        if !is_region_id(&r.region_id) {
            v.add(
                "region_id",
                "must be a region id (PseudonymisedInteraction.region_id)",
            );
        }
        let hex = r.subject_pseudonym.len() == 32
            && r.subject_pseudonym
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            v.add(
                "subject_pseudonym",
                "must be 32 lower-case hex characters (PseudonymisedInteraction.subject_pseudonym)",
            );
        }
        let purpose = purpose_of(r.purpose, "purpose", &mut v);
        if r.channels.len() > MAX_CHANNELS {
            v.add("channels", format!("at most {MAX_CHANNELS}"));
        }
        let mut channels = Vec::with_capacity(r.channels.len());
        for (i, raw) in r.channels.iter().take(MAX_CHANNELS).enumerate() {
            match Channel::try_from(*raw) {
                Ok(Channel::Unspecified) | Err(_) => {
                    v.add(
                        format!("channels[{i}]"),
                        "must be a known Channel other than UNSPECIFIED",
                    );
                }
                Ok(c) if channels.contains(&c) => {
                    v.add(format!("channels[{i}]"), "repeated");
                }
                Ok(c) => channels.push(c),
            }
        }
        if r.channels.is_empty() {
            channels = vec![Channel::Phone, Channel::Email];
        }
        if !is_code(&r.reason) {
            v.add("reason", crate::domain::CODE_RULE);
        }
        let priority = match FollowUpPriority::try_from(r.priority) {
            Ok(FollowUpPriority::Unspecified) => FollowUpPriority::Normal,
            Ok(p) => p,
            Err(_) => {
                v.add("priority", format!("unknown enum value {}", r.priority));
                FollowUpPriority::Normal
            }
        };
        v.into_result(Self {
            tenant,
            region_id: r.region_id.clone(),
            pseudonym: r.subject_pseudonym.clone(),
            purpose,
            channels,
            reason: r.reason.clone(),
            priority,
        })
    }
}

/// How long a case of `priority` has before it is overdue, in seconds.
pub fn due_in(priority: FollowUpPriority) -> i64 {
    match priority {
        FollowUpPriority::High => 86_400,
        FollowUpPriority::Low => 7 * 86_400,
        FollowUpPriority::Normal | FollowUpPriority::Unspecified => 3 * 86_400,
    }
}

/// Whether a case in `status` is still open.
pub fn is_open(status: FollowUpStatus) -> bool {
    matches!(
        status,
        FollowUpStatus::Open | FollowUpStatus::Reached | FollowUpStatus::NotReached
    )
}

/// The region of a follow-up id, or a violation at `field`.
pub fn region_of_follow_up(id: &str, field: &str) -> Result<String, Violations> {
    region_of_id(id, ID_PREFIX, field)
}

/// Validates the ids of a `ListFollowUps`.
pub fn check_ids(ids: &[String]) -> Result<(), Violations> {
    let mut v = Violations::new();
    if ids.len() > MAX_LISTED {
        v.add("follow_up_ids", format!("at most {MAX_LISTED}"));
    }
    for (i, id) in ids.iter().take(MAX_LISTED).enumerate() {
        if let Err(e) = region_of_follow_up(id, &format!("follow_up_ids[{i}]")) {
            v.0.extend(e.0);
        }
    }
    v.into_result(())
}

/// The outcome an agent may record: `REACHED`, `NOT_REACHED` or `RESOLVED`.
pub fn outcome(raw: i32) -> Result<FollowUpStatus, Violations> {
    match FollowUpStatus::try_from(raw) {
        Ok(
            s @ (FollowUpStatus::Reached | FollowUpStatus::NotReached | FollowUpStatus::Resolved),
        ) => Ok(s),
        _ => Err(Violations::one(
            "outcome",
            "must be FOLLOW_UP_STATUS_REACHED, FOLLOW_UP_STATUS_NOT_REACHED or FOLLOW_UP_STATUS_RESOLVED",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Violations;

    fn fields(e: Violations) -> Vec<String> {
        e.0.into_iter().map(|f| f.field).collect()
    }

    fn good() -> OpenFollowUpRequest {
        OpenFollowUpRequest {
            tenant_id: "acme".into(),
            region_id: "eu-de".into(),
            subject_pseudonym: "0123456789abcdef0123456789abcdef".into(),
            purpose: Purpose::CxSurvey as i32,
            channels: vec![],
            reason: "nps-detractor".into(),
            priority: 0,
        }
    }

    #[test]
    fn a_good_request_gets_defaults() {
        let spec = FollowUpSpec::parse(&good()).unwrap();
        assert_eq!(spec.channels, vec![Channel::Phone, Channel::Email]);
        assert_eq!(spec.priority, FollowUpPriority::Normal);
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = OpenFollowUpRequest {
            tenant_id: "".into(),
            region_id: "EU DE".into(),
            subject_pseudonym: "0123456789ABCDEF0123456789ABCDEF".into(),
            purpose: 0,
            channels: vec![Channel::Phone as i32, 99, Channel::Phone as i32],
            reason: "Call Jane Doe at +49 30 1234".into(),
            priority: 42,
        };
        let f = fields(FollowUpSpec::parse(&bad).unwrap_err());
        for want in [
            "tenant_id",
            "region_id",
            "subject_pseudonym",
            "purpose",
            "channels[1]",
            "channels[2]",
            "reason",
            "priority",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
        }
        let many = OpenFollowUpRequest {
            channels: vec![Channel::Phone as i32; 9],
            ..good()
        };
        assert!(fields(FollowUpSpec::parse(&many).unwrap_err()).contains(&"channels".into()));
    }

    #[test]
    fn ids_route_and_outcomes_are_the_agent_ones() {
        assert_eq!(
            region_of_follow_up("eu-de.followup-0123456789abcdef0123456789abcdef", "id").unwrap(),
            "eu-de"
        );
        assert!(region_of_follow_up("eu-de.hold-0123456789abcdef0123456789abcdef", "id").is_err());
        assert!(check_ids(&["nope".into()]).is_err());
        assert!(outcome(FollowUpStatus::Resolved as i32).is_ok());
        for bad in [
            FollowUpStatus::Open,
            FollowUpStatus::Cancelled,
            FollowUpStatus::Unspecified,
        ] {
            assert!(outcome(bad as i32).is_err());
        }
        assert!(outcome(77).is_err());
        assert!(is_open(FollowUpStatus::NotReached) && !is_open(FollowUpStatus::Resolved));
        assert!(due_in(FollowUpPriority::High) < due_in(FollowUpPriority::Low));
    }
}
