//! What each change to a job does on one database: re-tune, change state, delete. The job
//! routes (`jobs.rs`) apply them to the daemon's own database, or to every target of a job
//! over several databases (`fleet.rs`).

use crate::api::error::ApiError;
use crate::engine::sync;
use crate::plumbing::db::{Db, Schema};
use crate::spec::DutyCycle;
use crate::store::definition::{self, Deleted};
use crate::store::{jobs, JobState};

/// The live tunables PATCH accepts.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Rows per second over the whole job; null removes the limit.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub rows_per_second: Option<Option<u64>>,
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub batch_size: Option<u64>,
    /// A duration such as "50ms"; null removes the pause.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub pause: Option<Option<String>>,
    /// The most of its time each partition spends in batches, in (0, 1] with at most two
    /// decimals, such as 0.5; null removes it (the same as 1).
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<f64>, minimum = 0.01, maximum = 1, example = 0.5)]
    pub duty_cycle: Option<Option<DutyCycle>>,
}

/// Tells "absent" (leave as is) from `null` (remove).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

/// Re-tunes the job `id` on one database.
pub async fn tune_on(
    pool: &Db,
    schema: &Schema,
    id: i64,
    name: &str,
    tuning: &Tuning,
    actor: &str,
) -> Result<(), ApiError> {
    // Read, change and write the definition with its row locked, so two PATCHes of different
    // fields both land and none changes a job that ended meanwhile.
    let mut tx = pool.begin().await?;
    let job = jobs::lock(&mut tx, schema, id)
        .await?
        .ok_or_else(|| ApiError::unknown_job(name))?;
    if job.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "job {name:?} is {}; only a live job can be re-tuned",
            job.state
        )));
    }
    let mut spec = job.spec().map_err(|message| {
        tracing::error!("{message}");
        ApiError::Internal
    })?;
    let positive = |field: &str, value: u64| -> Result<u32, ApiError> {
        u32::try_from(value)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| ApiError::BadRequest(format!("{field} must be a positive whole number")))
    };
    if let Some(value) = tuning.batch_size {
        spec.batch_size = positive("batch_size", value)?;
    }
    if let Some(value) = tuning.rows_per_second {
        spec.rows_per_second = value.map(|v| positive("rows_per_second", v)).transpose()?;
    }
    if let Some(value) = tuning.pause.clone() {
        spec.pause = value
            .map(|text| {
                humantime::parse_duration(&text).map_err(|e| {
                    ApiError::BadRequest(format!("pause: {text:?} is not a duration: {e}"))
                })
            })
            .transpose()?;
    }
    if let Some(value) = tuning.duty_cycle {
        spec.duty_cycle = value;
    }
    spec.validate("body")
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stored = job.spec().unwrap_or_else(|_| spec.clone());
    let changed = stored.differences(&spec).join(", ");
    if !changed.is_empty() {
        jobs::replace_spec(&mut tx, schema, job.id, &spec, actor, &changed).await?;
    }
    tx.commit().await?;
    if !changed.is_empty() {
        tracing::info!(job = %name, actor = %actor, changed = %changed, "job re-tuned");
    }
    Ok(())
}

/// Moves the job `id` on one database to `to`.
pub async fn change_on(
    pool: &Db,
    schema: &Schema,
    id: i64,
    actor: &str,
    name: &str,
    reason: Option<&str>,
    to: JobState,
) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    let outcome = match to {
        JobState::Running => jobs::resume(&mut tx, schema, id, actor, reason).await?,
        _ => jobs::transition(&mut tx, schema, id, to, actor, reason).await?,
    };
    tx.commit().await?;
    match outcome {
        // `transition` logged the change with the job's numbers.
        jobs::Transition::Done { .. } => Ok(()),
        // Runbook scripts may ask twice: the job is where they want it, so this is success.
        jobs::Transition::Already { current } => {
            tracing::info!(job = %name, actor = %actor, state = %current, "already {current}; nothing to do");
            Ok(())
        }
        jobs::Transition::NotAllowed { current } => Err(ApiError::Conflict(format!(
            "job {name:?} is {current}; it cannot become {to}"
        ))),
        jobs::Transition::Unknown => Err(ApiError::unknown_job(name)),
    }
}

/// Deletes the job on one database.
pub async fn delete_on(
    pool: &Db,
    schema: &Schema,
    job: &jobs::JobRow,
    name: &str,
    actor: &str,
) -> Result<(), ApiError> {
    if !job.state.can_be_deleted() {
        return Err(not_deletable(name, job.state));
    }
    // The trigger is found by the job's name: a new job of the same name would take it over,
    // and without the job nothing would show it is still there.
    if let Some(trigger) = sync::installed(pool, name).await? {
        return Err(ApiError::Conflict(format!(
            "job {name:?} still has its sync trigger {trigger}; drop it with `backfilld sync remove JOB.toml` once the application no longer needs it, then delete the job"
        )));
    }
    let mut tx = pool.begin().await?;
    let outcome = definition::delete(&mut tx, schema, job.id, actor).await?;
    tx.commit().await?;
    match outcome {
        Deleted::Done => Ok(()),
        Deleted::NotAllowed { current } => Err(not_deletable(name, current)),
        Deleted::Unknown => Err(ApiError::unknown_job(name)),
    }
}

pub fn not_deletable(name: &str, state: JobState) -> ApiError {
    ApiError::Conflict(format!(
        "job {name:?} is {state}; only a completed, cancelled or failed job can be deleted (cancel it first: `backfilld cancel {name}`)"
    ))
}
