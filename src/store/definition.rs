//! A job's definition over its life: replacing it (`--replace`) while keeping the checkpoint,
//! deleting an ended job to free its name, and the definition as its author last gave it, which
//! tells a value a job file changed from one an operator changed over the API since.

use sqlx::types::Json;
use sqlx::PgConnection;

use crate::plumbing::db::{self, sql, Schema};
use crate::spec::JobSpec;
use crate::store::jobs::{self, JobRow, LiveTunables};
use crate::store::{events, progress, JobState};

impl JobRow {
    /// The definition as its author last gave it (a file, a submission, a replacement), before
    /// any PATCH; the stored one for jobs submitted before this was recorded.
    pub fn authored(&self) -> Result<JobSpec, String> {
        match &self.authored_spec {
            Some(Json(value)) => serde_json::from_value(value.clone()).map_err(|e| {
                format!(
                    "stored definition of job {:?} does not parse: {e}",
                    self.name
                )
            }),
            None => self.spec(),
        }
    }
}

/// Records `spec` as what the author now says (a foreground run whose file changed), in the
/// caller's transaction.
pub async fn set_authored(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
    spec: &JobSpec,
) -> Result<(), sqlx::Error> {
    let spec_json = serde_json::to_value(spec).expect("a JobSpec always serializes");
    db::query(sql(format!(
        "UPDATE {}.jobs SET authored_spec = $2 WHERE id = $1",
        schema.q
    )))
    .bind(id)
    .bind(Json(spec_json))
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives job `job` (its row locked by the caller with `jobs::lock`) the definition `new`:
/// the spec, the live tunables and the authored definition, with its partitions' cursors and
/// counts kept. A `failed` or `cancelled` job is `queued` again; a `paused` one stays paused
/// for its operator to resume. Any lease still held is revoked, so a worker of the old
/// definition that has not noticed the job stop finds its lease gone at its next batch and
/// writes nothing. One `replaced` event holds both definitions. Returns the new state.
pub async fn replace(
    conn: &mut PgConnection,
    schema: &Schema,
    job: &JobRow,
    old: &JobSpec,
    new: &JobSpec,
    actor: &str,
) -> Result<JobState, sqlx::Error> {
    let to = match job.state {
        JobState::Paused => JobState::Paused,
        _ => JobState::Queued,
    };
    let new_json = serde_json::to_value(new).expect("a JobSpec always serializes");
    let live = LiveTunables::from(new.tunables());
    let s = &schema.q;
    db::query(sql(format!(
        "UPDATE {s}.jobs
            SET spec = $2, authored_spec = $2, batch_size = $3, rows_per_second = $4,
                pause_us = $5, duty_cycle_percent = $6, state = $7, last_error = NULL,
                finished_at = NULL,
                updated_at = now()
          WHERE id = $1"
    )))
    .bind(job.id)
    .bind(Json(&new_json))
    .bind(live.batch_size)
    .bind(live.rows_per_second)
    .bind(live.pause_us)
    .bind(live.duty_cycle_percent)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    progress::revoke_leases(&mut *conn, schema, job.id).await?;
    let detail = serde_json::json!({
        "changed": old.differences(new),
        "old": old,
        "new": new_json,
    })
    .to_string();
    events::record(
        &mut *conn,
        schema,
        job.id,
        actor,
        "replaced",
        Some((Some(job.state), to)),
        Some(&detail),
    )
    .await?;
    let changed = old.differences(new).join(", ");
    jobs::tell_story(
        conn,
        schema,
        job.id,
        job.state,
        to,
        actor,
        Some(&format!("new definition: {changed} changed")),
    )
    .await?;
    Ok(to)
}

/// The result of asking to delete a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Done,
    /// Only a completed, cancelled or failed job may be deleted.
    NotAllowed {
        current: JobState,
    },
    Unknown,
}

/// Deletes job `id` with its partitions and events, freeing its name, if it has ended.
pub async fn delete(
    conn: &mut PgConnection,
    schema: &Schema,
    id: i64,
    actor: &str,
) -> Result<Deleted, sqlx::Error> {
    let Some(job) = jobs::lock(conn, schema, id).await? else {
        return Ok(Deleted::Unknown);
    };
    if !job.state.can_be_deleted() {
        return Ok(Deleted::NotAllowed { current: job.state });
    }
    // Partitions and events go with it (ON DELETE CASCADE).
    db::query(sql(format!("DELETE FROM {}.jobs WHERE id = $1", schema.q)))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    tracing::info!(job = %job.name, %actor, state = %job.state, "job deleted; its name is free");
    Ok(Deleted::Done)
}
