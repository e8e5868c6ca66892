//! Ingest routing: checks each sealed record's cleartext country against the directory and
//! groups what may go on into one forward per envelope. The gateway never opens a payload.

use std::sync::Arc;

use domicile_proto::{
    error::Violations,
    pb::{RecordResult, RecordStatus, RejectReason, SealedEnvelope},
};

use crate::federation::directory::{Directory, Region};

/// An envelope on its way to its region, holding only the records that passed routing.
#[derive(Debug)]
pub struct Forward {
    /// Index of the envelope in the request.
    pub envelope_index: u32,
    /// The target region.
    pub region: Arc<Region>,
    /// The envelope, filtered.
    pub envelope: SealedEnvelope,
    /// For each forwarded record, its index in the response's `results`.
    pub positions: Vec<usize>,
}

/// The plan for one `Ingest` request.
#[derive(Debug)]
pub struct Plan {
    /// What to send, envelope by envelope.
    pub forwards: Vec<Forward>,
    /// One result per submitted record, in request order: final for records the gateway
    /// refused; for forwarded ones a retryable "region did not confirm" until the region answers.
    pub results: Vec<RecordResult>,
}

fn rejected(
    envelope_index: u32,
    seq: u32,
    key: &str,
    reason: RejectReason,
    detail: String,
) -> RecordResult {
    RecordResult {
        envelope_index,
        seq,
        idempotency_key: key.to_owned(),
        status: RecordStatus::Rejected as i32,
        reason: reason as i32,
        detail,
    }
}

/// Checks the request's shape and routes every record. Whole-request problems (unknown region,
/// too many records) are violations and nothing is sent; per-record problems are results.
pub fn plan(
    directory: &Directory,
    envelopes: Vec<SealedEnvelope>,
    max_records: usize,
) -> Result<Plan, Violations> {
    let mut v = Violations::new();
    let total: usize = envelopes.iter().map(|e| e.records.len()).sum();
    if envelopes.is_empty() {
        v.add("envelopes", "at least one envelope is required");
    }
    if total > max_records {
        v.add(
            "envelopes",
            format!("{total} records in total; at most {max_records} per request"),
        );
    }
    for (i, e) in envelopes.iter().enumerate() {
        if directory.region(&e.region_id).is_none() {
            v.add(
                format!("envelopes[{i}].region_id"),
                "unknown region; see ListRegions",
            );
        }
        if e.records.is_empty() {
            v.add(
                format!("envelopes[{i}].records"),
                "at least one record is required",
            );
        }
    }
    if !v.is_empty() {
        return Err(v);
    }

    let mut results = Vec::with_capacity(total);
    let mut forwards = Vec::with_capacity(envelopes.len());
    for (i, mut envelope) in envelopes.into_iter().enumerate() {
        let index = i as u32;
        let region = directory
            .region(&envelope.region_id)
            .expect("checked above")
            .clone();
        let records = std::mem::take(&mut envelope.records);
        let mut positions = Vec::with_capacity(records.len());
        for (j, record) in records.into_iter().enumerate() {
            let path = format!("envelopes[{i}].records[{j}].country");
            if !domicile_proto::domain::is_country_code(&record.country) {
                results.push(rejected(
                    index,
                    record.seq,
                    &record.idempotency_key,
                    RejectReason::MetadataInvalid,
                    format!("{path}: must be an ISO 3166-1 alpha-2 code in upper case"),
                ));
                continue;
            }
            match directory.region_for_country(&record.country) {
                Some(r) if r.id == region.id => {
                    positions.push(results.len());
                    results.push(region_unavailable(
                        index,
                        record.seq,
                        &record.idempotency_key,
                        "no answer",
                    ));
                    envelope.records.push(record);
                }
                Some(r) => results.push(rejected(
                    index,
                    record.seq,
                    &record.idempotency_key,
                    RejectReason::CountryOutsideJurisdiction,
                    format!(
                        "{path}: served by region {}, not {}; seal it to that region",
                        r.id, region.id
                    ),
                )),
                None => results.push(rejected(
                    index,
                    record.seq,
                    &record.idempotency_key,
                    RejectReason::NoRegionForCountry,
                    format!("{path}: no region serves this country"),
                )),
            }
        }
        if !envelope.records.is_empty() {
            forwards.push(Forward {
                envelope_index: index,
                region,
                envelope,
                positions,
            });
        }
    }
    Ok(Plan { forwards, results })
}

/// The result for a forwarded record whose region did not answer.
pub fn region_unavailable(envelope_index: u32, seq: u32, key: &str, detail: &str) -> RecordResult {
    rejected(
        envelope_index,
        seq,
        key,
        RejectReason::RegionUnavailable,
        format!("region did not confirm ({detail}); retry with the same idempotency key"),
    )
}
