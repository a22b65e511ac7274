//! Bearer-token authentication: each configured token has a name (recorded as the actor in the
//! event log) and a role. Tokens are compared in constant time and never logged.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::plumbing::config::{Role, TokenConfig};

/// Who made a request, as the event log records it.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// The actor recorded when no tokens are configured (loopback-only operation).
pub const ANONYMOUS: &str = "anonymous";

#[derive(Clone)]
pub struct Auth {
    tokens: Vec<(String, Role, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("config: tokens: {0}")]
pub struct AuthConfigError(String);

impl Auth {
    /// Resolves `token_env` references now, so a missing variable fails start-up.
    pub fn from_config(tokens: &[TokenConfig]) -> Result<Auth, AuthConfigError> {
        let mut resolved = Vec::new();
        for token in tokens {
            let secret = match (&token.token, &token.token_env) {
                (Some(secret), _) => secret.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    AuthConfigError(format!(
                        "token {:?} reads ${var}, which is not set",
                        token.name
                    ))
                })?,
                (None, None) => {
                    return Err(AuthConfigError(format!(
                        "token {:?} has neither token nor token_env",
                        token.name
                    )))
                }
            };
            if secret.len() < 8 {
                return Err(AuthConfigError(format!(
                    "token {:?} is shorter than 8 characters",
                    token.name
                )));
            }
            resolved.push((token.name.clone(), token.role, secret.into_bytes()));
        }
        Ok(Auth { tokens: resolved })
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token's name and role. Every configured token is compared, with no early exit, so
    /// timing does not tell which token a guess was close to.
    fn identify(&self, presented: &[u8]) -> Option<(String, Role)> {
        let mut found = None;
        for (name, role, secret) in &self.tokens {
            if constant_time_eq(presented, secret) {
                found = Some((name.clone(), *role));
            }
        }
        found
    }
}

/// `subtle`'s comparison, which the optimiser cannot turn into an early exit, so timing does not
/// tell how much of a guess was right. It does return at once when the lengths differ: that
/// tells a token's length, not its content.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The role a request needs (DESIGN.md §4).
fn required_role(method: &Method, path: &str) -> Role {
    if method == Method::GET || method == Method::HEAD {
        Role::Read
    } else if method == Method::POST && path.trim_end_matches('/') == "/api/v1/jobs" {
        Role::Admin
    } else {
        Role::Operate
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Operate => "operate",
        Role::Admin => "admin",
    }
}

/// Checks the bearer token of every `/api/v1` request and attaches the [`Actor`].
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let auth = &state.auth;
    let actor = if auth.is_open() {
        ANONYMOUS.to_string()
    } else {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let (name, role) = auth
            .identify(presented.as_bytes())
            .ok_or(ApiError::Unauthorized)?;
        let needed = required_role(request.method(), request.uri().path());
        if role < needed {
            return Err(ApiError::Forbidden(name, role_name(needed)));
        }
        name
    };
    request.extensions_mut().insert(Actor(actor));
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, role: Role, secret: &str) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            role,
            token: Some(secret.into()),
            token_env: None,
        }
    }

    #[test]
    fn constant_time_comparison_is_exact() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokex"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn every_token_is_compared_and_only_an_exact_one_matches() {
        let auth = Auth::from_config(&[
            token("viewer", Role::Read, "secret-token"),
            token("oncall", Role::Operate, "other-secret"),
        ])
        .unwrap();
        let who = |presented: &[u8]| auth.identify(presented);
        assert_eq!(who(b"secret-token"), Some(("viewer".into(), Role::Read)));
        assert_eq!(who(b"other-secret"), Some(("oncall".into(), Role::Operate)));
        assert_eq!(who(b"secret-tokex"), None);
        assert_eq!(who(b"secret"), None);
        assert_eq!(who(b"secret-token-and-more"), None);
        assert_eq!(who(b""), None);
    }

    #[test]
    fn roles_follow_the_design() {
        assert_eq!(required_role(&Method::GET, "/api/v1/jobs"), Role::Read);
        assert_eq!(required_role(&Method::POST, "/api/v1/jobs"), Role::Admin);
        assert_eq!(
            required_role(&Method::POST, "/api/v1/jobs/x/pause"),
            Role::Operate
        );
        assert_eq!(
            required_role(&Method::PATCH, "/api/v1/jobs/x"),
            Role::Operate
        );
    }
}
