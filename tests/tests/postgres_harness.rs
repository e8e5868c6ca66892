//! The throwaway PostgreSQL cluster the PostgreSQL backend's tests will run on: it starts
//! from Debian's binaries (as the `postgres` user when the tests run as root), takes SQL on
//! its loopback port, and is gone after the drop. Without PostgreSQL installed this fails with
//! the install command, never skips.

use domicile_tests::postgres::PgCluster;

#[test]
fn a_throwaway_cluster_starts_serves_and_goes() -> anyhow::Result<()> {
    let cluster = PgCluster::start()?;
    let version = cluster.psql("domicile", "SHOW server_version_num")?;
    assert!(
        version.parse::<u32>()? >= 150_000,
        "PostgreSQL 15 or later: {version}"
    );
    cluster.psql(
        "domicile",
        "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO t VALUES ('a', 1), ('b', 2) ON CONFLICT (k) DO NOTHING;
         INSERT INTO t VALUES ('a', 9) ON CONFLICT (k) DO NOTHING;",
    )?;
    assert_eq!(cluster.psql("domicile", "SELECT sum(v) FROM t")?, "3");
    // Durable by default: every commit waits for its WAL flush.
    assert_eq!(cluster.psql("domicile", "SHOW fsync")?, "on");
    assert_eq!(cluster.psql("domicile", "SHOW synchronous_commit")?, "on");
    let url = cluster.url("domicile");
    assert!(url.starts_with("postgres://domicile@127.0.0.1:"), "{url}");
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()?;
    let dir = cluster.dir().to_owned();
    drop(cluster);
    assert!(!dir.exists(), "the cluster's files are removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is stopped"
    );
    Ok(())
}
