//! The gateway's `authorization` header parser and token verifier: arbitrary header bytes
//! (HS256, RS256 and ES256 keys configured) must give a caller or UNAUTHENTICATED, never a
//! panic.
#![no_main]

use std::sync::OnceLock;

use domicile_gateway::auth::{AuthConfig, Authenticator};
use libfuzzer_sys::fuzz_target;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = std::env::temp_dir().join("domicile-fuzz-token");
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("hs256.secret");
        std::fs::write(&secret, b"a development secret of at least 32 bytes").unwrap();
        Authenticator::from_config(&AuthConfig {
            audience: "domicile".into(),
            issuer: Some("https://idp.test".into()),
            hs256_secret_file: Some(secret),
            jwks_file: Some(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/data/jwt-test-jwks.json"
                )
                .into(),
            ),
            leeway_seconds: 30,
            clients: Vec::new(),
        })
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // As sent, and behind the Bearer prefix the parser looks for.
    let _ = authenticator().token(data);
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(data);
    if let Err(status) = authenticator().token(&bearer) {
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
});
