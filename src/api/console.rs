//! The operator console at `GET /`: one hand-written page, its script and its style sheet,
//! embedded in the binary (no CDN, works air-gapped). The page calls the JSON API with the
//! bearer token the operator pastes (kept in the tab's session storage, never a cookie), so it
//! can do exactly what that token may, and the API's guard treats its requests like any other.
//!
//! Every response carries a Content-Security-Policy that allows only this daemon's own script,
//! style and API (no inline script or style, no other origin, no framing): even text from a job
//! that slipped past the page's escaping could not run.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::AppState;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Own origin only, nothing inline, no framing, no forms, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A page opened from another site gets no handle on this one (window.opener).
            (
                header::HeaderName::from_static("cross-origin-opener-policy"),
                "same-origin",
            ),
            // A new binary's page, not a cached older one.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Auth;
    use crate::api::tests::offline_router_with;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        offline_router_with(Auth::from_config(&[]).unwrap())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_under_a_strict_policy() {
        for (path, media) in [
            ("/", "text/html"),
            ("/console.js", "text/javascript"),
            ("/console.css", "text/css"),
        ] {
            let response = get(path, &[("host", "127.0.0.1:9780")]).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            assert!(headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(media));
            let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(!policy.contains("unsafe"), "{policy}");
            assert!(policy.contains("script-src 'self'"), "{policy}");
            assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_other_origin() {
        let page = INDEX.to_ascii_lowercase();
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "inline style attribute");
        let handler = page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains("<script src=\"/console.js\""));
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        // Job text becomes text nodes, never markup.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
        assert!(!SCRIPT.contains("document.cookie") && !SCRIPT.contains("localStorage"));
    }

    #[tokio::test]
    async fn another_site_cannot_load_the_console_into_its_page() {
        let response = get(
            "/console.js",
            &[("host", "127.0.0.1:9780"), ("sec-fetch-site", "cross-site")],
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let response = get("/", &[("host", "rebind.evil.example:9780")]).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
