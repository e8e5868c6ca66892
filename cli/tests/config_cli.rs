//! `domicile config check`: every problem of a file, each with its path; the shipped examples
//! and policies pass.

use std::process::Command;

fn check(file: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["config", "check", file.to_str().unwrap()])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("the domicile binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_shipped_configurations_and_policies_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["deploy/examples", "deploy/policies"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let (code, out) = check(&path);
            assert_eq!(code, 0, "{out}");
            assert!(out.trim_end().ends_with(": ok"), "{out}");
        }
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        "region_id = \"EU\"\ncountries = [\"DE\", \"fr\"]\nmin_group_size = 1\nretention_sweep_seconds = 5\ninsecure_plaintext = true\n",
    )
    .unwrap();
    let (code, out) = check(&node);
    assert_eq!(code, 1, "{out}");
    let paths: Vec<&str> = out
        .lines()
        .map(|l| l.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "region_id",
            "countries[1]",
            "retention_sweep_seconds",
            "min_group_size"
        ]
    );

    let gateway = dir.path().join("gateway.toml");
    std::fs::write(
        &gateway,
        "[[regions]]\nid = \"eu\"\ncountries = [\"DE\"]\nendpoints = []\n\n[[regions]]\nid = \"eu\"\ncountries = [\"DE\"]\nendpoints = [\"ftp://x\"]\n",
    )
    .unwrap();
    let (code, out) = check(&gateway);
    assert_eq!(code, 1, "{out}");
    for path in [
        "regions[0].endpoints",
        "regions[1].id",
        "regions[1].countries[0]",
        "regions[1].endpoints[0]",
        // Secure by default: neither authentication nor federation TLS is configured.
        "auth",
        "federation_tls",
    ] {
        assert!(out.contains(&format!(": {path}: ")), "{path} in {out}");
    }

    let policy = dir.path().join("DE.toml");
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/DE.toml"),
    )
    .unwrap();
    std::fs::write(
        &policy,
        shipped.replace("timestamps = \"hour\"", "timestamps = \"minute\""),
    )
    .unwrap();
    let (code, out) = check(&policy);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("border.timestamps"), "{out}");
    assert!(out.contains("line "), "{out}");
}

/// The in-country listener returns personal data: off loopback without mutual TLS, the node
/// does not start (nothing bound, nothing created), and the check says why.
#[test]
fn a_local_listener_off_loopback_without_tls_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        format!(
            "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
             listen = \"127.0.0.1:0\"\ndatabase = \"{}\"\nlocal_listen = \"0.0.0.0:0\"\n",
            dir.path().join("n.sqlite").display()
        ),
    )
    .unwrap();
    let (code, out) = check(&path);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("local_tls"), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["node", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("local_tls"), "{stderr}");
    assert!(!dir.path().join("n.sqlite").exists());
}
