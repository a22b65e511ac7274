//! Bearer-token authentication: each configured token has a name (recorded as the actor in the
//! event log) and a role. Each API route states the role it needs where it is registered, with
//! [`GuardedRouter::routes`]: that one call puts the token check for that role on the route and
//! writes the role into the route's OpenAPI operations, so a route cannot be served unchecked or
//! documented with another role than the one enforced. Tokens are compared in constant time and
//! never logged.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use subtle::ConstantTimeEq;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::SecurityRequirement;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::api::error::ApiError;
use crate::plumbing::config::{Role, TokenConfig};

/// The OpenAPI security scheme that the routes' requirements name.
pub const BEARER_SCHEME: &str = "bearer";

/// Who made a request, as the event log records it.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// The role of the token a request came with (every role, `admin`, when no tokens are
/// configured), for handlers that tell the caller what it may do.
#[derive(Debug, Clone, Copy)]
pub struct Granted(pub Role);

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

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Operate => "operate",
        Role::Admin => "admin",
    }
}

/// A router to which a route can only be added together with the role it needs.
pub struct GuardedRouter<S> {
    auth: Auth,
    router: OpenApiRouter<S>,
}

impl<S> GuardedRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    pub fn new(auth: &Auth) -> GuardedRouter<S> {
        GuardedRouter {
            auth: auth.clone(),
            router: OpenApiRouter::default(),
        }
    }

    /// Adds the handlers of `routes` (from `utoipa_axum::routes!`, which takes their paths and
    /// methods from their `#[utoipa::path]`), answering only tokens of `role` or a higher one.
    /// The check is a route layer on these handlers alone, not on the path: axum merges the
    /// handlers registered on one path method by method, each keeping its own layer, so GET
    /// and POST on one path can need different roles.
    pub fn routes(self, role: Role, routes: UtoipaMethodRouter<S>) -> GuardedRouter<S> {
        let (schemas, mut paths, handlers) = routes;
        for item in paths.paths.values_mut() {
            operations(item).for_each(|operation| declare(operation, role));
        }
        let guard = Guard {
            auth: self.auth.clone(),
            role,
        };
        let handlers = handlers.route_layer(middleware::from_fn_with_state(guard, require_token));
        GuardedRouter {
            router: self.router.routes((schemas, paths, handlers)),
            auth: self.auth,
        }
    }

    /// The router to serve, and the OpenAPI paths and schemas that its routes declared.
    pub fn split_for_parts(self) -> (Router<S>, utoipa::openapi::OpenApi) {
        self.router.split_for_parts()
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// Shows the role in the operation twice: as the scopes of its bearer requirement (OpenAPI
/// 3.1 lets a non-OAuth scheme list the roles it needs there) for tools, and as a sentence of
/// its description for people.
fn declare(operation: &mut Operation, role: Role) {
    let name = role_name(role);
    operation.security = Some(vec![SecurityRequirement::new(BEARER_SCHEME, [name])]);
    let sentence = format!(
        "Needs a bearer token with the `{name}` role or a higher one \
         (read < operate < admin), unless the daemon has no tokens configured."
    );
    operation.description = Some(match operation.description.take() {
        Some(text) => format!("{text}\n\n{sentence}"),
        None => sentence,
    });
}

/// What the check on one route needs: the configured tokens and the role the route declared.
#[derive(Clone)]
struct Guard {
    auth: Auth,
    role: Role,
}

/// Checks the bearer token of a request against the role its route declared, and attaches the
/// [`Actor`].
async fn require_token(
    State(guard): State<Guard>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let auth = &guard.auth;
    let (actor, granted) = if auth.is_open() {
        (ANONYMOUS.to_string(), Role::Admin)
    } else {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized)?;
        let (name, role) = auth
            .identify(presented.as_bytes())
            .ok_or(ApiError::Unauthorized)?;
        if role < guard.role {
            return Err(ApiError::Forbidden(name, role_name(guard.role)));
        }
        (name, role)
    };
    request.extensions_mut().insert(Actor(actor));
    request.extensions_mut().insert(Granted(granted));
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer …` header; the scheme's name is case-insensitive
/// (RFC 9110), so `bearer` and `BEARER` work as well as `Bearer`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::offline_router_with;
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

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

    const VIEWER: &str = "read-token-123";
    const ONCALL: &str = "operate-token-123";
    const ADMIN: &str = "admin-token-123";

    fn one_token_per_role() -> Auth {
        Auth::from_config(&[
            token("viewer", Role::Read, VIEWER),
            token("oncall", Role::Operate, ONCALL),
            token("admin", Role::Admin, ADMIN),
        ])
        .unwrap()
    }

    /// Every API route and the role it must need, written apart from the router on purpose: a
    /// route registered with another role, or one missing here, fails the tests below.
    const ROLES: &[(&str, &str, Role)] = &[
        ("GET", "/api/v1/jobs", Role::Read),
        ("POST", "/api/v1/jobs", Role::Admin),
        ("GET", "/api/v1/jobs/{name}", Role::Read),
        ("PATCH", "/api/v1/jobs/{name}", Role::Operate),
        ("POST", "/api/v1/jobs/{name}/pause", Role::Operate),
        ("POST", "/api/v1/jobs/{name}/resume", Role::Operate),
        ("POST", "/api/v1/jobs/{name}/cancel", Role::Operate),
        ("GET", "/api/v1/jobs/{name}/events", Role::Read),
        ("DELETE", "/api/v1/jobs/{name}", Role::Admin),
        ("GET", "/api/v1/whoami", Role::Read),
    ];

    async fn call(router: &Router, method: &str, path: &str, token: Option<&str>) -> Response {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path.replace("{name}", "x"));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !matches!(method, "GET" | "HEAD") {
            // As a client must (see `api::guard`).
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    /// Got past the token check: the handler answered (the database being away, or the empty
    /// body, gives a 4xx or 503 of its own), and found the [`Actor`] it needs.
    fn let_through(status: StatusCode) -> bool {
        ![
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::INTERNAL_SERVER_ERROR,
        ]
        .contains(&status)
    }

    #[tokio::test]
    async fn each_route_needs_the_role_it_declares() {
        let router = offline_router_with(one_token_per_role());
        for &(method, path, needed) in ROLES {
            // HEAD is served by the GET handler, so it needs the same role.
            let methods = if method == "GET" {
                vec!["GET", "HEAD"]
            } else {
                vec![method]
            };
            for method in methods {
                let status = call(&router, method, path, None).await.status();
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                for (token, role) in [
                    (VIEWER, Role::Read),
                    (ONCALL, Role::Operate),
                    (ADMIN, Role::Admin),
                ] {
                    let status = call(&router, method, path, Some(token)).await.status();
                    if role < needed {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}, {role:?}");
                    } else {
                        assert!(let_through(status), "{method} {path}, {role:?}: {status}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn without_tokens_every_route_is_open() {
        let router = offline_router_with(Auth::from_config(&[]).unwrap());
        for &(method, path, _) in ROLES {
            let status = call(&router, method, path, None).await.status();
            assert!(let_through(status), "{method} {path}: {status}");
        }
    }

    #[tokio::test]
    async fn the_openapi_document_shows_the_role_each_route_needs() {
        let router = offline_router_with(one_token_per_role());
        let response = call(&router, "GET", "/api/v1/openapi.json", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let document: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut documented = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ] {
                if item.get(method).is_some() {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut expected: Vec<(String, String)> = ROLES
            .iter()
            .map(|(method, path, _)| (method.to_string(), path.to_string()))
            .collect();
        documented.sort();
        expected.sort();
        assert_eq!(documented, expected);
        for &(method, path, needed) in ROLES {
            let operation = &document["paths"][path][method.to_lowercase()];
            let role = role_name(needed);
            assert_eq!(
                operation["security"],
                serde_json::json!([{ "bearer": [role] }]),
                "{method} {path}"
            );
            let description = operation["description"].as_str().unwrap_or_default();
            assert!(
                description.contains(&format!("`{role}` role")),
                "{method} {path}: {description}"
            );
        }
    }
}
