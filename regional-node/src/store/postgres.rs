//! The PostgreSQL engine under [`super::db`]: pooled `tokio-postgres` connections (TLS when
//! the URL asks for it) driven by a runtime of their own, their prepared statements, pipelined
//! requests, and the conversion of values both ways.

use std::{future::Future, sync::OnceLock, time::Duration};

use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

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

/// How long a caller waits for a pooled connection before it gives up with an error (rather
/// than wait for ever behind a stuck query).
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long connecting (TCP, TLS, authentication, the session's settings) may take.
const CONNECT_WAIT: Duration = Duration::from_secs(15);
/// Prepared statements a connection keeps: the modules' SQL is a fixed set, but dynamic
/// filters and `IN` lists vary, so the cache is emptied when it grows past this.
const STATEMENT_CACHE: usize = 512;

/// The runtime every PostgreSQL connection of the process runs on: two threads that only move
/// bytes between the sockets and the callers. The node's code is synchronous (called from
/// blocking threads); it hands its requests to a connection and waits for the answers, and a
/// connection is driven here whichever thread asked. Kept for the life of the process: a
/// runtime must never be dropped in an async context.
fn runtime() -> Result<&'static tokio::runtime::Runtime, DbError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("domicile-pg")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| DbError::Thread(format!("starting the PostgreSQL runtime: {e}")))
}

/// Waits on this thread for `work`, whose I/O the PostgreSQL runtime drives.
///
/// Outside tokio's cooperative budget: a caller inside a tokio task (a test's, or a handler
/// that calls the store directly) may have spent its task's budget, and a budgeted operation
/// (the statement cache's `OnceCell`, a `JoinHandle`) would then answer "not yet" and wake
/// itself at once, for ever, since the budget is only refilled when the task yields, which a
/// blocked thread never does. Found as a test spinning at 100% CPU.
fn wait<F: Future>(work: F) -> F::Output {
    futures::executor::block_on(tokio::task::unconstrained(work))
}

/// Runs `work` on the PostgreSQL runtime (what needs its sockets and timers: connecting,
/// waiting for a pooled connection) and waits for it on this thread.
fn on_runtime<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, DbError> {
    let task = runtime()?.spawn(work);
    wait(task).map_err(|e| DbError::Thread(e.to_string()))
}

/// The TLS configuration for a server whose certificate must chain to the CA in `ca` and name
/// the URL's host (libpq's `verify-full`).
fn tls_config(ca: &std::path::Path) -> Result<tokio_rustls::rustls::ClientConfig, DbError> {
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
    Ok(
        ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| unreadable(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Settings of every session. Each execution is planned for its own parameters and the
/// tables' size at that moment: a plan cached while a table was small (a generic plan, which
/// PostgreSQL settles on after five executions) would keep scanning the whole table as it
/// grows. Measured on the ingest benchmark: a batch's `subject_id = ANY($2)` lookups ran as
/// sequential scans comparing every row with every id of the batch, 57% of the machine's
/// CPU; planned each time they are index scans (14,607 → 17,202 records/s at 1,000 per
/// request, BENCHMARKS.md).
const SESSION: &str = "SET plan_cache_mode = force_custom_plan";
/// A read-only session's settings: a reader cannot write by mistake.
const READ_ONLY_SESSION: &str =
    "SET plan_cache_mode = force_custom_plan; SET default_transaction_read_only = on";

/// A bounded pool of connections to one PostgreSQL database (`deadpool-postgres`), each
/// connected over TLS when the URL asks for it ([`PgTarget`]), with the session's settings
/// applied once when it is made and its prepared statements cached. A connection whose server
/// closed it is not handed out again; a caller waits (up to [`POOL_WAIT`]) while all are in
/// use.
#[derive(Clone)]
pub(super) struct PgPool(deadpool_postgres::Pool);

impl PgPool {
    /// A pool of at most `size` connections to `url`, made as they are needed.
    pub(super) fn new(url: &str, read_only: bool, size: usize) -> Result<Self, DbError> {
        use deadpool_postgres::{
            Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
        };
        let target = PgTarget::parse(url).map_err(DbError::Config)?;
        let config: tokio_postgres::Config = target.url.parse()?;
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &target.root_cert {
            None => Manager::from_config(config, tokio_postgres::NoTls, recycling),
            Some(ca) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca)?),
                recycling,
            ),
        };
        let settings = if read_only {
            READ_ONLY_SESSION
        } else {
            SESSION
        };
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_WAIT))
            .post_create(Hook::async_fn(move |client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(settings)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map(Self)
            .map_err(|e| DbError::Thread(e.to_string()))
    }

    /// Closes every idle connection: one was found gone, and what ended it (a restart, a
    /// failover) most likely ended the others too.
    pub(super) fn forget_idle(&self) {
        self.0.retain(|_, _| false);
    }

    /// A connection from the pool, made if none is idle and the pool is not full; it goes back
    /// to the pool when dropped.
    pub(super) fn get(&self) -> Result<PgConn, DbError> {
        use deadpool_postgres::{HookError, PoolError};
        let pool = self.0.clone();
        match on_runtime(async move { pool.get().await })? {
            Ok(object) => Ok(PgConn {
                object: Some(object),
            }),
            Err(PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e))) => {
                Err(e.into())
            }
            Err(e) => Err(DbError::Thread(e.to_string())),
        }
    }
}

/// One PostgreSQL connection (`tokio-postgres`), taken from a [`PgPool`]. Its requests are
/// written to the socket by the PostgreSQL runtime's threads; the caller's thread waits for
/// the answers. Requests issued together are pipelined ([`PgConn::pipeline`]).
pub(super) struct PgConn {
    /// Always `Some` until dropped.
    object: Option<deadpool_postgres::Object>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Dropped while a panic unwinds: the session may be left inside a transaction, so it
        // is closed rather than handed to the next caller.
        if std::thread::panicking()
            && let Some(object) = self.object.take()
        {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

impl PgConn {
    /// A connection of its own to `url` (outside any shared pool).
    pub(super) fn connect(url: &str) -> Result<Self, DbError> {
        PgPool::new(url, false, 1)?.get()
    }

    /// Whether this is the connection's first use since the pool made it.
    pub(super) fn is_new(&self) -> bool {
        deadpool_postgres::Object::metrics(self.client()).recycle_count == 0
    }

    /// Closes the connection instead of returning it to its pool.
    pub(super) fn discard(mut self) {
        if let Some(object) = self.object.take() {
            drop(deadpool_postgres::Object::take(object));
        }
    }

    fn client(&self) -> &deadpool_postgres::Object {
        self.object
            .as_ref()
            .expect("a connection until it is dropped")
    }

    /// The prepared statement for `sql`, from the connection's cache.
    async fn statement(&self, sql: &str) -> Result<tokio_postgres::Statement, DbError> {
        let client = self.client();
        if client.statement_cache.size() >= STATEMENT_CACHE {
            client.statement_cache.clear();
        }
        Ok(client.prepare_cached(sql).await?)
    }

    pub(super) fn batch(&self, sql: &str) -> Result<(), DbError> {
        Ok(wait(self.client().batch_execute(sql))?)
    }

    pub(super) fn execute(&self, sql: &str, values: Vec<Cell>) -> Result<u64, DbError> {
        wait(async {
            let stmt = self.statement(sql).await?;
            let params: Vec<PgParam<'_>> = values.iter().map(|c| PgParam(c.as_value())).collect();
            Ok(self.client().execute(&stmt, &refs(&params)).await?)
        })
    }

    pub(super) fn query(
        &self,
        sql: &str,
        values: Vec<Cell>,
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        wait(async {
            let stmt = self.statement(sql).await?;
            let params: Vec<PgParam<'_>> = values.iter().map(|c| PgParam(c.as_value())).collect();
            Ok(self.client().query(&stmt, &refs(&params)).await?)
        })
    }

    /// Runs `steps` (statement, values) in order, sent together: the statements not yet
    /// prepared are prepared in one round trip, then every execution goes out before the first
    /// answer is awaited, so the whole list costs one more round trip, not one each.
    /// `tokio-postgres` writes a request when its future is first polled, and `try_join_all`
    /// polls them in the list's order, so the server runs them in that order. The rows each
    /// changed; the first error, if any (in a transaction, it aborts the rest).
    pub(super) fn pipeline(&self, steps: &[(&str, Vec<Cell>)]) -> Result<Vec<u64>, DbError> {
        wait(async {
            let statements =
                futures::future::try_join_all(steps.iter().map(|(sql, _)| self.statement(sql)))
                    .await?;
            let params: Vec<Vec<PgParam<'_>>> = steps
                .iter()
                .map(|(_, values)| values.iter().map(|c| PgParam(c.as_value())).collect())
                .collect();
            let params: Vec<Vec<&(dyn ToSql + Sync)>> = params.iter().map(|p| refs(p)).collect();
            let client = self.client();
            Ok(futures::future::try_join_all(
                statements
                    .iter()
                    .zip(&params)
                    .map(|(stmt, p)| client.execute(stmt, p)),
            )
            .await?)
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client().is_closed()
    }
}

/// Owned copies of parameter values, for a PostgreSQL request.
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
