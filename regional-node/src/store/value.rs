//! The values that cross the store's interface, whichever the engine: parameters
//! ([`Value`], [`ToValue`], [`Params`]) and results ([`Row`], [`Rows`], [`FromValue`]). Both
//! engines ([`super::sqlite`], [`super::postgres`]) build on this module, and
//! [`super::db`] re-exports it.

use std::fmt;

use crate::error::{DbError, NodeError};

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

/// The rows of a query, read in full before the first is handed out, so that the connection
/// is free for other statements while they are walked (as the modules do).
#[derive(Debug)]
pub struct Rows {
    pub(crate) inner: RowsInner,
    pub(crate) next: usize,
}

#[derive(Debug)]
pub(crate) enum RowsInner {
    Cells(Vec<Vec<Cell>>),
    Postgres(Vec<tokio_postgres::Row>),
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
    pub(crate) inner: RowInner<'a>,
}

pub(crate) enum RowInner<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a tokio_postgres::Row),
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
pub(crate) enum Cell {
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
    pub(crate) fn as_value(&self) -> Value<'_> {
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
