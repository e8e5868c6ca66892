//! Helpers shared by the tests that run the `domicile` binary.
#![allow(dead_code)] // each test file uses its own part

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

/// Runs `domicile args…`; its exit code and standard output followed by standard error.
pub fn domicile(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(args)
        .output()
        .expect("the domicile binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A loopback address nothing listens on (at the time of asking).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `domicile node` process, killed with SIGKILL (and reaped) by [`NodeProcess::crash`] or
/// when dropped.
pub struct NodeProcess(Child);

impl NodeProcess {
    /// Starts `domicile node --config config`, its output discarded.
    pub fn start(config: &Path) -> Self {
        Self(
            Command::new(env!("CARGO_BIN_EXE_domicile"))
                .args(["node", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the domicile binary runs"),
        )
    }

    /// SIGKILL: no drain, no shutdown code runs.
    pub fn crash(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A node configuration in `dir/node.toml` (see [`node_config`]) whose data is the SQLite file
/// `dir/eu-de.sqlite`, or (with a cluster) a new database `name` in it; its key files are in
/// `dir` either way. The backend, and the configuration's path.
pub fn node_on(
    cluster: Option<&domicile_pg_cluster::PgCluster>,
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    extra: &str,
) -> (domicile_node::store::Backend, std::path::PathBuf) {
    use domicile_node::store::Backend;
    let database = dir.join("eu-de.sqlite");
    let (backend, line) = match cluster {
        Some(c) => {
            let url = c.create_database(name).unwrap();
            let line = format!("storage = \"{url}\"\n");
            (Backend::Postgres(url), line)
        }
        None => (Backend::Sqlite(database.clone()), String::new()),
    };
    let config = dir.join("node.toml");
    node_config(&config, listen, &database, &format!("{extra}{line}"));
    (backend, config)
}

/// A node configuration for region eu-de (DE), plaintext, on `listen`, with its database at
/// `database` (keys beside it, made by `domicile keygen --config` unless they exist), written
/// to `path`; `extra` lines are appended.
pub fn node_config(path: &Path, listen: SocketAddr, database: &Path, extra: &str) {
    let text = format!(
        "region_id = \"eu-de\"\ncountries = [\"DE\"]\nlisten = \"{listen}\"\ninsecure_plaintext = true\ndatabase = \"{}\"\n{extra}",
        database.display()
    );
    std::fs::write(path, &text).unwrap();
    let config = domicile_node::NodeConfig::from_toml(&text).unwrap();
    if !domicile_node::store::keys::region_keys_exist(&config) {
        let (code, out) = domicile(&["keygen", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
    }
}
