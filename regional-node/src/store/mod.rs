//! The store: the bottom layer of the node. It knows the engines (SQLite, PostgreSQL), how to
//! apply a [`Schema`] and its migrations, and how to run reads and group-committed writes; it
//! knows nothing of what the tables mean (that is [`crate::domain`], which writes the schema
//! and the SQL its modules run through [`db::Connection`]).
//!
//! SQLite is one file per node, in WAL mode. One writer connection behind a mutex (SQLite has
//! one writer anyway) takes each write in a single transaction, and writes that arrive while
//! a commit is being written share the next one ([`Store::write_grouped`]). Readers use their
//! own connections from a small pool so that aggregates never wait for ingest (WAL lets
//! readers and the writer overlap).
//!
//! Beside the data: the key vault ([`vault`], the subjects' data keys, wrapped by the KEK of
//! [`kek`]) and the region's key files ([`keys`]).

pub use crate::config::Backend;

#[cfg(test)]
mod contract;
pub mod db;
pub mod kek;
pub mod keys;
mod postgres;
mod sqlite;
mod value;
pub mod vault;

use std::{
    any::Any,
    sync::{Mutex, atomic::Ordering, mpsc},
};

use rusqlite::OpenFlags;

use crate::{
    error::NodeError,
    store::db::{Connection, Dialect, params},
    store::vault::Vault,
};

/// Page cache of the writer connection, KiB: the upper levels of the indexes ingest touches
/// stay in memory (the leaves come from the OS's page cache). With [`READER_CACHE_KIB`] times
/// [`READERS`], this bounds what the node's SQLite caches can hold: 56 MiB (`domicile-bench
/// dashboard` holds the node's peak RSS to 128 MiB).
const WRITER_CACHE_KIB: i64 = 24 * 1024;
/// Page cache of each pooled reader connection, KiB.
const READER_CACHE_KIB: i64 = 4 * 1024;
/// Page cache (and so the memory of each sort, see [`db::Connection::with_cache_kib`]) for a
/// query that sorts a large share of the rows, such as a release's pass.
pub const SORT_CACHE_KIB: i64 = 8 * 1024;
/// Reader connections a store keeps: on PostgreSQL also the most it opens at once (a reader
/// past them waits for one to come back). The node lets as many hot reads run at once
/// (`Node::reading`), so on SQLite too they never open more.
pub const READERS: usize = 8;

/// Cache and memory-map settings of one connection.
fn tune(conn: &rusqlite::Connection, cache_kib: i64) -> Result<(), NodeError> {
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    // Deleted rows are overwritten with zeros in their pages (and so in the WAL frames that
    // carry those pages), not left in free space: an erasure removes bytes, not only rows.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // A longer WAL between checkpoints: a page changed by many batches is copied back once.
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    Ok(())
}

/// A grouped write's answer, of the type its caller expects.
type Answer = Result<Box<dyn Any + Send>, NodeError>;

/// A write waiting for the next group commit: its work, run in the group's transaction, and
/// where its answer goes once the group is durable.
struct Pending {
    run: Box<dyn FnOnce(&Connection) -> Answer + Send>,
    reply: mpsc::SyncSender<Answer>,
}

/// A schema for the store to apply: the tables in each engine's dialect, its version, and the
/// migrations that bring an older database to that version. The domain writes it
/// ([`crate::domain::schema`]); the store only applies it.
pub struct Schema {
    /// The version this schema is (`PRAGMA user_version` on SQLite, the `domicile_schema`
    /// table on PostgreSQL).
    pub version: i64,
    /// The tables, indexes and triggers in SQLite's dialect (`IF NOT EXISTS` throughout).
    pub sqlite: String,
    /// The same in PostgreSQL's dialect.
    pub postgres: String,
    /// Every migration, in order. A database older than the first one's starting version
    /// cannot be migrated.
    pub migrations: &'static [Migration],
}

/// One step of a schema, from `version - 1` to `version`. Tables and indexes a version adds
/// are created by the schema itself (`IF NOT EXISTS`); a step fills what they must hold.
pub struct Migration {
    /// The version it reaches.
    pub version: i64,
    /// What it does, for the log and `domicile node migrate --check`.
    pub what: &'static str,
    /// The step, in the migrating transaction.
    pub apply: fn(&Connection) -> Result<(), NodeError>,
}

impl Schema {
    /// The migrations that take a database at `version` to this schema's version, or why it
    /// cannot be.
    pub fn pending(&self, version: i64) -> Result<Vec<&'static Migration>, NodeError> {
        let latest = self.version;
        let oldest = self.migrations.first().map_or(latest, |m| m.version - 1);
        if version > latest {
            return Err(NodeError::Internal(format!(
                "schema version {version} was written by a newer Domicile; this one knows up to \
                 {latest}"
            )));
        }
        if version < oldest {
            return Err(NodeError::Internal(format!(
                "schema version {version} is older than any this Domicile migrates from ({oldest}); \
                 migrate with an earlier release first"
            )));
        }
        Ok(self
            .migrations
            .iter()
            .filter(|m| m.version > version)
            .collect())
    }
}

/// Connections to a [`Backend`].
impl Backend {
    /// A new read-write connection, outside the node's store (for tests and tools that
    /// inspect or alter a database directly).
    pub fn connect_read_write(&self) -> Result<Connection, NodeError> {
        self.connect(false)
    }

    /// A new read-only connection (for operator commands).
    pub fn connect_read_only(&self) -> Result<Connection, NodeError> {
        self.connect(true)
    }

    /// A new connection.
    fn connect(&self, read_only: bool) -> Result<Connection, NodeError> {
        match self {
            Self::Sqlite(path) => {
                let conn = if read_only {
                    rusqlite::Connection::open_with_flags(
                        path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?
                } else {
                    let c = rusqlite::Connection::open(path)?;
                    c.pragma_update(None, "journal_mode", "WAL")?;
                    // FULL: a commit is on disk before the node acknowledges the batch.
                    c.pragma_update(None, "synchronous", "FULL")?;
                    c
                };
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                tune(
                    &conn,
                    if read_only {
                        READER_CACHE_KIB
                    } else {
                        WRITER_CACHE_KIB
                    },
                )?;
                Ok(Connection::sqlite(conn))
            }
            Self::Postgres(url) => {
                let conn = Connection::postgres(url)?;
                if read_only {
                    conn.execute_batch("SET default_transaction_read_only = on")?;
                }
                Ok(conn)
            }
        }
    }
}

/// The schema version of the node's database, read without changing it (`None` when it does
/// not exist or holds no table yet).
pub fn schema_version(backend: &Backend) -> Result<Option<i64>, NodeError> {
    match backend {
        Backend::Sqlite(path) => {
            if !path.exists() {
                return Ok(None);
            }
            let conn =
                rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let tables: i64 =
                conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables == 0 {
                return Ok(None);
            }
            Ok(Some(conn.pragma_query_value(
                None,
                "user_version",
                |r| r.get(0),
            )?))
        }
        Backend::Postgres(_) => pg_schema_version(&backend.connect(true)?),
    }
}

/// The version PostgreSQL's `domicile_schema` table records, if it exists.
fn pg_schema_version(conn: &Connection) -> Result<Option<i64>, NodeError> {
    let exists: bool = conn.query_row(
        "SELECT to_regclass('domicile_schema') IS NOT NULL",
        params![],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    conn.query_opt("SELECT version FROM domicile_schema", params![], |r| {
        r.get(0)
    })
}

/// The node's store: one writer connection (group-committed) and a pool of readers, over
/// SQLite or PostgreSQL.
pub struct Store {
    backend: Backend,
    writer: Mutex<Connection>,
    readers: Readers,
    /// Reader connections opened since the store was.
    readers_opened: std::sync::atomic::AtomicUsize,
    /// Writes queued for [`Store::write_grouped`], committed together by whichever
    /// caller next holds the writer.
    pending: Mutex<Vec<Pending>>,
    vault: Vault,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.describe())
            .finish()
    }
}

/// Where a store's readers come from.
enum Readers {
    /// Idle SQLite connections (opened when none is idle; at most [`READERS`] kept).
    Sqlite(Mutex<Vec<Connection>>),
    /// A pool of read-only sessions, at most [`READERS`] connections.
    Postgres(postgres::PgPool),
}

/// The advisory-lock key that serialises schema changes between replicas starting together.
const SCHEMA_LOCK: i64 = 0x646f_6d69_0001;

impl Store {
    /// Opens (creating if needed) the database and its key vault at `vault` (with the region's
    /// key-encryption key), and applies the schema and any pending migration.
    pub fn open(
        backend: &Backend,
        vault: &Backend,
        kek: &[u8; 32],
        schema: &Schema,
    ) -> Result<Self, NodeError> {
        Self::open_with_vault(backend, Vault::open(vault, kek)?, schema)
    }

    /// Opens (creating if needed) the database beside its opened key vault (whose KEK was
    /// checked before this touches any data), and applies the schema and any pending migration.
    pub fn open_with_vault(
        backend: &Backend,
        vault: Vault,
        schema: &Schema,
    ) -> Result<Self, NodeError> {
        if let Backend::Sqlite(path) = backend
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| NodeError::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        postgres::warn_if_plaintext(backend, "the data");
        let writer = backend.connect(false)?;
        writer.transaction(|tx| apply_schema(tx, backend, schema))?;
        let readers = match backend {
            Backend::Sqlite(_) => Readers::Sqlite(Mutex::new(Vec::new())),
            Backend::Postgres(url) => Readers::Postgres(
                postgres::PgPool::new(url, true, READERS).map_err(NodeError::Storage)?,
            ),
        };
        Ok(Self {
            backend: backend.clone(),
            writer: Mutex::new(writer),
            readers,
            readers_opened: std::sync::atomic::AtomicUsize::new(0),
            pending: Mutex::new(Vec::new()),
            vault,
        })
    }

    /// Where the data is.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// How many reader connections the store has opened since it was opened: with the idle
    /// ones reused, a number that stops growing once the load's concurrency is met.
    pub fn readers_opened(&self) -> usize {
        self.readers_opened.load(Ordering::Relaxed)
    }

    /// The key vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The writer, reconnected first if its PostgreSQL connection was lost (a restarted or
    /// failed-over server): the next write then succeeds instead of failing forever.
    fn writer(&self) -> Result<std::sync::MutexGuard<'_, Connection>, NodeError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_closed() {
            *conn = self.backend.connect(false)?;
        }
        Ok(conn)
    }

    /// Runs `f` in a transaction shared with the other writes queued meanwhile, and returns its
    /// value once that transaction is committed (group commit: one fsync for the group).
    ///
    /// The caller queues its write, then takes the writer: if a previous holder already
    /// committed the write, the caller only collects the answer; otherwise it commits every
    /// queued write (its own among them) in one transaction, each in a savepoint of its own, so
    /// that a write that fails is undone alone and the others still commit. Answers go out
    /// only after the commit, and each caller passes through the writer before returning.
    pub fn write_grouped<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let (reply, answer) = mpsc::sync_channel(1);
        // Another caller's thread may commit the group: the job keeps its own principal, so
        // its audit entries name who caused them.
        let principal = domicile_ops::principal::current();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                run: Box::new(move |tx| {
                    domicile_ops::principal::sync_scope(principal, || f(tx))
                        .map(|v| Box::new(v) as Box<dyn Any + Send>)
                }),
                reply,
            });
        let answered = {
            let conn = self.writer();
            // Committed by the previous holder: leave the writes queued since to their own
            // callers rather than make this one wait for another commit.
            match answer.try_recv() {
                Ok(value) => Some(value),
                Err(_) => {
                    let group = std::mem::take(
                        &mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    match conn {
                        Ok(conn) => commit_group(&conn, group),
                        Err(e) => {
                            for job in group {
                                let _ = job.reply.send(Err(NodeError::Internal(format!(
                                    "database connection: {e}"
                                ))));
                            }
                        }
                    }
                    None
                }
            }
        };
        let value = match answered {
            Some(value) => value,
            None => answer
                .recv()
                .map_err(|_| NodeError::Internal("a grouped write was dropped".into()))?,
        }?;
        Ok(*value
            .downcast::<T>()
            .expect("each write's answer has the type it was queued with"))
    }

    /// After an erasure committed, on SQLite: copies the write-ahead log into the database and
    /// truncates it (`wal_checkpoint(TRUNCATE)`), so the log's older frames — page images from
    /// before the erasure — leave the WAL file at once rather than at the next automatic
    /// checkpoint (up to 64 MiB later). True when the checkpoint completed (a reader holding an
    /// old snapshot makes SQLite leave frames it still needs; the next erasure's checkpoint, or
    /// the automatic one, takes them). On PostgreSQL nothing: `VACUUM` would not overwrite the
    /// dead rows' bytes either, and on a large `interactions` table it would scan it all under
    /// the writer for every erasure; autovacuum reclaims the space, and crypto-shredding is
    /// the guarantee there (docs/erasure.md).
    ///
    /// Most frames are copied first by a passive checkpoint on a connection of its own, which
    /// writes go on beside; the writer is then held only for what they added meanwhile and
    /// the truncation (after a 10,000-interaction purge, the checkpoint alone held it 80 ms).
    pub fn scrub_after_erasure(&self) -> Result<bool, NodeError> {
        if let Backend::Postgres(_) = self.backend {
            return Ok(true);
        }
        {
            let side = self.backend.connect_read_write()?;
            side.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))?;
        }
        let conn = self.writer()?;
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }

    /// Runs `f` in one write transaction: committed when `f` succeeds, rolled back otherwise.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        self.writer()?.transaction(f)
    }

    /// Runs `f` with a read-only connection from the pool.
    ///
    /// On PostgreSQL, when the session turns out to be gone (the server restarted, failed
    /// over, or an operator ended it while it sat in the pool), the pool's idle sessions are
    /// closed too (what ended one most likely ended them all) and `f` runs once more on a new
    /// one: a read-only session cannot have changed anything, and a caller should not see an
    /// error for a connection it never chose.
    pub fn read<T>(&self, f: impl Fn(&Connection) -> Result<T, NodeError>) -> Result<T, NodeError> {
        let idle = match &self.readers {
            Readers::Postgres(pool) => {
                let pooled = || {
                    let conn = Connection::pooled(pool)?;
                    if conn.is_new() {
                        self.readers_opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, NodeError>(conn)
                };
                let conn = pooled()?;
                return match f(&conn) {
                    Err(NodeError::Storage(e)) if e.is_connection_lost() => {
                        conn.discard();
                        pool.forget_idle();
                        f(&pooled()?)
                    }
                    done => done,
                };
            }
            Readers::Sqlite(idle) => idle,
        };
        let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let conn = self.backend.connect(true)?;
                self.readers_opened.fetch_add(1, Ordering::Relaxed);
                conn
            }
        };
        let result = f(&conn);
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < READERS {
            idle.push(conn);
        }
        result
    }
}

/// Creates or migrates the schema in the open transaction of `tx`.
fn apply_schema(tx: &Connection, backend: &Backend, schema: &Schema) -> Result<(), NodeError> {
    let version = match tx.dialect() {
        Dialect::Sqlite => {
            let c = tx.as_sqlite().expect("a SQLite connection");
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let empty: i64 = c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
            (empty > 0).then_some(version)
        }
        Dialect::Postgres => {
            // Replicas starting together take turns; the second finds the schema made.
            tx.lock(SCHEMA_LOCK)?;
            pg_schema_version(tx)?
        }
    };
    let version = version.unwrap_or(schema.version);
    let pending = schema
        .pending(version)
        .map_err(|e| NodeError::Internal(format!("{}: {e}", backend.describe())))?;
    match tx.dialect() {
        Dialect::Sqlite => tx.execute_batch(&schema.sqlite)?,
        Dialect::Postgres => tx.execute_batch(&schema.postgres)?,
    }
    for m in pending {
        tracing::info!(
            database = %backend.describe(),
            from = m.version - 1,
            to = m.version,
            what = m.what,
            "migrating the schema"
        );
        let started = std::time::Instant::now();
        (m.apply)(tx)?;
        tracing::info!(
            to = m.version,
            seconds = started.elapsed().as_secs_f64(),
            "schema migrated"
        );
    }
    match tx.dialect() {
        Dialect::Sqlite => {
            tx.execute_batch(&format!("PRAGMA user_version = {}", schema.version))?
        }
        Dialect::Postgres => {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS domicile_schema (version BIGINT NOT NULL);
                 DELETE FROM domicile_schema;",
            )?;
            tx.execute(
                "INSERT INTO domicile_schema (version) VALUES ($1)",
                params![schema.version],
            )?;
        }
    }
    Ok(())
}

/// Commits `group` in one transaction, each write in a savepoint, and answers each: its value
/// once the commit is durable, or its error (a failed write is rolled back alone).
fn commit_group(conn: &Connection, group: Vec<Pending>) {
    let fail_all = |group: Vec<mpsc::SyncSender<Answer>>, e: &dyn std::fmt::Display| {
        for reply in group {
            let _ = reply.send(Err(NodeError::Internal(format!("commit: {e}"))));
        }
    };
    if let Err(e) = conn.begin() {
        return fail_all(group.into_iter().map(|p| p.reply).collect(), &e);
    }
    let mut done = Vec::with_capacity(group.len());
    for job in group {
        if let Err(e) = conn.execute_batch("SAVEPOINT grouped_write") {
            let _ = job.reply.send(Err(e));
            continue;
        }
        match (job.run)(conn) {
            Ok(value) => match conn.execute_batch("RELEASE grouped_write") {
                Ok(()) => done.push((job.reply, value)),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            },
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK TO grouped_write; RELEASE grouped_write");
                let _ = job.reply.send(Err(e));
            }
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for (reply, value) in done {
                let _ = reply.send(Ok(value));
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            fail_all(done.into_iter().map(|(r, _)| r).collect(), &e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::testing::Databases;

    /// A store on each backend, with a table `t`.
    fn stores(dbs: &Databases) -> Vec<Arc<Store>> {
        dbs.both()
            .iter()
            .map(|backend| {
                let store = dbs.store(backend);
                store
                    .write(|tx| tx.execute_batch("CREATE TABLE t (v BIGINT PRIMARY KEY)"))
                    .unwrap();
                Arc::new(store)
            })
            .collect()
    }

    fn values(store: &Store) -> Vec<i64> {
        store
            .read(|c| {
                c.prepare("SELECT v FROM t ORDER BY v")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap()
    }

    #[test]
    fn concurrent_writes_share_commits_and_all_land() {
        let dbs = Databases::new();
        for store in stores(&dbs) {
            let (threads, each) = (8, 40);
            let barrier = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for i in 0..each {
                            let v = (t * each + i) as i64;
                            let got = store
                                .write_grouped(move |tx| {
                                    tx.execute("INSERT INTO t (v) VALUES ($1)", [v])?;
                                    Ok(v)
                                })
                                .unwrap();
                            assert_eq!(got, v, "each write gets its own answer");
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let expected: Vec<i64> = (0..(threads * each) as i64).collect();
            assert_eq!(values(&store), expected, "{:?}", store.backend());
        }
    }

    #[test]
    fn a_failed_write_is_undone_alone() {
        let dbs = Databases::new();
        for store in stores(&dbs) {
            // Hold the writer so that both writes queue up and are committed as one group.
            let held = store.writer.lock().unwrap();
            let spawn = |v: i64, fail: bool| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.write_grouped(move |tx| {
                        tx.execute("INSERT INTO t (v) VALUES ($1)", [v])?;
                        if fail {
                            return Err(NodeError::Internal("refused".into()));
                        }
                        Ok(v)
                    })
                })
            };
            let bad = spawn(1, true);
            let good = spawn(2, false);
            while store.pending.lock().unwrap().len() < 2 {
                std::thread::yield_now();
            }
            drop(held);
            assert!(bad.join().unwrap().is_err());
            assert_eq!(good.join().unwrap().unwrap(), 2);
            assert_eq!(
                values(&store),
                [2],
                "the failed write's insert was rolled back, the other kept ({:?})",
                store.backend()
            );
        }
    }

    #[test]
    fn a_write_that_breaks_a_constraint_is_undone_alone_and_the_group_commits() {
        // On PostgreSQL an error aborts the transaction: the savepoint must bring it back.
        let dbs = Databases::new();
        for store in stores(&dbs) {
            store
                .write(|tx| tx.execute("INSERT INTO t (v) VALUES (7)", []))
                .unwrap();
            let held = store.writer.lock().unwrap();
            let spawn = |v: i64| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.write_grouped(move |tx| {
                        tx.execute("INSERT INTO t (v) VALUES ($1)", [v])?;
                        Ok(v)
                    })
                })
            };
            let duplicate = spawn(7);
            let fresh = spawn(8);
            while store.pending.lock().unwrap().len() < 2 {
                std::thread::yield_now();
            }
            drop(held);
            let err = duplicate.join().unwrap().unwrap_err();
            assert!(
                matches!(&err, NodeError::Storage(db) if db.is_unique_violation()),
                "{err}"
            );
            assert_eq!(fresh.join().unwrap().unwrap(), 8);
            assert_eq!(values(&store), [7, 8], "{:?}", store.backend());
        }
    }

    #[test]
    fn the_accountant_never_overspends_under_concurrency() {
        // Eight threads charging one month of data at once, on both backends (each charge in
        // its own write transaction, as a release makes it).
        let dbs = Databases::new();
        for store in stores(&dbs) {
            let charge = |store: &Store, milli: u32| {
                store
                    .write(|tx| crate::domain::release::charge(tx, "acme", 682, milli, 10_000))
                    .unwrap()
            };
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        (0..10).filter(|_| charge(&store, 300).is_some()).count()
                    })
                })
                .collect();
            let charged: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            // 10,000 / 300: 33 charges fit, 1,000 thousandths never do.
            assert_eq!(charged, 33, "{:?}", store.backend());
            let spent = store
                .read(|c| crate::domain::release::spent(c, "acme", 682))
                .unwrap();
            assert_eq!(spent, 9_900);
            assert_eq!(charge(&store, 100), Some(10_000));
            assert_eq!(charge(&store, 1), None);
            // Another month of data has its own budget.
            assert_eq!(
                store
                    .write(|tx| crate::domain::release::charge(tx, "acme", 683, 1, 10_000))
                    .unwrap(),
                Some(1)
            );
        }
    }

    #[test]
    fn two_replicas_append_to_one_audit_chain() {
        // Two stores over one database (one SQLite file, or one PostgreSQL database with one
        // vault), four writers each, appending at once: one chain, no gap, no fork.
        let dbs = Databases::new();
        for backend in dbs.both() {
            let vault = dbs.vault(&backend);
            let replicas: Vec<Arc<Store>> = (0..2)
                .map(|_| {
                    Arc::new(
                        Store::open(&backend, &vault, &[7; 32], &crate::domain::schema::SCHEMA)
                            .unwrap(),
                    )
                })
                .collect();
            let log = Arc::new(crate::domain::audit::AuditLog::new("eu-de", &[9; 32], 25));
            let handles: Vec<_> = (0..8)
                .map(|w| {
                    let (store, log) = (replicas[w % 2].clone(), log.clone());
                    std::thread::spawn(move || {
                        for i in 0..25 {
                            let log = log.clone();
                            store
                                .write_grouped(move |tx| {
                                    log.append(
                                        tx,
                                        crate::domain::audit::Entry {
                                            kind: crate::domain::audit::Kind::IngestBatch,
                                            tenant: "acme",
                                            subject: None,
                                            details: serde_json::json!({ "writer": w, "i": i }),
                                        },
                                    )
                                })
                                .unwrap();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let verified = replicas[0]
                .read(|c| crate::domain::audit::verify(c, "eu-de", &log.public_key()))
                .unwrap()
                .unwrap();
            assert_eq!(verified.entries, 200, "{:?}", backend);
            assert_eq!(verified.checkpoints, 8);
        }
    }

    #[test]
    fn a_small_cache_for_one_query_is_given_back_even_when_it_fails() {
        let dbs = Databases::new();
        for store in stores(&dbs) {
            let cache = |c: &Connection| -> Option<i64> {
                c.as_sqlite().map(|s| {
                    s.pragma_query_value(None, "cache_size", |r| r.get(0))
                        .unwrap()
                })
            };
            store
                .write(|tx| {
                    let before = cache(tx);
                    assert!(before.is_none_or(|b| b == -WRITER_CACHE_KIB), "{before:?}");
                    let n = tx.with_cache_kib(SORT_CACHE_KIB, |c| {
                        assert!(cache(c).is_none_or(|k| k == -SORT_CACHE_KIB));
                        c.execute("INSERT INTO t VALUES (1)", params![])
                    })?;
                    assert_eq!(n, 1);
                    assert_eq!(cache(tx), before, "given back");
                    Ok(())
                })
                .unwrap();
            let failed = store.write(|tx| {
                tx.with_cache_kib(SORT_CACHE_KIB, |c| {
                    c.execute("INSERT INTO t VALUES (1)", params![])
                })
            });
            assert!(failed.is_err(), "a duplicate key");
            store
                .write(|tx| {
                    let after = cache(tx);
                    assert!(after.is_none_or(|a| a == -WRITER_CACHE_KIB), "{after:?}");
                    Ok(())
                })
                .unwrap();
            assert_eq!(values(&store), [1]);
        }
    }

    #[test]
    fn a_newer_schema_is_refused_on_either_backend() {
        let dbs = Databases::new();
        for backend in dbs.both() {
            drop(dbs.store(&backend));
            let conn = backend.connect_read_write().unwrap();
            match conn.dialect() {
                Dialect::Sqlite => conn.execute_batch("PRAGMA user_version = 99").unwrap(),
                Dialect::Postgres => conn
                    .execute_batch("UPDATE domicile_schema SET version = 99")
                    .unwrap(),
            }
            assert_eq!(schema_version(&backend).unwrap(), Some(99));
            let err = Store::open(
                &backend,
                &dbs.vault(&backend),
                &[7; 32],
                &crate::domain::schema::SCHEMA,
            )
            .unwrap_err();
            assert!(err.to_string().contains("newer Domicile"), "{err}");
        }
    }
}
