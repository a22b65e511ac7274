//! The HTTP API (DESIGN.md §4): the router is built by [`router`] apart from serving it, so
//! tests can call it without a socket; [`serve`] binds it and stops with the root token.

pub mod auth;
pub mod error;
pub mod jobs;
pub mod openapi;
pub mod view;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::Schema;
use crate::rates::Rates;
use crate::worker::LocalJobs;
use auth::Auth;
use error::{ApiError, ErrorBody};

/// Submissions larger than this are refused with 413: a job definition is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub schema: Schema,
    pub auth: Auth,
    pub rates: Rates,
    pub local: LocalJobs,
}

pub fn router(state: AppState) -> Router {
    let api = jobs::router().route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi::document))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Liveness: answers while the process serves; never touches the database.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers and backfilld's migrations are applied.
async fn readyz(State(state): State<AppState>) -> Response {
    match crate::migrate::is_current(&state.pool, &state.schema).await {
        Ok(true) => (StatusCode::OK, "ready\n").into_response(),
        Ok(false) => ApiError::Unavailable("migrations are not applied yet".into()).into_response(),
        Err(e) => ApiError::Unavailable(format!("database unreachable: {e}")).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /api/v1/openapi.json".into())
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody {
            error: "method not allowed on this route; see /api/v1/openapi.json".into(),
        }),
    )
        .into_response()
}

/// Serves until `stop` fires, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
