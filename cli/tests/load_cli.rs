//! `domicile load`, `regions` and `aggregate` against a running federation: rows become sealed
//! records, and every row that is not stored is reported with its number and reason.

use std::process::Command;

use domicile::federation::Federation;

fn domicile(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(args)
        .output()
        .expect("the domicile binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `domicile load FILE --output json` through `gateway` for tenant acme (default country DE).
fn load_json(
    gateway: &str,
    file: &std::path::Path,
    bundle: &std::path::Path,
) -> (i32, String, String) {
    domicile(&[
        "load",
        "--gateway",
        gateway,
        "--tenant",
        "acme",
        "--file",
        file.to_str().unwrap(),
        "--country",
        "DE",
        "--trust-bundle",
        bundle.to_str().unwrap(),
        "--output",
        "json",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_every_row_that_is_not_stored() -> anyhow::Result<()> {
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .region("us", &["US"])
        .start()
        .await?;
    let gateway = fed.gateway_addr.to_string();
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("export.csv");
    let mut text = String::from(
        "interaction_id,customer_id,country,channel,started_at,handle_time_seconds,survey_id,nps,comment,full_name,email\n",
    );
    for i in 0..12 {
        text.push_str(&format!(
            "i-{i},c-{i},DE,phone,2026-03-14T15:09:26Z,300,post-call,9,Danke,Erika M,e{i}@example.de\n"
        ));
    }
    text.push_str("i-x,c-x,DE,pigeon,2026-03-14T15:09:26Z,,,,,,\n"); // row 13: unreadable
    text.push_str("i-y,c-y,DE,email,2026-03-14T15:09:26Z,,s,12,,,\n"); // row 14: NPS out of range
    text.push_str("i-z,c-z,JP,email,1773500966,,,,,,\n"); // row 15: no region for JP
    text.push_str("i-u,c-u,US,chat,1773500966,,,,,,\n");
    std::fs::write(&csv, text)?;

    let (code, out, err) = load_json(&gateway, &csv, &fed.trust_bundle_file);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["rows"], 16);
    // 12 profiles + 12 interactions, the refused row's interaction, JP's and the US one.
    assert_eq!(report["records_sent"], 27);
    assert_eq!(report["accepted"], 25);
    assert_eq!(report["unreadable_rows"][0]["row"], 13);
    assert!(
        report["unreadable_rows"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("channel:")
    );
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["row"], 14);
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("PAYLOAD_INVALID"),
        "{refused:?}"
    );
    assert!(
        refused[0]["reason"].as_str().unwrap().contains("nps"),
        "{refused:?}"
    );
    assert_eq!(refused[1]["row"], 15);

    // Loading again changes nothing: idempotent.
    let (_, out, _) = load_json(&gateway, &csv, &fed.trust_bundle_file);
    let again: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (again["accepted"].clone(), again["duplicate"].clone()),
        (0.into(), 25.into())
    );

    // A second file: keyed by content, not by row. Its row 1 is a new customer (by row
    // number it was taken for the first file's row 1 and skipped); its row 2 changes c-0's
    // e-mail (an update) and repeats c-0's interaction (a duplicate); its row 3 has a score
    // without a survey (refused with the reason, not dropped).
    let second = dir.path().join("second.csv");
    std::fs::write(
        &second,
        "interaction_id,customer_id,country,channel,started_at,handle_time_seconds,survey_id,nps,comment,full_name,email\n\
         i-new,c-new,DE,phone,2026-03-15T10:00:00Z,120,post-call,8,,Neu Kunde,new@example.de\n\
         i-0,c-0,DE,phone,2026-03-14T15:09:26Z,300,post-call,9,Danke,Erika M,changed@example.de\n\
         i-n,c-n,DE,phone,2026-03-15T10:00:00Z,60,,7,,,\n",
    )?;
    let (code, out, err) = load_json(&gateway, &second, &fed.trust_bundle_file);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (report["accepted"].clone(), report["duplicate"].clone()),
        (3.into(), 1.into()),
        "{report}"
    );
    assert_eq!(report["unreadable_rows"][0]["row"], 3);
    assert_eq!(
        report["unreadable_rows"][0]["reason"],
        "survey_id: required when nps is given"
    );
    let node = fed.node("eu-de").unwrap().node.clone().unwrap();
    let new = node.profile_of("acme", "c-new")?;
    assert_eq!(
        new.map(|p| p.email).as_deref(),
        Some("new@example.de"),
        "the new customer's profile is stored"
    );
    let changed = node.profile_of("acme", "c-0")?;
    assert_eq!(
        changed.map(|p| p.email).as_deref(),
        Some("changed@example.de"),
        "a changed profile is an update"
    );
    let conn = fed.node("eu-de").unwrap().connect()?;
    let keys_with_ids: i64 = conn.query_row(
        "SELECT COUNT(*) FROM ingest_keys WHERE idempotency_key LIKE '%i-%' OR idempotency_key LIKE '%c-%'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(keys_with_ids, 0, "idempotency keys hold no id in clear");

    let (code, out, _) = domicile(&["regions", "--gateway", &gateway, "--output", "json"]);
    assert_eq!(code, 0);
    let regions: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(regions[0]["region_id"], "eu-de");
    assert_eq!(regions[0]["health"], "REGION_HEALTH_SERVING");

    let (code, out, _) = domicile(&[
        "aggregate",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
        "--group-by",
        "country",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let agg: serde_json::Value = serde_json::from_str(&out)?;
    // Twelve subjects: across the border a noisy count (docs/privacy-model.md), shown when
    // the group's noisy distinct subjects reach DE's k of 10, withheld (and counted) otherwise.
    let groups = agg["groups"].as_array().unwrap();
    let de = groups.iter().find(|g| g["country"] == "DE");
    if let Some(de) = de {
        assert!(
            de["values"]["METRIC_COUNT"].as_f64().unwrap() >= 0.0,
            "{agg}"
        );
    }
    let shown = groups.len() as u64;
    assert_eq!(
        shown + agg["suppressed_groups"].as_u64().unwrap(),
        2,
        "{agg}"
    );
    let (code, table, _) = domicile(&[
        "aggregate",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
        "--group-by",
        "country",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        table.lines().any(|l| l.starts_with("DE ")),
        de.is_some(),
        "the same releases, the same answer: {table}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_refuses_a_key_the_trust_bundle_does_not_vouch_for() -> anyhow::Result<()> {
    use domicile::attacker::{Attacks, KeyAttack, MaliciousGateway};
    let fed = Federation::builder()
        .region("eu-de", &["DE"])
        .start()
        .await?;
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("export.csv");
    std::fs::write(
        &csv,
        "interaction_id,customer_id,country,channel,started_at,full_name,email\n\
         i-1,c-1,DE,phone,2026-03-14T15:09:26Z,Erika M,e1@example.de\n",
    )?;
    let bundle = fed.trust_bundle_file.to_str().unwrap().to_owned();
    let load = |gateway: String, bundle: &str| {
        domicile(&[
            "load",
            "--gateway",
            &gateway,
            "--tenant",
            "acme",
            "--file",
            csv.to_str().unwrap(),
            "--country",
            "DE",
            "--trust-bundle",
            bundle,
            "--output",
            "json",
        ])
    };
    // A gateway that relays its own key, re-signed with its own identity key.
    let mal = MaliciousGateway::start(
        fed.gateway_addr,
        Attacks {
            target: "eu-de".into(),
            key: KeyAttack::Substitute,
            ..Default::default()
        },
    )
    .await?;
    let (code, out, err) = load(mal.addr.to_string(), &bundle);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("refusing to seal for region eu-de")
            && err.contains("does not verify with the region's identity key"),
        "{err}"
    );
    assert_eq!(
        mal.loot
            .envelopes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // A bundle file that is not one: refused before connecting, naming the file.
    let bad = dir.path().join("bundle.json");
    std::fs::write(&bad, "{\"version\": 1, \"regions\": {\"eu-de\": {}}}")?;
    let (code, _, err) = load(fed.gateway_addr.to_string(), bad.to_str().unwrap());
    assert_ne!(code, 0);
    assert!(err.contains("bundle.json"), "{err}");
    // Through the real gateway, the same file loads.
    let (code, out, err) = load(fed.gateway_addr.to_string(), &bundle);
    assert_eq!(code, 0, "{out}{err}");
    let conn = fed.node("eu-de").unwrap().connect()?;
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM interactions", [], |r| r.get(0))?;
    assert_eq!(n, 1);
    Ok(())
}
