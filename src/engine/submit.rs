//! Submitting a job: check it against the database, plan its partitions, and insert the job,
//! its partitions and the `submitted` event in one transaction. `run`, the jobs directory and
//! the API all come through here, so a job is validated the same way whichever door it used.

use crate::engine::catalog::{self, CheckError, ResolvedJob};
use crate::engine::partition;
use crate::plumbing::db::{Db, Schema};
use crate::spec::JobSpec;
use crate::store::{events, jobs, progress, JobState};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] CheckError),
    #[error("job {name:?} already exists with a different definition (fields that differ: {fields}); give the new definition a new name, or cancel the old job and submit it under a new name")]
    Conflict { name: String, fields: String },
    #[error("job {0:?} already exists")]
    NameTaken(String),
    #[error("{0}")]
    Stored(String),
    #[error("database: {}", crate::plumbing::db::message(.0))]
    Database(#[from] sqlx::Error),
}

/// What became of a submission.
pub struct Submitted {
    pub job: jobs::JobRow,
    pub created: bool,
    pub resolved: ResolvedJob,
}

/// Checks `spec` against the catalog (writes nothing; every statement prepared).
pub async fn resolve(pool: &Db, spec: &JobSpec) -> Result<ResolvedJob, SubmitError> {
    let mut conn = pool.pinned().await?;
    let resolved = catalog::admit(&mut conn, spec).await?;
    conn.rollback().await?;
    Ok(resolved)
}

/// Submits `spec` (already checked by [`resolve`]) unless a job of that name exists; an
/// existing job must do the same work (`JobSpec::same_work`), else the submission is a
/// conflict and nothing changes.
pub async fn find_or_submit(
    pool: &Db,
    schema: &Schema,
    spec: &JobSpec,
    resolved: ResolvedJob,
    actor: &str,
) -> Result<Submitted, SubmitError> {
    if let Some(job) = jobs::find_by_name(pool, schema, &spec.name).await? {
        check_same_work(&job, spec)?;
        return Ok(Submitted {
            job,
            created: false,
            resolved,
        });
    }
    match submit_new(pool, schema, spec, &resolved, actor).await {
        Ok(job) => Ok(Submitted {
            job,
            created: true,
            resolved,
        }),
        // Lost a race with another submitter of the same name.
        Err(SubmitError::NameTaken(_)) => {
            let job = jobs::find_by_name(pool, schema, &spec.name)
                .await?
                .ok_or_else(|| SubmitError::Stored("job vanished while submitting".into()))?;
            check_same_work(&job, spec)?;
            Ok(Submitted {
                job,
                created: false,
                resolved,
            })
        }
        Err(other) => Err(other),
    }
}

/// Plans and inserts a new `queued` job; `NameTaken` if the name exists, whatever its
/// definition.
pub async fn submit_new(
    pool: &Db,
    schema: &Schema,
    spec: &JobSpec,
    resolved: &ResolvedJob,
    actor: &str,
) -> Result<jobs::JobRow, SubmitError> {
    if jobs::find_by_name(pool, schema, &spec.name)
        .await?
        .is_some()
    {
        return Err(SubmitError::NameTaken(spec.name.clone()));
    }
    let plan = {
        let mut conn = pool.pinned().await?;
        let plan = partition::plan(&mut conn, resolved, spec.partitions).await?;
        conn.rollback().await?;
        plan
    };
    let mut tx = pool.begin().await?;
    let Some(id) = jobs::insert(&mut tx, schema, spec, plan.estimated_rows).await? else {
        return Err(SubmitError::NameTaken(spec.name.clone()));
    };
    progress::insert_partitions(&mut tx, schema, id, &plan.ranges).await?;
    let detail = format!(
        "{} partition(s), about {} rows",
        plan.ranges.len(),
        plan.estimated_rows
    );
    events::record(
        &mut *tx,
        schema,
        id,
        actor,
        "submitted",
        Some((None, JobState::Queued)),
        Some(&detail),
    )
    .await?;
    tx.commit().await?;
    jobs::find(pool, schema, id)
        .await?
        .ok_or_else(|| SubmitError::Stored("job vanished after submitting".into()))
}

fn check_same_work(job: &jobs::JobRow, spec: &JobSpec) -> Result<(), SubmitError> {
    let stored = job.spec().map_err(SubmitError::Stored)?;
    if stored.same_work(spec) {
        Ok(())
    } else {
        Err(SubmitError::Conflict {
            name: spec.name.clone(),
            fields: stored.differences(spec).join(", "),
        })
    }
}
