//! The HTTP client behind `submit`, `status`, `pause`, `resume` and `cancel`.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::status::view::{JobList, JobView};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached at all.
    #[error("cannot reach backfilld at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The daemon answered with an error.
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("unexpected answer from backfilld: {0}")]
    Protocol(String),
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, String)>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, body)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or(text);
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn submit_toml(&self, toml: String) -> Result<JobView, ClientError> {
        self.call(
            Method::POST,
            "/api/v1/jobs",
            Some(("application/toml", toml)),
        )
        .await
    }

    pub async fn jobs(&self) -> Result<JobList, ClientError> {
        self.call(Method::GET, "/api/v1/jobs", None).await
    }

    pub async fn job(&self, name: &str) -> Result<JobView, ClientError> {
        self.call(Method::GET, &format!("/api/v1/jobs/{}", encode(name)), None)
            .await
    }

    /// `action` is `pause`, `resume` or `cancel`.
    pub async fn act(&self, name: &str, action: &str) -> Result<JobView, ClientError> {
        // An explicit JSON content type, as the daemon asks of every state change (it
        // refuses what a web page could forge).
        self.call(
            Method::POST,
            &format!("/api/v1/jobs/{}/{action}", encode(name)),
            Some(("application/json", "{}".to_string())),
        )
        .await
    }
}

/// Percent-encodes a path segment (job names are plain, but a typo should not change the route).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
