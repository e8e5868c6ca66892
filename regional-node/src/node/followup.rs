//! Follow-up cases as the node serves them: opened through the gateway by pseudonym,
//! re-identified and closed in the country, with consent checked at each step and every step
//! audited. The cases' storage is [`crate::domain::followup`].

use crate::domain::followup::{
    Case, NewCase, address, first_allowed, get, insert, list, open_case_of, resolve, set_status,
};
use crate::store::db::Connection;
use crate::{
    domain::audit::{self, Entry},
    domain::policy::Release,
    error::NodeError,
    node::Node,
};
use domicile_proto::{
    consent::ConsentQuestion,
    domain::TenantId,
    error::Violations,
    followup::{FollowUpSpec, ID_PREFIX, is_open},
    pb::{
        Channel, FollowUp, FollowUpContact, FollowUpStatus, OpenFollowUpResponse, Purpose,
        ReidentifyFollowUpResponse,
    },
};

impl Node {
    /// The consent question for a case's subject (by reference) and the suppression ids of its
    /// external id.
    fn follow_up_question(
        &self,
        tenant: &TenantId,
        subject: &str,
        country: &str,
        purpose: Purpose,
    ) -> Result<(ConsentQuestion, Vec<String>, Option<String>), NodeError> {
        let external_id = self
            .inner
            .store
            .vault()
            .external_id(tenant.as_str(), subject)?;
        let suppressed_as = external_id
            .iter()
            .map(|e| {
                self.inner
                    .pseudonyms
                    .suppression_of_subject(tenant.as_str(), e)
            })
            .collect();
        let q = ConsentQuestion {
            tenant: tenant.clone(),
            subject: domicile_proto::consent::Subject {
                country: country.to_owned(),
                external_id: subject.to_owned(),
            },
            purpose,
            channel: Channel::Unspecified,
        };
        Ok((q, suppressed_as, external_id))
    }

    /// Opens a follow-up for the subject behind a pseudonym of this region, if the purpose's
    /// country rule and the subject's consent allow a contact on one of the channels; an open
    /// case for the same subject and purpose is returned instead of a second one. Every
    /// outcome, refusals included, is audited.
    pub async fn open_follow_up(
        &self,
        spec: FollowUpSpec,
    ) -> Result<OpenFollowUpResponse, NodeError> {
        let region = self.inner.config.region_id.clone();
        if spec.region_id != region {
            return Err(Violations::one(
                "region_id",
                format!("this is region {region}: send the call to the pseudonym's region"),
            )
            .into());
        }
        self.erasures_purged().await?;
        self.blocking(move |node| {
            let inner = &node.inner;
            let tenant = spec.tenant.as_str();
            let now = node.now();
            let countries: Vec<String> = inner
                .policies
                .iter()
                .filter(|p| p.border.release == Release::Pseudonymised)
                .map(|p| p.country().to_owned())
                .collect();
            let since = now - i64::from(inner.config.follow_up_window_days) * 86_400;
            let found = inner.store.read(|conn| {
                resolve(
                    conn,
                    &inner.pseudonyms,
                    tenant,
                    spec.purpose,
                    &spec.pseudonym,
                    since,
                    &countries,
                )
            })?;
            let audit = |tx: &Connection, subject: Option<&str>, details: serde_json::Value| {
                let pseudonym = subject.map(|s| inner.pseudonyms.audit_subject(tenant, s));
                inner.audit.append(
                    tx,
                    Entry {
                        kind: audit::Kind::FollowUp,
                        tenant,
                        subject: pseudonym.as_deref(),
                        details,
                    },
                )
            };
            let Some((subject, country)) = found else {
                inner.store.write(|tx| {
                    audit(
                        tx,
                        None,
                        serde_json::json!({
                            "refused": "the pseudonym does not resolve",
                            "purpose": spec.purpose.as_str_name(),
                        }),
                    )
                })?;
                return Err(NodeError::NotFound(format!(
                    "subject_pseudonym: no subject of region {region} has this pseudonym under \
                     {} with an interaction in the last {} days",
                    spec.purpose.as_str_name(),
                    inner.config.follow_up_window_days
                )));
            };
            let policy = node.policy_for(&country, "subject_pseudonym")?;
            let (mut q, suppressed_as, _) =
                node.follow_up_question(&spec.tenant, &subject, &country, spec.purpose)?;
            let outcome = inner.store.write(|tx| {
                if let Some(case) = open_case_of(tx, &region, tenant, &subject, spec.purpose, now)?
                {
                    return Ok(Ok(OpenFollowUpResponse {
                        follow_up: Some(case.public),
                        existing: true,
                    }));
                }
                let channel =
                    match first_allowed(tx, policy, &mut q, &spec.channels, &suppressed_as)? {
                        Ok(c) => c,
                        Err(why) => {
                            audit(
                                tx,
                                Some(&subject),
                                serde_json::json!({
                                    "refused": "no contact allowed",
                                    "purpose": spec.purpose.as_str_name(),
                                    "policy_version": policy.label(),
                                }),
                            )?;
                            return Ok(Err(why));
                        }
                    };
                let id = format!("{region}.{ID_PREFIX}-{}", crate::store::kek::random_hex()?);
                insert(
                    tx,
                    tenant,
                    &NewCase {
                        id: &id,
                        subject: &subject,
                        country: &country,
                        purpose: spec.purpose,
                        channels: &spec.channels,
                        channel,
                        reason: &spec.reason,
                        priority: spec.priority,
                    },
                    now,
                )?;
                audit(
                    tx,
                    Some(&subject),
                    serde_json::json!({
                        "opened": id,
                        "purpose": spec.purpose.as_str_name(),
                        "reason": spec.reason,
                        "priority": spec.priority.as_str_name(),
                        "channel": channel.as_str_name(),
                        "policy_version": policy.label(),
                    }),
                )?;
                let case = get(tx, &region, tenant, &id, now)?
                    .ok_or_else(|| NodeError::Internal("a case vanished as it was made".into()))?;
                Ok(Ok(OpenFollowUpResponse {
                    follow_up: Some(case.public),
                    existing: false,
                }))
            })?;
            outcome.map_err(|why| {
                NodeError::FailedPrecondition(format!(
                    "no contact is allowed for {} on any requested channel: {why}",
                    spec.purpose.as_str_name()
                ))
            })
        })
        .await
    }

    /// The tenant's cases in this region (only `ids`, when given), without personal data;
    /// most recently opened first, or due soonest first when `by_due`.
    pub async fn list_follow_ups(
        &self,
        tenant: TenantId,
        ids: Vec<String>,
        open_only: bool,
        by_due: bool,
    ) -> Result<Vec<FollowUp>, NodeError> {
        domicile_proto::followup::check_ids(&ids)?;
        self.blocking(move |node| {
            let region = &node.inner.config.region_id;
            let now = node.now();
            node.inner
                .store
                .read(|conn| list(conn, region, tenant.as_str(), &ids, open_only, by_due, now))
        })
        .await
    }

    /// An open case of this region, or why not.
    fn open_case(&self, conn: &Connection, tenant: &TenantId, id: &str) -> Result<Case, NodeError> {
        let region = &self.inner.config.region_id;
        if domicile_proto::followup::region_of_follow_up(id, "follow_up_id")? != *region {
            return Err(Violations::one("follow_up_id", "a case of another region").into());
        }
        let case = get(conn, region, tenant.as_str(), id, self.now())?
            .ok_or_else(|| NodeError::NotFound("no such follow-up in this region".into()))?;
        let status = FollowUpStatus::try_from(case.public.status).unwrap_or_default();
        if !is_open(status) {
            return Err(NodeError::FailedPrecondition(format!(
                "the follow-up is closed ({})",
                status.as_str_name()
            )));
        }
        Ok(case)
    }

    /// Who to contact for an open case, and on which channel, after checking the subject's
    /// consent and the country rule again (the case is cancelled when they no longer allow
    /// it). In-country only; audited with the caller and the purpose.
    pub async fn reidentify_follow_up(
        &self,
        tenant: TenantId,
        id: String,
    ) -> Result<ReidentifyFollowUpResponse, NodeError> {
        self.blocking(move |node| {
            let inner = &node.inner;
            let t = tenant.as_str();
            let case = inner
                .store
                .read(|conn| node.open_case(conn, &tenant, &id))?;
            let purpose = case.public.purpose();
            let policy = node.policy_for(&case.public.country, "follow_up_id")?;
            let (mut q, suppressed_as, external_id) =
                node.follow_up_question(&tenant, &case.subject, &case.public.country, purpose)?;
            let profile = inner.store.read(|conn| {
                crate::domain::stored::profile(&inner.store, conn, t, &case.subject)
            })?;
            // The case's channel first, then the others asked for.
            let mut channels = vec![case.public.channel()];
            channels.extend(
                case.channels
                    .iter()
                    .filter(|c| **c != case.public.channel()),
            );
            // Channels with an address on file before those without, in that order otherwise.
            if let Some(p) = &profile {
                channels.sort_by_key(|c| address(p, *c).is_empty());
            }
            let now = node.now();
            let subject = inner.pseudonyms.audit_subject(t, &case.subject);
            let outcome = inner.store.write(|tx| {
                // Re-read inside the write: a concurrent outcome may have closed it.
                let case = node.open_case(tx, &tenant, &id)?;
                let allowed = match (&external_id, &profile) {
                    (Some(_), Some(_)) => {
                        first_allowed(tx, policy, &mut q, &channels, &suppressed_as)?
                    }
                    _ => Err("the subject is no longer held".to_owned()),
                };
                let (details, result) = match allowed {
                    Ok(channel) => (
                        serde_json::json!({
                            "follow_up_id": id,
                            "purpose": purpose.as_str_name(),
                            "channel": channel.as_str_name(),
                        }),
                        Ok(channel),
                    ),
                    Err(why) => {
                        set_status(tx, t, &id, FollowUpStatus::Cancelled, now)?;
                        (
                            serde_json::json!({
                                "follow_up_id": id,
                                "purpose": purpose.as_str_name(),
                                "refused": "no contact allowed any more; cancelled",
                            }),
                            Err(why),
                        )
                    }
                };
                inner.audit.append(
                    tx,
                    Entry {
                        kind: if result.is_ok() {
                            audit::Kind::FollowUpReidentified
                        } else {
                            audit::Kind::FollowUp
                        },
                        tenant: t,
                        subject: Some(&subject),
                        details,
                    },
                )?;
                Ok(result.map(|c| (case, c)))
            })?;
            let (case, channel) = outcome.map_err(|why| {
                NodeError::FailedPrecondition(format!(
                    "the contact is no longer allowed for {}; the follow-up is cancelled: {why}",
                    purpose.as_str_name()
                ))
            })?;
            let profile = profile.unwrap_or_default();
            Ok(ReidentifyFollowUpResponse {
                follow_up: Some(case.public),
                contact: Some(FollowUpContact {
                    external_id: external_id.unwrap_or_default(),
                    full_name: profile.full_name.clone(),
                    channel: channel as i32,
                    address: address(&profile, channel),
                    language: profile.language,
                }),
            })
        })
        .await
    }

    /// Records an agent's outcome on an open case; audited.
    pub async fn record_follow_up_outcome(
        &self,
        tenant: TenantId,
        id: String,
        outcome: FollowUpStatus,
    ) -> Result<FollowUp, NodeError> {
        self.blocking(move |node| {
            let inner = &node.inner;
            let t = tenant.as_str();
            let now = node.now();
            inner.store.write(|tx| {
                let case = node.open_case(tx, &tenant, &id)?;
                set_status(tx, t, &id, outcome, now)?;
                let subject = inner.pseudonyms.audit_subject(t, &case.subject);
                inner.audit.append(
                    tx,
                    Entry {
                        kind: audit::Kind::FollowUp,
                        tenant: t,
                        subject: Some(&subject),
                        details: serde_json::json!({
                            "follow_up_id": id,
                            "outcome": outcome.as_str_name(),
                        }),
                    },
                )?;
                get(tx, &inner.config.region_id, t, &id, now)?
                    .map(|c| c.public)
                    .ok_or_else(|| NodeError::Internal("a case vanished as it was updated".into()))
            })
        })
        .await
    }
}
