//! The event log: every submission and state change, with who asked.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use crate::plumbing::db::{self, sql, Db, Schema};
use crate::store::JobState;

/// One entry of a job's event log, as stored and as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The token name that asked, `daemon`, `cli`, or `anonymous` without tokens.
    pub actor: String,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub detail: Option<String>,
    /// The database the event happened on, for a job over several databases (not stored:
    /// each database's log is its own; the API marks it when it merges them).
    #[sqlx(default)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    job_id: i64,
    actor: &str,
    kind: &str,
    transition: Option<(Option<JobState>, JobState)>,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    let (from, to) = match transition {
        Some((from, to)) => (from.map(JobState::as_str), Some(to.as_str())),
        None => (None, None),
    };
    db::query(sql(format!(
        "INSERT INTO {}.events (job_id, actor, kind, from_state, to_state, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
        schema.q
    )))
    .bind(job_id)
    .bind(actor)
    .bind(kind)
    .bind(from)
    .bind(to)
    .bind(detail)
    .execute(executor)
    .await?;
    Ok(())
}

pub async fn list<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    job_id: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    db::query_as(sql(format!(
        "SELECT id, at, actor, kind, from_state, to_state, detail
           FROM {}.events WHERE job_id = $1 ORDER BY id",
        schema.q
    )))
    .bind(job_id)
    .fetch_all(executor)
    .await
}

/// The state job `id` was in when it was last paused (`queued` or `running`), if ever.
pub async fn paused_from<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    job_id: i64,
) -> Result<Option<JobState>, sqlx::Error> {
    let from: Option<Option<String>> = db::query_scalar(sql(format!(
        "SELECT from_state FROM {}.events
          WHERE job_id = $1 AND to_state = 'paused' AND from_state IS DISTINCT FROM 'paused'
          ORDER BY id DESC LIMIT 1",
        schema.q
    )))
    .bind(job_id)
    .fetch_optional(executor)
    .await?;
    Ok(match from.flatten().as_deref() {
        Some("queued") => Some(JobState::Queued),
        Some("running") => Some(JobState::Running),
        _ => None,
    })
}

/// Records that job `job_id` is being held back by a throttle signal, unless a `throttled`
/// event was recorded within `quiet` (by this or another replica): a signal that flaps, or a
/// window that closes every night, makes one entry (and one notification) per episode, not one
/// per check. The job row is locked first, so replicas throttled at the same moment record one
/// between them: the check after the lock sees what the other committed. True if it recorded
/// one.
pub async fn record_throttled(
    pool: &Db,
    schema: &Schema,
    job_id: i64,
    actor: &str,
    detail: &str,
    quiet: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let s = &schema.q;
    let mut tx = pool.begin().await?;
    // Briefly: a worker waiting here is not taking batches or noticing a shutdown, and the
    // row may be held by a replacement that waits for a batch itself. A timeout fails this
    // record (the caller logs it), never the batch.
    db::query("SELECT set_config('lock_timeout', '1s', true)")
        .execute(&mut *tx)
        .await?;
    db::query(sql(format!(
        "SELECT 1 FROM {s}.jobs WHERE id = $1 FOR NO KEY UPDATE"
    )))
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    let done = db::query(sql(format!(
        "INSERT INTO {s}.events (job_id, actor, kind, detail)
         SELECT $1, $2, 'throttled', $3
          WHERE NOT EXISTS (SELECT 1 FROM {s}.events
                             WHERE job_id = $1 AND kind = 'throttled'
                               AND at > clock_timestamp() - make_interval(secs => $4))"
    )))
    .bind(job_id)
    .bind(actor)
    .bind(detail)
    .bind(quiet.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}
