//! `/api/v1/jobs`: list, submit (or replace), inspect, re-tune, pause, resume, cancel, delete,
//! and the event log.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use utoipa_axum::routes;

use crate::api::auth::{Actor, Auth, GuardedRouter};
pub use crate::api::changes::Tuning;
use crate::api::changes::{change_on, delete_on, tune_on};
use crate::api::error::{ApiError, ErrorBody};
use crate::api::fleet::{self, Found};
use crate::api::guard::{self, Format};
use crate::api::{AppState, MAX_BODY_BYTES};
use crate::engine::fleet::spans_databases;
use crate::engine::fleet::submit::{self as fleet_submit, FleetSubmitError};
use crate::engine::submit::{self, Replaced, SubmitError};
use crate::plumbing::config::{Role, DEFAULT_DATABASE};
use crate::spec::{is_valid_name, JobSpec, SpecError};
use crate::status::view::{EventList, JobList, JobView};
use crate::store::{events, jobs, JobState};

/// The job routes, each registered with the role it needs: that one call serves the handler
/// (at the path and method of its `#[utoipa::path]`), checks the role, and puts both in the
/// OpenAPI document.
pub fn router(auth: &Auth) -> GuardedRouter<AppState> {
    GuardedRouter::new(auth)
        .routes(Role::Read, routes!(list_jobs))
        .routes(Role::Admin, routes!(submit_job))
        .routes(Role::Read, routes!(get_job))
        .routes(Role::Operate, routes!(patch_job))
        .routes(Role::Operate, routes!(pause_job))
        .routes(Role::Operate, routes!(resume_job))
        .routes(Role::Operate, routes!(cancel_job))
        .routes(Role::Read, routes!(job_events))
        .routes(Role::Admin, routes!(delete_job))
}

/// The job's row, or 404; names that cannot be job names are simply unknown.
async fn find_job(state: &AppState, name: &str) -> Result<jobs::JobRow, ApiError> {
    if !is_valid_name(name) {
        return Err(ApiError::unknown_job(name));
    }
    jobs::find_by_name(&state.pool, &state.schema, name)
        .await?
        .ok_or_else(|| ApiError::unknown_job(name))
}

fn path_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(name)| name)
        .map_err(|e| ApiError::BadRequest(format!("bad job name in the path: {e}")))
}

fn body(bytes: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    bytes.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
}

async fn view(state: &AppState, job: &jobs::JobRow) -> Result<JobView, ApiError> {
    let local = (&state.local, &state.rates);
    Ok(fleet::view_on(&state.pool, &state.schema, local, job).await?)
}

/// The job named `name`: on the daemon's own database alone as it always was, or, with
/// several target databases configured, wherever it is stored.
async fn find_anywhere(state: &AppState, name: &str) -> Result<Found, ApiError> {
    if !state.fleet.is_several() {
        return Ok(Found::Single(Box::new(find_job(state, name).await?)));
    }
    if !is_valid_name(name) {
        return Err(ApiError::unknown_job(name));
    }
    fleet::find(state, name)
        .await?
        .ok_or_else(|| ApiError::unknown_job(name))
}

/// The view of what [`find_anywhere`] found.
async fn view_found(state: &AppState, found: &Found) -> Result<JobView, ApiError> {
    match found {
        Found::Single(job) => view(state, job).await,
        Found::Spanning(members) => fleet::view(state, members).await,
    }
}

/// Finds the job again and returns its view (after a change).
async fn view_by_name(state: &AppState, name: &str) -> Result<JobView, ApiError> {
    view_found(state, &find_anywhere(state, name).await?).await
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    responses((status = 200, description = "All jobs", body = JobList),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_jobs(State(state): State<AppState>) -> Result<Json<JobList>, ApiError> {
    Ok(Json(JobList {
        jobs: all_views(&state).await?,
    }))
}

/// Every job's view on each database it runs on, by database name: for the metrics' gauges.
pub async fn views_by_database(state: &AppState) -> Result<Vec<(String, JobView)>, ApiError> {
    if state.fleet.is_several() {
        return fleet::views_by_database(state).await;
    }
    let views = all_views(state).await?;
    Ok((views.into_iter())
        .map(|v| (DEFAULT_DATABASE.to_string(), v))
        .collect())
}

/// Every job's view: for the list.
pub async fn all_views(state: &AppState) -> Result<Vec<JobView>, ApiError> {
    if state.fleet.is_several() {
        return fleet::all_views(state).await;
    }
    let rows = jobs::list(&state.pool, &state.schema).await?;
    let mut views = Vec::with_capacity(rows.len());
    for job in &rows {
        views.push(view(state, job).await?);
    }
    Ok(views)
}

/// How a submission treats a job of the same name.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubmitOptions {
    /// Give an existing `failed`, `paused` or `cancelled` job of that name this definition
    /// (same `table`, `key` and `partitions`), keeping its checkpoint; the event log keeps
    /// both definitions. Without a job of that name, submit as usual.
    #[serde(default)]
    pub replace: bool,
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    params(SubmitOptions),
    request_body(content = JobSpec, description = "A job definition as JSON, or as TOML with Content-Type: application/toml",
                 content_type = "application/json"),
    responses((status = 201, description = "Submitted", body = JobView),
              (status = 200, description = "With replace=true: the existing job took the definition (or already had it)", body = JobView),
              (status = 400, description = "Invalid definition, with the reason", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, description = "A job of that name exists; with replace=true, it cannot take this definition (its state, or another table, key or partitions), and the message says what to do", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn submit_job(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    options: Result<Query<SubmitOptions>, QueryRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let Query(options) =
        options.map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let bytes = body(bytes)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    // The guard has refused any other content type already; an absent one is not JSON.
    let parsed = match guard::format(&headers) {
        Some(Format::Toml) => JobSpec::from_toml(text, "body"),
        Some(Format::Json) => JobSpec::from_json(text, "body"),
        None => {
            let given = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none");
            return Err(ApiError::UnsupportedMediaType(given.to_string()));
        }
    };
    let spec = parsed.map_err(|e| match e {
        SpecError::Read { .. } => ApiError::Internal,
        other => ApiError::BadRequest(other.to_string()),
    })?;
    if spans_databases(&spec) {
        let submitted =
            fleet_submit::submit(&state.fleet, &state.schema, &spec, options.replace, &actor)
                .await
                .map_err(fleet_submit_error)?;
        let status = if submitted.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        if submitted.created {
            tracing::info!(job = %spec.name, actor = %actor, databases = submitted.jobs.len(), "job submitted over the API");
        }
        return Ok((status, Json(view_by_name(&state, &spec.name).await?)));
    }
    if state.fleet.is_several() && !options.replace {
        if let Some(Found::Spanning(_)) = fleet::find(&state, &spec.name).await? {
            return Err(submit_error(SubmitError::NameTaken(spec.name.clone())));
        }
    }
    let resolved = submit::resolve(&state.pool, &spec)
        .await
        .map_err(submit_error)?;
    let (status, job) = if options.replace {
        match submit::replace(&state.pool, &state.schema, &spec, &resolved, &actor)
            .await
            .map_err(submit_error)?
        {
            Replaced::Created(job) => (StatusCode::CREATED, job),
            Replaced::Replaced(job) | Replaced::Unchanged(job) => (StatusCode::OK, job),
        }
    } else {
        let job = submit::submit_new(&state.pool, &state.schema, &spec, &resolved, &actor)
            .await
            .map_err(submit_error)?;
        (StatusCode::CREATED, job)
    };
    if status == StatusCode::CREATED {
        tracing::info!(job = %spec.name, actor = %actor, "job submitted over the API");
    }
    Ok((status, Json(view(&state, &job).await?)))
}

fn fleet_submit_error(error: FleetSubmitError) -> ApiError {
    let message = error.to_string();
    match error {
        FleetSubmitError::Databases(_) => ApiError::BadRequest(message),
        FleetSubmitError::On { error, .. } => match submit_error(error) {
            ApiError::BadRequest(_) => ApiError::BadRequest(message),
            ApiError::Conflict(_) => ApiError::Conflict(message),
            ApiError::Unavailable(_) => ApiError::Unavailable(message),
            other => other,
        },
    }
}

fn submit_error(error: SubmitError) -> ApiError {
    match error {
        SubmitError::Invalid(check) => match check {
            crate::engine::catalog::CheckError::Database(e) => ApiError::from(e),
            other => ApiError::BadRequest(other.to_string()),
        },
        SubmitError::NameTaken(name) => ApiError::Conflict(format!(
            "job {name:?} already exists; submit under a new name"
        )),
        SubmitError::Conflict { .. }
        | SubmitError::ReplaceTarget { .. }
        | SubmitError::ReplaceState { .. }
        | SubmitError::ReplaceUnsafe(_) => ApiError::Conflict(error.to_string()),
        SubmitError::Stored(message) => {
            tracing::error!("{message}");
            ApiError::Internal
        }
        SubmitError::Database(e) => ApiError::from(e),
    }
}

#[utoipa::path(get, path = "/api/v1/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let found = find_anywhere(&state, &path_name(path)?).await?;
    Ok(Json(view_found(&state, &found).await?))
}

#[utoipa::path(patch, path = "/api/v1/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    request_body(content = Tuning, content_type = "application/json"),
    responses((status = 200, description = "Re-tuned; applies within one batch", body = JobView),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "The job has ended", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn patch_job(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<JobView>, ApiError> {
    let name = path_name(path)?;
    let bytes = body(bytes)?;
    let tuning: Tuning = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let found = find_anywhere(&state, &name).await?;
    let (schema, name_ref, tuning, actor_ref) =
        (&state.schema, name.as_str(), &tuning, actor.as_str());
    match &found {
        Found::Single(job) => {
            tune_on(&state.pool, schema, job.id, name_ref, tuning, actor_ref).await?
        }
        Found::Spanning(members) => {
            fleet::on_every_target(members, |target, job| async move {
                tune_on(
                    &target.api_pool,
                    schema,
                    job.id,
                    name_ref,
                    tuning,
                    actor_ref,
                )
                .await
            })
            .await?
        }
    }
    Ok(Json(view_by_name(&state, &name).await?))
}

/// What a pause, resume or cancel may say: why, for the event log.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Why, recorded in the event log with who asked.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// The body of a state change: empty, or an [`Action`].
fn action(bytes: Bytes) -> Result<Action, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Action::default());
    }
    let action: Action = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if let Some(reason) = &action.reason {
        if reason.chars().count() > 500 || reason.contains('\0') {
            return Err(ApiError::BadRequest(
                "reason: at most 500 characters, and no NUL".into(),
            ));
        }
    }
    Ok(action)
}

async fn change_state(
    state: &AppState,
    actor: &str,
    name: &str,
    action: Action,
    to: JobState,
) -> Result<Json<JobView>, ApiError> {
    let found = find_anywhere(state, name).await?;
    let (schema, reason) = (&state.schema, action.reason.as_deref());
    match &found {
        Found::Single(job) => {
            change_on(&state.pool, schema, job.id, actor, name, reason, to).await?
        }
        Found::Spanning(members) => {
            fleet::on_every_target(members, |target, job| async move {
                change_on(&target.api_pool, schema, job.id, actor, name, reason, to).await
            })
            .await?
        }
    }
    Ok(Json(view_by_name(state, name).await?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{name}/pause", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    request_body(content = Action, content_type = "application/json",
                 description = "Optional (an empty body or `{}` will do); the content type is required"),
    responses((status = 200, description = "Paused: every partition stops within one batch", body = JobView),
              (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn pause_job(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<JobView>, ApiError> {
    let action = action(body(bytes)?)?;
    change_state(&state, &actor, &path_name(path)?, action, JobState::Paused).await
}

#[utoipa::path(post, path = "/api/v1/jobs/{name}/resume", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    request_body(content = Action, content_type = "application/json",
                 description = "Optional (an empty body or `{}` will do); the content type is required"),
    responses((status = 200, description = "Running again from the checkpoints", body = JobView),
              (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn resume_job(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<JobView>, ApiError> {
    let action = action(body(bytes)?)?;
    change_state(&state, &actor, &path_name(path)?, action, JobState::Running).await
}

#[utoipa::path(post, path = "/api/v1/jobs/{name}/cancel", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    request_body(content = Action, content_type = "application/json",
                 description = "Optional (an empty body or `{}` will do); the content type is required"),
    responses((status = 200, description = "Cancelled", body = JobView),
              (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<JobView>, ApiError> {
    let action = action(body(bytes)?)?;
    change_state(
        &state,
        &actor,
        &path_name(path)?,
        action,
        JobState::Cancelled,
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/jobs/{name}/events", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    responses((status = 200, body = EventList), (status = 404, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn job_events(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EventList>, ApiError> {
    let events = match find_anywhere(&state, &path_name(path)?).await? {
        Found::Single(job) => events::list(&state.pool, &state.schema, job.id).await?,
        // Every database's log, each event marked with its database, merged by time (a
        // database that cannot be read is left out; the job view names it).
        Found::Spanning(members) => {
            let mut all = Vec::new();
            for member in &members {
                if let Ok(job) = &member.job {
                    let pool = &member.target.api_pool;
                    let list = events::list(pool, &state.schema, job.id).await;
                    all.extend(list.unwrap_or_default().into_iter().map(|mut event| {
                        event.database = Some(member.target.name.clone());
                        event
                    }));
                }
            }
            // Stable: one database's events keep their logged order at equal times.
            all.sort_by_key(|event| event.at);
            all
        }
    };
    Ok(Json(EventList { events }))
}

#[utoipa::path(delete, path = "/api/v1/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    responses((status = 204, description = "Deleted with its partitions and events; the name is free"),
              (status = 404, body = ErrorBody),
              (status = 409, description = "The job has not ended (only completed, cancelled or failed jobs can be deleted), or its sync trigger is still installed", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete_job(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = path_name(path)?;
    let (schema, name_ref, actor_ref) = (&state.schema, name.as_str(), actor.as_str());
    match find_anywhere(&state, &name).await? {
        Found::Single(job) => delete_on(&state.pool, schema, &job, name_ref, actor_ref).await?,
        Found::Spanning(members) => {
            fleet::on_every_target(&members, |target, job| async move {
                delete_on(&target.api_pool, schema, &job, name_ref, actor_ref).await
            })
            .await?
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
