//! The HTTP API: the router is built by [`router`] apart from serving it, so tests can call it
//! without a socket; [`server::serve`] serves it on a listener, with timeouts and limits. The `/api/v1/jobs` routes
//! each need a token of the role they declare ([`auth`]); the probes, the metrics and the
//! OpenAPI document are open.

pub mod auth;
mod changes;
pub mod console;
pub mod error;
mod fleet;
pub mod guard;
pub mod jobs;
pub mod openapi;
pub mod server;
pub mod whoami;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};

use utoipa_axum::routes;

use crate::engine::fleet::Fleet;
use crate::engine::rates::Rates;
use crate::engine::runtime::LocalJobs;
use crate::plumbing::config::Role;
use crate::plumbing::db::{Db, Schema};
use crate::status::metrics::METRICS;
use auth::Auth;
use error::{ApiError, ErrorBody};

/// How long `/readyz` waits for the database before answering 503: a probe has its own timeout
/// (the Kubernetes manifests give it 2 s), and the pool would wait up to its acquire timeout
/// for a database that does not answer.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

/// Submissions larger than this are refused with 413: a job definition is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = crate::spec::MAX_DOCUMENT_BYTES;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: Db,
    pub schema: Schema,
    pub auth: Auth,
    pub rates: Rates,
    pub local: LocalJobs,
    /// Every target database, the daemon's own (`pool`, `local`, `rates`) first: a job that
    /// names several is shown, paused and re-tuned over all of them (`fleet.rs`).
    pub fleet: Fleet,
    /// The address the API is bound to (a tokenless daemon answers only to it and loopback
    /// names); `None` when it is not bound (tests calling the router directly).
    pub listen: Option<SocketAddr>,
    /// True while `serve` is still submitting its jobs directory: not ready until then, so a
    /// client that waits for readiness finds those jobs.
    pub loading: Arc<AtomicBool>,
}

pub fn router(state: AppState) -> Router {
    let (api, declared) = jobs::router(&state.auth)
        .routes(Role::Read, routes!(whoami::whoami))
        .split_for_parts();
    let guard = guard::Guard {
        tokenless: state.auth.is_open(),
        listen: state.listen,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            openapi::serve(openapi::document(declared)),
        )
        .merge(api)
        .merge(console::router())
        // On every route, before its token check; a request for no route does nothing anyway.
        .route_layer(middleware::from_fn_with_state(
            guard,
            guard::refuse_forgeries,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(guard::nosniff))
        .with_state(state)
}

/// Liveness: answers while the process serves; never touches the database.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers and backfilld's migrations are applied.
async fn readyz(State(state): State<AppState>) -> Response {
    let current = crate::store::migrate::is_current(&state.pool, &state.schema);
    match tokio::time::timeout(READINESS_TIMEOUT, current).await {
        Ok(Ok(true)) if state.loading.load(Ordering::Acquire) => {
            ApiError::Unavailable("loading the jobs directory".into()).into_response()
        }
        Ok(Ok(true)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Ok(false)) => {
            ApiError::Unavailable("migrations are not applied yet".into()).into_response()
        }
        Ok(Err(e)) => {
            // A certificate that does not verify reads as such, naming the server.
            let host = state.pool.connect_options().get_host().to_string();
            let reason = crate::plumbing::db::describe(&e, &host);
            ApiError::Unavailable(format!("database unreachable: {reason}")).into_response()
        }
        Err(_) => ApiError::Unavailable(format!(
            "database unreachable: no answer within {} (the log has the connection errors)",
            humantime::format_duration(READINESS_TIMEOUT)
        ))
        .into_response(),
    }
}

/// Prometheus exposition. The job gauges are refreshed from the database first; if it does
/// not answer, the last known values are served (the counters are this process's own anyway).
async fn metrics(State(state): State<AppState>) -> Response {
    let refresh = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        jobs::views_by_database(&state),
    );
    match refresh.await {
        Ok(Ok(views)) => (views.iter()).for_each(|(database, v)| METRICS.observe_job(database, v)),
        Ok(Err(_)) | Err(_) => tracing::debug!("metrics served without a fresh job refresh"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        METRICS.render(),
    )
        .into_response()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plumbing::db::PoolMode;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn one_target(pool: &Db) -> Fleet {
        Fleet::new(vec![crate::engine::fleet::Target {
            name: crate::plumbing::config::DEFAULT_DATABASE.into(),
            pool: pool.clone(),
            api_pool: pool.clone(),
            local: LocalJobs::default(),
            rates: Rates::default(),
        }])
    }

    /// A router whose database is never reached by these requests.
    fn offline_router() -> Router {
        offline_router_with(Auth::from_config(&[]).unwrap())
    }

    /// A router with these tokens and no database: a request that needs one gets a 503 after
    /// a short wait (the pool retries a refused connection until its acquire timeout).
    pub(super) fn offline_router_with(auth: Auth) -> Router {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(50))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let pool = Db::from_pool(pool, PoolMode::Session);
        router(AppState {
            fleet: one_target(&pool),
            pool,
            schema: Schema::new("backfilld"),
            auth,
            rates: Rates::default(),
            local: LocalJobs::default(),
            listen: None,
            loading: Arc::default(),
        })
    }

    async fn call(request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = offline_router().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn oversized_bodies_get_413_with_a_json_error() {
        let request = Request::post("/api/v1/jobs")
            .header("content-type", "application/json")
            .body(Body::from(vec![b' '; MAX_BODY_BYTES + 1]))
            .unwrap();
        let (status, body) = call(request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            body["error"].as_str().unwrap().contains("too large"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_answer_in_json() {
        let (status, body) = call(Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].is_string());
        let (status, body) =
            call(Request::delete("/api/v1/jobs").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body["error"].is_string());
    }

    #[tokio::test]
    async fn readyz_answers_within_its_bound_when_the_database_hangs() {
        // A listener that never answers: connecting hangs until the pool's acquire timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("postgres://nobody@{}/none", silent.local_addr().unwrap());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&url)
            .unwrap();
        let pool = Db::from_pool(pool, PoolMode::Session);
        let router = router(AppState {
            fleet: one_target(&pool),
            pool,
            schema: Schema::new("backfilld"),
            auth: Auth::from_config(&[]).unwrap(),
            rates: Rates::default(),
            local: LocalJobs::default(),
            listen: None,
            loading: Arc::default(),
        });
        let asked = std::time::Instant::now();
        let response = router
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(asked.elapsed() < READINESS_TIMEOUT + Duration::from_millis(500));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&bytes);
        assert!(body.contains("no answer within 1s"), "{body}");
    }

    #[tokio::test]
    async fn healthz_never_touches_the_database() {
        let response = offline_router()
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
