//! One SQL interface over the node's two storage backends: SQLite (embedded, the default) and
//! PostgreSQL (for regions that run several node replicas over one database).
//!
//! No SQL is rewritten at run time. A statement that both engines read natively is written
//! once: parameters as `$1` … `$N` (PostgreSQL's form, which SQLite reads as named
//! parameters), `INSERT … ON CONFLICT …`, `RETURNING`. Where the engines differ (date
//! functions, index hints, scalar `MIN`, set-based batches), the module writes one statement
//! per engine and picks it by [`Connection::dialect`]. SQL put together at run time (filters,
//! `IN` lists) goes through [`Query`], which numbers each parameter as it is bound. Values cross as
//! [`Value`]s: integers are 64-bit on both sides (`BIGINT` in PostgreSQL's schema), blobs are
//! `BYTEA`, text is text.
//!
//! A [`Connection`] is owned and used through `&self` (a PostgreSQL connection is driven by
//! the engine's runtime whichever thread calls), so a transaction is the same connection
//! between `BEGIN` and `COMMIT`, and every
//! module takes `&Connection` whatever the backend.

use std::fmt;

pub use crate::store::value::{
    ColumnIndex, FromValue, Params, Row, Rows, ToValue, Value, params_from_iter,
};
use crate::store::{
    postgres::{PgConn, PgPool, owned},
    sqlite::{lite_each, lite_execute, lite_rows},
    value::{Cell, RowInner, RowsInner},
};

pub use crate::error::DbError;
use crate::error::NodeError;

/// Log filter directives every Domicile binary adds after the operator's own: the PostgreSQL
/// client logs each statement's parameters (personal data) at debug level, so it is capped at
/// info whatever `RUST_LOG` says.
pub const LOG_CAPS: &[&str] = &[
    "tokio_postgres=info",
    // The module that logs the parameters, in case a filter names it.
    "tokio_postgres::query=info",
];

/// Which SQL dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A statement put together at run time (optional filters, `IN` lists, the consent gate),
/// with its parameters. [`Query::bind`] writes the next `$N` where the value goes and keeps
/// the value, so the numbers match the values whatever pieces were joined, on both engines.
#[derive(Default)]
pub struct Query<'a> {
    sql: String,
    args: Vec<Box<dyn ToValue + 'a>>,
}

impl fmt::Debug for Query<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text only: the values may be personal data.
        f.debug_struct("Query")
            .field("sql", &self.sql)
            .field("params", &self.args.len())
            .finish()
    }
}

impl<'a> Query<'a> {
    /// A query starting with `sql` (which has no parameters).
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    /// Appends SQL text with no parameters in it.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends the next parameter, `$N`, bound to `value`.
    pub fn bind(&mut self, value: impl ToValue + 'a) -> &mut Self {
        self.args.push(Box::new(value));
        self.sql.push('$');
        self.sql.push_str(&self.args.len().to_string());
        self
    }

    /// Appends one parameter per value, separated by commas (the inside of an `IN (…)`).
    pub fn bind_list<T: ToValue + 'a>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.bind(v);
        }
        self
    }

    /// The statement's text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Its parameters, in order.
    pub fn params(&self) -> Vec<&dyn ToValue> {
        self.args
            .iter()
            .map(|a| a.as_ref() as &dyn ToValue)
            .collect()
    }
}

/// Statements to run together, in order, with [`Connection::pipeline`]: on PostgreSQL one
/// round trip for all of them. Each keeps a copy of its values.
#[derive(Default)]
pub struct Pipeline<'s> {
    steps: Vec<(&'s str, Vec<Cell>)>,
}

impl fmt::Debug for Pipeline<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The statements only: the values may be personal data.
        f.debug_list()
            .entries(self.steps.iter().map(|(sql, _)| sql))
            .finish()
    }
}

impl<'s> Pipeline<'s> {
    /// Adds `sql` with its parameters at the end.
    pub fn push(&mut self, sql: &'s str, params: impl Params) -> &mut Self {
        self.steps.push((sql, owned(params.values())));
        self
    }

    /// How many statements it holds.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// `.optional()` on a query's result, as rusqlite's `OptionalExtension`: no row is `None`.
pub trait OptionalExtension<T> {
    /// `Ok(None)` instead of the no-row error.
    fn optional(self) -> Result<Option<T>, NodeError>;
}

impl<T> OptionalExtension<T> for Result<T, NodeError> {
    fn optional(self) -> Result<Option<T>, NodeError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(NodeError::Storage(DbError::NoRow)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A statement to run on a connection (rusqlite's `prepare` / `prepare_cached`, over both
/// backends). On SQLite it holds the prepared statement, so a loop that runs it pays the
/// preparation (or the cache lookup) once; PostgreSQL's connection caches its own.
pub struct Statement<'c> {
    inner: StmtInner<'c>,
}

enum StmtInner<'c> {
    Sqlite(rusqlite::Statement<'c>),
    SqliteCached(rusqlite::CachedStatement<'c>),
    Postgres { conn: &'c Connection, sql: String },
}

impl fmt::Debug for Statement<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Statement")
    }
}

impl<'c> Statement<'c> {
    /// The SQLite statement, or PostgreSQL's connection and SQL.
    fn target(&mut self) -> Result<&mut rusqlite::Statement<'c>, (&Connection, &str)> {
        match &mut self.inner {
            StmtInner::Sqlite(s) => Ok(s),
            StmtInner::SqliteCached(s) => Ok(&mut **s),
            StmtInner::Postgres { conn, sql } => Err((conn, sql)),
        }
    }

    /// Runs it; the number of rows changed.
    pub fn execute(&mut self, params: impl Params) -> Result<usize, NodeError> {
        match self.target() {
            Ok(stmt) => lite_execute(stmt, params),
            Err((conn, sql)) => conn.execute(sql, params),
        }
    }

    /// Its first row, converted by `f`; an error when there is none.
    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each(params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(false)
        })?;
        out.ok_or_else(|| DbError::NoRow.into())
    }

    /// Every row, each converted by `f`, as an iterator of results (as rusqlite's).
    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T, NodeError>,
    ) -> Result<std::vec::IntoIter<Result<T, NodeError>>, NodeError> {
        let mut out = Vec::new();
        self.query_each(params, |r| {
            out.push(f(r));
            Ok(true)
        })?;
        Ok(out.into_iter())
    }

    /// Every row, read in full (see [`Rows`]).
    pub fn query(&mut self, params: impl Params) -> Result<Rows, NodeError> {
        match self.target() {
            Ok(stmt) => lite_rows(stmt, params),
            Err((conn, sql)) => conn.query(sql, params),
        }
    }

    /// Calls `f` with each row until it returns `false`.
    pub fn query_each(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<bool, NodeError>,
    ) -> Result<(), NodeError> {
        match self.target() {
            Ok(stmt) => lite_each(stmt, params, f),
            Err((conn, sql)) => conn.query_each(sql, params, f),
        }
    }
}

/// Parameters for a statement, like `rusqlite::params!`: `params![tenant, subject]`.
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::db::ToValue]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::db::ToValue),+] as &[&dyn $crate::store::db::ToValue]
    };
}
pub(crate) use params;

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(PgConn),
}

/// A connection to the node's database, on either backend.
pub struct Connection {
    inner: Inner,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("dialect", &self.dialect())
            .finish()
    }
}

impl Connection {
    /// Wraps a SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        conn.set_prepared_statement_cache_capacity(128);
        Self {
            inner: Inner::Sqlite(conn),
        }
    }

    /// Connects to PostgreSQL at `url` (`postgres://user@host:port/db`): a connection of its
    /// own, outside any pool.
    pub fn postgres(url: &str) -> Result<Self, NodeError> {
        Ok(Self {
            inner: Inner::Postgres(PgConn::connect(url)?),
        })
    }

    /// A connection from a PostgreSQL pool; it goes back to the pool when dropped.
    pub(super) fn pooled(pool: &PgPool) -> Result<Self, NodeError> {
        Ok(Self {
            inner: Inner::Postgres(pool.get()?),
        })
    }

    /// Whether the connection was just made (a pooled PostgreSQL connection handed out for
    /// the first time); a SQLite connection is always new to its caller.
    pub(super) fn is_new(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => true,
            Inner::Postgres(c) => c.is_new(),
        }
    }

    /// Closes the connection rather than return it to its pool (a PostgreSQL session found
    /// broken); a SQLite connection is simply dropped.
    pub(super) fn discard(self) {
        if let Inner::Postgres(c) = self.inner {
            c.discard();
        }
    }

    /// The dialect this connection speaks.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Whether the connection is gone (PostgreSQL's server closed it); SQLite's never is.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => false,
            Inner::Postgres(c) => c.is_closed(),
        }
    }

    /// The SQLite connection underneath, for what only SQLite has (pragmas, online backup).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    /// Runs `f` with this connection's page cache held to `kib` KiB, then gives the cache its
    /// size back (also when `f` fails). SQLite sizes a sort's in-memory runs by the page
    /// cache, so a query that sorts many rows (a window, a `GROUP BY`, a `COUNT(DISTINCT)`)
    /// on the writer's large cache could hold that much again per sort. PostgreSQL bounds
    /// sorts by its own `work_mem`: there `f` just runs.
    pub fn with_cache_kib<T>(
        &self,
        kib: i64,
        f: impl FnOnce(&Connection) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let Some(conn) = self.as_sqlite() else {
            return f(self);
        };
        let before: i64 = conn.pragma_query_value(None, "cache_size", |r| r.get(0))?;
        conn.pragma_update(None, "cache_size", -kib)?;
        let result = f(self);
        conn.pragma_update(None, "cache_size", before)?;
        result
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`IMMEDIATE`,
    /// waiting up to the busy timeout): a deferred transaction that read first could not
    /// upgrade while another process (a replica on the same file) writes, and would fail.
    pub fn begin(&self) -> Result<(), NodeError> {
        self.execute_batch(match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })
    }

    /// Runs `f` in a write transaction ([`Connection::begin`]): committed when it succeeds,
    /// rolled back otherwise.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        self.begin()?;
        match f(self) {
            Ok(value) => {
                self.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs statements without parameters (schema, `BEGIN`, savepoints).
    pub fn execute_batch(&self, sql: &str) -> Result<(), NodeError> {
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch(sql).map_err(DbError::from)?,
            Inner::Postgres(c) => c.batch(sql)?,
        }
        Ok(())
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize, NodeError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                lite_execute(&mut *c.prepare_cached(sql).map_err(DbError::from)?, params)
            }
            Inner::Postgres(c) => {
                let n = c.execute(sql, owned(params.values()))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs the statements of `pipeline`, in order, and returns the rows each changed. On
    /// PostgreSQL they are sent together: one round trip for the lot (two when some are not
    /// prepared yet) rather than one each. On SQLite they run one after the other.
    ///
    /// Only inside a transaction ([`Connection::transaction`]), where the first failure
    /// aborts the rest and the transaction: outside one, PostgreSQL would run the statements
    /// after a failed one in transactions of their own. SQLite refuses a pipeline outside a
    /// transaction, so a misuse fails the test suite, which runs on both engines.
    pub fn pipeline(&self, pipeline: &Pipeline<'_>) -> Result<Vec<usize>, NodeError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                if c.is_autocommit() {
                    return Err(
                        DbError::Statement("a pipeline runs inside a transaction".into()).into(),
                    );
                }
                pipeline
                    .steps
                    .iter()
                    .map(|(sql, values)| {
                        let values: Vec<Value<'_>> = values.iter().map(Cell::as_value).collect();
                        let params: Vec<&dyn ToValue> =
                            values.iter().map(|v| v as &dyn ToValue).collect();
                        lite_execute(&mut *c.prepare_cached(sql).map_err(DbError::from)?, params)
                    })
                    .collect()
            }
            Inner::Postgres(c) => Ok(c
                .pipeline(&pipeline.steps)?
                .into_iter()
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .collect()),
        }
    }

    /// Runs a query and calls `f` with each row, in order, until it returns `false`.
    pub fn query_each(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<bool, NodeError>,
    ) -> Result<(), NodeError> {
        match &self.inner {
            Inner::Sqlite(c) => lite_each(
                &mut *c.prepare_cached(sql).map_err(DbError::from)?,
                params,
                f,
            ),
            Inner::Postgres(c) => {
                // Read in full first: `f` may use the connection.
                let rows = c.query(sql, owned(params.values()))?;
                for row in &rows {
                    if !f(&Row {
                        inner: RowInner::Postgres(row),
                    })? {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// Every row of a query, read in full (see [`Rows`]).
    pub fn query(&self, sql: &str, params: impl Params) -> Result<Rows, NodeError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                lite_rows(&mut *c.prepare_cached(sql).map_err(DbError::from)?, params)
            }
            Inner::Postgres(c) => Ok(Rows {
                inner: RowsInner::Postgres(c.query(sql, owned(params.values()))?),
                next: 0,
            }),
        }
    }

    /// Every row of a query, each converted by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T, NodeError>,
    ) -> Result<Vec<T>, NodeError> {
        let mut out = Vec::new();
        self.query_each(sql, params, |r| {
            out.push(f(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The first row of a query, converted by `f`, if there is one.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, NodeError>,
    ) -> Result<Option<T>, NodeError> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each(sql, params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(false)
        })?;
        Ok(out)
    }

    /// The first row of a query, converted by `f`; an error when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| DbError::NoRow.into())
    }

    /// A statement (rusqlite's `prepare`: on SQLite, prepared afresh and not cached, for SQL
    /// built per call).
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>, NodeError> {
        Ok(Statement {
            inner: match &self.inner {
                Inner::Sqlite(c) => StmtInner::Sqlite(c.prepare(sql).map_err(DbError::from)?),
                Inner::Postgres(_) => StmtInner::Postgres {
                    conn: self,
                    sql: sql.to_owned(),
                },
            },
        })
    }

    /// A statement from the connection's cache (rusqlite's `prepare_cached`).
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>, NodeError> {
        Ok(Statement {
            inner: match &self.inner {
                Inner::Sqlite(c) => {
                    StmtInner::SqliteCached(c.prepare_cached(sql).map_err(DbError::from)?)
                }
                Inner::Postgres(_) => StmtInner::Postgres {
                    conn: self,
                    sql: sql.to_owned(),
                },
            },
        })
    }

    /// Serialises this transaction with every other transaction that calls it with the same
    /// `key` until it ends: a no-op on SQLite (one writer at a time already), a transaction
    /// advisory lock on PostgreSQL (several replicas write one database).
    pub fn lock(&self, key: i64) -> Result<(), NodeError> {
        if self.dialect() == Dialect::Postgres {
            self.query_row(
                "SELECT pg_advisory_xact_lock($1)::text",
                params![key],
                |_| Ok(()),
            )?;
        }
        Ok(())
    }
}
