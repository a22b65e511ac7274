//! The `jobs` table: one row per submitted definition, its state and when it changed, its live
//! tunables, and the job's life cycle: every state change goes through [`transition`].

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

use crate::plumbing::db::{self, sql, Db, Schema};
use crate::spec::{DutyCycle, JobSpec, Tunables};
use crate::store::{events, JobState};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub name: String,
    pub spec: Json<serde_json::Value>,
    pub state: JobState,
    pub estimated_rows: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The pass the job is in: 1 is the backfill, 2.. are sweeps.
    pub pass: i32,
    /// Keys walked before the current pass began (the pass's progress starts from here).
    pub scanned_before_pass: i64,
    /// Rows updated before the current pass began (what the pass itself updated is the rest).
    pub updated_before_pass: i64,
    /// Rows still matching `where` at the last completed pass or `verify`; `None` before.
    pub pending_rows: Option<i64>,
    pub verified_at: Option<DateTime<Utc>>,
    pub sync_installed_at: Option<DateTime<Utc>>,
    /// The definition as its author last gave it, before any PATCH (`store::definition`).
    pub authored_spec: Option<Json<serde_json::Value>>,
}

impl JobRow {
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

const COLUMNS: &str = "id, name, spec, state, estimated_rows, last_error, created_at, started_at,
     finished_at, pass, scanned_before_pass, updated_before_pass, pending_rows, verified_at, sync_installed_at,
     authored_spec";

pub async fn find_by_name<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    name: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    db::query_as(sql(format!(
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
    db::query_as(sql(format!(
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
    db::query_as(sql(format!(
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
    let live = LiveTunables::from(spec.tunables());
    db::query_scalar(sql(format!(
        "INSERT INTO {}.jobs (name, spec, state, estimated_rows, batch_size, rows_per_second, pause_us,
                              duty_cycle_percent, authored_spec)
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $2)
         ON CONFLICT (name) DO NOTHING RETURNING id",
        schema.q
    )))
    .bind(&spec.name)
    .bind(Json(spec_json))
    .bind(estimated_rows)
    .bind(live.batch_size)
    .bind(live.rows_per_second)
    .bind(live.pause_us)
    .bind(live.duty_cycle_percent)
    .fetch_optional(conn)
    .await
}

/// The tunables as the jobs table stores them, in typed columns that every batch reads back
/// under its fence (see `engine::statement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveTunables {
    pub batch_size: i32,
    pub rows_per_second: Option<i32>,
    pub pause_us: Option<i64>,
    pub duty_cycle_percent: Option<i16>,
}

impl From<Tunables> for LiveTunables {
    fn from(t: Tunables) -> LiveTunables {
        // The spec's validation bounds every value well inside these types.
        LiveTunables {
            batch_size: i32::try_from(t.batch_size).unwrap_or(i32::MAX),
            rows_per_second: t
                .rows_per_second
                .map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
            pause_us: t
                .pause
                .map(|p| i64::try_from(p.as_micros()).unwrap_or(i64::MAX)),
            duty_cycle_percent: t.duty_cycle.map(|d| i16::from(d.percent())),
        }
    }
}

impl From<LiveTunables> for Tunables {
    fn from(t: LiveTunables) -> Tunables {
        Tunables {
            batch_size: t.batch_size.max(1) as u32,
            rows_per_second: t.rows_per_second.map(|r| r.max(1) as u32),
            pause: t
                .pause_us
                .map(|us| std::time::Duration::from_micros(us.max(0) as u64)),
            // The column's CHECK keeps it within 1..=100.
            duty_cycle: t
                .duty_cycle_percent
                .and_then(|p| DutyCycle::from_percent(p.into())),
        }
    }
}

/// The result of asking for a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Done {
        from: JobState,
        to: JobState,
    },
    /// The job already is where the request would put it: nothing changed, no event.
    Already {
        current: JobState,
    },
    NotAllowed {
        current: JobState,
    },
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
    transition_from(conn, schema, id, None, to, actor, detail).await
}

/// [`transition`], but only from one of the states in `from`: for a caller acting on a state
/// it read earlier (the scheduler starting the jobs it saw queued), so that a change made
/// since (an operator's pause) is not undone; the answer is then `NotAllowed`.
pub async fn transition_from(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
    from: Option<&[JobState]>,
    to: JobState,
    actor: &str,
    detail: Option<&str>,
) -> Result<Transition, sqlx::Error> {
    let current = locked_state(conn, schema, id).await?;
    let Some(current) = current else {
        return Ok(Transition::Unknown);
    };
    if current == to {
        return Ok(Transition::Already { current });
    }
    if !current.can_become(to) || from.is_some_and(|from| !from.contains(&current)) {
        return Ok(Transition::NotAllowed { current });
    }
    // A failure's message stays in last_error; anything else clears it.
    db::query(sql(format!(
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
    .bind(to)
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
    tell_story(conn, schema, id, current, to, actor, detail).await?;
    Ok(Transition::Done { from: current, to })
}

/// Job `id`'s state, its row locked until the caller's transaction ends, so concurrent
/// changes serialize; `None` for an unknown job.
async fn locked_state(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
) -> Result<Option<JobState>, sqlx::Error> {
    db::query_scalar(sql(format!(
        "SELECT state FROM {}.jobs WHERE id = $1 FOR UPDATE",
        schema.q
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Resumes job `id`: a paused job returns to where it was paused from (`queued` or
/// `running`), a failed one runs again from its checkpoints; a job already running or queued
/// is left as it is.
pub async fn resume(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
    actor: &str,
    detail: Option<&str>,
) -> Result<Transition, sqlx::Error> {
    let current = locked_state(conn, schema, id).await?;
    let to = match current {
        None => return Ok(Transition::Unknown),
        Some(JobState::Queued) => {
            return Ok(Transition::Already {
                current: JobState::Queued,
            })
        }
        Some(JobState::Paused) => match events::paused_from(&mut *conn, schema, id).await? {
            Some(JobState::Queued) => JobState::Queued,
            _ => JobState::Running,
        },
        Some(_) => JobState::Running,
    };
    transition(conn, schema, id, to, actor, detail).await
}

/// One log line per state change, with the job's rows, how long it has run and its rate, so
/// the daemon's log (`kubectl logs`) tells each job's story.
pub(super) async fn tell_story(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
    from: JobState,
    to: JobState,
    actor: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    let s = &schema.q;
    let (name, scanned, updated, seconds): (String, i64, i64, Option<f64>) =
        db::query_as(sql(format!(
            "SELECT j.name, coalesce(sum(p.rows_scanned), 0)::int8, coalesce(sum(p.rows_updated), 0)::int8,
                    extract(epoch FROM now() - j.started_at)::float8
               FROM {s}.jobs j LEFT JOIN {s}.progress p ON p.job_id = j.id
              WHERE j.id = $1 GROUP BY j.id"
        )))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    let seconds = seconds.unwrap_or(0.0).max(0.0);
    let rate = if seconds > 0.0 {
        (scanned as f64 / seconds).round()
    } else {
        0.0
    };
    let word = match (from, to) {
        (JobState::Paused, JobState::Running | JobState::Queued)
        | (JobState::Failed, JobState::Running) => "resumed",
        (JobState::Queued, JobState::Running) => "started",
        (JobState::Failed | JobState::Cancelled, JobState::Queued) => "replaced",
        (_, to) => to.as_str(),
    };
    let duration = humantime::format_duration(std::time::Duration::from_secs(seconds as u64));
    let detail = detail.unwrap_or("");
    if to == JobState::Failed {
        tracing::error!(job = %name, %actor, %from, %to, rows_scanned = scanned, rows_updated = updated,
            duration = %duration, rows_per_second = rate, detail, "job {word}");
    } else {
        tracing::info!(job = %name, %actor, %from, %to, rows_scanned = scanned, rows_updated = updated,
            duration = %duration, rows_per_second = rate, detail, "job {word}");
    }
    Ok(())
}

/// Job `id`, its row locked until the caller's transaction ends: a read-modify-write of the
/// definition (a re-tune) holds it, so concurrent changes and state changes serialize instead
/// of one silently undoing the other.
pub async fn lock(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    db::query_as(sql(format!(
        "SELECT {COLUMNS} FROM {}.jobs WHERE id = $1 FOR UPDATE",
        schema.q
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Rewrites the stored definition (tunables only: callers check `JobSpec::same_work`) and the
/// live tunables with it, with an event naming what changed, in the caller's transaction
/// (which holds the row from [`lock`]).
pub async fn replace_spec(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
    spec: &JobSpec,
    actor: &str,
    changed: &str,
) -> Result<(), sqlx::Error> {
    let spec_json = serde_json::to_value(spec).expect("a JobSpec always serializes");
    let live = LiveTunables::from(spec.tunables());
    db::query(sql(format!(
        "UPDATE {}.jobs
            SET spec = $2, batch_size = $3, rows_per_second = $4, pause_us = $5,
                duty_cycle_percent = $6, updated_at = now()
          WHERE id = $1",
        schema.q
    )))
    .bind(id)
    .bind(Json(spec_json))
    .bind(live.batch_size)
    .bind(live.rows_per_second)
    .bind(live.pause_us)
    .bind(live.duty_cycle_percent)
    .execute(&mut *conn)
    .await?;
    events::record(
        &mut *conn,
        schema,
        id,
        actor,
        "retuned",
        None,
        Some(&format!("changed: {changed}")),
    )
    .await
}

/// Ids of queued jobs, oldest first.
pub async fn queued<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
) -> Result<Vec<i64>, sqlx::Error> {
    db::query_scalar(sql(format!(
        "SELECT id FROM {}.jobs WHERE state = 'queued' ORDER BY id",
        schema.q
    )))
    .fetch_all(executor)
    .await
}

/// States of the given jobs (a missing job is simply absent).
pub async fn states<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    ids: &[i64],
) -> Result<Vec<(i64, JobState)>, sqlx::Error> {
    db::query_as(sql(format!(
        "SELECT id, state FROM {}.jobs WHERE id = ANY ($1)",
        schema.q
    )))
    .bind(ids)
    .fetch_all(executor)
    .await
}

/// Running jobs whose every partition is done: completed in the batch that finished the last
/// one, unless the process died right after it; the scheduler completes them.
pub async fn finished_but_running<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
) -> Result<Vec<i64>, sqlx::Error> {
    let s = &schema.q;
    db::query_scalar(sql(format!(
        "SELECT j.id FROM {s}.jobs j
          WHERE j.state = 'running'
            AND NOT EXISTS (SELECT 1 FROM {s}.progress p WHERE p.job_id = j.id AND p.state <> 'done')"
    )))
    .fetch_all(executor)
    .await
}

/// Records a failure: `failed` with the message, in the event log too.
pub async fn fail(
    pool: &Db,
    schema: &Schema,
    job_id: i64,
    actor: &str,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let transition = transition(
        &mut tx,
        schema,
        job_id,
        JobState::Failed,
        actor,
        Some(message),
    )
    .await?;
    tx.commit().await?;
    Ok(matches!(transition, Transition::Done { .. }))
}

/// Deletes the jobs named `name` that run on `table` (with their partitions and events): the
/// demo's own jobs, recreated with its tables.
pub async fn delete_named_on_table(
    conn: &mut PgConnection,
    schema: &Schema,
    name: &str,
    table: &str,
) -> Result<(), sqlx::Error> {
    db::query(sql(format!(
        "DELETE FROM {}.jobs WHERE name = $1 AND spec ->> 'table' = $2",
        schema.q
    )))
    .bind(name)
    .bind(table)
    .execute(conn)
    .await?;
    Ok(())
}
