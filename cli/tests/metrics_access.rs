//! The metrics endpoint over TLS, with a bearer token and client certificates: a scraper
//! without TLS, without a client certificate from the configured CA, or without the token gets
//! nothing; and a configuration that puts metrics off loopback without protection is refused.

use std::{net::SocketAddr, path::Path, sync::Arc};

use domicile_ops::metrics::{MetricsAccess, MetricsAccessConfig, serve};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsConnector, rustls};

const TOKEN: &str = "scraper-token-0123456789abcdef0123456789";

/// A TLS client trusting `ca`, with the client certificate `client` if given.
fn connector(ca: &Path, client: Option<(&Path, &Path)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// `GET /metrics` over TLS; the status, or `None` when the connection fails.
async fn get(addr: SocketAddr, tls: &TlsConnector, token: Option<&str>) -> Option<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    let mut req = String::from("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    req += "\r\n";
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    // A TLS 1.3 server refuses a missing client certificate after the handshake: the read
    // fails then.
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_tls_a_client_certificate_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki =
        domicile::certs::generate(&dir.path().join("pki"), &[], "prometheus.monitoring").unwrap();
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (cert_file, key_file) = pki.pair("gateway");
    let config = MetricsAccessConfig {
        cert_file: Some(cert_file),
        key_file: Some(key_file),
        client_ca_file: Some(pki.ca()),
        bearer_token_file: Some(token_file),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let counter: prometheus_client::metrics::counter::Counter = Default::default();
    registry.register("scraped_things", "things", counter.clone());
    counter.inc();
    let sources = [(
        "/metrics".to_owned(),
        domicile_ops::metrics::Source::new(registry),
    )];
    tokio::spawn(serve(
        listener,
        sources.into(),
        MetricsAccess::load(Some(&config)).unwrap(),
        std::future::pending(),
    ));

    // Plain HTTP to the TLS endpoint: no answer.
    let plain = domicile_ops::metrics::scrape(addr, "/metrics").await;
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
    // TLS without a client certificate: refused.
    let anonymous = connector(&pki.ca(), None);
    assert_eq!(get(addr, &anonymous, Some(TOKEN)).await, None);
    // A client certificate, but no token or a wrong one: 401.
    let (client_cert, client_key) = pki.pair("client");
    let scraper = connector(&pki.ca(), Some((&client_cert, &client_key)));
    assert_eq!(get(addr, &scraper, None).await.map(|r| r.0), Some(401));
    let wrong = format!("{}x", &TOKEN[..TOKEN.len() - 1]);
    assert_eq!(
        get(addr, &scraper, Some(&wrong)).await.map(|r| r.0),
        Some(401)
    );
    // Both: the metrics.
    let (status, body) = get(addr, &scraper, Some(TOKEN)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("scraped_things_total 1"), "{body}");
}

#[test]
fn metrics_off_loopback_without_protection_are_refused() {
    let node = domicile_node::NodeConfig::from_toml(
        "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
         metrics_listen = \"0.0.0.0:9465\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(node.contains("metrics_access"), "{node}");
    let node = domicile_node::NodeConfig::from_toml(
        "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
         metrics_listen = \"0.0.0.0:9465\"\n[metrics_access]\ncert_file = \"m.pem\"\n\
         key_file = \"m.key\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        node.contains("bearer_token_file or client_ca_file"),
        "{node}"
    );
    // On loopback, plain HTTP stays allowed (a sidecar scraper, `domicile dev`).
    domicile_node::NodeConfig::from_toml(
        "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
         metrics_listen = \"127.0.0.1:9465\"\n",
    )
    .unwrap();
    let gateway = domicile_gateway::GatewayConfig::from_toml(
        "metrics_listen = \"0.0.0.0:9464\"\ninsecure_no_auth = true\n\
         [[regions]]\nid = \"eu-de\"\ncountries = [\"DE\"]\nendpoints = [\"http://127.0.0.1:1\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(gateway.contains("metrics_access"), "{gateway}");
}
