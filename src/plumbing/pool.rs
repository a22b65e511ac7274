//! The daemon's connections: how many a process may open ([`Budget`]), how it reaches the
//! database through a pooler ([`PoolMode`]), and the shared pool every module queries through
//! ([`Db`]).
//!
//! PgBouncer in transaction mode hands each *transaction* to whichever server connection is
//! free, so nothing a client leaves on a server outlives its transaction for that client, and
//! may surface in another client's. sqlx prepares a statement in one round trip and binds it in
//! a second; between the two, outside a transaction, the pooler may switch servers (the bind
//! then meets another client's unnamed statement). So, in every mode (one code path, tested by
//! every test):
//! - each statement sent through [`Db`] runs in an explicit transaction of its own, and code
//!   that needs several statements together takes [`Db::begin`];
//! - statements are unnamed ([`query`], [`query_as`], [`query_scalar`]): a named statement
//!   would stay on the server after the transaction, where another client's `sqlx_s_1` collides
//!   with it;
//! - settings are transaction-local (`set_config(…, true)`), never the session's.
//!
//! What differs with `pool_mode = "transaction"` is only what cannot work there: the batch
//! statement is not kept prepared on the worker's session, the worker's settings are applied
//! inside each batch's transaction, and liveness comes from lease expiry alone (no presence
//! session: a backend pid behind a transaction pooler is not ours).

use std::fmt;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{future::BoxFuture, StreamExt, TryStreamExt};
use serde::Deserialize;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo,
};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{
    Connection, Describe, Either, Execute, Executor, PgConnection, PgPool, Postgres, SqlSafeStr,
    SqlStr, Transaction,
};

/// How the database is reached, as PgBouncer names its `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Directly, or through a pooler that gives each client one server for its session.
    #[default]
    Session,
    /// Through a pooler that may give each transaction another server (PgBouncer's
    /// `pool_mode = transaction`, RDS Proxy, Supavisor's transaction port).
    Transaction,
}

impl PoolMode {
    /// Whether a session outlives a transaction: the presence session and a worker's session
    /// settings and kept-prepared batch statement rely on it.
    pub fn keeps_sessions(self) -> bool {
        self == PoolMode::Session
    }
}

/// Whether `options` reach the database through a transaction pooler, for a process told
/// `pool_mode = "session"`, which would then leave session settings and a prepared statement
/// on servers other clients share. Two connections of one process never share a server
/// process unless a pooler hands servers out per transaction, so it asks each connection in
/// turn for its server's pid a few times: the same pid twice is proof (without a pooler, or in
/// its session mode, it cannot happen). A pooler busy with other clients may hide itself; the
/// README says to set the mode. Uses the simple protocol, which any pooler carries.
pub async fn shares_servers_between_connections(
    options: &PgConnectOptions,
) -> Result<Option<i32>, sqlx::Error> {
    let mut first = PgConnection::connect_with(options).await?;
    let mut second = PgConnection::connect_with(options).await?;
    let mut shared = None;
    for _ in 0..5 {
        let a = server_pid(&mut first).await?;
        let b = server_pid(&mut second).await?;
        if a == b {
            shared = Some(a);
            break;
        }
    }
    let _ = first.close().await;
    let _ = second.close().await;
    Ok(shared)
}

async fn server_pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    use sqlx::Row;
    sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await?
        .try_get(0)
}

/// An unnamed statement (see the module documentation). Its parameters and columns must be of
/// types sqlx knows (the built-in ones the daemon's tables use): for another type sqlx looks
/// the type up with a simple query between preparing and binding, which drops an unnamed
/// statement ("unnamed prepared statement does not exist"); SQL of the job's author that may
/// return such types is prepared in a [`Pinned`] transaction instead.
pub fn query(sql: impl SqlSafeStr) -> Query<'static, Postgres, PgArguments> {
    sqlx::query(sql).persistent(false)
}

/// An unnamed statement whose rows decode into `O`.
pub fn query_as<O>(sql: impl SqlSafeStr) -> QueryAs<'static, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(false)
}

/// An unnamed statement returning one value per row.
pub fn query_scalar<O>(sql: impl SqlSafeStr) -> QueryScalar<'static, Postgres, O, PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(false)
}

/// How a process spends its connections: one per running worker, the presence session (in
/// session mode), one pool for the API (when it serves one) and one for the engine's own
/// statements (claims, lease renewals, throttle checks, rates). The API and the engine have
/// separate pools so that probes, scrapes and clients can never take the connections that
/// keep leases alive and claim work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub workers: u32,
    pub presence: u32,
    pub api: u32,
    pub engine: u32,
}

impl Budget {
    /// Splits `max_connections` (`None`: the default, `workers + 4`) for `workers` workers.
    /// An error says the smallest budget that works.
    pub fn plan(
        max_connections: Option<u32>,
        workers: u32,
        mode: PoolMode,
        serves_api: bool,
    ) -> Result<Budget, String> {
        let presence = u32::from(mode.keeps_sessions());
        let api = u32::from(serves_api);
        let minimum = workers + presence + api + 1;
        let total = max_connections.unwrap_or(workers + 4);
        if total < minimum {
            return Err(format!(
                "{total} is too few for {workers} worker(s): at least {minimum} ({workers} for the \
                 workers{}{}, 1 for claims and lease renewals)",
                if presence == 1 { ", 1 presence session" } else { "" },
                if api == 1 { ", 1 for the API" } else { "" },
            ));
        }
        let spare = total - minimum;
        // The API gets a second connection once the engine has two; the rest go to the engine,
        // whose throttle checks run once per batch per worker.
        let api = if serves_api && spare >= 2 { 2 } else { api };
        let engine = total - workers - presence - api;
        Ok(Budget {
            workers,
            presence,
            api,
            engine,
        })
    }

    /// [`plan`](Budget::plan) for up to `wanted` workers: as many as `max_connections` leaves
    /// room for (at least one), all of them when it is not set. A foreground `run` then works
    /// on its partitions a few at a time, one after another.
    pub fn fit(
        max_connections: Option<u32>,
        wanted: u32,
        mode: PoolMode,
        serves_api: bool,
    ) -> Result<Budget, String> {
        let fixed = u32::from(mode.keeps_sessions()) + u32::from(serves_api) + 1;
        let workers = match max_connections {
            Some(max) => wanted.min(max.saturating_sub(fixed)).max(1),
            None => wanted,
        };
        Budget::plan(max_connections, workers, mode, serves_api)
    }

    pub fn total(&self) -> u32 {
        self.workers + self.presence + self.api + self.engine
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connection(s) at most: {} worker(s), {} presence, {} API, {} engine",
            self.total(),
            self.workers,
            self.presence,
            self.api,
            self.engine
        )
    }
}

/// Idle pooled connections close after this: a small pooler's servers go back to others.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared pool: a statement executed on `&Db` runs as its own transaction, unnamed
/// (see the module documentation). It lends no bare connections: several statements together
/// take [`Db::begin`].
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    mode: PoolMode,
}

impl Db {
    /// A pool of at most `size` connections that connects on first use, so a daemon starts
    /// (and answers `/healthz`) while the database is still away; `db::connect` opens one
    /// connection first, for the commands that should fail at once.
    pub fn lazy(options: PgConnectOptions, size: u32, mode: PoolMode) -> Db {
        Db {
            pool: pool_options(size).connect_lazy_with(options),
            mode,
        }
    }

    /// An existing sqlx pool (tests and benchmarks build their own).
    pub fn from_pool(pool: PgPool, mode: PoolMode) -> Db {
        Db { pool, mode }
    }

    /// Another pool of `size` connections to the same database, opened lazily: the API's.
    pub fn sibling(&self, size: u32) -> Db {
        Db::lazy((*self.pool.connect_options()).clone(), size, self.mode)
    }

    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// One transaction on a connection of its own, for work that prepares statements (the
    /// catalog's checks) or runs many on one connection (a verify walk). See [`Pinned`].
    pub async fn pinned(&self) -> Result<Pinned, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        // Closed rather than returned, always (sqlx's flag cannot be lifted after a clean
        // commit): dropped half-way, a transaction pooler then closes its server too, with
        // whatever was prepared on it. These are rare (resolving a job, planning it).
        conn.close_on_drop();
        Ok(Pinned(Transaction::begin(conn, None).await?))
    }

    /// A connection of the pool outside any transaction, for code that runs each of its
    /// statements in a short transaction of its own (a verify walk: one long transaction
    /// would be what the walk avoids). Through a transaction pooler a statement it ran
    /// outside a transaction would not be safe, so nothing else should take one.
    pub async fn acquire_for_own_transactions(
        &self,
    ) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        self.pool.acquire().await
    }

    /// The options its connections are opened with (TLS included): the workers' and the
    /// presence session's own connections copy them.
    pub fn connect_options(&self) -> PgConnectOptions {
        (*self.pool.connect_options()).clone()
    }

    pub async fn close(&self) {
        self.pool.close().await
    }
}

/// A transaction that may prepare named statements (sqlx's `prepare`, and the type lookups it
/// makes for the application's own types): `commit` and `rollback` close them first, inside the
/// transaction, so none is left on the server for another client of a pooler to collide with.
/// Nested `begin`s on it are savepoints.
pub struct Pinned(Transaction<'static, Postgres>);

impl Pinned {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.0.clear_cached_statements().await?;
        self.0.commit().await
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.0.clear_cached_statements().await?;
        self.0.rollback().await
    }
}

impl std::ops::Deref for Pinned {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl std::ops::DerefMut for Pinned {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size.max(1))
        .min_connections(0)
        .idle_timeout(IDLE_TIMEOUT)
        .acquire_timeout(Duration::from_secs(5))
}

/// Forwards a statement with `persistent` off, whatever its builder said.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }
    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }
    fn take_arguments(&mut self) -> Result<Option<PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }
    fn persistent(&self) -> bool {
        false
    }
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.pool.clone();
        // Collected before the commit: the daemon's statements return a few rows.
        futures_util::stream::once(async move {
            let mut tx = pool.begin().await?;
            let results: Vec<_> = (&mut *tx).fetch_many(Unnamed(query)).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(results)
        })
        .map_ok(|results| futures_util::stream::iter(results.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            let row = (&mut *tx).fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Describes the statement (its parameters and columns) and leaves nothing prepared on the
    /// server: the returned statement is re-prepared, unnamed, wherever it is run.
    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            let statement = (&mut *tx).prepare_with(sql, parameters).await?;
            tx.clear_cached_statements().await?;
            tx.rollback().await?;
            Ok(statement)
        })
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            let described = (&mut *tx).describe(sql).await?;
            tx.clear_cached_statements().await?;
            tx.rollback().await?;
            Ok(described)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_splits_and_names_its_minimum() {
        let serve = Budget::plan(None, 4, PoolMode::Session, true).unwrap();
        assert_eq!((serve.workers, serve.presence, serve.api), (4, 1, 1));
        assert_eq!((serve.engine, serve.total()), (2, 8));
        let small = Budget::plan(Some(4), 1, PoolMode::Session, true).unwrap();
        assert_eq!(
            small,
            Budget {
                workers: 1,
                presence: 1,
                api: 1,
                engine: 1
            }
        );
        let pooled = Budget::plan(Some(4), 2, PoolMode::Transaction, true).unwrap();
        assert_eq!(
            pooled,
            Budget {
                workers: 2,
                presence: 0,
                api: 1,
                engine: 1
            }
        );
        let run = Budget::plan(Some(3), 1, PoolMode::Session, false).unwrap();
        assert_eq!((run.api, run.engine), (0, 1));
        let fitted = Budget::fit(Some(5), 8, PoolMode::Session, true).unwrap();
        assert_eq!((fitted.workers, fitted.total()), (2, 5));
        let error = Budget::plan(Some(4), 4, PoolMode::Session, true).unwrap_err();
        assert!(error.contains("at least 7"), "{error}");
    }
}
