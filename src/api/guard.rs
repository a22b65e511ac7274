//! Refuses what a web page in the operator's browser could forge. A page can make the browser
//! send requests to the daemon: simple cross-site POSTs (forms, `fetch` without CORS) carry no
//! JSON content type, and a DNS-rebinding page reaches a loopback daemon under its own host
//! name. So, before any handler or token check:
//! - a cross-site `Origin` (or `null`) or `Sec-Fetch-Site` other than `same-origin`/`none` → 403,
//!   except a link followed to the console: a top-level, body-less `GET`/`HEAD` navigation
//!   (`Sec-Fetch-Mode: navigate`, `Sec-Fetch-Dest: document`) of [`CONSOLE_PAGE`], a static page
//!   that changes nothing and runs only its own script (which then calls the API same-origin);
//! - without tokens, a `Host` that is not a loopback name or the listen address → 403;
//! - a state-changing request without an explicit JSON or TOML content type → 415 (a browser
//!   cannot send those cross-site without a CORS preflight, which the daemon never grants);
//!   DELETE is exempt: it has no body, and a browser preflights it anyway.
//!
//! Every response also says `X-Content-Type-Options: nosniff` ([`nosniff`]).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;

/// What the guard needs to know about the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// No tokens are configured: the loopback listener is the only protection, so the `Host`
    /// must be one of ours too.
    pub tokenless: bool,
    /// The address the API is bound to, when it is.
    pub listen: Option<SocketAddr>,
}

/// The body formats the API reads; anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
}

/// The request's body format by its `Content-Type` (parameters such as `charset` ignored);
/// `None` when it is absent or another type.
pub fn format(headers: &HeaderMap) -> Option<Format> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Some(Format::Json),
        // The text/ spellings are not CORS-safelisted either, so a page cannot send them.
        "application/toml" | "text/toml" | "text/x-toml" => Some(Format::Toml),
        _ => None,
    }
}

/// The console's page: the one path another site may link to.
pub const CONSOLE_PAGE: &str = "/";

pub async fn refuse_forgeries(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Response {
    match check(
        &guard,
        request.method(),
        request.uri().path(),
        request.headers(),
    ) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::warn!(reason = %refusal, "refused a request a web page could have forged");
            refusal.into_response()
        }
    }
}

/// Every response is what its `Content-Type` says, never sniffed into something else.
pub async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn check(guard: &Guard, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") && !opens_console(method, path, headers) {
            return Err(ApiError::Forged(format!(
                "a {site} request (Sec-Fetch-Site): the API does not serve other sites"
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        if authority.is_none() || authority != host {
            return Err(ApiError::Forged(format!(
                "a request from origin {:?}, another site than this daemon",
                crate::spec::shorten(origin)
            )));
        }
    }
    if guard.tokenless {
        if let Some(host) = host {
            if !is_ours(host, guard.listen) {
                return Err(ApiError::Forged(format!(
                    "Host {:?} is not a loopback name: without tokens the daemon answers only to its own address",
                    crate::spec::shorten(host)
                )));
            }
        }
    }
    // DELETE has no body to type, and no page can send it cross-site without the CORS
    // preflight the daemon never grants; a body-less POST (pause) can be sent by a form.
    let changes_state = !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    );
    if changes_state && format(headers).is_none() {
        let given = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        return Err(ApiError::UnsupportedMediaType(given.to_string()));
    }
    Ok(())
}

/// A link to the console followed from another site (a dashboard, a chat message): the
/// browser loads the page itself, top-level, with no body. Anything else a page can make the
/// browser send (a form, a fetch, an image, a frame) says another mode or destination; a
/// `GET` of the page reads a static file, and its script's own requests are same-origin.
fn opens_console(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    let says = |name: &str, value: &str| {
        headers
            .get(name)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
    };
    let bodyless = !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|length| length.as_bytes() == b"0");
    matches!(*method, Method::GET | Method::HEAD)
        && path == CONSOLE_PAGE
        && says("sec-fetch-mode", "navigate")
        && says("sec-fetch-dest", "document")
        && bodyless
}

/// `localhost` (or a name under it), a loopback address, or the address the API listens on,
/// with or without a port.
fn is_ours(host: &str, listen: Option<SocketAddr>) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || listen.is_some_and(|l| l.ip() == ip),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const OPEN: Guard = Guard {
        tokenless: true,
        listen: None,
    };

    #[test]
    fn loopback_names_are_ours_and_rebound_names_are_not() {
        for host in [
            "127.0.0.1:9780",
            "localhost:9780",
            "LOCALHOST",
            "[::1]:9780",
            "127.1.2.3",
            "a.localhost",
        ] {
            assert!(is_ours(host, None), "{host}");
        }
        for host in [
            "rebind.evil.example",
            "rebind.evil.example:9780",
            "10.0.0.1:9780",
            "[2001:db8::1]:9780",
            "localhost.evil.example",
        ] {
            assert!(!is_ours(host, None), "{host}");
        }
        let listen: SocketAddr = "10.0.0.1:9780".parse().unwrap();
        assert!(is_ours("10.0.0.1:9780", Some(listen)));
    }

    #[test]
    fn forgeable_requests_are_refused() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:9780");
        const API: &str = "/api/v1/jobs";
        let navigate = [
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ];
        let nav = |extra: &[(&'static str, &str)]| {
            let mut pairs = vec![host];
            pairs.extend(navigate);
            pairs.extend(extra);
            headers(&pairs)
        };
        for (case, method, path, given, status) in [
            (
                "form post",
                Method::POST,
                API,
                headers(&[host, ("content-type", "application/x-www-form-urlencoded")]),
                415,
            ),
            ("no content type", Method::POST, API, headers(&[host]), 415),
            (
                "text/plain",
                Method::PATCH,
                API,
                headers(&[host, ("content-type", "text/plain")]),
                415,
            ),
            (
                "cross-site origin",
                Method::POST,
                API,
                headers(&[host, json, ("origin", "https://evil.example")]),
                403,
            ),
            (
                "null origin",
                Method::POST,
                API,
                headers(&[host, json, ("origin", "null")]),
                403,
            ),
            (
                "cross-site fetch",
                Method::GET,
                API,
                headers(&[host, ("sec-fetch-site", "cross-site")]),
                403,
            ),
            (
                "same-site fetch",
                Method::POST,
                API,
                headers(&[host, json, ("sec-fetch-site", "same-site")]),
                403,
            ),
            (
                "cross-site delete",
                Method::DELETE,
                API,
                headers(&[host, ("origin", "https://evil.example")]),
                403,
            ),
            (
                "rebinding",
                Method::GET,
                API,
                headers(&[("host", "rebind.evil.example:9780")]),
                403,
            ),
            (
                "navigation to the API",
                Method::GET,
                "/api/v1/jobs",
                nav(&[]),
                403,
            ),
            (
                "navigation to the script",
                Method::GET,
                "/console.js",
                nav(&[]),
                403,
            ),
            (
                "form post to the console",
                Method::POST,
                "/",
                nav(&[json]),
                403,
            ),
            (
                "navigation with a body",
                Method::GET,
                "/",
                nav(&[("content-length", "5")]),
                403,
            ),
            (
                "chunked navigation",
                Method::GET,
                "/",
                nav(&[("transfer-encoding", "chunked")]),
                403,
            ),
            (
                "frame",
                Method::GET,
                "/",
                headers(&[
                    host,
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-dest", "iframe"),
                ]),
                403,
            ),
            (
                "cross-site fetch of the page",
                Method::GET,
                "/",
                headers(&[
                    host,
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "cors"),
                    ("sec-fetch-dest", "empty"),
                ]),
                403,
            ),
            (
                "navigation from another origin header",
                Method::GET,
                "/",
                nav(&[("origin", "https://evil.example")]),
                403,
            ),
            (
                "rebound navigation",
                Method::GET,
                "/",
                headers(&[
                    ("host", "rebind.evil.example:9780"),
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-dest", "document"),
                ]),
                403,
            ),
        ] {
            let refusal = check(&OPEN, &method, path, &given).expect_err(case);
            assert_eq!(refusal.status().as_u16(), status, "{case}");
        }
        for (case, method, path, given) in [
            ("curl post", Method::POST, API, headers(&[host, json])),
            (
                "toml",
                Method::POST,
                API,
                headers(&[host, ("content-type", "application/toml; charset=utf-8")]),
            ),
            (
                "same origin",
                Method::POST,
                API,
                headers(&[
                    host,
                    json,
                    ("origin", "http://127.0.0.1:9780"),
                    ("sec-fetch-site", "same-origin"),
                ]),
            ),
            ("plain get", Method::GET, API, headers(&[host])),
            ("no host (HTTP/1.0)", Method::GET, API, headers(&[])),
            ("body-less delete", Method::DELETE, API, headers(&[host])),
            ("a link to the console", Method::GET, "/", nav(&[])),
            (
                "a link to the console, same site",
                Method::GET,
                "/",
                headers(&[
                    host,
                    ("sec-fetch-site", "same-site"),
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-dest", "document"),
                    ("content-length", "0"),
                ]),
            ),
            ("HEAD of the console", Method::HEAD, "/", nav(&[])),
        ] {
            assert!(check(&OPEN, &method, path, &given).is_ok(), "{case}");
        }
        // With tokens, any Host is served (the daemon may sit behind a name).
        let guarded = Guard {
            tokenless: false,
            listen: None,
        };
        assert!(check(
            &guarded,
            &Method::GET,
            API,
            &headers(&[("host", "backfilld.internal")])
        )
        .is_ok());
    }
}
