//! Submitting a job: check it against the database, plan its partitions, and insert the job,
//! its partitions and the `submitted` event in one transaction. `run`, the jobs directory and
//! the API all come through here, so a job is validated the same way whichever door it used.

use crate::engine::catalog::{self, CheckError, ResolvedJob};
use crate::engine::{partition, sync};
use crate::plumbing::db::{Db, Schema};
use crate::spec::JobSpec;
use crate::store::{definition, events, jobs, progress, JobState};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] CheckError),
    #[error("job {name:?} already exists with a different definition (fields that differ: {fields}); to give it the new definition and keep its checkpoint, pause it (if it runs) and use --replace; or give the new definition a new name")]
    Conflict { name: String, fields: String },
    /// A replacement would walk another table or key than the checkpoint's.
    #[error("job {name:?} runs with {field} = {old}, the new definition has {field} = {new}; a replacement keeps the checkpoint, whose cursors are keys of that table and partitions, so {field} cannot change: submit the new definition under a new name")]
    ReplaceTarget {
        name: String,
        field: &'static str,
        old: String,
        new: String,
    },
    /// The job is in a state that cannot take a new definition.
    #[error("{}", replace_refusal(.name, *.state))]
    ReplaceState { name: String, state: JobState },
    /// The replacement would break what the job has done so far (see [`replace`]).
    #[error("{0}")]
    ReplaceUnsafe(String),
    #[error("job {0:?} already exists")]
    NameTaken(String),
    #[error("{0}")]
    Stored(String),
    #[error("database: {}", crate::plumbing::db::message(.0))]
    Database(#[from] sqlx::Error),
}

/// Why a job in `state` cannot be replaced, and what to do instead.
fn replace_refusal(name: &str, state: JobState) -> String {
    match state {
        JobState::Running | JobState::Queued => format!(
            "job {name:?} is {state}; pause it first (`backfilld pause {name}`), then replace it: it keeps its checkpoint"
        ),
        JobState::Completed => format!(
            "job {name:?} is completed, so there is nothing left to continue; delete it (`backfilld delete {name}`) and submit the new definition, or submit it under a new name"
        ),
        _ => format!("job {name:?} is {state}; it cannot be replaced"),
    }
}

/// What a replacement did.
pub enum Replaced {
    /// No job had the name: the definition was submitted as a new job.
    Created(jobs::JobRow),
    /// The job took the new definition, keeping its checkpoint.
    Replaced(jobs::JobRow),
    /// The definition is the job's already: nothing changed.
    Unchanged(jobs::JobRow),
}

/// Gives the job named like `spec` (checked by [`resolve`]) the new definition, keeping its
/// checkpoint: only a `failed`, `paused` or `cancelled` job, and only with the same table,
/// key and partitions. Without such a job, submits `spec` as a new one.
pub async fn replace(
    pool: &Db,
    schema: &Schema,
    spec: &JobSpec,
    resolved: &ResolvedJob,
    actor: &str,
) -> Result<Replaced, SubmitError> {
    let Some(found) = jobs::find_by_name(pool, schema, &spec.name).await? else {
        return match submit_new(pool, schema, spec, resolved, actor).await {
            Ok(job) => Ok(Replaced::Created(job)),
            // Submitted meanwhile by someone else: replace that one.
            Err(SubmitError::NameTaken(_)) => {
                Box::pin(replace(pool, schema, spec, resolved, actor)).await
            }
            Err(other) => Err(other),
        };
    };
    let mut tx = pool.begin().await?;
    let job = jobs::lock(&mut tx, schema, found.id)
        .await?
        .ok_or_else(|| SubmitError::Stored("job vanished while replacing".into()))?;
    let old = job.spec().map_err(SubmitError::Stored)?;
    let target = |field: &'static str, old: String, new: String| {
        (old != new).then(|| SubmitError::ReplaceTarget {
            name: spec.name.clone(),
            field,
            old,
            new,
        })
    };
    let refusal = target("table", old.table.clone(), spec.table.clone())
        .or_else(|| {
            target(
                "key",
                format!("{:?}", old.key_columns()),
                format!("{:?}", spec.key_columns()),
            )
        })
        .or_else(|| {
            target(
                "partitions",
                old.partitions.to_string(),
                spec.partitions.to_string(),
            )
        });
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    if old == *spec {
        return Ok(Replaced::Unchanged(job));
    }
    if !job.state.can_be_replaced() {
        return Err(SubmitError::ReplaceState {
            name: spec.name.clone(),
            state: job.state,
        });
    }
    // A sweep (pass 2 on) walks keys pass 1 already updated, finding the rows still to do by
    // `where`: without one it would update each of them again.
    if job.pass > 1 && spec.filter.is_none() {
        return Err(SubmitError::ReplaceUnsafe(format!(
            "job {:?} is in pass {}, a sweep that updates only the rows still matching `where`; the new definition has no `where`, so it would update again every row pass 1 updated: give it a `where`, or submit it under a new name",
            spec.name, job.pass
        )));
    }
    // The installed trigger applies the old definition's `set` to the application's writes,
    // whatever the new one says; the job installs its own trigger when it runs again.
    if let Some(trigger) = sync::installed(pool, &spec.name).await? {
        return Err(SubmitError::ReplaceUnsafe(format!(
            "job {:?} has its sync trigger installed ({trigger}), which applies the old definition to the application's writes: remove it first (`backfilld sync remove FILE`), then replace; the job installs the new definition's trigger when it runs again (and its sweep passes catch writes made meanwhile)",
            spec.name
        )));
    }
    definition::replace(&mut tx, schema, &job, &old, spec, actor).await?;
    tx.commit().await?;
    let job = jobs::find(pool, schema, job.id)
        .await?
        .ok_or_else(|| SubmitError::Stored("job vanished after replacing".into()))?;
    Ok(Replaced::Replaced(job))
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
