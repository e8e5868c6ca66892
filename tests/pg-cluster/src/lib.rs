//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory and `pg_ctl`
//! on a free loopback port, from Debian's `postgresql` server binaries, stopped and removed on
//! drop. `domicile dev --storage postgres` and the tests run the nodes' PostgreSQL backend on
//! one.
//!
//! PostgreSQL refuses to run as root, so when the tests do (CI does), the cluster runs as the
//! `postgres` user the package creates, through `runuser`.
//!
//! Without the binaries, [`PgCluster::start`] fails and says how to install them: tests that
//! need PostgreSQL never skip silently.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, bail};

/// A running cluster, stopped (immediately) and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

/// The database superuser the cluster is made with.
pub const SUPERUSER: &str = "domicile";

/// The newest installed server's `bin` directory (`/usr/lib/postgresql/<version>/bin`).
fn server_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/<version>/bin/initdb): \
             apt-get install postgresql. tests/all.sh (the README's test command) installs it."
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A loopback port free now (the server binds it a moment later; see the retry in
/// [`PgCluster::start`]).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgCluster {
    /// Makes and starts a cluster; a database named `domicile` is ready to connect to.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// [`PgCluster::start`], serving TLS with the certificate chain and key given (PEM), beside
    /// plaintext: the client chooses.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let bin = server_bin()?;
        let dir = tempfile::tempdir().context("a temporary directory for the cluster")?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            // The cluster's files belong to the user it runs as.
            let status = Command::new("chown")
                .args([&format!("{user}:"), dir.path().to_str().unwrap()])
                .status()?;
            anyhow::ensure!(status.success(), "chown of the cluster directory failed");
        }
        let port = free_port()?;
        let mut cluster = Self {
            dir,
            bin,
            port,
            run_as,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        let mut tls_options = String::new();
        if let Some((cert, key)) = tls {
            let (cert_file, key_file) = (data.join("server.crt"), data.join("server.key"));
            std::fs::write(&cert_file, cert)?;
            std::fs::write(&key_file, key)?;
            // The server refuses a key others can read; it must own it.
            std::fs::set_permissions(
                &key_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            if let Some(user) = &cluster.run_as {
                for f in [&cert_file, &key_file] {
                    let status = Command::new("chown")
                        .args([&format!("{user}:"), f.to_str().unwrap()])
                        .status()?;
                    anyhow::ensure!(status.success(), "chown of {} failed", f.display());
                }
            }
            tls_options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_file.display(),
                key_file.display()
            );
        }
        let log = cluster.dir.path().join("server.log");
        for attempt in 1.. {
            let options = format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}{tls_options}",
                cluster.port,
                cluster.dir.path().display()
            );
            let logged = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
            let started = cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-o",
                    &options,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start",
                ],
            );
            let Err(e) = started else { break };
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let this_start = text.get(logged..).unwrap_or_default();
            // The free port was taken (by another test's cluster) between its choice and the
            // server's bind: choose again.
            if attempt < 5 && this_start.contains("could not bind") {
                cluster.port = free_port()?;
                continue;
            }
            return Err(e.context(format!("the server's log:\n{this_start}")));
        }
        cluster.psql("postgres", "CREATE DATABASE domicile")?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs, as the cluster's user; fails with its output.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Runs `sql` in `database` with `psql`; its output (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .context("running psql (apt-get install postgresql-client)")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Creates an empty database `name` (letters, digits and `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database names here are letters, digits and '_': {name:?}"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// Writes `database` with `pg_dump` (custom format) to `to`: the documented backup of a
    /// node on PostgreSQL.
    pub fn dump(&self, database: &str, to: &Path) -> anyhow::Result<()> {
        self.client("pg_dump", &["-Fc", "-f", to.to_str().unwrap(), database])
    }

    /// Restores a `pg_dump` file into a new database `database` with `pg_restore`.
    pub fn restore(&self, from: &Path, database: &str) -> anyhow::Result<()> {
        self.create_database(database)?;
        self.client(
            "pg_restore",
            &["--exit-on-error", "-d", database, from.to_str().unwrap()],
        )
    }

    /// Every byte of `database`'s files and of the cluster's write-ahead log, after a
    /// checkpoint (so that what is in shared buffers is in the files): what a disk holds.
    pub fn database_bytes(&self, database: &str) -> anyhow::Result<Vec<u8>> {
        self.psql("postgres", "CHECKPOINT")?;
        let oid = self.psql(
            "postgres",
            &format!("SELECT oid FROM pg_database WHERE datname = '{database}'"),
        )?;
        anyhow::ensure!(!oid.is_empty(), "no database {database}");
        let mut bytes = Vec::new();
        for dir in [
            self.data().join("base").join(oid),
            self.data().join("pg_wal"),
        ] {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_file() {
                    bytes.extend(std::fs::read(&path)?);
                }
            }
        }
        Ok(bytes)
    }

    /// Runs a client program (`pg_dump`, `pg_restore`) against the cluster.
    fn client(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join(program))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER])
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The connection URL of `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The cluster's directory (data, socket, server log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
