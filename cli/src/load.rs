//! `domicile load`: bulk import of a CX export (CSV or JSON Lines) through the gateway, sealed
//! on this machine, with a progress bar and every refused row accounted for.
//!
//! One row is one interaction of one customer. Columns (CSV header names, or JSON keys):
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `interaction_id` | yes | the tenant's id of the interaction |
//! | `customer_id` | yes | the tenant's id of the customer (`external_id`) |
//! | `country` | no | ISO 3166-1 alpha-2; default `--country` |
//! | `channel` | yes | phone, email, chat, sms, web, app, post, in_person |
//! | `direction` | no | inbound or outbound |
//! | `started_at` | yes | RFC 3339 (`2026-03-14T15:09:26Z`, offsets allowed) or Unix seconds |
//! | `ended_at` | no | same |
//! | `handle_time_seconds` | no | integer |
//! | `outcome`, `agent_team` | no | the tenant's codes |
//! | `recorded` | no | true/false/1/0 |
//! | `survey_id`, `nps`, `csat`, `ces`, `comment` | no | a survey answer |
//! | `full_name`, `email`, `phone`, `postal_code`, `language`, `birth_year` | no | the profile |
//!
//! A row with any profile column also yields the customer's profile (the first such row per
//! customer). Records are keyed by their content (`content_key`), not their row: loading the
//! same file again sends only duplicates; a second file's new customers, changed profiles and
//! changed interactions are stored (a changed one replaces the stored one). A score or comment
//! without `survey_id` refuses its row. Rows that cannot be read are reported with their number
//! and reason and not sent; rows the region refuses are reported with their number and the
//! region's reason.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use anyhow::Context;
use domicile_client::{Client, Record};
use domicile_proto::pb::{
    Channel, Direction, InteractionRecord, RecordPayload, SubjectRecord, SurveyAnswer,
    record_payload::Record as Payload,
};
use serde::Serialize;

/// Records per request.
const BATCH: usize = 500;

/// What a load did, row by row where it matters.
#[derive(Debug, Default, Serialize)]
pub struct LoadReport {
    /// Data rows read.
    pub rows: usize,
    /// Records sent (interactions and profiles).
    pub records_sent: usize,
    /// Newly stored.
    pub accepted: u64,
    /// Already stored (same idempotency key).
    pub duplicate: u64,
    /// Rows not sent, with their line and why.
    pub unreadable_rows: Vec<RowProblem>,
    /// Records the region refused, with their row and the region's reason.
    pub refused: Vec<RowProblem>,
    /// Refusals by reason.
    pub refused_by_reason: BTreeMap<String, u64>,
}

/// A row and what is wrong with it (names fields, never values).
#[derive(Debug, Clone, Serialize)]
pub struct RowProblem {
    /// 1-based data row (after the header).
    pub row: usize,
    /// What is wrong.
    pub reason: String,
}

/// Unix seconds of an RFC 3339 time or a plain integer.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Skip fractional seconds, then read the offset.
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (r.get(1..3)?.parse::<i64>().ok()? * 3600
                + r.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

fn channel(s: &str) -> Option<Channel> {
    Some(match s.to_ascii_lowercase().as_str() {
        "phone" | "voice" | "call" => Channel::Phone,
        "email" | "e-mail" => Channel::Email,
        "chat" => Channel::Chat,
        "sms" | "text" => Channel::Sms,
        "web" => Channel::Web,
        "app" => Channel::App,
        "post" | "mail" => Channel::Post,
        "in_person" | "in-person" | "store" => Channel::InPerson,
        _ => return None,
    })
}

type Row = BTreeMap<String, String>;

/// Reads the rows of a `.csv` or `.jsonl` file as column → value maps.
fn read_rows(path: &Path) -> anyhow::Result<Vec<Result<Row, String>>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "csv" => {
            let mut reader = csv::Reader::from_path(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let headers = reader.headers()?.clone();
            Ok(reader
                .records()
                .map(|r| {
                    r.map_err(|e| format!("not valid CSV: {e}")).map(|rec| {
                        headers
                            .iter()
                            .zip(rec.iter())
                            .filter(|(_, v)| !v.is_empty())
                            .map(|(h, v)| (h.trim().to_owned(), v.to_owned()))
                            .collect()
                    })
                })
                .collect())
        }
        "jsonl" | "ndjson" => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|line| {
                    let value: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
                    let object = value.as_object().ok_or("not a JSON object")?;
                    Ok(object
                        .iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| {
                            let text = match v {
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            (k.clone(), text)
                        })
                        .collect())
                })
                .collect())
        }
        other => anyhow::bail!(
            "{}: expected a .csv or .jsonl file, not .{other}",
            path.display()
        ),
    }
}

/// Turns one row into its records, or says which column is wrong.
fn records_of(
    row: &Row,
    default_country: &str,
    profiles: &mut HashSet<String>,
) -> Result<Vec<Record>, String> {
    let get = |k: &str| row.get(k).map(String::as_str);
    let need = |k: &str| get(k).ok_or_else(|| format!("{k}: required"));
    let number = |k: &str| -> Result<Option<u32>, String> {
        get(k)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("{k}: not a whole number"))
            })
            .transpose()
    };
    let interaction_id = need("interaction_id")?;
    let customer = need("customer_id")?;
    let country = get("country").unwrap_or(default_country).to_owned();
    let channel = channel(need("channel")?)
        .ok_or("channel: not one of phone, email, chat, sms, web, app, post, in_person")?;
    let started =
        parse_time(need("started_at")?).ok_or("started_at: not RFC 3339 or Unix seconds")?;
    let ended = get("ended_at")
        .map(|v| parse_time(v).ok_or("ended_at: not RFC 3339 or Unix seconds"))
        .transpose()?;
    let direction = match get("direction").map(str::to_ascii_lowercase).as_deref() {
        None => Direction::Unspecified,
        Some("inbound") => Direction::Inbound,
        Some("outbound") => Direction::Outbound,
        Some(_) => return Err("direction: inbound or outbound".into()),
    };
    let recorded = match get("recorded").map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("0") | Some("no") => false,
        Some("true") | Some("1") | Some("yes") => true,
        Some(_) => return Err("recorded: true or false".into()),
    };
    let survey = match get("survey_id") {
        None => {
            // An answer without its survey is refused, not dropped.
            if let Some(k) = ["nps", "csat", "ces", "comment"]
                .into_iter()
                .find(|k| row.contains_key(*k))
            {
                return Err(format!("survey_id: required when {k} is given"));
            }
            None
        }
        Some(id) => Some(SurveyAnswer {
            survey_id: id.to_owned(),
            nps: number("nps")?,
            csat: number("csat")?,
            ces: number("ces")?,
            comment: get("comment").unwrap_or("").to_owned(),
        }),
    };
    let ts = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    let mut out = Vec::with_capacity(2);
    let profile_keys = [
        "full_name",
        "email",
        "phone",
        "postal_code",
        "language",
        "birth_year",
    ];
    if profile_keys.iter().any(|k| row.contains_key(*k)) && profiles.insert(customer.to_owned()) {
        let payload = RecordPayload {
            record: Some(Payload::Subject(SubjectRecord {
                external_id: customer.to_owned(),
                full_name: get("full_name").unwrap_or("").to_owned(),
                email: get("email").unwrap_or("").to_owned(),
                phone: get("phone").unwrap_or("").to_owned(),
                postal_code: get("postal_code").unwrap_or("").to_owned(),
                language: get("language").unwrap_or("").to_owned(),
                birth_year: number("birth_year")?.unwrap_or(0),
            })),
        };
        out.push(Record {
            country: country.clone(),
            idempotency_key: content_key("profile", &country, &payload),
            payload,
        });
    }
    let payload = RecordPayload {
        record: Some(Payload::Interaction(InteractionRecord {
            interaction_id: interaction_id.to_owned(),
            subject_external_id: customer.to_owned(),
            channel: channel as i32,
            direction: direction as i32,
            started_at: Some(ts(started)),
            ended_at: ended.map(ts),
            handle_time_seconds: number("handle_time_seconds")?.unwrap_or(0),
            outcome: get("outcome").unwrap_or("").to_owned(),
            agent_team: get("agent_team").unwrap_or("").to_owned(),
            recorded,
            survey,
        })),
    };
    out.push(Record {
        idempotency_key: content_key("interaction", &country, &payload),
        country,
        payload,
    });
    Ok(out)
}

/// A record's idempotency key, from its content (not its row number): the same record loaded
/// again (from this file or another) is a duplicate; a changed one (a profile with a new
/// address, an interaction with a late score) is a new record, which replaces the stored one;
/// a new customer's profile is never taken for an earlier file's. A digest, so the key holds
/// no customer or interaction id in clear.
fn content_key(kind: &str, country: &str, payload: &RecordPayload) -> String {
    use prost::Message;
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(country.as_bytes())
        .chain_update([0])
        .chain_update(payload.encode_to_vec())
        .finalize();
    format!("load/{kind}/{}", hex::encode(&digest[..16]))
}

/// Loads `file` for `tenant` through the gateway, with a progress bar on standard error.
pub async fn load(
    client: &Client,
    tenant: &str,
    file: &Path,
    country: &str,
    progress: bool,
) -> anyhow::Result<LoadReport> {
    // Before anything is read or sealed: without a bundle no key can be trusted.
    let bundle = client.trust_bundle()?;
    let rows = read_rows(file)?;
    let mut report = LoadReport {
        rows: rows.len(),
        ..Default::default()
    };
    let mut records = Vec::new();
    let mut row_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut profiles = HashSet::new();
    for (i, row) in rows.into_iter().enumerate() {
        let n = i + 1;
        match row.and_then(|r| records_of(&r, country, &mut profiles)) {
            Ok(recs) => {
                for r in recs {
                    row_of.insert(r.idempotency_key.clone(), n);
                    records.push(r);
                }
            }
            Err(reason) => report.unreadable_rows.push(RowProblem { row: n, reason }),
        }
    }
    report.records_sent = records.len();
    let bar = indicatif::ProgressBar::new(records.len() as u64);
    if progress {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records sealed and sent ({per_sec}, {eta} left)",
            )
            .expect("a valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let regions = client.regions().await?;
    let served: HashSet<&str> = regions
        .iter()
        .flat_map(|r| r.countries.iter().map(String::as_str))
        .collect();
    let (records, unroutable): (Vec<Record>, Vec<Record>) = records
        .into_iter()
        .partition(|r| served.contains(r.country.as_str()));
    for r in unroutable {
        *report
            .refused_by_reason
            .entry("REJECT_REASON_NO_REGION_FOR_COUNTRY".into())
            .or_default() += 1;
        report.refused.push(RowProblem {
            row: row_of.get(&r.idempotency_key).copied().unwrap_or(0),
            reason: format!(
                "REJECT_REASON_NO_REGION_FOR_COUNTRY: no region serves {}",
                r.country
            ),
        });
        bar.inc(1);
    }
    for chunk in records.chunks(BATCH * 4) {
        let summary =
            domicile_client::ingest(&client.gateway(), tenant, &regions, bundle, chunk, BATCH)
                .await?;
        report.accepted += summary.accepted;
        report.duplicate += summary.duplicate;
        for r in summary.rejections {
            *report
                .refused_by_reason
                .entry(r.reason.clone())
                .or_default() += 1;
            report.refused.push(RowProblem {
                row: row_of.get(&r.idempotency_key).copied().unwrap_or(0),
                reason: format!("{}: {}", r.reason, r.detail),
            });
        }
    }
    bar.finish_and_clear();
    report.refused.sort_by_key(|p| p.row);
    Ok(report)
}

/// The report for a terminal.
pub fn render(report: &LoadReport) -> String {
    let mut out = format!(
        "{} rows read, {} records sent: {} accepted, {} already present, {} refused; {} rows unreadable\n",
        report.rows,
        report.records_sent,
        report.accepted,
        report.duplicate,
        report.refused.len(),
        report.unreadable_rows.len()
    );
    for p in report.unreadable_rows.iter().chain(&report.refused) {
        out.push_str(&format!("  row {}: {}\n", p.row, p.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{Row, parse_time, records_of};

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn records_are_keyed_by_content() {
        let base = [
            ("interaction_id", "i-0"),
            ("customer_id", "c-0"),
            ("channel", "phone"),
            ("started_at", "2026-03-14T15:09:26Z"),
            ("survey_id", "post-call"),
            ("nps", "9"),
            ("full_name", "Erika M"),
            ("email", "e0@example.de"),
        ];
        let keys = |pairs: &[(&str, &str)]| -> Vec<String> {
            records_of(&row(pairs), "DE", &mut HashSet::new())
                .unwrap()
                .into_iter()
                .map(|r| r.idempotency_key)
                .collect()
        };
        let first = keys(&base);
        assert_eq!(first, keys(&base), "the same row, the same keys");
        let mut changed = base;
        changed[7] = ("email", "changed@example.de");
        let second = keys(&changed);
        assert_ne!(first[0], second[0], "a changed profile is a new record");
        assert_eq!(first[1], second[1], "the same interaction is a duplicate");
        assert!(
            first
                .iter()
                .all(|k| !k.contains("i-0") && !k.contains("c-0"))
        );
        let err = records_of(
            &row(&[
                ("interaction_id", "i-1"),
                ("customer_id", "c-1"),
                ("channel", "phone"),
                ("started_at", "1773500966"),
                ("csat", "4"),
            ]),
            "DE",
            &mut HashSet::new(),
        )
        .err();
        assert_eq!(
            err.as_deref(),
            Some("survey_id: required when csat is given")
        );
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("1773500966"), Some(1_773_500_966));
        assert_eq!(parse_time("2026-03-14T15:09:26Z"), Some(1_773_500_966));
        assert_eq!(parse_time("2026-03-14T16:09:26+01:00"), Some(1_773_500_966));
        assert_eq!(parse_time("2026-03-14T15:09:26.123Z"), Some(1_773_500_966));
        assert_eq!(parse_time("14.03.2026"), None);
        assert_eq!(parse_time("2026-13-14T15:09:26Z"), None);
    }
}
