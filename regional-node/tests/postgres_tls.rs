//! The node reaches PostgreSQL over TLS (`sslmode=verify-full&sslrootcert=<CA>`): its data and
//! its key vault, the server's certificate checked against the CA named and its name against
//! the URL's host. A certificate for another name, or from another CA, is refused before any
//! query.

use std::path::Path;

use domicile_node::{
    domain::schema::SCHEMA,
    store::{Backend, Store},
};
use domicile_pg_cluster::PgCluster;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA, its certificate written to `path`.
fn ca(path: &Path, name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(path, issuer.pem())?;
    Ok(issuer)
}

/// A server certificate for `name` only (no IP address), and its key, in PEM.
fn server(issuer: &CertifiedIssuer<'_, KeyPair>, name: &str) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `url` (the cluster's, on 127.0.0.1) with `host` and the TLS options for `ca`.
fn over_tls(url: &str, host: &str, ca: &Path) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        url.replacen("@127.0.0.1:", &format!("@{host}:"), 1),
        ca.display()
    )
}

fn parse(url: &str) -> anyhow::Result<Backend> {
    Backend::parse(url).map_err(anyhow::Error::msg)
}

#[test]
fn data_and_vault_over_verified_tls_and_a_wrong_name_or_ca_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca_file, other_ca_file) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    let issuer = ca(&ca_file, "Domicile test PostgreSQL CA")?;
    ca(&other_ca_file, "Someone else's CA")?;
    let (cert, key) = server(&issuer, "localhost")?;
    let pg = PgCluster::start_with_tls(&cert, &key)?;
    let vault_url = pg.create_database("vault")?;

    let data = parse(&over_tls(&pg.url("domicile"), "localhost", &ca_file))?;
    let vault = parse(&over_tls(&vault_url, "localhost", &ca_file))?;
    assert!(
        !data.describe().contains("sslrootcert"),
        "{}",
        data.describe()
    );
    let store = Store::open(&data, &vault, &[7; 32], &SCHEMA)?;
    store.write(|tx| {
        tx.execute(
            "INSERT INTO ingest_keys (tenant, idempotency_key, kind, ingested_at) VALUES ($1, $2, 1, 0)",
            ["acme", "k-1"],
        )
    })?;
    let ssl: bool = store.read(|c| {
        c.query_row(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            [] as [&dyn domicile_node::store::db::ToValue; 0],
            |r| r.get(0),
        )
    })?;
    assert!(ssl, "the node's own session is not TLS");
    // Seen from the server: every session of the node (data writer, reader, vault) is TLS.
    let sessions = pg.psql(
        "postgres",
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname IN ('domicile', 'vault') AND a.backend_type = 'client backend'",
    )?;
    let counts: Vec<u32> = sessions
        .trim()
        .split('|')
        .map(|n| n.parse())
        .collect::<Result<_, _>>()?;
    assert!(
        counts[0] >= 3 && counts[1] == 0,
        "TLS, plaintext sessions: {counts:?}"
    );

    // The certificate names localhost; a URL naming 127.0.0.1 does not match it.
    let wrong_name = parse(&over_tls(&pg.url("domicile"), "127.0.0.1", &ca_file))?;
    let e = wrong_name.connect_read_write().unwrap_err().to_string();
    assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
    // Another CA did not sign it.
    let wrong_ca = parse(&over_tls(&pg.url("domicile"), "localhost", &other_ca_file))?;
    let e = wrong_ca.connect_read_write().unwrap_err().to_string();
    assert!(e.contains("UnknownIssuer"), "{e}");
    // Neither opens a store: the node does not start on an unverified server.
    assert!(Store::open(&wrong_name, &vault, &[7; 32], &SCHEMA).is_err());
    // A CA file that holds no certificate is named in the error.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "")?;
    let e = parse(&over_tls(&pg.url("domicile"), "localhost", &empty))?
        .connect_read_write()
        .unwrap_err()
        .to_string();
    assert!(e.contains("sslrootcert") && e.contains("empty.pem"), "{e}");
    Ok(())
}
