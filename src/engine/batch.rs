//! One batch: a single statement (so a single transaction and a single round trip) that checks
//! the lease, updates the next keys after the cursor and moves the cursor, so the rows and the
//! checkpoint commit together or not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::engine::statement::{BatchRow, BatchSql, Lower};
use crate::plumbing::db::{self, Schema, SessionSettings, SettingsScope};
use crate::plumbing::retry::ErrorKind;
use crate::spec::Tunables;
use crate::store::progress::Claim;
use crate::store::JobState;

/// Why a batch did not commit. The transaction rolled back, so nothing of it remains.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BatchError {
    /// The database's message, with its SQLSTATE when it has one.
    pub message: String,
    pub sqlstate: Option<String>,
    /// Whether trying again can help.
    pub kind: ErrorKind,
    #[source]
    pub source: sqlx::Error,
}

impl From<sqlx::Error> for BatchError {
    fn from(source: sqlx::Error) -> BatchError {
        let sqlstate = match &source {
            sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
            _ => None,
        };
        let message = match &sqlstate {
            Some(code) => format!("{} (SQLSTATE {code})", db::message(&source)),
            None => db::message(&source),
        };
        BatchError {
            message,
            sqlstate,
            kind: ErrorKind::of(&source),
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Committed {
        scanned: i64,
        updated: i64,
        /// This batch reached the end of the partition: the worker ends the pass if it was the
        /// last one (`engine::completion`), after accounting for the batch.
        partition_done: bool,
        /// The live tunables read under the fence, for the next batch.
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
            .or_insert_with(|| Arc::from(ctx.sql.batch(lower, upper, Some(ctx.schema))))
            .clone()
    }
}

pub struct BatchContext<'a> {
    pub schema: &'a Schema,
    pub sql: &'a BatchSql,
    pub lease_ttl: Duration,
    /// `Some` through a transaction pooler: the job's settings, applied inside each batch's
    /// own transaction, whose statement is unnamed. `None`: the worker's session holds the
    /// settings and keeps the statement prepared.
    pub per_batch: Option<&'a SessionSettings>,
}

/// Runs one batch for `claim`, of `size` keys, on the worker's own connection: ONE statement
/// that takes the partition's fence (lease token, job state, cursor), walks and updates the
/// next keys, and moves the checkpoint, so the rows and the cursor commit together or not at
/// all. It is autocommit, or (`per_batch`) in a transaction that first sets the job's
/// settings. On commit, `claim.cursor` moves to the last key taken.
pub async fn run(
    ctx: &BatchContext<'_>,
    conn: &mut PgConnection,
    statements: &mut Statements,
    claim: &mut Claim,
    size: u32,
) -> Result<Outcome, BatchError> {
    let limit = i64::from(size);
    let (lower, binds): (Lower, Vec<String>) = match (&claim.cursor, &claim.lower_bound) {
        (Some(cursor), _) => (Lower::Cursor, cursor.clone()),
        (None, Some(lower)) => (Lower::Partition, vec![lower.clone()]),
        (None, None) => (Lower::Unbounded, Vec::new()),
    };
    let statement = statements.batch(ctx, lower, claim.upper_bound.is_some());
    let mut query =
        sqlx::query_as::<_, BatchRow>(AssertSqlSafe(statement)).persistent(ctx.per_batch.is_none());
    for value in binds {
        query = query.bind(value);
    }
    if let Some(upper) = &claim.upper_bound {
        query = query.bind(upper.clone());
    }
    let query = query
        .bind(limit)
        .bind(claim.job_id)
        .bind(claim.partition_index)
        .bind(claim.lease_token)
        .bind(ctx.lease_ttl.as_millis() as i64)
        .bind(claim.cursor.clone());
    let row = match ctx.per_batch {
        None => query.fetch_one(&mut *conn).await?,
        Some(settings) => {
            let mut tx = conn.begin().await?;
            db::apply_settings(&mut tx, settings, SettingsScope::Transaction).await?;
            let row = query.fetch_one(&mut *tx).await?;
            tx.commit().await?;
            row
        }
    };
    let (Some(job_state), Some(tunables)) = (row.job_state, row.tunables()) else {
        // No fence row: the lease token is not ours any more; nothing was written.
        return Ok(Outcome::LeaseLost);
    };
    if job_state != JobState::Running {
        return Ok(Outcome::Stopped(job_state));
    }
    if row.stored_cursor != claim.cursor || row.checkpointed != 1 {
        // Someone moved the cursor under our token: nothing was written on a stale view.
        return Ok(Outcome::LeaseLost);
    }
    let partition_done = row.scanned < limit;
    if let Some(last_key) = row.last_key {
        claim.cursor = Some(last_key);
    }
    Ok(Outcome::Committed {
        scanned: row.scanned,
        updated: row.updated,
        partition_done,
        tunables,
    })
}
