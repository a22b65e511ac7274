//! Refuses what a web page in the operator's browser could forge. A page can make the browser
//! send requests to the daemon: simple cross-site POSTs (forms, `fetch` without CORS) carry no
//! JSON content type, and a DNS-rebinding page reaches a loopback daemon under its own host
//! name. So, before any handler or token check:
//! - a cross-site `Origin` (or `null`) or `Sec-Fetch-Site` other than `same-origin`/`none` → 403;
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

pub async fn refuse_forgeries(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Response {
    match check(&guard, request.method(), request.headers()) {
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

fn check(guard: &Guard, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
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
        for (case, method, given, status) in [
            (
                "form post",
                Method::POST,
                headers(&[host, ("content-type", "application/x-www-form-urlencoded")]),
                415,
            ),
            ("no content type", Method::POST, headers(&[host]), 415),
            (
                "text/plain",
                Method::PATCH,
                headers(&[host, ("content-type", "text/plain")]),
                415,
            ),
            (
                "cross-site origin",
                Method::POST,
                headers(&[host, json, ("origin", "https://evil.example")]),
                403,
            ),
            (
                "null origin",
                Method::POST,
                headers(&[host, json, ("origin", "null")]),
                403,
            ),
            (
                "cross-site fetch",
                Method::GET,
                headers(&[host, ("sec-fetch-site", "cross-site")]),
                403,
            ),
            (
                "same-site fetch",
                Method::POST,
                headers(&[host, json, ("sec-fetch-site", "same-site")]),
                403,
            ),
            (
                "cross-site delete",
                Method::DELETE,
                headers(&[host, ("origin", "https://evil.example")]),
                403,
            ),
            (
                "rebinding",
                Method::GET,
                headers(&[("host", "rebind.evil.example:9780")]),
                403,
            ),
        ] {
            let refusal = check(&OPEN, &method, &given).expect_err(case);
            assert_eq!(refusal.status().as_u16(), status, "{case}");
        }
        for (case, method, given) in [
            ("curl post", Method::POST, headers(&[host, json])),
            (
                "toml",
                Method::POST,
                headers(&[host, ("content-type", "application/toml; charset=utf-8")]),
            ),
            (
                "same origin",
                Method::POST,
                headers(&[
                    host,
                    json,
                    ("origin", "http://127.0.0.1:9780"),
                    ("sec-fetch-site", "same-origin"),
                ]),
            ),
            ("plain get", Method::GET, headers(&[host])),
            ("no host (HTTP/1.0)", Method::GET, headers(&[])),
            ("body-less delete", Method::DELETE, headers(&[host])),
        ] {
            assert!(check(&OPEN, &method, &given).is_ok(), "{case}");
        }
        // With tokens, any Host is served (the daemon may sit behind a name).
        let guarded = Guard {
            tokenless: false,
            listen: None,
        };
        assert!(check(
            &guarded,
            &Method::GET,
            &headers(&[("host", "backfilld.internal")])
        )
        .is_ok());
    }
}
