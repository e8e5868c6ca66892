//! Opening and checking one sealed envelope (or a batch sent in clear by an in-country system):
//! every record gets its own verdict, and no bad record affects another.
//!
//! Checks run cheapest and most telling first: metadata shape, jurisdiction (a record for a
//! country outside the node's jurisdiction is refused without being opened), the seal, the
//! payload's kind, then the payload's fields.

use std::collections::HashSet;

use domicile_proto::{
    domain::{Interaction, Subject, is_country_code, is_valid_id},
    pb::{
        LocalRecord, RecordKind, RecordPayload, RecordResult, RecordStatus, RejectReason,
        SealedEnvelope, record_payload::Record,
    },
    seal::{EnvelopeOpener, SealingKeyPair, payload_kind},
};

use crate::{
    config::Vocabulary,
    domain::stored::{RecordBody, StoredRecord},
};

/// The verdict on one record before storage.
#[derive(Debug)]
pub enum Verdict {
    /// Valid; to be stored.
    Store(Box<StoredRecord>),
    /// Refused, with the reason and a description that names a field, never a value.
    Reject(RejectReason, String),
}

/// Opens and validates every record of `envelope`, in order.
pub fn open_envelope(
    keys: &SealingKeyPair,
    tenant: &str,
    jurisdiction: &[String],
    envelope: &SealedEnvelope,
) -> Vec<Verdict> {
    if envelope.key_id != keys.public().key_id() {
        return reject_all(
            envelope,
            RejectReason::UnknownKey,
            "envelope.key_id: not a key of this region; fetch ListRegions again",
        );
    }
    let opener = match EnvelopeOpener::new(
        keys,
        tenant,
        &envelope.region_id,
        &envelope.encapsulated_key,
    ) {
        Ok(o) => o,
        Err(_) => {
            return reject_all(
                envelope,
                RejectReason::SealInvalid,
                "envelope.encapsulated_key: not a valid X25519 encapsulated key",
            );
        }
    };
    let mut seen = HashSet::with_capacity(envelope.records.len());
    envelope
        .records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            // Only a rejection names the record; valid ones need no string.
            let path = Indexed("envelope.records", i);
            let kind = match check_metadata(
                &path,
                &mut seen,
                jurisdiction,
                (record.seq, &record.idempotency_key, &record.country),
                Some(record.kind),
            ) {
                Ok(kind) => kind.expect("a declared kind is checked"),
                Err(v) => return v,
            };
            let payload = match opener.open(record) {
                Ok(p) => p,
                Err(domicile_proto::seal::SealError::MalformedPayload) => {
                    return Verdict::Reject(
                        RejectReason::PayloadInvalid,
                        format!("{path}.ciphertext: opened, but is not a RecordPayload message"),
                    );
                }
                Err(e) => {
                    return Verdict::Reject(
                        RejectReason::SealInvalid,
                        format!("{path}.ciphertext: {e}"),
                    );
                }
            };
            if payload_kind(&payload) != kind {
                return Verdict::Reject(
                    RejectReason::KindMismatch,
                    format!("{path}.kind: the payload is not of the declared kind"),
                );
            }
            validate(&path, payload, &record.idempotency_key, &record.country)
        })
        .collect()
}

/// The verdicts on records sent in clear by an in-country system (`LocalNode.Ingest`): the
/// same checks as a sealed envelope's records, the seal aside.
pub fn check_plain(jurisdiction: &[String], records: &[LocalRecord]) -> Vec<Verdict> {
    let mut seen = HashSet::with_capacity(records.len());
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let path = Indexed("records", i);
            if let Err(v) = check_metadata(
                &path,
                &mut seen,
                jurisdiction,
                (record.seq, &record.idempotency_key, &record.country),
                None,
            ) {
                return v;
            }
            match &record.payload {
                Some(payload) if payload.record.is_some() => validate(
                    &path,
                    payload.clone(),
                    &record.idempotency_key,
                    &record.country,
                ),
                _ => Verdict::Reject(
                    RejectReason::PayloadInvalid,
                    format!("{path}.payload: a subject or an interaction is required"),
                ),
            }
        })
        .collect()
}

/// A record's routing metadata: its `seq` unique in the batch, its idempotency key, its
/// country (one of `jurisdiction`) and, when declared, its kind (returned).
fn check_metadata(
    path: &Indexed,
    seen: &mut HashSet<u32>,
    jurisdiction: &[String],
    (seq, idempotency_key, country): (u32, &str, &str),
    kind: Option<i32>,
) -> Result<Option<RecordKind>, Verdict> {
    let reject = |reason, detail: String| Err(Verdict::Reject(reason, detail));
    if !seen.insert(seq) {
        return reject(
            RejectReason::MetadataInvalid,
            format!("{path}.seq: duplicate within the envelope"),
        );
    }
    if !is_valid_id(idempotency_key) {
        return reject(
            RejectReason::MetadataInvalid,
            format!("{path}.idempotency_key: must be 1 to 128 bytes without control characters"),
        );
    }
    if !is_country_code(country) {
        return reject(
            RejectReason::MetadataInvalid,
            format!("{path}.country: must be an ISO 3166-1 alpha-2 code in upper case"),
        );
    }
    let kind = match kind.map(RecordKind::try_from) {
        None => None,
        Some(Ok(RecordKind::Unspecified) | Err(_)) => {
            return reject(
                RejectReason::MetadataInvalid,
                format!("{path}.kind: must be RECORD_KIND_SUBJECT or RECORD_KIND_INTERACTION"),
            );
        }
        Some(Ok(k)) => Some(k),
    };
    if !jurisdiction.iter().any(|c| c == country) {
        return reject(
            RejectReason::CountryOutsideJurisdiction,
            format!("{path}.country: {country} is outside this region's jurisdiction"),
        );
    }
    Ok(kind)
}

/// The verdict on a payload with a record in it.
fn validate(
    path: &Indexed,
    payload: RecordPayload,
    idempotency_key: &str,
    country: &str,
) -> Verdict {
    let body = match payload.record {
        Some(Record::Subject(s)) => {
            Subject::validate(s, "payload.subject").map(RecordBody::Subject)
        }
        Some(Record::Interaction(r)) => {
            Interaction::validate(r, "payload.interaction").map(RecordBody::Interaction)
        }
        None => unreachable!("a record is checked by the caller"),
    };
    match body {
        Ok(body) => Verdict::Store(Box::new(StoredRecord {
            idempotency_key: idempotency_key.to_owned(),
            sealed_id: None,
            country: country.to_owned(),
            body,
        })),
        Err(v) => Verdict::Reject(RejectReason::PayloadInvalid, format!("{path}: {v}")),
    }
}

/// `envelope.records[i]` (or `records[i]`), formatted only when a rejection describes the
/// record.
struct Indexed(&'static str, usize);

impl std::fmt::Display for Indexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

fn reject_all(envelope: &SealedEnvelope, reason: RejectReason, detail: &str) -> Vec<Verdict> {
    envelope
        .records
        .iter()
        .map(|_| Verdict::Reject(reason, detail.to_owned()))
        .collect()
}

/// A per-record result for the wire.
pub fn result(
    seq: u32,
    idempotency_key: &str,
    status: RecordStatus,
    reason: RejectReason,
    detail: String,
) -> RecordResult {
    RecordResult {
        envelope_index: 0,
        seq,
        idempotency_key: idempotency_key.to_owned(),
        status: status as i32,
        reason: reason as i32,
        detail,
    }
}

/// Refuses, per record, interactions whose `outcome`, `agent_team` or `survey_id` is outside
/// the tenant's vocabulary (`[vocabulary.<tenant>]`), naming the field. Records of a tenant
/// without one pass unchanged (their values are codes already: the envelope's validation
/// refuses anything else).
/// `prefix` names the list the records came in (`envelope.records` or `records`).
pub fn check_vocabulary(
    vocabulary: Option<&Vocabulary>,
    prefix: &'static str,
    verdicts: &mut [Verdict],
) {
    let Some(vocabulary) = vocabulary else {
        return;
    };
    for (n, verdict) in verdicts.iter_mut().enumerate() {
        let Verdict::Store(r) = verdict else {
            continue;
        };
        let RecordBody::Interaction(i) = &r.body else {
            continue;
        };
        let values = [
            Some(i.outcome.as_str()).filter(|v| !v.is_empty()),
            Some(i.agent_team.as_str()).filter(|v| !v.is_empty()),
            i.survey.as_ref().map(|s| s.survey_id.as_str()),
        ];
        let outside =
            vocabulary
                .lists()
                .into_iter()
                .zip(values)
                .find_map(|((field, list), value)| {
                    let (list, value) = (list?, value?);
                    (!list.iter().any(|c| c == value)).then_some(field)
                });
        if let Some(field) = outside {
            *verdict = Verdict::Reject(
                RejectReason::PayloadInvalid,
                format!(
                    "{}.payload.interaction.{field}: not in this tenant's vocabulary",
                    Indexed(prefix, n)
                ),
            );
        }
    }
}
