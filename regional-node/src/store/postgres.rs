//! The PostgreSQL engine under [`super::db`]: a connection on a thread of its own (TLS when
//! the URL asks for it), its prepared statements, and the conversion of values both ways.

use std::collections::HashMap;

use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::store::value::{Cell, Value};
use crate::{config::PgTarget, error::DbError};

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
        return session(postgres::Client::connect(&target.url, postgres::NoTls)?);
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
    let client = postgres::Client::connect(
        &target.url,
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    )?;
    session(client)
}

/// Settings of every session. Each execution is planned for its own parameters and the
/// tables' size at that moment: a plan cached while a table was small (a generic plan, which
/// PostgreSQL settles on after five executions) would keep scanning the whole table as it
/// grows. Measured on the ingest benchmark: a batch's `subject_id = ANY($2)` lookups ran as
/// sequential scans comparing every row with every id of the batch, 57% of the machine's
/// CPU; planned each time they are index scans (14,607 → 17,202 records/s at 1,000 per
/// request, BENCHMARKS.md).
fn session(mut client: postgres::Client) -> Result<postgres::Client, DbError> {
    client.batch_execute("SET plan_cache_mode = force_custom_plan")?;
    Ok(client)
}

/// A PostgreSQL connection, owned by a thread of its own. The synchronous `postgres` client
/// runs a private tokio runtime, which must never be entered from an async context (nor
/// dropped in one); on its own thread it never is, whichever thread the node calls from.
pub(super) struct PgConn {
    jobs: std::sync::mpsc::Sender<Job>,
    replies: std::sync::mpsc::Receiver<Reply>,
}

impl PgConn {
    pub(super) fn connect(url: &str) -> Result<Self, DbError> {
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

    pub(super) fn batch(&self, sql: &str) -> Result<(), DbError> {
        match self.ask(Job::Batch(sql.to_owned()))? {
            Reply::Done(r) => r.map(|_| ()).map_err(DbError::from),
            _ => Err(DbError::Thread("unexpected reply".into())),
        }
    }

    pub(super) fn execute(&self, sql: &str, values: Vec<Cell>) -> Result<u64, DbError> {
        match self.ask(Job::Execute(sql.to_owned(), values))? {
            Reply::Done(r) => r.map_err(DbError::from),
            _ => Err(DbError::Thread("unexpected reply".into())),
        }
    }

    pub(super) fn query(
        &self,
        sql: &str,
        values: Vec<Cell>,
    ) -> Result<Vec<postgres::Row>, DbError> {
        match self.ask(Job::Query(sql.to_owned(), values))? {
            Reply::Rows(r) => r.map_err(DbError::from),
            _ => Err(DbError::Thread("unexpected reply".into())),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        !matches!(self.ask(Job::IsClosed), Ok(Reply::Closed(false)))
    }
}

/// Owned copies of parameter values, to send to a PostgreSQL connection's thread.
pub(super) fn owned(values: Vec<Value<'_>>) -> Vec<Cell> {
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

fn refs<'a>(params: &'a [PgParam<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
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
