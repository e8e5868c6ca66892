//! Subject rights as the node serves them: requests (access, portability, rectification,
//! erasure, restriction), legal holds and their release, each checked, recorded and audited.
//! What an erasure deletes, and the flags restriction sets, are [`crate::domain::rights`].

use crate::domain::cases::{self, Case, Deadline};
use crate::domain::policy::CountryPolicy;
use crate::domain::rights::{Purge, active_holds, erase, knows, scrub, set_flag, stored_country};
use crate::node::purge::PurgeTicket;
use crate::store::db::{Connection, OptionalExtension, params};
use crate::{
    domain::audit::{Entry, Kind},
    domain::consent,
    domain::ingest::{Verdict, open_envelope},
    domain::stored::{Profile, RecordBody},
    error::NodeError,
    node::Node,
    store::vault::{KeptSuppression, SubjectKey, comment_aad, interaction_id_aad},
};
use domicile_proto::{
    consent::{ConsentChange, ConsentQuestion, Subject},
    domain::{TenantId, whole_seconds as ts},
    pb::{
        Channel, ConsentAction, ConsentSource, HeldData, Purpose, SealedEnvelope, SealedExport,
        SubjectRequestKind, SubjectRequestQueueCounts, SubjectRequestReceipt, SubjectRequestStatus,
    },
    rights::{CaseQuery, CaseUpdate, HoldSpec, PageStart, RightsRequest, Step, needs_dpo},
    seal::{PublicSealingKey, seal_export},
};

/// Whether a request of this kind answers with an export.
fn needs_export(kind: SubjectRequestKind) -> bool {
    matches!(
        kind,
        SubjectRequestKind::Access | SubjectRequestKind::Portability
    )
}
use serde_json::json;

fn channel_name(raw: i32) -> &'static str {
    Channel::try_from(raw).map_or("", |c| c.as_str_name())
}

/// What fulfilling a request needs, whether it arrived just now or waited for verification.
struct Work<'a> {
    tenant: &'a TenantId,
    external: &'a str,
    key: &'a SubjectKey,
    country: &'a str,
    policy: &'a CountryPolicy,
    request_id: &'a str,
    kind: SubjectRequestKind,
    recipient: Option<&'a PublicSealingKey>,
    rectification: Option<&'a SealedEnvelope>,
    purposes: &'a [Purpose],
    actor: &'a str,
    /// When the work is done (a rectification's history is stamped with it).
    at: i64,
}

/// What fulfilling a request did.
struct Done {
    status: SubjectRequestStatus,
    completed_at: Option<i64>,
    held: Vec<HeldData>,
    export: Option<SealedExport>,
    details: serde_json::Value,
    /// The suppressions to keep when the data key is destroyed (a complete erasure).
    shred: Option<Vec<KeptSuppression>>,
    /// An erasure's purge ticket ([`Node::purge_begin`]), dropped once it is answered.
    ticket: Option<PurgeTicket>,
}

/// The profile's columns in a portability export's CSV.
const PROFILE_COLUMNS: [&str; 6] = [
    "full_name",
    "email",
    "phone",
    "postal_code",
    "language",
    "birth_year",
];
/// The interactions' columns in a portability export's CSV (the survey's fields flattened).
const INTERACTION_COLUMNS: [&str; 14] = [
    "interaction_id",
    "channel",
    "direction",
    "started_at",
    "ended_at",
    "handle_time_seconds",
    "outcome",
    "agent_team",
    "recorded",
    "survey_id",
    "nps",
    "csat",
    "ces",
    "comment",
];

/// A portability export's records as CSV, one table per record kind (`profile`,
/// `interactions`), with a header row; empty cells for absent values.
fn portability_csv(doc: &serde_json::Value) -> Result<serde_json::Value, NodeError> {
    fn cell(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    fn table<'a>(
        columns: &[&str],
        rows: impl Iterator<Item = Vec<String>> + 'a,
    ) -> Result<String, NodeError> {
        let mut out = csv::Writer::from_writer(Vec::new());
        let failed = |e: csv::Error| NodeError::Internal(format!("writing the export's CSV: {e}"));
        out.write_record(columns).map_err(failed)?;
        for row in rows {
            out.write_record(&row).map_err(failed)?;
        }
        let bytes = out
            .into_inner()
            .map_err(|e| NodeError::Internal(format!("writing the export's CSV: {e}")))?;
        String::from_utf8(bytes).map_err(|e| NodeError::Internal(e.to_string()))
    }
    let profile = doc["profile"]
        .as_object()
        .map(|p| PROFILE_COLUMNS.iter().map(|c| cell(&p[*c])).collect());
    let interactions = doc["interactions"].as_array().cloned().unwrap_or_default();
    let rows = interactions.iter().map(|i| {
        INTERACTION_COLUMNS
            .iter()
            .map(|c| match *c {
                "survey_id" | "nps" | "csat" | "ces" | "comment" => cell(&i["survey"][*c]),
                other => cell(&i[other]),
            })
            .collect()
    });
    Ok(json!({
        "profile": table(&PROFILE_COLUMNS, profile.into_iter())?,
        "interactions": table(&INTERACTION_COLUMNS, rows)?,
    }))
}

/// The export document (`docs/export-schema.md`).
fn export_document(
    node: &Node,
    conn: &Connection,
    w: &Work<'_>,
) -> Result<serde_json::Value, NodeError> {
    let inner = &node.inner;
    let (key, request_id, country) = (w.key, w.request_id, w.country);
    let tenant = w.tenant.as_str();
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
        "kind": if w.kind == SubjectRequestKind::Access { "access" } else { "portability" },
        "request_id": request_id,
        "region": inner.config.region_id,
        "tenant": tenant,
        "generated_at": node.now(),
        "subject": { "external_id": w.external, "country": country },
        "profile": profile,
        "interactions": interactions,
    });
    if w.kind == SubjectRequestKind::Portability {
        doc["csv"] = portability_csv(&doc)?;
    }
    if w.kind == SubjectRequestKind::Access {
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
                tenant: w.tenant.clone(),
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
    /// Takes a data-subject request for a subject of this region: fulfils it at once, or (for
    /// access, portability and erasure without the platform's identity verification) opens
    /// its case to wait for the verification.
    pub async fn submit_subject_request(
        &self,
        req: RightsRequest,
    ) -> Result<SubjectRequestReceipt, NodeError> {
        if let Some(country) = &req.country {
            self.policy_for(country, "subject.country")?;
        }
        self.blocking(move |node| node.submit(&req)).await
    }

    /// The policy of a subject's country (or the region's first, for a subject without one).
    fn policy_of(&self, country: &str) -> Result<&CountryPolicy, NodeError> {
        let inner = &self.inner;
        inner
            .policies
            .get(country)
            .or_else(|| inner.policies.iter().next())
            .ok_or_else(|| NodeError::Internal("no policy".into()))
    }

    fn submit(&self, req: &RightsRequest) -> Result<SubjectRequestReceipt, NodeError> {
        let inner = &self.inner;
        let region = inner.config.region_id.clone();
        let tenant = req.tenant.as_str();
        let external = req.external_id.as_str();
        // Submitted again (a client retrying after a region was down, or a lost answer): the
        // request this region already has, unchanged — looked up first, since an erasure done
        // the first time leaves no subject to find.
        if let Some(id) = &req.federation_id
            && let Some(case) = inner
                .store
                .read(|conn| cases::by_federation_id(conn, tenant, id))?
        {
            let same_subject = match inner.store.vault().find(tenant, external)? {
                Some(k) => k.reference == case.subject,
                None => true,
            };
            if case.kind != req.kind || !same_subject {
                return Err(domicile_proto::error::Violations::one(
                    "request_id",
                    "already used for another request",
                )
                .into());
            }
            return self.receipt_with_history(tenant, &case);
        }
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
        let policy = self.policy_of(&country)?;
        let submitted = self.now();
        let request_id = format!("{region}.sr-{}", crate::store::kek::random_hex()?);
        let waits = needs_dpo(req.kind) && req.verification.is_none();
        let verification = req.verification.as_ref().map(|v| v.recorded_at(submitted));
        let case = Case {
            request_id: request_id.clone(),
            subject: subject.to_owned(),
            kind: req.kind,
            status: if waits {
                SubjectRequestStatus::Received
            } else {
                SubjectRequestStatus::InProgress
            },
            submitted_at: submitted,
            due_at: policy.deadlines.subject_request().after(submitted),
            closed_at: None,
            policy_version: policy.label(),
            paused_since: None,
            extension_reason: None,
            refusal_reason: None,
            recipient: if waits {
                req.recipient.as_ref().map(|k| k.as_bytes().to_vec())
            } else {
                None
            },
            verification,
            federation_id: req.federation_id.clone(),
        };
        let audit_subject = inner.pseudonyms.audit_subject(tenant, subject);
        if waits {
            inner.store.write(|tx| {
                cases::insert(tx, tenant, &case, &req.actor)?;
                self.audit_request(
                    tx,
                    tenant,
                    &audit_subject,
                    json!({
                        "request_id": request_id,
                        "kind": req.kind.as_str_name(),
                        "action": "received",
                        "awaits": "identity verification",
                    }),
                )?;
                Ok(())
            })?;
            return self.receipt_with_history(tenant, &case);
        }
        let work = Work {
            tenant: &req.tenant,
            external,
            key: &key,
            country: &country,
            policy,
            request_id: &request_id,
            kind: req.kind,
            recipient: req.recipient.as_ref(),
            rectification: req.rectification.as_ref(),
            purposes: &req.purposes,
            actor: &req.actor,
            at: submitted,
        };
        let done = self.perform(&work)?;
        self.finish(&work, subject, done, |tx| {
            cases::insert(tx, tenant, &case, &req.actor)?;
            if let Some(v) = &req.verification {
                cases::event(
                    tx,
                    tenant,
                    &request_id,
                    submitted,
                    "verified",
                    SubjectRequestStatus::InProgress,
                    &v.verified_by,
                    "",
                )?;
            }
            Ok(())
        })
    }

    /// Carries out a request whose identity is verified (or needs none).
    fn perform(&self, w: &Work<'_>) -> Result<Done, NodeError> {
        let inner = &self.inner;
        let region = inner.config.region_id.clone();
        let tenant = w.tenant.as_str();
        let external = w.external;
        let key = w.key;
        let subject = key.reference.as_str();
        let mut done = Done {
            status: SubjectRequestStatus::Completed,
            completed_at: Some(w.at),
            held: Vec::new(),
            export: None,
            details: json!({ "request_id": w.request_id, "kind": w.kind.as_str_name() }),
            shred: None,
            ticket: None,
        };
        match w.kind {
            SubjectRequestKind::Access | SubjectRequestKind::Portability => {
                let doc = inner.store.read(|conn| export_document(self, conn, w))?;
                let plaintext =
                    serde_json::to_vec(&doc).map_err(|e| NodeError::Internal(e.to_string()))?;
                let recipient = w.recipient.ok_or_else(|| {
                    NodeError::Internal("validated requests carry a recipient".into())
                })?;
                let (enc, ct) = seal_export(
                    recipient,
                    tenant,
                    &region,
                    w.request_id.as_bytes(),
                    &plaintext,
                )
                .map_err(|e| NodeError::Internal(format!("sealing the export: {e}")))?;
                done.details["export_bytes"] = json!(ct.len());
                done.export = Some(SealedExport {
                    encapsulated_key: enc,
                    ciphertext: ct,
                    schema: "domicile.export.v1".into(),
                });
            }
            SubjectRequestKind::Rectification => {
                let envelope = w.rectification.ok_or_else(|| {
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
                        .and_then(|b| Profile::open(key, tenant, subject, b))
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
                            params![tenant, subject, w.at, old],
                        )?;
                    }
                    let sealed = profile.seal(key, tenant, subject)?;
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
                        params![tenant, subject, w.country, w.at],
                    )?;
                    Ok(())
                })?;
                done.details["fields_changed"] = json!(changed);
            }
            SubjectRequestKind::Erasure => {
                let suppress_as = self.suppression_ids(tenant, external, subject)?;
                let mut t = self.purge_begin();
                let erased = inner.store.write(|tx| {
                    erase(tx, tenant, subject, &suppress_as, self.now(), Purge::Queued)
                })?;
                t.queued = erased.queued;
                done.ticket = Some(t);
                done.details["purge"] = json!(if erased.queued {
                    "after the answer"
                } else {
                    "done"
                });
                done.details["suppression_kept"] = json!(!suppress_as.is_empty());
                done.details["interactions_deleted"] = json!(erased.interactions_deleted);
                done.details["complete"] = json!(erased.complete);
                done.details["holds"] = json!(
                    erased
                        .held
                        .iter()
                        .map(|h| h.hold_id.clone())
                        .collect::<Vec<_>>()
                );
                if !erased.complete {
                    done.status = SubjectRequestStatus::PartiallyCompleted;
                    done.completed_at = None;
                }
                done.held = erased.held;
                done.shred = erased.complete.then_some(erased.suppressions);
            }
            SubjectRequestKind::Restriction => {
                inner
                    .store
                    .write(|tx| set_flag(tx, tenant, subject, "restricted"))?;
            }
            SubjectRequestKind::Objection => {
                let policy = w.policy.clone();
                inner.store.write(|tx| {
                    for purpose in w.purposes {
                        let change = ConsentChange {
                            tenant: w.tenant.clone(),
                            subject: Subject {
                                country: w.country.to_owned(),
                                external_id: subject.to_owned(),
                            },
                            purpose: *purpose,
                            channel: Channel::Unspecified,
                            action: ConsentAction::Object,
                            source: ConsentSource::Api,
                            wording_sha256: None,
                            actor: w.actor.to_owned(),
                            token_ttl_seconds: 0,
                        };
                        let recorded = consent::record(tx, &region, &policy, &change, self.now())?;
                        self.audit_consent(tx, tenant, subject, &recorded.entry)?;
                    }
                    Ok(())
                })?;
                done.details["purposes"] = json!(
                    w.purposes
                        .iter()
                        .map(|p| p.as_str_name())
                        .collect::<Vec<_>>()
                );
            }
            SubjectRequestKind::Unspecified => {
                return Err(domicile_proto::error::Violations::one("kind", "required").into());
            }
        }
        Ok(done)
    }

    /// Records a request's fulfilment (with `record`, what else the transaction writes: the
    /// new case, or the case's step), audits it, destroys an erased subject's key, and answers
    /// the receipt.
    fn finish(
        &self,
        w: &Work<'_>,
        subject: &str,
        mut done: Done,
        record: impl Fn(&Connection) -> Result<(), NodeError>,
    ) -> Result<SubjectRequestReceipt, NodeError> {
        let inner = &self.inner;
        let tenant = w.tenant.as_str();
        let audit_subject = inner.pseudonyms.audit_subject(tenant, subject);
        let action = if done.status == SubjectRequestStatus::Completed {
            "completed"
        } else {
            "partially_completed"
        };
        done.details["action"] = json!(action);
        let now = self.now();
        let export_expires = now + i64::from(w.policy.retention.exports) * 86_400;
        inner.store.write(|tx| {
            record(tx)?;
            if let Some(export) = &done.export {
                cases::store_export(
                    tx,
                    tenant,
                    w.request_id,
                    subject,
                    export,
                    now,
                    export_expires,
                )?;
            }
            cases::fulfilled(
                tx,
                tenant,
                w.request_id,
                done.status,
                done.completed_at,
                &done.held,
            )?;
            cases::event(
                tx,
                tenant,
                w.request_id,
                self.now(),
                action,
                done.status,
                w.actor,
                "",
            )?;
            inner.audit.append(
                tx,
                Entry {
                    kind: if w.kind == SubjectRequestKind::Erasure {
                        Kind::Erasure
                    } else {
                        Kind::SubjectRequest
                    },
                    tenant,
                    subject: Some(&audit_subject),
                    details: done.details.clone(),
                },
            )?;
            Ok(())
        })?;
        // Crypto-shredding: the data key goes once the subject's other data is deleted (or
        // queued for the purge, which needs no key). The WAL checkpoint that takes the old
        // pages out of the files runs after the purge (`node::purge`), or here when nothing
        // was queued.
        if let Some(suppressions) = &done.shred {
            inner.store.vault().destroy(tenant, subject, suppressions)?;
            if !done.ticket.as_ref().is_some_and(|t| t.queued) {
                scrub(&inner.store);
            }
        }
        drop(done.ticket.take());
        tracing::debug!(
            region = %inner.config.region_id,
            tenant = %tenant,
            kind = w.kind.as_str_name(),
            "subject request fulfilled"
        );
        let case = inner
            .store
            .read(|conn| cases::load(conn, tenant, w.request_id))?
            .ok_or_else(|| NodeError::Internal("a request just written is gone".into()))?;
        let mut receipt = self.receipt_with_history(tenant, &case)?;
        receipt.export = done.export;
        Ok(receipt)
    }

    /// A case's receipt with its history and held data, signed by the region's identity key
    /// (no export).
    fn receipt_with_history(
        &self,
        tenant: &str,
        case: &Case,
    ) -> Result<SubjectRequestReceipt, NodeError> {
        let mut receipt = case.receipt(&self.inner.config.region_id, self.now());
        let expiry;
        (receipt.events, receipt.held, expiry) = self.inner.store.read(|conn| {
            Ok((
                cases::events(conn, tenant, &case.request_id)?,
                cases::held(conn, tenant, &case.request_id)?,
                cases::export_expiry(conn, tenant, &case.request_id)?,
            ))
        })?;
        receipt.export_expires_at = expiry.map(ts);
        self.inner.audit.sign_receipt(&mut receipt);
        Ok(receipt)
    }

    /// Appends a subject-request entry to the audit log, attributed to the subject's audit
    /// pseudonym `audit_subject`.
    fn audit_request(
        &self,
        tx: &Connection,
        tenant: &str,
        audit_subject: &str,
        details: serde_json::Value,
    ) -> Result<(), NodeError> {
        self.inner.audit.append(
            tx,
            Entry {
                kind: Kind::SubjectRequest,
                tenant,
                subject: Some(audit_subject),
                details,
            },
        )?;
        Ok(())
    }

    /// The kind of a request of this region, to decide whether a step needs the DPO's
    /// signature.
    pub async fn subject_request_kind(
        &self,
        tenant: TenantId,
        request_id: String,
    ) -> Result<SubjectRequestKind, NodeError> {
        self.blocking(move |node| {
            node.inner
                .store
                .read(|conn| cases::load(conn, tenant.as_str(), &request_id))?
                .map(|c| c.kind)
                .ok_or_else(|| NodeError::NotFound("no such request in this region".into()))
        })
        .await
    }

    /// Takes one step of a request's case; a verification fulfils the request.
    pub async fn update_subject_request(
        &self,
        update: CaseUpdate,
    ) -> Result<SubjectRequestReceipt, NodeError> {
        self.blocking(move |node| node.step(&update)).await
    }

    fn step(&self, update: &CaseUpdate) -> Result<SubjectRequestReceipt, NodeError> {
        let inner = &self.inner;
        let tenant = update.tenant.as_str();
        let case = inner
            .store
            .read(|conn| cases::load(conn, tenant, &update.request_id))?
            .ok_or_else(|| NodeError::NotFound("no such request in this region".into()))?;
        let country = case
            .policy_version
            .split_once('@')
            .map_or("", |(c, _)| c)
            .to_owned();
        let policy = self.policy_of(&country)?;
        let d = &policy.deadlines;
        let deadline = Deadline {
            period: d.subject_request(),
            extension: d.subject_request_extension(),
            pauses: d.pause_awaiting_subject,
        };
        let now = self.now();
        let change = cases::next(&case, &update.step, &deadline, now)?;
        let reason = match &update.step {
            Step::Verify(_) => "",
            Step::AwaitSubject(r) | Step::Extend(r) | Step::Refuse(r) => r.as_str(),
        };
        let actor = match &update.step {
            Step::Verify(v) => v.verified_by.as_str(),
            _ => update.actor.as_str(),
        };
        let audit_subject = inner.pseudonyms.audit_subject(tenant, &case.subject);
        inner.store.write(|tx| {
            cases::apply(tx, tenant, &case, &update.step, &change, now)?;
            cases::event(
                tx,
                tenant,
                &case.request_id,
                now,
                update.step.action(),
                change.status,
                actor,
                reason,
            )?;
            self.audit_request(
                tx,
                tenant,
                &audit_subject,
                json!({
                    "request_id": case.request_id,
                    "kind": case.kind.as_str_name(),
                    "action": update.step.action(),
                    "status": change.status.as_str_name(),
                    "due_at": change.due_at,
                }),
            )?;
            Ok(())
        })?;
        let case = inner
            .store
            .read(|conn| cases::load(conn, tenant, &case.request_id))?
            .ok_or_else(|| NodeError::Internal("a request just written is gone".into()))?;
        if !matches!(update.step, Step::Verify(_)) {
            return self.receipt_with_history(tenant, &case);
        }
        // Verified: fulfil what the request asked.
        let gone = || {
            NodeError::FailedPrecondition(
                "the subject's data is no longer held in this region (erased since the request)"
                    .into(),
            )
        };
        let external = inner
            .store
            .vault()
            .external_id(tenant, &case.subject)?
            .ok_or_else(gone)?;
        let key = inner
            .store
            .vault()
            .find(tenant, &external)?
            .ok_or_else(gone)?;
        let recipient = case
            .recipient
            .as_deref()
            .map(PublicSealingKey::from_bytes)
            .transpose()
            .map_err(|e| NodeError::Internal(format!("a stored recipient key: {e}")))?;
        if needs_export(case.kind) && recipient.is_none() {
            return Err(NodeError::Internal(
                "an export request without its recipient".into(),
            ));
        }
        let work = Work {
            tenant: &update.tenant,
            external: &external,
            key: &key,
            country: &country,
            policy,
            request_id: &case.request_id,
            kind: case.kind,
            recipient: recipient.as_ref(),
            rectification: None,
            purposes: &[],
            actor,
            at: now,
        };
        let done = self.perform(&work)?;
        self.finish(&work, &case.subject, done, |_| Ok(()))
    }

    /// A fulfilled access or portability request's export, as it was sealed, and when it
    /// expires; each fetch is recorded in the request's history and audited.
    pub async fn fetch_subject_request_export(
        &self,
        tenant: TenantId,
        request_id: String,
    ) -> Result<(SealedExport, i64), NodeError> {
        self.blocking(move |node| {
            let inner = &node.inner;
            let tenant = tenant.as_str();
            let now = node.now();
            let (case, export) = inner.store.read(|conn| {
                Ok((
                    cases::load(conn, tenant, &request_id)?,
                    cases::export(conn, tenant, &request_id)?,
                ))
            })?;
            let case =
                case.ok_or_else(|| NodeError::NotFound("no such request in this region".into()))?;
            let (export, expires_at) = export.filter(|(_, e)| *e > now).ok_or_else(|| {
                NodeError::NotFound(
                    "no export for this request: not an access or portability request, not \
                     fulfilled yet, or expired (and destroyed)"
                        .into(),
                )
            })?;
            let audit_subject = inner.pseudonyms.audit_subject(tenant, &case.subject);
            inner.store.write(|tx| {
                cases::event(
                    tx,
                    tenant,
                    &request_id,
                    now,
                    "export_fetched",
                    case.status,
                    "",
                    "",
                )?;
                node.audit_request(
                    tx,
                    tenant,
                    &audit_subject,
                    json!({
                        "request_id": request_id,
                        "action": "export_fetched",
                        "export_bytes": export.ciphertext.len(),
                    }),
                )?;
                Ok(())
            })?;
            Ok((export, expires_at))
        })
        .await
    }

    /// Destroys the exports whose time is up (in the retention sweep's transaction `tx`),
    /// recording each in its request's history and the audit log; returns how many.
    pub(crate) fn destroy_expired_exports(
        &self,
        tx: &Connection,
        now: i64,
    ) -> Result<usize, NodeError> {
        let inner = &self.inner;
        let destroyed = cases::destroy_expired_exports(tx, now)?;
        for (tenant, request_id, subject) in &destroyed {
            let status = cases::load(tx, tenant, request_id)?
                .map_or(SubjectRequestStatus::Completed, |c| c.status);
            cases::event(
                tx,
                tenant,
                request_id,
                now,
                "export_destroyed",
                status,
                "node",
                "",
            )?;
            let audit_subject = inner.pseudonyms.audit_subject(tenant, subject);
            self.audit_request(
                tx,
                tenant,
                &audit_subject,
                json!({ "request_id": request_id, "action": "export_destroyed" }),
            )?;
        }
        Ok(destroyed.len())
    }

    /// One page of this region's case queue, and its counts.
    pub async fn list_subject_requests(
        &self,
        query: CaseQuery,
        start: PageStart,
    ) -> Result<(Vec<SubjectRequestReceipt>, SubjectRequestQueueCounts), NodeError> {
        self.blocking(move |node| {
            let region = node.inner.config.region_id.clone();
            let now = node.now();
            let tenant = query.tenant.as_str();
            node.inner.store.read(|conn| {
                let page = cases::page(conn, tenant, &query, &start, now)?;
                let counts = cases::counts(conn, tenant, &region, now)?;
                Ok((
                    page.iter().map(|c| c.receipt(&region, now)).collect(),
                    counts,
                ))
            })
        })
        .await
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

    /// A receipt, without the export, with its history.
    pub async fn get_subject_request(
        &self,
        tenant: TenantId,
        request_id: String,
    ) -> Result<SubjectRequestReceipt, NodeError> {
        self.blocking(move |node| {
            let tenant = tenant.as_str();
            let case = node
                .inner
                .store
                .read(|conn| cases::load(conn, tenant, &request_id))?
                .ok_or_else(|| NodeError::NotFound("no such request in this region".into()))?;
            node.receipt_with_history(tenant, &case)
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
        tenant: TenantId,
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
            let now = self.now();
            let actor = if why == "expire" { "node" } else { "dpo" };
            inner.store.write(|tx| {
                let waiting: Vec<String> = tx.query_map(
                    "SELECT request_id FROM subject_requests
                     WHERE tenant = $1 AND subject_id = $2 AND status = $3",
                    params![
                        tenant,
                        subject,
                        SubjectRequestStatus::PartiallyCompleted as i32
                    ],
                    |r| r.get(0),
                )?;
                for request_id in &waiting {
                    tx.execute(
                        "UPDATE subject_requests SET status = $1, completed_at = $2
                         WHERE tenant = $3 AND request_id = $4",
                        params![
                            SubjectRequestStatus::Completed as i32,
                            now,
                            tenant,
                            request_id
                        ],
                    )?;
                    cases::event(
                        tx,
                        tenant,
                        request_id,
                        now,
                        "hold_ended",
                        SubjectRequestStatus::Completed,
                        actor,
                        hold_id,
                    )?;
                }
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
