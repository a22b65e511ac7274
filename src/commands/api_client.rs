//! The HTTP client behind `submit`, `status`, `pause`, `resume`, `cancel` and `delete`: HTTP or HTTPS
//! (rustls), trusting the system's certificate authorities plus any given with `--cacert`.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::plumbing::tls;
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
    /// The TLS handshake failed, most often because the daemon's certificate did not verify.
    #[error("cannot reach backfilld at {url}: {message}")]
    Tls { url: String, message: String },
    /// The client cannot be set up as asked (an unreadable `--cacert`).
    #[error("{0}")]
    Config(String),
    #[error("unexpected answer from backfilld: {0}")]
    Protocol(String),
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the daemon at `base`; `cacert` is a PEM file of certificate authorities to
    /// trust besides the system's (a private CA that signed the daemon's certificate).
    pub fn new(
        base: &str,
        token: Option<String>,
        cacert: Option<&Path>,
    ) -> Result<Client, ClientError> {
        tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = cacert {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Config(format!("--cacert: cannot read {}: {e}", path.display()))
            })?;
            let authorities = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| {
                    ClientError::Config(format!(
                        "--cacert: {} holds no PEM certificate",
                        path.display()
                    ))
                })?;
            builder = builder.tls_certs_merge(authorities);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// A failed request: the handshake's fault in words when TLS failed, else unreachable.
    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        let Some(handshake) = tls::rustls_error(&source) else {
            return ClientError::Unreachable {
                url: self.base.clone(),
                source,
            };
        };
        let host = source
            .url()
            .and_then(|u| u.host_str())
            .unwrap_or("the daemon")
            .to_string();
        let mut message = tls::explain(handshake, &host);
        if tls::is_unknown_issuer(handshake) {
            message.push_str(
                " (give the authority's certificate with --cacert FILE or $BACKFILLD_CACERT)",
            );
        }
        ClientError::Tls {
            url: self.base.clone(),
            message,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, String)>,
    ) -> Result<T, ClientError> {
        let text = self.send(method, path, body).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The request's answer as text when it succeeded, else the daemon's error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, String)>,
    ) -> Result<String, ClientError> {
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
            .map_err(|source| self.unreachable(source))?;
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
        Ok(text)
    }

    /// Submits a job; with `replace`, an existing stopped job of that name takes it.
    pub async fn submit_toml(&self, toml: String, replace: bool) -> Result<JobView, ClientError> {
        let path = if replace {
            "/api/v1/jobs?replace=true"
        } else {
            "/api/v1/jobs"
        };
        self.call(Method::POST, path, Some(("application/toml", toml)))
            .await
    }

    /// Deletes an ended job (204, no body).
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &format!("/api/v1/jobs/{}", encode(name)),
            // The explicit content type the daemon asks of every state change.
            Some(("application/json", String::new())),
        )
        .await
        .map(drop)
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
