//! The console in a real browser: runs `tests/browser/console.test.mjs` (Playwright's
//! `playwright-core` from the npm registry, driving Debian's Chromium) against `domicile dev`
//! started from this build. It signs in, checks that every panel shows data and that every
//! audit checkpoint verifies in the browser (and that a tampered one does not), that a stopped
//! region is shown as unavailable, and that requests without a token are refused. Screenshots
//! land in `target/console/`.
//!
//! Needs Node.js with npm, and Chromium (`apt-get install chromium`; the README's test
//! command, `tests/all.sh`, installs both).
//! Without them this test fails and says what to install: it is never skipped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate sits in the workspace")
        .to_owned()
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_console_works_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is not installed at {chromium}: install Debian's package (apt-get install chromium) \
         or set CHROMIUM to its path. tests/all.sh installs it."
    );
    assert!(
        found("node") && found("npm"),
        "Node.js and npm are needed for the browser test (apt-get install nodejs npm)"
    );
    let dir = workspace().join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        // The exact version in package-lock.json, from the npm registry; no browser download.
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in tests/browser failed");
    }
    let output_dir = workspace().join("target/console");
    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec", "console.test.mjs"])
        .current_dir(&dir)
        .env("DOMICILE_BIN", env!("CARGO_BIN_EXE_domicile"))
        .env("CHROMIUM", &chromium)
        .env("OUTPUT_DIR", &output_dir)
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "the browser test failed:\n{report}");
    for shot in ["console.png", "console-region-down.png"] {
        let bytes = std::fs::metadata(output_dir.join(shot)).map_or(0, |m| m.len());
        assert!(
            bytes > 10_000,
            "screenshot {shot} was taken ({bytes} bytes)"
        );
    }
}
