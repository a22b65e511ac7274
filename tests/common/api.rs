//! An HTTP client for a test daemon, and what the daemon tests share besides: tokens, the hits
//! job as a JSON body, a jobs directory, and the no-panic check of a daemon's log.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{eventually, Daemon, TestDb};

/// Asserts an API error body's `error` says `words`.
pub fn assert_error_says(body: &Value, words: &str) {
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert!(error.contains(words), "{body}");
}

/// Three tokens, one per role.
pub const TOKENS: &str = r#"
[[tokens]]
name = "viewer"
role = "read"
token = "read-token-123"

[[tokens]]
name = "oncall"
role = "operate"
token = "operate-token-123"

[[tokens]]
name = "admin"
role = "admin"
token = "admin-token-123"
"#;

pub const ADMIN: &str = "admin-token-123";

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(daemon: &Daemon, token: Option<&str>) -> Api {
        Api::at(&daemon.base, token)
    }

    pub fn at(base: &str, token: Option<&str>) -> Api {
        backfilld::plumbing::tls::install_crypto_provider();
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            base: base.to_string(),
            token: token.map(String::from),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let changes_state = method != reqwest::Method::GET;
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        match body {
            Some(body) => request = request.json(&body),
            // A state change without a body still says it speaks JSON, as the daemon asks.
            None if changes_state => request = request.header("content-type", "application/json"),
            None => {}
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn state(&self, name: &str) -> String {
        self.job(name).await["state"].as_str().unwrap().to_string()
    }

    /// Submits a job and insists on 201.
    pub async fn submit(&self, job: Value) {
        let (status, body) = self.post("/api/v1/jobs", Some(job)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    pub async fn job(&self, name: &str) -> Value {
        let (status, job) = self.get(&format!("/api/v1/jobs/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }

    pub async fn wait_state(&self, name: &str, state: &str, within: Duration) -> Value {
        eventually(within, &format!("{name} to be {state}"), || async {
            let job = self.job(name).await;
            (job["state"] == json!(state)).then_some(job)
        })
        .await
    }

    pub async fn events(&self, name: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/v1/jobs/{name}/events")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"].as_array().unwrap().clone()
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample of `/metrics`, e.g.
    /// `backfill_batches_total{database="default",job="j",outcome="retried"}`
    /// given as the metric name and its labels in exposition order; 0 when absent.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.metrics().await;
        let wanted = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&wanted))
            .map(|value| value.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

/// A non-idempotent job over `t`: running a batch twice shows as `hits = 2`.
pub fn hits_job(name: &str, extra: Value) -> Value {
    let mut job = json!({
        "name": name, "table": "t", "key": "id", "set": {"hits": "hits + 1"}, "batch_size": 100
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            job[k] = v;
        }
    }
    job
}

pub fn jobs_dir(db: &TestDb) -> std::path::PathBuf {
    let dir = db.dir.join("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// No panic and no stack overflow in a daemon's log.
pub fn assert_no_panic(log: &str) {
    assert!(
        !log.contains("panicked") && !log.contains("overflow"),
        "the daemon panicked:\n{log}"
    );
}
