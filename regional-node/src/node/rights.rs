//! Subject rights as the node serves them: requests (access, portability, rectification,
//! erasure, restriction), legal holds and their release, each checked, recorded and audited.
//! What an erasure deletes, and the flags restriction sets, are [`crate::domain::rights`].

use crate::domain::rights::{Purge, active_holds, erase, knows, scrub, set_flag, stored_country};
use crate::store::db::{Connection, OptionalExtension, params};
use crate::{
    domain::audit::{Entry, Kind},
    domain::consent,
    domain::ingest::{Verdict, open_envelope},
    domain::stored::{Profile, RecordBody},
    error::NodeError,
    node::Node,
    store::vault::{SubjectKey, comment_aad, interaction_id_aad},
};
use domicile_proto::{
    consent::{ConsentChange, ConsentQuestion, Subject},
    domain::whole_seconds as ts,
    pb::{
        Channel, ConsentAction, ConsentSource, Purpose, SealedExport, SubjectRequestKind,
        SubjectRequestReceipt, SubjectRequestStatus,
    },
    rights::{HoldSpec, RightsRequest},
    seal::seal_export,
};
use serde_json::json;

fn channel_name(raw: i32) -> &'static str {
    Channel::try_from(raw).map_or("", |c| c.as_str_name())
}

/// The export document (`docs/export-schema.md`).
fn export_document(
    node: &Node,
    conn: &Connection,
    req: &RightsRequest,
    key: &SubjectKey,
    request_id: &str,
    country: &str,
) -> Result<serde_json::Value, NodeError> {
    let inner = &node.inner;
    let tenant = req.tenant.as_str();
    let subject = key.reference.as_str();
    let key = Some(key);
    let profile = crate::domain::stored::profile(&inner.store, conn, tenant, subject)?;
    let mut interactions = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT i.interaction_id, i.channel, i.direction, i.started_at, i.ended_at, i.handle_time,
                i.outcome, i.agent_team, i.recorded, i.survey_id, i.nps, i.csat, i.ces, t.comment,
                i.sealed_id
         FROM interactions i
         LEFT JOIN interaction_text t ON t.tenant = i.tenant AND t.interaction_id = i.interaction_id
         WHERE i.tenant = $1 AND i.subject_id = $2 ORDER BY i.started_at, i.interaction_id",
    )?;
    let mut rows = stmt.query(params![tenant, subject])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let sealed: Option<Vec<u8>> = r.get(13)?;
        let sealed_id: Option<Vec<u8>> = r.get(14)?;
        // The id the CRM sent, sealed beside its keyed form.
        let clear_id = sealed_id
            .and_then(|b| key?.open(&interaction_id_aad(tenant, &id), &b))
            .and_then(|c| String::from_utf8(c).ok());
        let comment = match (&key, sealed) {
            (Some(k), Some(blob)) => k
                .open(&comment_aad(tenant, &id), &blob)
                .and_then(|c| String::from_utf8(c).ok()),
            _ => None,
        };
        let survey_id: Option<String> = r.get(9)?;
        interactions.push(json!({
            "interaction_id": clear_id,
            "channel": channel_name(r.get(1)?),
            "direction": domicile_proto::pb::Direction::try_from(r.get::<_, i32>(2)?)
                .map_or("", |d| d.as_str_name()),
            "started_at": r.get::<_, i64>(3)?,
            "ended_at": r.get::<_, Option<i64>>(4)?,
            "handle_time_seconds": r.get::<_, i64>(5)?,
            "outcome": r.get::<_, String>(6)?,
            "agent_team": r.get::<_, String>(7)?,
            "recorded": r.get::<_, bool>(8)?,
            "survey": survey_id.map(|survey_id| json!({
                "survey_id": survey_id,
                "nps": r.get::<_, Option<u32>>(10).ok().flatten(),
                "csat": r.get::<_, Option<u32>>(11).ok().flatten(),
                "ces": r.get::<_, Option<u32>>(12).ok().flatten(),
                "comment": comment,
            })),
        }));
    }
    let mut doc = json!({
        "schema": "domicile.export.v1",
        "kind": if req.kind == SubjectRequestKind::Access { "access" } else { "portability" },
        "request_id": request_id,
        "region": inner.config.region_id,
        "tenant": tenant,
        "generated_at": node.now(),
        "subject": { "external_id": req.external_id, "country": country },
        "profile": profile,
        "interactions": interactions,
    });
    if req.kind == SubjectRequestKind::Access {
        let mut history = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT replaced_at, profile FROM subject_pii_history
             WHERE tenant = $1 AND external_id = $2 ORDER BY replaced_at",
        )?;
        let mut rows = stmt.query(params![tenant, subject])?;
        while let Some(r) = rows.next()? {
            let blob: Vec<u8> = r.get(1)?;
            let old = key
                .as_ref()
                .and_then(|k| Profile::open(k, tenant, subject, &blob));
            history.push(json!({ "replaced_at": r.get::<_, i64>(0)?, "profile": old }));
        }
        let consent = consent::get(
            conn,
            &ConsentQuestion {
                tenant: req.tenant.clone(),
                subject: Subject {
                    country: country.to_owned(),
                    external_id: subject.to_owned(),
                },
                purpose: Purpose::Unspecified,
                channel: Channel::Unspecified,
            },
        )?;
        let ledger: Vec<_> = consent
            .history
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq,
                    "action": ConsentAction::try_from(e.action).map_or("", |a| a.as_str_name()),
                    "purpose": Purpose::try_from(e.purpose).map_or("", |p| p.as_str_name()),
                    "channel": channel_name(e.channel),
                    "recorded_at": e.recorded_at.map(|t| t.seconds),
                    "source": ConsentSource::try_from(e.source).map_or("", |s| s.as_str_name()),
                    "wording_sha256": hex::encode(&e.wording_sha256),
                    "policy_version": e.policy_version,
                    "actor": e.actor,
                })
            })
            .collect();
        let pseudonym = inner.pseudonyms.audit_subject(tenant, subject);
        let mut events = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT seq, at, kind, details FROM audit_log WHERE tenant = $1 AND subject = $2 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![tenant, pseudonym])?;
        while let Some(r) = rows.next()? {
            let details: String = r.get(3)?;
            events.push(json!({
                "seq": r.get::<_, i64>(0)?,
                "at": r.get::<_, i64>(1)?,
                "kind": r.get::<_, String>(2)?,
                "details": serde_json::from_str::<serde_json::Value>(&details).unwrap_or_default(),
            }));
        }
        let holds: Vec<_> = active_holds(conn, tenant, subject, node.now())?
            .into_iter()
            .map(|h| json!({ "hold_id": h.id, "reason": h.reason, "expires_at": h.expires_at }))
            .collect();
        doc["profile_history"] = json!(history);
        doc["consent_ledger"] = json!(ledger);
        doc["processing_events"] = json!(events);
        doc["legal_holds"] = json!(holds);
        doc["restricted"] = json!(consent::is_restricted(conn, tenant, subject)?);
    }
    Ok(doc)
}

impl Node {
    /// Fulfils a data-subject request for a subject of this region.
    pub async fn submit_subject_request(
        &self,
        req: RightsRequest,
    ) -> Result<SubjectRequestReceipt, NodeError> {
        if let Some(country) = &req.country {
            self.policy_for(country, "subject.country")?;
        }
        self.blocking(move |node| node.fulfil(&req)).await
    }

    fn fulfil(&self, req: &RightsRequest) -> Result<SubjectRequestReceipt, NodeError> {
        let inner = &self.inner;
        let region = inner.config.region_id.clone();
        let tenant = req.tenant.as_str();
        let external = req.external_id.as_str();
        let not_found = || NodeError::NotFound("no data about this subject in this region".into());
        // The subject is known here by its reference only.
        let key = inner
            .store
            .vault()
            .find(tenant, external)?
            .ok_or_else(not_found)?;
        let subject = key.reference.as_str();
        let (known, stored) = inner.store.read(|conn| {
            Ok((
                knows(conn, tenant, subject)?,
                stored_country(conn, tenant, subject)?,
            ))
        })?;
        if !known {
            return Err(not_found());
        }
        let country = stored.or_else(|| req.country.clone()).unwrap_or_default();
        let policy = inner
            .policies
            .get(&country)
            .or_else(|| inner.policies.iter().next())
            .ok_or_else(|| NodeError::Internal("no policy".into()))?;
        let submitted = self.now();
        let due = submitted + i64::from(*policy.deadlines.subject_request_days.get_ref()) * 86_400;
        let request_id = format!("{region}.sr-{}", crate::store::kek::random_hex()?);
        let mut receipt = SubjectRequestReceipt {
            request_id: request_id.clone(),
            region_id: region.clone(),
            kind: req.kind as i32,
            status: SubjectRequestStatus::Completed as i32,
            submitted_at: Some(ts(submitted)),
            due_at: Some(ts(due)),
            completed_at: Some(ts(submitted)),
            held: Vec::new(),
            export: None,
            policy_version: policy.label(),
        };
        let mut shred = None;
        // An erasure's purge ticket ([`Node::purge_begin`]), dropped once it is answered.
        let mut ticket = None;
        let audit_subject = inner.pseudonyms.audit_subject(tenant, subject);
        let mut details = json!({ "request_id": request_id, "kind": req.kind.as_str_name() });
        match req.kind {
            SubjectRequestKind::Access | SubjectRequestKind::Portability => {
                let doc = inner
                    .store
                    .read(|conn| export_document(self, conn, req, &key, &request_id, &country))?;
                let plaintext =
                    serde_json::to_vec(&doc).map_err(|e| NodeError::Internal(e.to_string()))?;
                let recipient = req.recipient.as_ref().ok_or_else(|| {
                    NodeError::Internal("validated requests carry a recipient".into())
                })?;
                let (enc, ct) = seal_export(
                    recipient,
                    tenant,
                    &region,
                    request_id.as_bytes(),
                    &plaintext,
                )
                .map_err(|e| NodeError::Internal(format!("sealing the export: {e}")))?;
                details["export_bytes"] = json!(ct.len());
                receipt.export = Some(SealedExport {
                    encapsulated_key: enc,
                    ciphertext: ct,
                    schema: "domicile.export.v1".into(),
                });
            }
            SubjectRequestKind::Rectification => {
                let envelope = req.rectification.as_ref().ok_or_else(|| {
                    NodeError::Internal("validated requests carry a rectification".into())
                })?;
                if envelope.region_id != region {
                    return Err(domicile_proto::error::Violations::one(
                        "rectification.region_id",
                        format!("this node serves region {region}"),
                    )
                    .into());
                }
                let verdicts =
                    open_envelope(&inner.keys, tenant, &inner.config.countries, envelope);
                let patch = match verdicts.into_iter().next() {
                    Some(Verdict::Store(r)) => match r.body {
                        RecordBody::Subject(s) if s.external_id == external => s,
                        _ => {
                            return Err(domicile_proto::error::Violations::one(
                                "rectification.records[0]",
                                "must be a SubjectRecord of the request's subject",
                            )
                            .into());
                        }
                    },
                    Some(Verdict::Reject(_, detail)) => {
                        return Err(domicile_proto::error::Violations::one(
                            "rectification.records[0]",
                            detail,
                        )
                        .into());
                    }
                    None => {
                        return Err(domicile_proto::error::Violations::one(
                            "rectification.records",
                            "empty",
                        )
                        .into());
                    }
                };
                let mut changed = Vec::new();
                inner.store.write(|tx| {
                    let old: Option<Vec<u8>> = tx
                        .query_row(
                            "SELECT profile FROM subject_pii WHERE tenant = $1 AND external_id = $2",
                            params![tenant, subject],
                            |r| r.get(0),
                        )
                        .optional()?;
                    let mut profile = old
                        .as_ref()
                        .and_then(|b| Profile::open(&key, tenant, subject, b))
                        .unwrap_or_default();
                    let mut set = |field: &str, value: &str, slot: &mut String| {
                        if !value.is_empty() && value != slot {
                            *slot = value.to_owned();
                            changed.push(field.to_owned());
                        }
                    };
                    set("full_name", &patch.full_name, &mut profile.full_name);
                    set("email", &patch.email, &mut profile.email);
                    set("phone", &patch.phone, &mut profile.phone);
                    set("postal_code", &patch.postal_code, &mut profile.postal_code);
                    set("language", &patch.language, &mut profile.language);
                    if let Some(y) = patch.birth_year
                        && profile.birth_year != Some(u32::from(y))
                    {
                        profile.birth_year = Some(u32::from(y));
                        changed.push("birth_year".into());
                    }
                    if let Some(old) = old {
                        tx.execute(
                            "INSERT INTO subject_pii_history (tenant, external_id, replaced_at, profile)
                             VALUES ($1, $2, $3, $4)",
                            params![tenant, subject, submitted, old],
                        )?;
                    }
                    let sealed = profile.seal(&key, tenant, subject)?;
                    let has_contact = !profile.email.is_empty() || !profile.phone.is_empty();
                    tx.execute(
                        "INSERT INTO subject_pii (tenant, external_id, profile, has_contact)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (tenant, external_id)
                         DO UPDATE SET profile = excluded.profile, has_contact = excluded.has_contact",
                        params![tenant, subject, sealed, has_contact],
                    )?;
                    tx.execute(
                        "INSERT INTO subjects (tenant, external_id, country, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $4)
                         ON CONFLICT (tenant, external_id) DO UPDATE SET updated_at = excluded.updated_at",
                        params![tenant, subject, country, submitted],
                    )?;
                    Ok(())
                })?;
                details["fields_changed"] = json!(changed);
            }
            SubjectRequestKind::Erasure => {
                let suppress_as = self.suppression_ids(tenant, external, subject)?;
                let mut t = self.purge_begin();
                let erased = inner.store.write(|tx| {
                    erase(tx, tenant, subject, &suppress_as, self.now(), Purge::Queued)
                })?;
                t.queued = erased.queued;
                ticket = Some(t);
                details["purge"] = json!(if erased.queued {
                    "after the answer"
                } else {
                    "done"
                });
                details["suppression_kept"] = json!(!suppress_as.is_empty());
                details["interactions_deleted"] = json!(erased.interactions_deleted);
                details["complete"] = json!(erased.complete);
                details["holds"] = json!(
                    erased
                        .held
                        .iter()
                        .map(|h| h.hold_id.clone())
                        .collect::<Vec<_>>()
                );
                if !erased.complete {
                    receipt.status = SubjectRequestStatus::PartiallyCompleted as i32;
                    receipt.completed_at = None;
                }
                receipt.held = erased.held;
                shred = erased.complete.then_some(erased.suppressions);
            }
            SubjectRequestKind::Restriction => {
                inner
                    .store
                    .write(|tx| set_flag(tx, tenant, subject, "restricted"))?;
            }
            SubjectRequestKind::Objection => {
                let policy = policy.clone();
                inner.store.write(|tx| {
                    for purpose in &req.purposes {
                        let change = ConsentChange {
                            tenant: req.tenant.clone(),
                            subject: Subject {
                                country: country.clone(),
                                external_id: subject.to_owned(),
                            },
                            purpose: *purpose,
                            channel: Channel::Unspecified,
                            action: ConsentAction::Object,
                            source: ConsentSource::Api,
                            wording_sha256: None,
                            actor: req.actor.clone(),
                            token_ttl_seconds: 0,
                        };
                        let recorded = consent::record(tx, &region, &policy, &change, self.now())?;
                        self.audit_consent(tx, tenant, subject, &recorded.entry)?;
                    }
                    Ok(())
                })?;
                details["purposes"] = json!(
                    req.purposes
                        .iter()
                        .map(|p| p.as_str_name())
                        .collect::<Vec<_>>()
                );
            }
            SubjectRequestKind::Unspecified => {
                return Err(domicile_proto::error::Violations::one("kind", "required").into());
            }
        }
        inner.store.write(|tx| {
            let held: Vec<_> = receipt.held.iter().map(|h| h.hold_id.clone()).collect();
            tx.execute(
                "INSERT INTO subject_requests (tenant, request_id, subject_id, kind, status,
                   submitted_at, due_at, completed_at, policy_version, held)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                params![
                    tenant,
                    request_id,
                    subject,
                    req.kind as i32,
                    receipt.status,
                    submitted,
                    due,
                    receipt.completed_at.map(|t| t.seconds),
                    receipt.policy_version,
                    serde_json::to_string(&held).unwrap_or_default()
                ],
            )?;
            inner.audit.append(
                tx,
                Entry {
                    kind: if req.kind == SubjectRequestKind::Erasure {
                        Kind::Erasure
                    } else {
                        Kind::SubjectRequest
                    },
                    tenant,
                    subject: Some(&audit_subject),
                    details: details.clone(),
                },
            )?;
            Ok(())
        })?;
        // Crypto-shredding: the data key goes once the subject's other data is deleted (or
        // queued for the purge, which needs no key). The WAL checkpoint that takes the old
        // pages out of the files runs after the purge (`node::purge`), or here when nothing
        // was queued.
        if let Some(suppressions) = shred {
            inner
                .store
                .vault()
                .destroy(tenant, subject, &suppressions)?;
            if !ticket.as_ref().is_some_and(|t| t.queued) {
                scrub(&inner.store);
            }
        }
        drop(ticket);
        tracing::debug!(
            region = %region,
            tenant = %tenant,
            kind = req.kind.as_str_name(),
            "subject request fulfilled"
        );
        Ok(receipt)
    }

    /// The suppression ids an erasure of `subject` keeps its refusals and objections under:
    /// its external id's and its profile's e-mail and phone, when the policy of its country
    /// keeps a suppression (`[erasure] keep_suppression`); none otherwise.
    pub(crate) fn suppression_ids(
        &self,
        tenant: &str,
        external: &str,
        subject: &str,
    ) -> Result<Vec<String>, NodeError> {
        let inner = &self.inner;
        let (country, profile) = inner.store.read(|conn| {
            Ok((
                stored_country(conn, tenant, subject)?,
                crate::domain::stored::profile(&inner.store, conn, tenant, subject)?,
            ))
        })?;
        if !inner.policies.keeps_suppression(country.as_deref()) {
            return Ok(Vec::new());
        }
        let p = &inner.pseudonyms;
        let mut ids = vec![p.suppression_of_subject(tenant, external)];
        if let Some(profile) = profile {
            ids.extend(p.suppression_of_contacts(tenant, &profile.email, &profile.phone));
        }
        Ok(ids)
    }

    /// A receipt, without the export.
    pub async fn get_subject_request(
        &self,
        tenant: domicile_proto::domain::TenantId,
        request_id: String,
    ) -> Result<SubjectRequestReceipt, NodeError> {
        self.blocking(move |node| {
            let region = node.inner.config.region_id.clone();
            node.inner.store.read(|conn| {
                let row = conn
                    .query_row(
                        "SELECT kind, status, submitted_at, due_at, completed_at, policy_version
                         FROM subject_requests WHERE tenant = $1 AND request_id = $2",
                        params![tenant.as_str(), request_id],
                        |r| {
                            Ok(SubjectRequestReceipt {
                                request_id: request_id.clone(),
                                region_id: region.clone(),
                                kind: r.get(0)?,
                                status: r.get(1)?,
                                submitted_at: Some(ts(r.get(2)?)),
                                due_at: Some(ts(r.get(3)?)),
                                completed_at: r.get::<_, Option<i64>>(4)?.map(ts),
                                held: Vec::new(),
                                export: None,
                                policy_version: r.get(5)?,
                            })
                        },
                    )
                    .optional()?;
                row.ok_or_else(|| NodeError::NotFound("no such request in this region".into()))
            })
        })
        .await
    }

    /// Places a legal hold on a subject (or some of its interactions).
    pub async fn place_legal_hold(&self, spec: HoldSpec) -> Result<String, NodeError> {
        self.policy_for(&spec.country, "subject.country")?;
        self.blocking(move |node| {
            let inner = &node.inner;
            let tenant = spec.tenant.as_str();
            let hold_id = format!(
                "{}.hold-{}",
                inner.config.region_id,
                crate::store::kek::random_hex()?
            );
            let reference = inner
                .store
                .vault()
                .find(tenant, &spec.external_id)?
                .map(|k| k.reference)
                .unwrap_or_default();
            inner.store.write(|tx| {
                if reference.is_empty() || !knows(tx, tenant, &reference)? {
                    return Err(NodeError::NotFound(
                        "no data about this subject in this region".into(),
                    ));
                }
                tx.execute(
                    "INSERT INTO legal_holds (tenant, hold_id, subject_id, reason, range_start,
                       range_end, placed_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    params![
                        tenant,
                        hold_id,
                        reference,
                        spec.reason,
                        spec.interactions.map(|r| r.0),
                        spec.interactions.map(|r| r.1),
                        node.now(),
                        spec.expires_at
                    ],
                )?;
                let subject = inner.pseudonyms.audit_subject(tenant, &reference);
                inner.audit.append(
                    tx,
                    Entry {
                        kind: Kind::LegalHold,
                        tenant,
                        subject: Some(&subject),
                        details: json!({
                            "hold_id": hold_id,
                            "action": "place",
                            "whole_subject": spec.interactions.is_none(),
                            "expires_at": spec.expires_at,
                        }),
                    },
                )?;
                Ok(())
            })?;
            Ok(hold_id)
        })
        .await
    }

    /// Releases a hold; an erasure waiting on it completes (true).
    pub async fn release_legal_hold(
        &self,
        tenant: domicile_proto::domain::TenantId,
        hold_id: String,
    ) -> Result<bool, NodeError> {
        self.blocking(move |node| node.end_hold(tenant.as_str(), &hold_id, "release"))
            .await
    }

    /// Ends one hold and completes the subject's pending erasure if nothing else holds it.
    pub(crate) fn end_hold(
        &self,
        tenant: &str,
        hold_id: &str,
        why: &str,
    ) -> Result<bool, NodeError> {
        let inner = &self.inner;
        // Read before the erasure, and only for one that is pending: the profile's contact
        // identifiers go with it.
        let pending: Option<String> = inner.store.read(|conn| {
            conn.query_row(
                "SELECT h.subject_id FROM legal_holds h JOIN subject_flags f
                   ON f.tenant = h.tenant AND f.subject_id = h.subject_id
                 WHERE h.tenant = $1 AND h.hold_id = $2 AND f.erasure_pending = 1",
                params![tenant, hold_id],
                |r| r.get(0),
            )
            .optional()
        })?;
        let suppress_as = match &pending {
            Some(s) => match inner.store.vault().external_id(tenant, s)? {
                Some(external) => self.suppression_ids(tenant, &external, s)?,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        let mut ticket = self.purge_begin();
        let (subject, completed_erasure) = inner.store.write(|tx| {
            let subject: Option<String> = tx
                .query_row(
                    "SELECT subject_id FROM legal_holds WHERE tenant = $1 AND hold_id = $2
                     AND released_at IS NULL",
                    params![tenant, hold_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(subject) = subject else {
                return Err(NodeError::NotFound("no such active hold in this region".into()));
            };
            tx.execute(
                "UPDATE legal_holds SET released_at = $1 WHERE tenant = $2 AND hold_id = $3",
                params![self.now(), tenant, hold_id],
            )?;
            let pending: bool = tx
                .query_row(
                    "SELECT erasure_pending = 1 FROM subject_flags WHERE tenant = $1 AND subject_id = $2",
                    params![tenant, subject],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            let erased = if pending {
                Some(erase(
                    tx,
                    tenant,
                    &subject,
                    &suppress_as,
                    self.now(),
                    Purge::Queued,
                )?)
            } else {
                None
            };
            let audit_subject = inner.pseudonyms.audit_subject(tenant, &subject);
            inner.audit.append(
                tx,
                Entry {
                    kind: Kind::LegalHold,
                    tenant,
                    subject: Some(&audit_subject),
                    details: json!({
                        "hold_id": hold_id,
                        "action": why,
                        "erasure_completed": erased.as_ref().is_some_and(|e| e.complete),
                    }),
                },
            )?;
            Ok((subject, erased.filter(|e| e.complete)))
        })?;
        let completed = completed_erasure.is_some();
        if let Some(erased) = completed_erasure {
            ticket.queued = erased.queued;
            inner
                .store
                .vault()
                .destroy(tenant, &subject, &erased.suppressions)?;
            if !erased.queued {
                scrub(&inner.store);
            }
            inner.store.write(|tx| {
                tx.execute(
                    "UPDATE subject_requests SET status = $1, completed_at = $2
                     WHERE tenant = $3 AND subject_id = $4 AND status = $5",
                    params![
                        SubjectRequestStatus::Completed as i32,
                        self.now(),
                        tenant,
                        subject,
                        SubjectRequestStatus::PartiallyCompleted as i32
                    ],
                )?;
                Ok(())
            })?;
        }
        Ok(completed)
    }

    /// Ends every hold whose expiry has passed, completing the erasures they delayed. Returns
    /// (holds ended, erasures completed).
    pub fn expire_holds(&self) -> Result<(usize, usize), NodeError> {
        let expired: Vec<(String, String)> = self.inner.store.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT tenant, hold_id FROM legal_holds WHERE released_at IS NULL AND expires_at <= $1",
            )?;
            let rows = stmt.query_map([self.now()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()
        })?;
        let mut completed = 0;
        for (tenant, hold) in &expired {
            if self.end_hold(tenant, hold, "expire")? {
                completed += 1;
            }
        }
        Ok((expired.len(), completed))
    }
}
