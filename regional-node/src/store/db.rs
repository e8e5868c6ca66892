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
//! A [`Connection`] is owned and used through `&self` (a PostgreSQL client sits on a thread
//! of its own), so a transaction is the same connection between `BEGIN` and `COMMIT`, and every
//! module takes `&Connection` whatever the backend.

use std::{collections::HashMap, fmt};

use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::config::PgTarget;
pub use crate::error::DbError;
use crate::error::NodeError;

/// Log filter directives every Domicile binary adds after the operator's own: the PostgreSQL
/// client logs each statement's parameters (personal data) at debug level, so it is capped at
/// info whatever `RUST_LOG` says.
pub const LOG_CAPS: &[&str] = &[
    "tokio_postgres=info",
    // The module that logs the parameters, in case a filter names it.
    "tokio_postgres::query=info",
    "postgres=info",
];

/// Which SQL dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// An integer (booleans are 0 and 1).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
    /// An array of nullable integers (`bigint[]`): PostgreSQL only, for set-based statements
    /// (`unnest`) that write a batch in one round trip.
    Ints(&'a [Option<i64>]),
    /// An array of nullable text (`text[]`): PostgreSQL only.
    Texts(&'a [Option<String>]),
    /// An array of nullable bytes (`bytea[]`): PostgreSQL only.
    Blobs(&'a [Option<Vec<u8>>]),
}

/// A type that binds as a statement parameter.
pub trait ToValue {
    /// The value to bind.
    fn to_value(&self) -> Value<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, i8, u32, u16, u8, bool);

impl ToValue for u64 {
    fn to_value(&self) -> Value<'_> {
        // Counts and times fit; a value past i64 is stored saturated rather than wrapped.
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for usize {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl ToValue for Vec<Option<i64>> {
    fn to_value(&self) -> Value<'_> {
        Value::Ints(self)
    }
}

impl ToValue for Vec<Option<String>> {
    fn to_value(&self) -> Value<'_> {
        Value::Texts(self)
    }
}

impl ToValue for Vec<Option<Vec<u8>>> {
    fn to_value(&self) -> Value<'_> {
        Value::Blobs(self)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        *self
    }
}

/// Statement parameters, in order (as in rusqlite: `params![…]`, `[v]`, `[]`).
pub trait Params {
    /// The values, in order.
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl Params for Vec<&dyn ToValue> {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl Params for [&dyn ToValue; 0] {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}

macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(&self) -> Vec<Value<'_>> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters from an iterator of values (as `rusqlite::params_from_iter`).
pub fn params_from_iter<'a>(
    iter: impl IntoIterator<Item = &'a dyn ToValue>,
) -> Vec<&'a dyn ToValue> {
    iter.into_iter().collect()
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

/// The rows of a query, read in full before the first is handed out, so that the connection
/// is free for other statements while they are walked (as the modules do).
#[derive(Debug)]
pub struct Rows {
    inner: RowsInner,
    next: usize,
}

#[derive(Debug)]
enum RowsInner {
    Cells(Vec<Vec<Cell>>),
    Postgres(Vec<postgres::Row>),
}

impl Rows {
    /// The next row, if any (as rusqlite's `Rows::next`).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>, NodeError> {
        let i = self.next;
        self.next += 1;
        Ok(match &self.inner {
            RowsInner::Cells(rows) => rows.get(i).map(|r| Row {
                inner: RowInner::Owned(r),
            }),
            RowsInner::Postgres(rows) => rows.get(i).map(|r| Row {
                inner: RowInner::Postgres(r),
            }),
        })
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

/// Binds every parameter of `stmt` (all of them: a reused statement keeps old bindings).
///
/// Statements name their parameters as PostgreSQL does, `$1` … `$N`, which SQLite reads
/// natively as named parameters; SQLite numbers named parameters by first appearance, so each
/// is bound by its name's number, not by position. Any other form (`?`, `?N`, `:name`) is
/// refused: the same text has to run on both engines.
fn lite_bind(stmt: &mut rusqlite::Statement<'_>, params: impl Params) -> Result<(), NodeError> {
    let values = params.values();
    let count = stmt.parameter_count();
    if values.len() != count {
        return Err(
            DbError::from(rusqlite::Error::InvalidParameterCount(values.len(), count)).into(),
        );
    }
    for i in 1..=count {
        let n = stmt
            .parameter_name(i)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=count).contains(n))
            .ok_or_else(|| {
                DbError::Config(format!(
                    "parameter {i} of a statement is {:?}: write parameters as $1 … ${count}",
                    stmt.parameter_name(i)
                ))
            })?;
        stmt.raw_bind_parameter(i, LiteParam(values[n - 1]))
            .map_err(DbError::from)?;
    }
    Ok(())
}

fn lite_execute(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl Params,
) -> Result<usize, NodeError> {
    lite_bind(stmt, params)?;
    Ok(stmt.raw_execute().map_err(DbError::from)?)
}

fn lite_each(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl Params,
    mut f: impl FnMut(&Row<'_>) -> Result<bool, NodeError>,
) -> Result<(), NodeError> {
    lite_bind(stmt, params)?;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(DbError::from)? {
        if !f(&Row {
            inner: RowInner::Sqlite(row),
        })? {
            break;
        }
    }
    Ok(())
}

fn lite_rows(stmt: &mut rusqlite::Statement<'_>, params: impl Params) -> Result<Rows, NodeError> {
    use rusqlite::types::ValueRef as V;
    let columns = stmt.column_count();
    let mut out = Vec::new();
    lite_each(stmt, params, |row| {
        let RowInner::Sqlite(row) = row.inner else {
            unreachable!("a SQLite row")
        };
        let cells = (0..columns)
            .map(|i| {
                Ok(match row.get_ref(i).map_err(DbError::from)? {
                    V::Null => Cell::Null,
                    V::Integer(i) => Cell::Int(i),
                    V::Real(f) => Cell::Real(f),
                    V::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    V::Blob(b) => Cell::Blob(b.to_vec()),
                })
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        out.push(cells);
        Ok(true)
    })?;
    Ok(Rows {
        inner: RowsInner::Cells(out),
        next: 0,
    })
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

/// A type read from a column.
pub trait FromValue: Sized {
    /// Converts the column's value, or says why not.
    fn from_value(v: Value<'_>) -> Result<Self, String>;
}

impl FromValue for i64 {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value<'_>) -> Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
int_from_value!(i32, u32, u64, u16, u8, usize);

impl FromValue for bool {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.to_owned()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.to_vec()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column index (the `I` of `row.get::<_, T>(i)`, as in rusqlite).
pub trait ColumnIndex {
    /// The zero-based index.
    fn index(&self) -> usize;
}

impl ColumnIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// A row of a result.
pub struct Row<'a> {
    inner: RowInner<'a>,
}

enum RowInner<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
    Owned(&'a [Cell]),
}

impl fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Row")
    }
}

impl Row<'_> {
    /// The value of column `idx`, converted.
    pub fn get<I: ColumnIndex, T: FromValue>(&self, idx: I) -> Result<T, NodeError> {
        let index = idx.index();
        let wrong = |message: String| NodeError::from(DbError::Type { index, message });
        match &self.inner {
            RowInner::Sqlite(row) => {
                use rusqlite::types::ValueRef as V;
                let v = row.get_ref(index).map_err(DbError::from)?;
                let v = match v {
                    V::Null => Value::Null,
                    V::Integer(i) => Value::Int(i),
                    V::Real(f) => Value::Real(f),
                    V::Text(t) => Value::Text(
                        std::str::from_utf8(t).map_err(|e| wrong(format!("text: {e}")))?,
                    ),
                    V::Blob(b) => Value::Blob(b),
                };
                T::from_value(v).map_err(wrong)
            }
            RowInner::Postgres(row) => {
                let cell: Cell = row.try_get(index).map_err(DbError::from)?;
                T::from_value(cell.as_value()).map_err(wrong)
            }
            RowInner::Owned(cells) => {
                let cell = cells
                    .get(index)
                    .ok_or_else(|| wrong("no such column".into()))?;
                T::from_value(cell.as_value()).map_err(wrong)
            }
        }
    }
}

/// A column's value, owned (read from PostgreSQL, or kept from a SQLite row).
#[derive(Debug, Clone)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Ints(Vec<Option<i64>>),
    Texts(Vec<Option<String>>),
    Blobs(Vec<Option<Vec<u8>>>),
}

impl Cell {
    fn as_value(&self) -> Value<'_> {
        match self {
            Self::Null => Value::Null,
            Self::Int(i) => Value::Int(*i),
            Self::Real(f) => Value::Real(*f),
            Self::Text(s) => Value::Text(s),
            Self::Blob(b) => Value::Blob(b),
            Self::Ints(a) => Value::Ints(a),
            Self::Texts(a) => Value::Texts(a),
            Self::Blobs(a) => Value::Blobs(a),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Self::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Self::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Self::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Self::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Self::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Self::Real(f32::from_sql(ty, raw)?.into()),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => Self::Blob(raw.to_vec()),
            _ => Self::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Self::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Decodes PostgreSQL's binary `NUMERIC` (what `SUM` of a `BIGINT` gives): an integer when it
/// has no fraction and fits, else a float.
fn numeric(raw: &[u8]) -> Result<Cell, BoxError> {
    let word = |i: usize| -> Result<i16, BoxError> {
        let b = raw.get(i * 2..i * 2 + 2).ok_or("short numeric")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    };
    let (ndigits, weight, sign) = (word(0)?, word(1)?, word(2)? as u16);
    if sign == 0xC000 {
        return Ok(Cell::Real(f64::NAN));
    }
    let negative = sign == 0x4000;
    let digits: Vec<i64> = (0..ndigits.max(0) as usize)
        .map(|i| word(4 + i).map(i64::from))
        .collect::<Result<_, _>>()?;
    // Digits are base 10,000; the first has weight `weight`.
    let integral = digits
        .iter()
        .enumerate()
        .all(|(i, d)| *d == 0 || i as i64 <= i64::from(weight));
    if integral && weight < 4 {
        let mut v: i64 = 0;
        for i in 0..=i64::from(weight).max(-1) {
            let d = digits.get(i as usize).copied().unwrap_or(0);
            v = v
                .checked_mul(10_000)
                .and_then(|v| v.checked_add(d))
                .ok_or("numeric overflow")?;
        }
        return Ok(Cell::Int(if negative { -v } else { v }));
    }
    let mut f = 0.0;
    for (i, d) in digits.iter().enumerate() {
        f += *d as f64 * 10_000f64.powi(i32::from(weight) - i as i32);
    }
    Ok(Cell::Real(if negative { -f } else { f }))
}

/// A [`Value`] bound to a PostgreSQL parameter, in the type the statement gives that
/// parameter.
#[derive(Debug)]
struct PgParam<'a>(Value<'a>);

impl ToSql for PgParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match (self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (f as f32).to_sql(ty, out),
            (Value::Text(s), _) => s.to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.to_sql(ty, out),
            (Value::Ints(a), &Type::INT8_ARRAY) => a.to_sql(ty, out),
            (Value::Texts(a), &Type::TEXT_ARRAY) => a.to_sql(ty, out),
            (Value::Blobs(a), &Type::BYTEA_ARRAY) => a.to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind {v:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// What a PostgreSQL connection's thread is asked to do.
enum Job {
    Batch(String),
    Execute(String, Vec<Cell>),
    Query(String, Vec<Cell>),
    IsClosed,
}

/// Its answer.
enum Reply {
    Done(Result<u64, postgres::Error>),
    Rows(Result<Vec<postgres::Row>, postgres::Error>),
    Closed(bool),
}

/// Warns when `backend` is PostgreSQL over a network in plaintext (`what` it holds).
pub(crate) fn warn_if_plaintext(backend: &crate::config::Backend, what: &str) {
    if backend.plaintext_over_network() {
        tracing::warn!(
            database = %backend.describe(),
            "{what}: PostgreSQL over the network without TLS; set \
             sslmode=verify-full&sslrootcert=<CA file> in its URL"
        );
    }
}

/// A client for `url`: plaintext, or TLS verified against the URL's CA file and host name
/// ([`PgTarget`]).
fn pg_client(url: &str) -> Result<postgres::Client, DbError> {
    let target = PgTarget::parse(url).map_err(DbError::Config)?;
    let Some(ca) = &target.root_cert else {
        return Ok(postgres::Client::connect(&target.url, postgres::NoTls)?);
    };
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let unreadable =
        |e: &dyn std::fmt::Display| DbError::Config(format!("sslrootcert {}: {e}", ca.display()));
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    let config = ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| unreadable(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(postgres::Client::connect(
        &target.url,
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    )?)
}

/// A PostgreSQL connection, owned by a thread of its own. The synchronous `postgres` client
/// runs a private tokio runtime, which must never be entered from an async context (nor
/// dropped in one); on its own thread it never is, whichever thread the node calls from.
struct PgConn {
    jobs: std::sync::mpsc::Sender<Job>,
    replies: std::sync::mpsc::Receiver<Reply>,
}

impl PgConn {
    fn connect(url: &str) -> Result<Self, DbError> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let (reply_tx, replies) = std::sync::mpsc::channel::<Reply>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                let mut client = match pg_client(&url) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Prepared statements, by the SQL the module wrote.
                let mut statements: HashMap<String, postgres::Statement> = HashMap::new();
                let mut prepare = |client: &mut postgres::Client, sql: &str| {
                    if let Some(s) = statements.get(sql) {
                        return Ok(s.clone());
                    }
                    let s = client.prepare(sql)?;
                    // Bounded: the modules' SQL is a fixed set, but dynamic filters vary.
                    if statements.len() >= 512 {
                        statements.clear();
                    }
                    statements.insert(sql.to_owned(), s.clone());
                    Ok(s)
                };
                while let Ok(job) = job_rx.recv() {
                    let reply = match job {
                        Job::Batch(sql) => Reply::Done(client.batch_execute(&sql).map(|()| 0)),
                        Job::Execute(sql, values) => {
                            Reply::Done(prepare(&mut client, &sql).and_then(|stmt| {
                                let params: Vec<PgParam<'_>> =
                                    values.iter().map(|c| PgParam(c.as_value())).collect();
                                client.execute(&stmt, &refs(&params))
                            }))
                        }
                        Job::Query(sql, values) => {
                            Reply::Rows(prepare(&mut client, &sql).and_then(|stmt| {
                                let params: Vec<PgParam<'_>> =
                                    values.iter().map(|c| PgParam(c.as_value())).collect();
                                client.query(&stmt, &refs(&params))
                            }))
                        }
                        Job::IsClosed => Reply::Closed(client.is_closed()),
                    };
                    if reply_tx.send(reply).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| DbError::Thread(e.to_string()))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { jobs, replies }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DbError::Thread("the connection thread ended".into())),
        }
    }

    fn ask(&self, job: Job) -> Result<Reply, DbError> {
        let gone = || DbError::Thread("the connection thread ended".into());
        self.jobs.send(job).map_err(|_| gone())?;
        self.replies.recv().map_err(|_| gone())
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        match self.ask(Job::Batch(sql.to_owned()))? {
            Reply::Done(r) => r.map(|_| ()).map_err(DbError::from),
            _ => Err(DbError::Thread("unexpected reply".into())),
        }
    }

    fn execute(&self, sql: &str, values: Vec<Cell>) -> Result<u64, DbError> {
        match self.ask(Job::Execute(sql.to_owned(), values))? {
            Reply::Done(r) => r.map_err(DbError::from),
            _ => Err(DbError::Thread("unexpected reply".into())),
        }
    }

    fn query(&self, sql: &str, values: Vec<Cell>) -> Result<Vec<postgres::Row>, DbError> {
        match self.ask(Job::Query(sql.to_owned(), values))? {
            Reply::Rows(r) => r.map_err(DbError::from),
            _ => Err(DbError::Thread("unexpected reply".into())),
        }
    }

    fn is_closed(&self) -> bool {
        !matches!(self.ask(Job::IsClosed), Ok(Reply::Closed(false)))
    }
}

/// Owned copies of parameter values, to send to a PostgreSQL connection's thread.
fn owned(values: Vec<Value<'_>>) -> Vec<Cell> {
    values
        .into_iter()
        .map(|v| match v {
            Value::Null => Cell::Null,
            Value::Int(i) => Cell::Int(i),
            Value::Real(f) => Cell::Real(f),
            Value::Text(t) => Cell::Text(t.to_owned()),
            Value::Blob(b) => Cell::Blob(b.to_vec()),
            Value::Ints(a) => Cell::Ints(a.to_vec()),
            Value::Texts(a) => Cell::Texts(a.to_vec()),
            Value::Blobs(a) => Cell::Blobs(a.to_vec()),
        })
        .collect()
}

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

fn refs<'a>(params: &'a [PgParam<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// A SQLite parameter from a [`Value`].
struct LiteParam<'a>(Value<'a>);

impl rusqlite::ToSql for LiteParam<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(f) => ValueRef::Real(f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
            Value::Ints(_) | Value::Texts(_) | Value::Blobs(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "arrays bind on PostgreSQL only".into(),
                ));
            }
        }))
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

    /// Connects to PostgreSQL at `url` (`postgres://user@host:port/db`).
    pub fn postgres(url: &str) -> Result<Self, NodeError> {
        Ok(Self {
            inner: Inner::Postgres(PgConn::connect(url)?),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_decodes_integers_and_fractions() {
        // 123456789 = [1, 2345, 6789] with weight 2.
        let raw: Vec<u8> = [3i16, 2, 0, 0, 1, 2345, 6789]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert!(matches!(numeric(&raw).unwrap(), Cell::Int(123_456_789)));
        // -0.5 = [5000] with weight -1, negative.
        let raw: Vec<u8> = [1i16, -1, 0x4000, 1, 5000]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert!(matches!(numeric(&raw).unwrap(), Cell::Real(f) if (f + 0.5).abs() < 1e-12));
        // Zero has no digits.
        let raw: Vec<u8> = [0i16, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert!(matches!(numeric(&raw).unwrap(), Cell::Int(0)));
    }
}
