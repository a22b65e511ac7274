//! `GET /api/v1/whoami`: the name and role of the token a request came with, so a client (the
//! console) offers only what that role may do instead of guessing from refusals.

use axum::{Extension, Json};

use crate::api::auth::{role_name, Actor, Granted};
use crate::api::error::{ApiError, ErrorBody};
use crate::api::AppState;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's name (recorded as the actor of what it asks), or `anonymous` when the
    /// daemon has no tokens.
    pub name: String,
    /// `read`, `operate` or `admin`; `admin` when the daemon has no tokens (loopback only).
    pub role: String,
    /// Whether the daemon asks for tokens at all.
    pub tokens: bool,
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, description = "The caller's token name and role", body = WhoAmI),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn whoami(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(Actor(name)): Extension<Actor>,
    Extension(Granted(role)): Extension<Granted>,
) -> Result<Json<WhoAmI>, ApiError> {
    Ok(Json(WhoAmI {
        name,
        role: role_name(role).to_string(),
        tokens: !state.auth.is_open(),
    }))
}
