//! One batch: a single statement (so a single transaction and a single round trip) that checks
//! the lease, updates the next keys after the cursor and moves the cursor, so the rows and the
//! checkpoint commit together or not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Acquire, AssertSqlSafe, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::engine::statement::{BatchSql, Lower};
use crate::plumbing::db::{sql, Schema};
use crate::store::{jobs, progress, JobState};

/// Whether trying a failed batch again can help, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Contention or a timeout: try again, up to `max_attempts`.
    Attempt,
    /// The database is unreachable or restarting: not the batch's fault, so wait for it
    /// (with backoff) without spending attempts.
    Reconnect,
    /// Retrying cannot help (bad data for an expression, a dropped column): fail the job.
    Never,
}

/// Why a batch did not commit. The transaction rolled back, so nothing of it remains.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BatchError {
    pub message: String,
    pub sqlstate: Option<String>,
    pub retry: Retry,
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> BatchError {
        match &error {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.to_string());
                BatchError {
                    message: match &code {
                        Some(code) => format!("{} (SQLSTATE {code})", db.message()),
                        None => db.message().to_string(),
                    },
                    retry: code.as_deref().map_or(Retry::Never, retry_for_sqlstate),
                    sqlstate: code,
                }
            }
            // Lost connections, pool time-outs and I/O errors: the next attempt gets a new
            // connection, and the rolled-back batch left nothing behind.
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => BatchError {
                message: error.to_string(),
                sqlstate: None,
                retry: Retry::Reconnect,
            },
            _ => BatchError {
                message: error.to_string(),
                sqlstate: None,
                retry: Retry::Never,
            },
        }
    }
}

fn retry_for_sqlstate(code: &str) -> Retry {
    match code {
        "40001" // serialization_failure
        | "40P01" // deadlock_detected
        | "55P03" // lock_not_available (lock_timeout)
        | "57014" // query_canceled (statement_timeout)
        | "25P03" // idle_in_transaction_session_timeout
        => Retry::Attempt,
        "57P01" // admin_shutdown
        | "57P02" // crash_shutdown
        | "57P03" // cannot_connect_now
        | "53300" // too_many_connections
        => Retry::Reconnect,
        _ if code.starts_with("08") => Retry::Reconnect, // connection exceptions
        _ => Retry::Never,
    }
}

/// Where a partition stands, as its worker tracks it between batches.
#[derive(Debug, Clone)]
pub struct Position {
    pub job_id: i64,
    pub partition_index: i32,
    pub lease_token: Uuid,
    pub lower_bound: Option<String>,
    pub upper_bound: Option<String>,
    pub cursor: Option<Vec<String>>,
}

impl From<crate::store::progress::Claim> for Position {
    fn from(claim: crate::store::progress::Claim) -> Position {
        Position {
            job_id: claim.job_id,
            partition_index: claim.partition_index,
            lease_token: claim.lease_token,
            lower_bound: claim.lower_bound,
            upper_bound: claim.upper_bound,
            cursor: claim.cursor,
        }
    }
}

/// Settings of a worker's own connection: the job's lock and statement timeouts, and an idle-in-
/// transaction limit for the short completion transaction.
pub type Timeouts = progress::SessionSettings;

/// The live tunables, read by each batch for the next one (a PATCH takes effect within a batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Tunables {
    pub batch_size: u32,
    pub rows_per_second: Option<u32>,
    pub pause: Option<Duration>,
}

impl Tunables {
    pub fn of(spec: &crate::spec::JobSpec) -> Tunables {
        Tunables {
            batch_size: spec.batch_size,
            rows_per_second: spec.rows_per_second,
            pause: spec.pause,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Committed {
        scanned: i64,
        updated: i64,
        /// This batch reached the end of the partition.
        partition_done: bool,
        /// ...and with it every partition of the job: the job is now completed.
        job_completed: bool,
        tunables: Tunables,
    },
    /// The job is no longer running (paused, cancelled, failed by another worker).
    Stopped(JobState),
    /// Another process holds this partition now; nothing was written.
    LeaseLost,
}

/// The SQL a worker's batches run, generated once per variant and reused (the statement text
/// is also the key of the connection's prepared-statement cache).
#[derive(Default)]
pub struct Statements {
    batches: HashMap<(Lower, bool), Arc<str>>,
}

impl Statements {
    fn batch(&mut self, ctx: &BatchContext<'_>, lower: Lower, upper: bool) -> Arc<str> {
        self.batches
            .entry((lower, upper))
            .or_insert_with(|| {
                let fenced =
                    |first: usize, limit: usize| progress::fenced(ctx.schema, first, limit);
                Arc::from(ctx.sql.batch(lower, upper, Some(&fenced)))
            })
            .clone()
    }
}

pub struct BatchContext<'a> {
    pub schema: &'a Schema,
    pub sql: &'a BatchSql,
    pub lease_ttl: Duration,
    /// Recorded as the actor when the batch completes the job.
    pub actor: &'a str,
}

/// Runs one batch for `position`, of `size` keys, on the worker's own connection: ONE
/// autocommit statement that takes the partition's fence (lease token, job state, cursor),
/// walks and updates the next keys, and moves the checkpoint, so the rows and the cursor commit
/// together or not at all. On commit, `position.cursor` moves to the last key taken.
pub async fn run(
    ctx: &BatchContext<'_>,
    conn: &mut PgConnection,
    statements: &mut Statements,
    position: &mut Position,
    size: u32,
) -> Result<Outcome, BatchError> {
    let limit = i64::from(size);
    let (lower, binds): (Lower, Vec<String>) = match (&position.cursor, &position.lower_bound) {
        (Some(cursor), _) => (Lower::Cursor, cursor.clone()),
        (None, Some(lower)) => (Lower::Partition, vec![lower.clone()]),
        (None, None) => (Lower::Unbounded, Vec::new()),
    };
    let statement = statements.batch(ctx, lower, position.upper_bound.is_some());
    let mut query = sqlx::query(AssertSqlSafe(statement));
    for value in binds {
        query = query.bind(value);
    }
    if let Some(upper) = &position.upper_bound {
        query = query.bind(upper.clone());
    }
    let row = query
        .bind(limit)
        .bind(position.job_id)
        .bind(position.partition_index)
        .bind(position.lease_token)
        .bind(ctx.lease_ttl.as_millis() as i64)
        .bind(position.cursor.as_deref())
        .fetch_one(&mut *conn)
        .await?;
    let Some(job_state) = row.try_get::<Option<String>, _>("job_state")? else {
        // No fence row: the lease token is not ours any more; nothing was written.
        return Ok(Outcome::LeaseLost);
    };
    let job_state = JobState::parse(&job_state).unwrap_or(JobState::Failed);
    if job_state != JobState::Running {
        return Ok(Outcome::Stopped(job_state));
    }
    let stored: Option<Vec<String>> = row.try_get("stored_cursor")?;
    if stored != position.cursor || row.try_get::<i64, _>("checkpointed")? != 1 {
        // Someone moved the cursor under our token: nothing was written on a stale view.
        return Ok(Outcome::LeaseLost);
    }
    let scanned: i64 = row.try_get("scanned")?;
    let updated: i64 = row.try_get("updated")?;
    let last_key: Option<Vec<String>> = row.try_get("last_key")?;
    let tunables = Tunables {
        batch_size: row
            .try_get::<Option<i64>, _>("live_batch_size")?
            .map_or(size, |b| b.clamp(1, i64::from(u32::MAX)) as u32),
        rows_per_second: row
            .try_get::<Option<i64>, _>("live_rows_per_second")?
            .map(|r| r.clamp(1, i64::from(u32::MAX)) as u32),
        pause: row
            .try_get::<Option<String>, _>("live_pause")?
            .as_deref()
            .and_then(|p| humantime::parse_duration(p).ok()),
    };
    let partition_done = scanned < limit;
    position.cursor = last_key.or_else(|| position.cursor.clone());
    let job_completed = partition_done
        && complete_if_all_done(conn, ctx.schema, position.job_id, ctx.actor).await?;
    Ok(Outcome::Committed {
        scanned,
        updated,
        partition_done,
        job_completed,
        tunables,
    })
}

/// Marks the job completed if every partition is done, in a transaction of its own. The job
/// row is locked first, so of two partitions finishing at once the second sees the first's
/// commit; the scheduler calls this too, for a process that died between its last batch and
/// this step.
pub async fn complete_if_all_done(
    conn: &mut PgConnection,
    schema: &Schema,
    job_id: i64,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // The worker's session may commit batches asynchronously (spec::SynchronousCommit); the
    // completion waits for its flush, and with it for every batch's WAL before it.
    sqlx::query(
        "SELECT set_config('synchronous_commit', 'on', true)
          WHERE current_setting('synchronous_commit') = 'off'",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(sql(format!(
        "SELECT 1 FROM {}.jobs WHERE id = $1 FOR UPDATE",
        schema.q
    )))
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    if !progress::all_done(&mut *tx, schema, job_id).await? {
        return Ok(false);
    }
    let transition = jobs::transition(
        &mut tx,
        schema,
        job_id,
        JobState::Completed,
        actor,
        Some("every partition reached the end of its key range"),
    )
    .await?;
    tx.commit().await?;
    Ok(matches!(transition, jobs::Transition::Done { .. }))
}

/// Records a batch failure in the job: `failed` with the database's message, in the log too.
pub async fn fail_job(
    pool: &PgPool,
    schema: &Schema,
    job_id: i64,
    actor: &str,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let transition = jobs::transition(
        &mut tx,
        schema,
        job_id,
        JobState::Failed,
        actor,
        Some(message),
    )
    .await?;
    tx.commit().await?;
    Ok(matches!(transition, jobs::Transition::Done { .. }))
}
