//! The end of a pass, in the jobs and progress tables: when every partition of a running job
//! is done, the job completes, or (a job with `where` whose pass updated rows) sweeps its key
//! range again in a new pass, or — its last pass having updated rows — waits for the engine to
//! count what is still pending before it completes. Each step locks the job row, so of two
//! processes finishing at once the second sees the first's commit.

use sqlx::{Acquire, PgConnection};

use crate::plumbing::db::{self, sql, Schema};
use crate::spec::JobSpec;
use crate::store::jobs::{self, Transition};
use crate::store::{events, progress, JobState};

/// What the end of a pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Some partition is not done, or the job is not running: nothing changed.
    NotYet,
    /// The job is completed.
    Completed,
    /// A new pass began (its number): every partition is pending again from the start.
    NextPass(i32),
    /// The last pass updated rows, so some may still match `where`: the caller counts them and
    /// completes the job with [`complete_with_pending`].
    CountPending { pass: i32 },
}

/// Ends the current pass if every partition is done, in a transaction of its own.
pub async fn finish_pass(
    conn: &mut PgConnection,
    schema: &Schema,
    job_id: i64,
    actor: &str,
) -> Result<Finish, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // A worker's session may commit batches asynchronously (`synchronous_commit`); the end of
    // a pass waits for its flush, and with it for every batch's WAL before it.
    db::query(
        "SELECT set_config('synchronous_commit', 'on', true)
          WHERE current_setting('synchronous_commit') = 'off'",
    )
    .execute(&mut *tx)
    .await?;
    let Some(job) = jobs::lock(&mut tx, schema, job_id).await? else {
        return Ok(Finish::NotYet);
    };
    if job.state != JobState::Running || !progress::all_done(&mut *tx, schema, job_id).await? {
        return Ok(Finish::NotYet);
    }
    let (scanned, updated): (i64, i64) = db::query_as(sql(format!(
        "SELECT coalesce(sum(rows_scanned), 0)::int8, coalesce(sum(rows_updated), 0)::int8
           FROM {}.progress WHERE job_id = $1",
        schema.q
    )))
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    let pass_updated = updated - job.updated_before_pass;
    // A stored definition that no longer parses is run as one pass (it cannot sweep safely).
    let spec: Option<JobSpec> = job.spec().ok();
    let has_where = spec.as_ref().is_some_and(|s| s.filter.is_some());
    let max_passes = spec.as_ref().map_or(1, JobSpec::max_passes) as i32;
    if !has_where || pass_updated == 0 {
        let detail = if job.pass == 1 {
            "every partition reached the end of its key range".to_string()
        } else {
            format!("pass {} updated no rows: every row is done", job.pass)
        };
        // Nothing is pending: without `where` every row was updated once; with it, the last
        // pass found nothing left to update.
        let done = complete(&mut tx, schema, job_id, actor, Some(0), &detail).await?;
        tx.commit().await?;
        return Ok(if done {
            Finish::Completed
        } else {
            Finish::NotYet
        });
    }
    if job.pass < max_passes {
        let next = job.pass + 1;
        db::query(sql(format!(
            "UPDATE {}.jobs SET pass = $2, scanned_before_pass = $3, updated_before_pass = $4,
                    updated_at = now()
              WHERE id = $1",
            schema.q
        )))
        .bind(job_id)
        .bind(next)
        .bind(scanned)
        .bind(updated)
        .execute(&mut *tx)
        .await?;
        db::query(sql(format!(
            "UPDATE {}.progress SET state = 'pending', cursor = NULL, finished_at = NULL,
                    updated_at = now()
              WHERE job_id = $1",
            schema.q
        )))
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        events::record(
            &mut *tx,
            schema,
            job_id,
            actor,
            "pass",
            None,
            Some(&format!(
                "pass {next} of at most {max_passes} sweeps the whole key range: pass {} updated {pass_updated} rows",
                job.pass
            )),
        )
        .await?;
        tx.commit().await?;
        return Ok(Finish::NextPass(next));
    }
    tx.commit().await?;
    Ok(Finish::CountPending { pass: job.pass })
}

/// Completes a job whose last pass updated rows, with the rows still pending that the caller
/// counted, unless something changed meanwhile (another process completed it, an operator
/// paused it). True if this call completed it.
pub async fn complete_with_pending(
    conn: &mut PgConnection,
    schema: &Schema,
    job_id: i64,
    pass: i32,
    pending: i64,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let Some(job) = jobs::lock(&mut tx, schema, job_id).await? else {
        return Ok(false);
    };
    if job.state != JobState::Running
        || job.pass != pass
        || !progress::all_done(&mut *tx, schema, job_id).await?
    {
        return Ok(false);
    }
    let detail = if pending == 0 {
        format!("after {pass} pass(es) no row matches `where` any more")
    } else {
        format!(
            "after {pass} pass(es) {pending} rows still match `where` (rows the application wrote behind the cursors): run `backfilld verify`, or the job again with more passes"
        )
    };
    let done = complete(&mut tx, schema, job_id, actor, Some(pending), &detail).await?;
    tx.commit().await?;
    Ok(done)
}

async fn complete(
    conn: &mut PgConnection,
    schema: &Schema,
    job_id: i64,
    actor: &str,
    pending: Option<i64>,
    detail: &str,
) -> Result<bool, sqlx::Error> {
    record_pending(&mut *conn, schema, job_id, pending).await?;
    let transition = jobs::transition(
        conn,
        schema,
        job_id,
        JobState::Completed,
        actor,
        Some(detail),
    )
    .await?;
    Ok(matches!(transition, Transition::Done { .. }))
}

/// Records what a pass or `verify` found still pending (`None` leaves it unknown).
pub async fn record_pending<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    schema: &Schema,
    job_id: i64,
    pending: Option<i64>,
) -> Result<(), sqlx::Error> {
    if let Some(pending) = pending {
        db::query(sql(format!(
            "UPDATE {}.jobs SET pending_rows = $2, verified_at = now() WHERE id = $1",
            schema.q
        )))
        .bind(job_id)
        .bind(pending)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Records the first installation of the job's sync trigger; true for the call that did.
pub async fn mark_sync_installed(
    conn: &mut PgConnection,
    schema: &Schema,
    job_id: i64,
    actor: &str,
    detail: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let first: Option<i64> = db::query_scalar(sql(format!(
        "UPDATE {}.jobs SET sync_installed_at = now()
          WHERE id = $1 AND sync_installed_at IS NULL RETURNING id",
        schema.q
    )))
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    if first.is_some() {
        events::record(
            &mut *tx,
            schema,
            job_id,
            actor,
            "sync_installed",
            None,
            Some(detail),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(first.is_some())
}
