//! The SQLite engine under [`super::db`]: binding parameters by their `$N` names, and reading
//! rows.

use crate::error::{DbError, NodeError};
use crate::store::value::{Cell, Params, Row, RowInner, Rows, RowsInner, Value};

/// Binds every parameter of `stmt` (all of them: a reused statement keeps old bindings).
///
/// Statements name their parameters as PostgreSQL does, `$1` … `$N`, which SQLite reads
/// natively as named parameters; SQLite numbers named parameters by first appearance, so each
/// is bound by its name's number, not by position. Any other form (`?`, `?N`, `:name`) is
/// refused: the same text has to run on both engines.
pub(super) fn lite_bind(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl Params,
) -> Result<(), NodeError> {
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
                DbError::Statement(format!(
                    "parameter {i} of a statement is {:?}: write parameters as $1 … ${count}",
                    stmt.parameter_name(i)
                ))
            })?;
        stmt.raw_bind_parameter(i, LiteParam(values[n - 1]))
            .map_err(DbError::from)?;
    }
    Ok(())
}

pub(super) fn lite_execute(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl Params,
) -> Result<usize, NodeError> {
    lite_bind(stmt, params)?;
    Ok(stmt.raw_execute().map_err(DbError::from)?)
}

pub(super) fn lite_each(
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

pub(super) fn lite_rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl Params,
) -> Result<Rows, NodeError> {
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
