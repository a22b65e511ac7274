//! Jobs over several target databases in the API: one job to its users. Found on every target
//! it names, shown with each database's part and the totals, and paused, resumed, cancelled,
//! re-tuned or deleted on every target. A target that cannot be read is shown with its error
//! (the engine retries it with backoff) and the others go on.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::engine::fleet::{spans_databases, Target};
use crate::plumbing::db::{self, Schema};
use crate::status::view::JobView;
use crate::store::{jobs, progress};

/// How long one target may take to answer a read before it is shown as unreachable: the
/// pool would wait its whole acquire timeout for a server that is down.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a job lives.
pub enum Found {
    /// A job without `databases`, on the daemon's own database: as it always was.
    Single(Box<jobs::JobRow>),
    /// A job over several databases: each target it names, with its row there or why not.
    Spanning(Vec<Member>),
}

pub struct Member {
    pub target: Target,
    pub job: Result<jobs::JobRow, String>,
}

/// Runs `read` on `target`'s API pool within `READ_TIMEOUT`, the error in words.
async fn read<T, F>(target: &Target, read: F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!(
            "unreachable: {}",
            db::describe(&e, target.api_pool.connect_options().get_host())
        )),
        Err(_) => Err(format!(
            "unreachable: no answer within {}",
            humantime::format_duration(READ_TIMEOUT)
        )),
    }
}

/// The job named `name` on every target (`None`: no target has it).
pub async fn find(state: &AppState, name: &str) -> Result<Option<Found>, ApiError> {
    let targets = state.fleet.targets();
    let rows = join_all(
        targets
            .iter()
            .map(|t| read(t, jobs::find_by_name(&t.api_pool, &state.schema, name))),
    )
    .await;
    let Some((first_target, first)) = (targets.iter().zip(&rows))
        .find_map(|(t, row)| row.as_ref().ok().and_then(Option::as_ref).map(|r| (t, r)))
    else {
        return Ok(None);
    };
    let spec = first.spec().map_err(|message| {
        tracing::error!("{message}");
        ApiError::Internal
    })?;
    if !spans_databases(&spec) && first_target.name == targets[0].name {
        return Ok(Some(Found::Single(Box::new(first.clone()))));
    }
    let members = state
        .fleet
        .select(&spec)
        .map_err(ApiError::Conflict)?
        .into_iter()
        .map(|target| {
            let i = targets
                .iter()
                .position(|t| t.name == target.name)
                .unwrap_or(0);
            let job = match &rows[i] {
                Ok(Some(row)) => Ok(row.clone()),
                Ok(None) => Err("the job is not stored on this database".to_string()),
                Err(e) => Err(e.clone()),
            };
            Member {
                target: target.clone(),
                job,
            }
        })
        .collect();
    Ok(Some(Found::Spanning(members)))
}

/// The job's view on one target, from its rows there and what this process runs there.
pub async fn view_on(
    target_pool: &db::Db,
    schema: &Schema,
    target: (
        &crate::engine::runtime::LocalJobs,
        &crate::engine::rates::Rates,
    ),
    job: &jobs::JobRow,
) -> Result<JobView, sqlx::Error> {
    let partitions = progress::list(target_pool, schema, job.id).await?;
    let (local, rates) = target;
    let local = (local.lock().expect("registry lock poisoned"))
        .get(&job.id)
        .map(|runtime| runtime.snapshot());
    let rate = rates.rows_per_second(job.id);
    Ok(JobView::build(job, &partitions, rate, local.as_ref()))
}

/// The job over all its databases, each one's part in `databases`.
pub async fn view(state: &AppState, members: &[Member]) -> Result<JobView, ApiError> {
    JobView::combine(parts(state, members).await)
        .ok_or_else(|| ApiError::Unavailable("none of the job's databases can be read now".into()))
}

/// The job's own view on each of its databases, or why that database cannot be read.
async fn parts(state: &AppState, members: &[Member]) -> Vec<(String, Result<JobView, String>)> {
    join_all(members.iter().map(|m| async {
        let view = match &m.job {
            Ok(job) => {
                let t = &m.target;
                read(
                    t,
                    view_on(&t.api_pool, &state.schema, (&t.local, &t.rates), job),
                )
                .await
            }
            Err(e) => Err(e.clone()),
        };
        (m.target.name.clone(), view)
    }))
    .await
}

/// Every job: single-database ones as they are, each job over several databases once.
pub async fn all_views(state: &AppState) -> Result<Vec<JobView>, ApiError> {
    let mut views = Vec::new();
    for found in every_job(state).await? {
        views.push(match found {
            Found::Single(job) => single_view(state, &job).await?,
            Found::Spanning(members) => view(state, &members).await?,
        });
    }
    Ok(views)
}

/// Every job's part on each database, by database name, for the metrics' `database` label:
/// a single-database job once, a job over several databases once per database that answers
/// (one that does not keeps its last known gauges).
pub async fn views_by_database(state: &AppState) -> Result<Vec<(String, JobView)>, ApiError> {
    let mut views = Vec::new();
    for found in every_job(state).await? {
        match found {
            Found::Single(job) => {
                let home = state.fleet.targets()[0].name.clone();
                views.push((home, single_view(state, &job).await?));
            }
            Found::Spanning(members) => views.extend(
                (parts(state, &members).await.into_iter())
                    .filter_map(|(name, view)| view.ok().map(|v| (name, v))),
            ),
        }
    }
    Ok(views)
}

/// A job without `databases`, on the daemon's own database.
async fn single_view(state: &AppState, job: &jobs::JobRow) -> Result<JobView, ApiError> {
    let home = &state.fleet.targets()[0];
    let local = (&home.local, &home.rates);
    Ok(view_on(&home.api_pool, &state.schema, local, job).await?)
}

/// Every job any target stores, by name, each found on all of its targets.
async fn every_job(state: &AppState) -> Result<Vec<Found>, ApiError> {
    let targets = state.fleet.targets();
    let lists = join_all(
        targets
            .iter()
            .map(|t| read(t, jobs::list(&t.api_pool, &state.schema))),
    )
    .await;
    // By name, in the order the targets list them (sorted: BTreeMap).
    let mut names = BTreeMap::new();
    for rows in lists.iter().flatten() {
        for row in rows {
            names.entry(row.name.clone()).or_insert(());
        }
    }
    let mut found = Vec::with_capacity(names.len());
    for name in names.keys() {
        found.extend(find(state, name).await?);
    }
    Ok(found)
}

/// Applies `change` to the job on every target it names that can be reached; a target that
/// cannot be reached is reported (503, naming it) after the others have changed, so asking
/// again finishes the job. Conflicts (a target where the job cannot make the change) are
/// reported only when no target could make it.
pub async fn on_every_target<F, Fut>(members: &[Member], change: F) -> Result<(), ApiError>
where
    F: Fn(Target, jobs::JobRow) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let mut changed = 0;
    let mut conflict = None;
    let mut away = Vec::new();
    for member in members {
        let Ok(job) = &member.job else {
            away.push(member.target.name.clone());
            continue;
        };
        match change(member.target.clone(), job.clone()).await {
            Ok(()) => changed += 1,
            Err(ApiError::Conflict(message)) => {
                conflict.get_or_insert(format!("database {}: {message}", member.target.name));
            }
            Err(ApiError::Unavailable(_)) => away.push(member.target.name.clone()),
            Err(other) => return Err(other),
        }
    }
    if !away.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "done on {changed} database(s), but {} cannot be reached now; ask again once it answers",
            away.join(", ")
        )));
    }
    match conflict {
        Some(message) if changed == 0 => Err(ApiError::Conflict(message)),
        _ => Ok(()),
    }
}
