//! Redaction measured on a labelled corpus: 540 synthetic CX comments in nine languages and
//! locales (`tests/data/redaction_corpus.jsonl`, made by `make_redaction_corpus.py`), each
//! with the byte ranges of its planted identifiers.
//!
//! Recall must be 100%: every non-space byte of every planted identifier is inside a redacted
//! span. Precision (redacted spans that touch a planted identifier, over all redacted spans)
//! is printed with `--nocapture` and held above a floor so that a detector that redacts
//! everything cannot pass.

use std::collections::BTreeMap;

use domicile_node::redact::{Category, Redactor};
use serde::Deserialize;

#[derive(Deserialize)]
struct Comment {
    id: u32,
    country: String,
    name: String,
    text: String,
    pii: Vec<Planted>,
}

#[derive(Deserialize)]
struct Planted {
    kind: String,
    start: usize,
    end: usize,
}

fn category(kind: &str) -> Category {
    match kind {
        "EMAIL" => Category::Email,
        "PHONE" => Category::Phone,
        "IBAN" => Category::Iban,
        "CARD" => Category::Card,
        "NATIONAL_ID" => Category::NationalId,
        "NAME" => Category::Name,
        other => panic!("unknown label {other}"),
    }
}

#[test]
fn every_planted_identifier_is_redacted_and_precision_is_reported() {
    let text = include_str!("data/redaction_corpus.jsonl");
    let comments: Vec<Comment> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("corpus line"))
        .collect();
    assert!(
        comments.len() >= 500,
        "the corpus has at least 500 comments"
    );

    let mut misses = Vec::new();
    let mut planted_by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new(); // (planted, right type)
    let (mut spans_total, mut spans_true) = (0usize, 0usize);
    let mut false_positives: BTreeMap<Category, Vec<String>> = BTreeMap::new();
    for c in &comments {
        let out = Redactor::for_country(&c.country).redact(&c.text, &[c.name.as_str()]);
        for p in &c.pii {
            let covering: Vec<&(Category, std::ops::Range<usize>)> = out
                .spans
                .iter()
                .filter(|(_, r)| r.start < p.end && p.start < r.end)
                .collect();
            let covered = (p.start..p.end).all(|b| {
                c.text.as_bytes()[b].is_ascii_whitespace()
                    || covering.iter().any(|(_, r)| r.contains(&b))
            });
            let entry = planted_by_kind.entry(p.kind.clone()).or_default();
            entry.0 += 1;
            if !covered {
                misses.push(format!(
                    "#{} {}: {:?} → {:?}",
                    c.id,
                    p.kind,
                    &c.text[p.start..p.end],
                    out.text
                ));
            } else if covering.iter().all(|(cat, _)| *cat == category(&p.kind)) {
                entry.1 += 1;
            }
        }
        for (cat, r) in &out.spans {
            spans_total += 1;
            if c.pii.iter().any(|p| r.start < p.end && p.start < r.end) {
                spans_true += 1;
            } else {
                false_positives
                    .entry(*cat)
                    .or_default()
                    .push(c.text[r.clone()].to_owned());
            }
        }
    }
    let precision = spans_true as f64 / spans_total as f64;
    println!("comments: {}", comments.len());
    for (kind, (n, typed)) in &planted_by_kind {
        println!("  {kind:<12} planted {n:>4}, redacted as {kind} {typed:>4}");
    }
    println!("redacted spans: {spans_total}, on planted identifiers: {spans_true}");
    println!("precision: {:.1}%", precision * 100.0);
    for (cat, fps) in &false_positives {
        println!(
            "  false positives as {cat:?}: {} e.g. {:?}",
            fps.len(),
            &fps[..fps.len().min(5)]
        );
    }
    assert!(
        misses.is_empty(),
        "missed identifiers:\n{}",
        misses.join("\n")
    );
    assert!(precision > 0.95, "precision {precision}");
}
