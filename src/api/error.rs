//! The API's one error type: each variant maps to a status code and a JSON body
//! `{"error": "..."}`; internal details go to the log, never to the client.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::plumbing::retry::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("token {0:?} may not do this: it needs the {1} role")]
    Forbidden(String, &'static str),
    /// A request a web page could have forged (see `api::guard`).
    #[error("refused: {0}")]
    Forged(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large (at most {0} bytes)")]
    TooLarge(usize),
    #[error("unsupported content type {0:?}: send application/json or application/toml")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error; the daemon's log has the details")]
    Internal,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(..) | ApiError::Forged(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn unknown_job(name: &str) -> ApiError {
        ApiError::NotFound(format!("no job named {name:?}"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        let code = match &error {
            sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
            _ => None,
        };
        // Before the first migration (the daemon is still waiting for the database).
        if matches!(code.as_deref(), Some("42P01" | "3F000")) {
            return ApiError::Unavailable(
                "backfilld's schema is not migrated yet; see /readyz".into(),
            );
        }
        let message = crate::plumbing::db::describe(&error, "the database server");
        match ErrorKind::of(&error) {
            // The database being away is not the client's fault, nor a bug: say so.
            ErrorKind::Reconnect => {
                tracing::warn!(error = %message, "database unavailable for an API request");
                ApiError::Unavailable(format!("database unavailable: {message}"))
            }
            // Contention (a lock or statement timeout, a deadlock): the same request can
            // succeed in a moment.
            ErrorKind::Retryable => {
                tracing::warn!(error = %message, "database busy during an API request");
                ApiError::Unavailable(format!("database busy, try again: {message}"))
            }
            ErrorKind::Fatal => {
                tracing::error!(error = %message, "database error in an API request");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(ErrorBody {
            error: self.to_string(),
        });
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}
