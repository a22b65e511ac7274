//! The daemon's surface as users meet it: tokens and roles, bad requests that change nothing, a
//! daemon without tokens answering loopback only, a refused login answered with 503, the
//! listen address, and the CLI's client commands against it; real `serve` processes, real HTTP
//! clients, a real PostgreSQL.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::api::{self, Api, ADMIN, TOKENS};
use common::{hits_table, job_toml, text, Daemon, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ONCALL: &str = "operate-token-123";

/// The shared job body, with extra fields given as JSON text.
fn hits_job(name: &str, extra: &str) -> Value {
    api::hits_job(name, serde_json::from_str(extra).unwrap())
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[tokio::test]
async fn tokens_and_roles_are_enforced() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let anonymous = Api::new(&daemon, None);
    let wrong = Api::new(&daemon, Some("not-a-token-at-all"));
    let viewer = Api::new(&daemon, Some("read-token-123"));
    let oncall = Api::new(&daemon, Some(ONCALL));
    let admin = Api::new(&daemon, Some(ADMIN));
    for path in ["/healthz", "/readyz", "/api/v1/openapi.json"] {
        assert_eq!(
            anonymous.get(path).await.0,
            StatusCode::OK,
            "{path} is open"
        );
    }
    for api in [&anonymous, &wrong] {
        let (status, body) = api.get("/api/v1/jobs").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["error"].is_string());
    }
    let job = hits_job("guarded", "{}");
    assert_eq!(
        viewer.post("/api/v1/jobs", Some(job.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        oncall.post("/api/v1/jobs", Some(job.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin.post("/api/v1/jobs", Some(job)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(viewer.get("/api/v1/jobs/guarded").await.0, StatusCode::OK);
    assert_eq!(
        viewer.post("/api/v1/jobs/guarded/pause", None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        viewer
            .patch("/api/v1/jobs/guarded", json!({"batch_size": 5}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM backfilld.jobs").await,
        1
    );
    // Secrets never reach the log.
    assert!(!daemon.log().contains("token-123"), "a token was logged");
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_change_nothing() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let admin = Api::new(&daemon, Some(ADMIN));
    admin
        .post("/api/v1/jobs", Some(hits_job("existing", "{}")))
        .await;
    admin
        .wait_state("existing", "completed", Duration::from_secs(30))
        .await;
    let before = db.fingerprint().await;
    // A fresh client (and connection) per request: the oversized case may leave its
    // connection closed by the daemon.
    let raw = |content_type: &str, body: Vec<u8>| {
        reqwest::Client::new()
            .post(format!("{}/api/v1/jobs", daemon.base))
            .bearer_auth(ADMIN)
            .header("content-type", content_type.to_string())
            .body(body)
            .send()
    };
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        ("malformed json", "application/json", b"{\"name\": ".to_vec(), StatusCode::BAD_REQUEST, "body"),
        ("malformed toml", "application/toml", b"name = [".to_vec(), StatusCode::BAD_REQUEST, "body"),
        ("not utf-8", "application/json", vec![0xff, 0xfe, 0x00], StatusCode::BAD_REQUEST, "UTF-8"),
        ("oversized", "application/json", vec![b' '; 2 * 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "too large"),
        ("wrong media type", "text/plain", b"name".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "content type"),
        (
            "bad sql",
            "application/json",
            serde_json::to_vec(&json!({"name": "bad-sql", "table": "t", "key": "id", "set": {"hits": "hits + )"}})).unwrap(),
            StatusCode::BAD_REQUEST,
            "syntax error",
        ),
        (
            "table with sql",
            "application/json",
            serde_json::to_vec(&json!({"name": "drop", "table": "t; DROP TABLE t", "key": "id", "set": {"hits": "1"}})).unwrap(),
            StatusCode::BAD_REQUEST,
            "does not exist",
        ),
        (
            "name clash",
            "application/json",
            serde_json::to_vec(&hits_job("existing", "{}")).unwrap(),
            StatusCode::CONFLICT,
            "already exists",
        ),
    ];
    for (case, content_type, body, expected, words) in cases {
        let response = match raw(content_type, body).await {
            Ok(response) => response,
            // The daemon answers 413 from the headers alone and may close before the client
            // has finished writing: the client then sees a reset instead of the answer (the
            // router's own test checks the 413 body without a socket).
            Err(e) if case == "oversized" && e.is_request() => continue,
            Err(e) => panic!("{case}: {e}"),
        };
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{case}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{case}: {message}");
    }
    for path in [
        "/api/v1/jobs/nope",
        "/api/v1/jobs/%00%01",
        "/api/v1/jobs/..%2F..",
        "/api/v1/jobs/%E2%80%AE",
    ] {
        let (status, answer) = admin.get(path).await;
        assert!(status.is_client_error(), "{path}: {status}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    let (status, _) = admin.post("/api/v1/jobs/nope/pause", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin.post("/api/v1/jobs/existing/resume", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = admin
        .send(reqwest::Method::DELETE, "/api/v1/jobs/nope", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin
        .send(reqwest::Method::PUT, "/api/v1/jobs/existing", None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        db.fingerprint().await,
        before,
        "a bad request changed the database"
    );
    assert!(!daemon.log().contains("panicked"));
}

#[tokio::test]
async fn no_tokens_means_loopback_only() {
    let db = TestDb::new().await;
    let output = db.cli(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--jobs-dir",
        db.dir.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", common::text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loopback") && stderr.contains("tokens"),
        "{stderr}"
    );
}

#[tokio::test]
async fn cli_client_commands_speak_to_the_daemon() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 4_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let file = db.write_job(
        "cli.toml",
        &job_toml(
            "via-cli",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "rows_per_second = 1000\nbatch_size = 100",
        ),
    );
    let cli = |args: &[&str], token: &str| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &daemon.base, "--token", token]);
        db.cli(&all)
    };
    let output = cli(&["submit", file.to_str().unwrap()], ADMIN);
    assert_eq!(output.status.code(), Some(0), "{}", common::text(&output));
    let api = Api::new(&daemon, Some(ONCALL));
    api.wait_state("via-cli", "running", Duration::from_secs(30))
        .await;
    let output = cli(&["pause", "via-cli"], ONCALL);
    assert_eq!(output.status.code(), Some(0), "{}", common::text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("paused"));
    let output = cli(&["status"], "read-token-123");
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(0), "{}", common::text(&output));
    for column in [
        "NAME", "STATE", "PROGRESS", "RATE/s", "ETA", "THROTTLE", "via-cli", "paused",
    ] {
        assert!(table.contains(column), "{column} missing from\n{table}");
    }
    let output = cli(&["status", "via-cli", "--json"], "read-token-123");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["state"], json!("paused"));
    // Refusals exit 1 with the daemon's message; an unreachable daemon exits 2.
    let output = cli(&["resume", "via-cli"], "read-token-123");
    assert_eq!(output.status.code(), Some(1), "{}", common::text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("operate"));
    let output = db.cli(&["status", "--url", "http://127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(2), "{}", common::text(&output));
    let output = cli(&["resume", "via-cli"], ONCALL);
    assert_eq!(output.status.code(), Some(0), "{}", common::text(&output));
    let output = cli(&["cancel", "via-cli"], ONCALL);
    assert_eq!(output.status.code(), Some(0), "{}", common::text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("cancelled"));
}

#[tokio::test]
async fn serve_accepts_a_host_name_to_listen_on() {
    let db = TestDb::new().await;
    let port = common::free_port();
    let config = db.dir.join("named.toml");
    std::fs::write(&config, format!("listen = \"localhost:{port}\"\n")).unwrap();
    let jobs = api::jobs_dir(&db);
    let mut child = common::command(
        &db.url,
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--jobs-dir",
            jobs.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    common::signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert_eq!(
        first.trim(),
        format!("backfilld listening on http://127.0.0.1:{port}")
    );
    assert_eq!(status.code(), Some(0));
    // A name that does not resolve is an error naming the key.
    std::fs::write(&config, "listen = \"no-such-host.invalid:9780\"\n").unwrap();
    let output = db.cli(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        stderr(&output).contains("config: listen: cannot resolve \"no-such-host.invalid:9780\""),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn a_refused_login_answers_503_saying_so() {
    let db = TestDb::new().await;
    let role = format!("nologin_{}", &db.name[db.name.len() - 8..]);
    db.exec(&format!("CREATE ROLE {role} NOLOGIN")).await;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test URL names its user");
    let daemon = Daemon::start_unready(&url, &db.dir, "", &api::jobs_dir(&db));
    let api = Api::new(&daemon, None);
    let (status, body) = api.get("/api/v1/jobs").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    common::api::assert_error_says(&body, "not permitted to log in");
    drop(daemon);
    db.exec(&format!("DROP ROLE {role}")).await;
}
