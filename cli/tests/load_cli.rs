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

    let (code, out, err) = domicile(&[
        "load",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
        "--file",
        csv.to_str().unwrap(),
        "--country",
        "DE",
        "--output",
        "json",
    ]);
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
    let (_, out, _) = domicile(&[
        "load",
        "--gateway",
        &gateway,
        "--tenant",
        "acme",
        "--file",
        csv.to_str().unwrap(),
        "--country",
        "DE",
        "--output",
        "json",
    ]);
    let again: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (again["accepted"].clone(), again["duplicate"].clone()),
        (0.into(), 25.into())
    );

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
    assert_eq!(agg["groups"][0]["country"], "DE");
    assert_eq!(agg["groups"][0]["values"]["METRIC_COUNT"], 12.0);
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
    assert!(table.lines().any(|l| l.starts_with("DE ")), "{table}");
    Ok(())
}
