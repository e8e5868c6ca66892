//! The DPO's case work from the command line (`domicile requests …`, `domicile request
//! verify`): receipts as JSON and tables, a step's request, and a receipt checked offline
//! against the federation trust bundle.

use std::path::Path;

use anyhow::Context;
use domicile_proto::{
    pb::{
        SubjectRequestKind, SubjectRequestReceipt, SubjectRequestStatus, VerificationMethod,
        update_subject_request_request::Action,
    },
    trust::TrustBundle,
};

/// The name of an enum value without its prefix, in lower case (`SUBJECT_REQUEST_STATUS_RECEIVED`
/// → `received`).
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn status_name(raw: i32) -> String {
    SubjectRequestStatus::try_from(raw).map_or_else(
        |_| format!("unknown {raw}"),
        |s| short(s.as_str_name(), "SUBJECT_REQUEST_STATUS_"),
    )
}

fn kind_name(raw: i32) -> String {
    SubjectRequestKind::try_from(raw).map_or_else(
        |_| format!("unknown {raw}"),
        |k| short(k.as_str_name(), "SUBJECT_REQUEST_KIND_"),
    )
}

/// A status named on the command line (`received`, `awaiting_subject`, …).
pub fn parse_status(name: &str) -> anyhow::Result<SubjectRequestStatus> {
    SubjectRequestStatus::from_str_name(&format!(
        "SUBJECT_REQUEST_STATUS_{}",
        name.to_ascii_uppercase()
    ))
    .filter(|s| *s != SubjectRequestStatus::Unspecified)
    .with_context(|| {
        format!(
            "--status {name:?}: received, awaiting_subject, in_progress, partially_completed, \
             completed or refused"
        )
    })
}

/// A verification method named on the command line (`document_check`, …).
pub fn parse_method(name: &str) -> anyhow::Result<VerificationMethod> {
    VerificationMethod::from_str_name(&format!(
        "VERIFICATION_METHOD_{}",
        name.to_ascii_uppercase()
    ))
    .filter(|m| *m != VerificationMethod::Unspecified)
    .with_context(|| {
        format!(
            "--method {name:?}: account_login, document_check, knowledge_based, in_person or \
             contact_confirmation"
        )
    })
}

/// A receipt as JSON: everything but the export's bytes.
pub fn receipt_json(r: &SubjectRequestReceipt) -> serde_json::Value {
    let seconds = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.seconds);
    serde_json::json!({
        "request_id": r.request_id,
        "federation_request_id": r.federation_request_id,
        "region_id": r.region_id,
        "kind": kind_name(r.kind),
        "status": status_name(r.status),
        "policy_version": r.policy_version,
        "submitted_at": seconds(&r.submitted_at),
        "due_at": seconds(&r.due_at),
        "completed_at": seconds(&r.completed_at),
        "overdue": r.overdue,
        "paused_since": seconds(&r.paused_since),
        "extension_reason": r.extension_reason,
        "refusal_reason": r.refusal_reason,
        "verification": r.verification.as_ref().map(|v| serde_json::json!({
            "method": VerificationMethod::try_from(v.method)
                .map_or_else(|_| String::new(), |m| short(m.as_str_name(), "VERIFICATION_METHOD_")),
            "evidence_reference": v.evidence_reference,
            "verified_by": v.verified_by,
            "verified_at": seconds(&v.verified_at),
        })),
        "held": r.held.iter().map(|h| serde_json::json!({
            "hold_id": h.hold_id,
            "reason": h.reason,
            "expires_at": seconds(&h.expires_at),
            "whole_subject": h.whole_subject,
            "interactions_kept": h.interactions_kept,
        })).collect::<Vec<_>>(),
        "events": r.events.iter().map(|e| serde_json::json!({
            "at": seconds(&e.at),
            "action": e.action,
            "status": status_name(e.status),
            "actor": e.actor,
            "principal": e.principal,
            "reason": e.reason,
        })).collect::<Vec<_>>(),
        "export_expires_at": seconds(&r.export_expires_at),
        "signed": !r.signature.is_empty(),
        "sealed_export": r.export.is_some(),
    })
}

/// A UTC date and time of Unix `seconds`, e.g. `2027-02-28 09:00`.
fn when(seconds: Option<i64>) -> String {
    seconds.map_or_else(String::new, |s| {
        let (y, m, d) = domicile_proto::domain::civil_from_days(s.div_euclid(86_400));
        let t = s.rem_euclid(86_400);
        format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", t / 3600, t % 3600 / 60)
    })
}

/// Receipts as a table: one line each, soonest due first as given.
pub fn table(receipts: &[SubjectRequestReceipt]) -> String {
    let rows: Vec<Vec<String>> = receipts
        .iter()
        .map(|r| {
            vec![
                r.request_id.clone(),
                kind_name(r.kind),
                status_name(r.status),
                when(r.submitted_at.as_ref().map(|t| t.seconds)),
                when(r.due_at.as_ref().map(|t| t.seconds)),
                match (r.overdue, r.paused_since.is_some()) {
                    (true, _) => "OVERDUE".to_owned(),
                    (false, true) => "paused".to_owned(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    crate::table::render(
        &[
            "request",
            "kind",
            "status",
            "received (UTC)",
            "due (UTC)",
            "note",
        ],
        &rows,
    )
}

/// The action of `domicile requests <step>`.
pub fn action(
    step: &str,
    reason: Option<String>,
    verification: Option<(String, String, String)>,
) -> anyhow::Result<Action> {
    use domicile_proto::pb::{
        AwaitSubject, ExtendDeadline, IdentityVerification, RefuseSubjectRequest,
    };
    let reason = || reason.clone().context("--reason is required for this step");
    Ok(match step {
        "verify" => {
            let (method, evidence, by) = verification
                .context("--method, --evidence and --verified-by are required to verify")?;
            Action::Verify(IdentityVerification {
                method: parse_method(&method)? as i32,
                evidence_reference: evidence,
                verified_by: by,
                verified_at: None,
            })
        }
        "await" => Action::AwaitSubject(AwaitSubject { reason: reason()? }),
        "extend" => Action::Extend(ExtendDeadline { reason: reason()? }),
        "refuse" => Action::Refuse(RefuseSubjectRequest { reason: reason()? }),
        other => anyhow::bail!("no step {other:?}"),
    })
}

/// Reads a receipt file (protobuf, as `domicile dpo request --receipts-dir` and `domicile
/// requests show --out` write it) and checks its signature against the trust bundle: the
/// receipt as JSON when it verifies, an error naming why otherwise.
pub fn verify_file(path: &Path, bundle: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let receipt: SubjectRequestReceipt = prost::Message::decode(bytes.as_slice())
        .with_context(|| format!("{}: not a receipt", path.display()))?;
    let bundle = TrustBundle::load(bundle)?;
    anyhow::ensure!(
        !receipt.signature.is_empty(),
        "the receipt is not signed (receipts from ListSubjectRequests are not; fetch it with \
         `domicile requests show`)"
    );
    bundle
        .verify_receipt(&receipt)
        .map_err(|e| anyhow::anyhow!("the receipt does not verify: {e}"))?;
    Ok(receipt_json(&receipt))
}
