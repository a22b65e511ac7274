//! The `jobs` table: one row per submitted definition, its state and when it changed.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

use crate::plumbing::db::{sql, Schema};
use crate::spec::JobSpec;
use crate::store::{events, JobState};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub name: String,
    pub spec: Json<serde_json::Value>,
    pub state: String,
    pub estimated_rows: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    pub fn state(&self) -> JobState {
        JobState::parse(&self.state).unwrap_or(JobState::Failed)
    }

    /// The stored definition. A row whose spec no longer parses (a newer binary wrote it) is
    /// reported rather than guessed at.
    pub fn spec(&self) -> Result<JobSpec, String> {
        serde_json::from_value(self.spec.0.clone()).map_err(|e| {
            format!(
                "stored definition of job {:?} does not parse: {e}",
                self.name
            )
        })
    }
}

const COLUMNS: &str =
    "id, name, spec, state, estimated_rows, last_error, created_at, started_at, finished_at";

pub async fn find_by_name<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    name: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(sql(format!(
        "SELECT {COLUMNS} FROM {}.jobs WHERE name = $1",
        schema.q
    )))
    .bind(name)
    .fetch_optional(executor)
    .await
}

pub async fn find<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(sql(format!(
        "SELECT {COLUMNS} FROM {}.jobs WHERE id = $1",
        schema.q
    )))
    .bind(id)
    .fetch_optional(executor)
    .await
}

pub async fn list<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(sql(format!(
        "SELECT {COLUMNS} FROM {}.jobs ORDER BY id",
        schema.q
    )))
    .fetch_all(executor)
    .await
}

/// Inserts a new `queued` job. `None` when the name is taken (the caller reports the clash).
pub async fn insert(
    conn: &mut PgConnection,
    schema: &Schema,
    spec: &JobSpec,
    estimated_rows: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let spec_json = serde_json::to_value(spec).expect("a JobSpec always serializes");
    sqlx::query_scalar(sql(format!(
        "INSERT INTO {}.jobs (name, spec, state, estimated_rows) VALUES ($1, $2, 'queued', $3)
         ON CONFLICT (name) DO NOTHING RETURNING id",
        schema.q
    )))
    .bind(&spec.name)
    .bind(Json(spec_json))
    .bind(estimated_rows)
    .fetch_optional(conn)
    .await
}

/// The result of asking for a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Done { from: JobState },
    NotAllowed { current: JobState },
    Unknown,
}

/// Moves job `id` to `to` if its current state allows it, recording the event in the same
/// transaction. Locks the job row first so concurrent requests serialize.
pub async fn transition(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
    to: JobState,
    actor: &str,
    detail: Option<&str>,
) -> Result<Transition, sqlx::Error> {
    let current: Option<String> = sqlx::query_scalar(sql(format!(
        "SELECT state FROM {}.jobs WHERE id = $1 FOR UPDATE",
        schema.q
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(current) = current.as_deref().and_then(JobState::parse) else {
        return Ok(Transition::Unknown);
    };
    if !current.can_become(to) {
        return Ok(Transition::NotAllowed { current });
    }
    // A failure's message stays in last_error; anything else clears it.
    sqlx::query(sql(format!(
        "UPDATE {}.jobs
            SET state = $2,
                started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $2 IN ('completed', 'cancelled', 'failed') THEN now() ELSE NULL END,
                last_error = CASE WHEN $2 = 'failed' THEN $3 WHEN $2 = 'running' THEN NULL ELSE last_error END,
                updated_at = now()
          WHERE id = $1",
        schema.q
    )))
    .bind(id)
    .bind(to.as_str())
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    events::record(
        &mut *conn,
        schema,
        id,
        actor,
        to.as_str(),
        Some((Some(current), to)),
        detail,
    )
    .await?;
    Ok(Transition::Done { from: current })
}

/// Rewrites the stored definition (tunables only: callers check `JobSpec::same_work`), with an
/// event naming what changed.
pub async fn replace_spec(
    pool: &sqlx::PgPool,
    schema: &Schema,
    id: i64,
    spec: &JobSpec,
    actor: &str,
    changed: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let spec_json = serde_json::to_value(spec).expect("a JobSpec always serializes");
    sqlx::query(sql(format!(
        "UPDATE {}.jobs SET spec = $2, updated_at = now() WHERE id = $1",
        schema.q
    )))
    .bind(id)
    .bind(Json(spec_json))
    .execute(&mut *tx)
    .await?;
    events::record(
        &mut *tx,
        schema,
        id,
        actor,
        "retuned",
        None,
        Some(&format!("changed: {changed}")),
    )
    .await?;
    tx.commit().await
}

/// Ids of queued jobs, oldest first.
pub async fn queued<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(sql(format!(
        "SELECT id FROM {}.jobs WHERE state = 'queued' ORDER BY id",
        schema.q
    )))
    .fetch_all(executor)
    .await
}

/// State and live tunables of the given jobs (a missing job is simply absent).
pub async fn states_and_tunables<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    ids: &[i64],
) -> Result<Vec<(i64, JobState, Option<crate::engine::batch::Tunables>)>, sqlx::Error> {
    let rows: Vec<(i64, String, Json<serde_json::Value>)> = sqlx::query_as(sql(format!(
        "SELECT id, state, spec FROM {}.jobs WHERE id = ANY ($1)",
        schema.q
    )))
    .bind(ids)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, state, spec)| {
            let tunables = serde_json::from_value::<JobSpec>(spec.0)
                .ok()
                .map(|s| crate::engine::batch::Tunables::of(&s));
            (
                id,
                JobState::parse(&state).unwrap_or(JobState::Failed),
                tunables,
            )
        })
        .collect())
}

/// Running jobs whose every partition is done: completed in the batch that finished the last
/// one, unless the process died right after it; the scheduler completes them.
pub async fn finished_but_running<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
) -> Result<Vec<i64>, sqlx::Error> {
    let s = &schema.q;
    sqlx::query_scalar(sql(format!(
        "SELECT j.id FROM {s}.jobs j
          WHERE j.state = 'running'
            AND NOT EXISTS (SELECT 1 FROM {s}.progress p WHERE p.job_id = j.id AND p.state <> 'done')"
    )))
    .fetch_all(executor)
    .await
}
