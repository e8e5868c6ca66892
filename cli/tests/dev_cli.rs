//! `domicile dev --data-dir D` started again on its own directory serves what is there: no
//! reload, no error, the same keys. Its log lines, written to a pipe, carry no colour codes.

mod common;
use common::domicile;

#[test]
fn dev_restarts_on_its_data_directory_without_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let args = [
        "dev",
        "--once",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--subjects",
        "40",
        "--interactions",
        "200",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let (code, first) = domicile(&args);
    assert_eq!(code, 0, "{first}");
    assert!(first.contains("Loaded tenant"), "{first}");
    // Log lines written to a pipe are plain text: no ANSI colour codes.
    assert!(first.contains("--insecure: the gateway serves"), "{first}");
    assert!(
        !first.contains('\x1b'),
        "ANSI escape in piped logs: {first:?}"
    );
    let key = |region: &str| std::fs::read(data.join(format!("{region}.sealing.key"))).unwrap();
    let keys_before = (key("eu-de"), key("us"));

    let (code, second) = domicile(&args);
    assert_eq!(code, 0, "{second}");
    assert!(second.contains("Serving the data already in"), "{second}");
    assert!(!second.contains("Loaded tenant"), "no reload: {second}");
    // It answers from what is there, with the keys it had.
    assert!(second.contains("Example: Aggregate NPS"), "{second}");
    assert_eq!((key("eu-de"), key("us")), keys_before);
}
