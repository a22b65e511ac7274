//! What an attacker or a race tried from outside and must not get: a web page driving a
//! tokenless daemon, and concurrent PATCHes undoing each other or changing an ended job.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::api::{hits_job, jobs_dir, Api};
use common::{hits_table, Daemon, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// One raw HTTP/1.1 request, so the test decides every header (reqwest would set `Host`).
fn raw(base: &str, request: &str) -> u16 {
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

#[tokio::test]
async fn a_web_page_cannot_drive_a_tokenless_daemon() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 100).await;
    db.exec("CREATE TABLE precious (x int); INSERT INTO precious VALUES (1);")
        .await;
    let daemon = Daemon::start(&db.url, &db.dir, "", &jobs_dir(&db));
    let api = Api::new(&daemon, None);
    // The operator's own job, paused, so the forged state changes have something to change.
    api.submit(hits_job("mine", json!({"pause": "1h"}))).await;
    api.wait_state("mine", "running", Duration::from_secs(30))
        .await;
    let (status, _) = api.post("/api/v1/jobs/mine/pause", None).await;
    assert_eq!(status, StatusCode::OK);
    let host = daemon.base.trim_start_matches("http://").to_string();
    let forged_job = json!({
        "name": "forged", "table": "t", "key": "id",
        "set": {"hits": "(SELECT count(*) FROM precious)"}
    })
    .to_string();
    let post = |path: &str, headers: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    // What following a link (or submitting a form) from another site makes the browser say.
    let navigation =
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n";
    let form = format!("Content-Type: application/x-www-form-urlencoded\r\n{navigation}");
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{navigation}Connection: close\r\n\r\n")
    };
    let cases: Vec<(&str, String, u16)> = vec![
        // A link to the console opens it: a static page, nothing changes.
        ("link to the console", get("/"), 200),
        ("link to the API", get("/api/v1/jobs"), 403),
        ("form navigating to a cancel", post("/api/v1/jobs/mine/cancel", &form, "a=b"), 403),
        // The page has no POST route at all.
        ("form navigating to the console", post("/", &form, "a=b"), 405),
        // What fetch() without CORS and HTML forms can send from any page.
        ("job without a content type", post("/api/v1/jobs", "", &forged_job), 415),
        ("job as text/plain", post("/api/v1/jobs", "Content-Type: text/plain\r\n", &forged_job), 415),
        ("form-posted resume", post("/api/v1/jobs/mine/resume", "Content-Type: application/x-www-form-urlencoded\r\n", "a=b"), 415),
        ("form-posted cancel", post("/api/v1/jobs/mine/cancel", "Content-Type: multipart/form-data; boundary=x\r\n", "--x--"), 415),
        // A page that got a JSON content type through (a preflight the daemon never grants).
        ("cross-site origin", post("/api/v1/jobs", "Content-Type: application/json\r\nOrigin: https://evil.example\r\n", &forged_job), 403),
        ("cross-site fetch", post("/api/v1/jobs/mine/cancel", "Content-Type: application/json\r\nSec-Fetch-Site: cross-site\r\n", "{}"), 403),
        // DNS rebinding: the page's own name now points at 127.0.0.1.
        (
            "rebound host",
            format!(
                "POST /api/v1/jobs HTTP/1.1\r\nHost: rebind.evil.example:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{forged_job}",
                host.rsplit(':').next().unwrap(),
                forged_job.len()
            ),
            403,
        ),
        (
            "rebound host reading",
            "GET /api/v1/jobs HTTP/1.1\r\nHost: rebind.evil.example\r\nConnection: close\r\n\r\n".to_string(),
            403,
        ),
    ];
    for (case, request, expected) in cases {
        assert_eq!(raw(&daemon.base, &request), expected, "{case}");
    }
    // Nothing changed: no forged job, the operator's job still paused, the table intact.
    let (_, list) = api.get("/api/v1/jobs").await;
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    assert_eq!(api.state("mine").await, "paused");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM precious").await, 1);
    // The operator's own curl, with a JSON content type, still works.
    let (status, _) = api.post("/api/v1/jobs/mine/resume", None).await;
    assert_eq!(status, StatusCode::OK);
}

async fn spec_of(api: &Api, name: &str) -> Value {
    api.job(name).await["spec"].clone()
}

#[tokio::test]
async fn racing_patches_keep_both_changes_and_never_change_an_ended_job() {
    let db = TestDb::new().await;
    // More rows than any batch size the loop sets, so the first batch (whenever it runs) never
    // ends the job, and its pause holds it afterwards.
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, "", &jobs_dir(&db));
    let api = Api::new(&daemon, None);
    api.submit(hits_job("tuned", json!({"pause": "1h"}))).await;
    for i in 0..40u64 {
        let (a, b) = tokio::join!(
            api.patch("/api/v1/jobs/tuned", json!({"batch_size": 100 + i})),
            api.patch("/api/v1/jobs/tuned", json!({"rows_per_second": 1000 + i})),
        );
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        let spec = spec_of(&api, "tuned").await;
        assert_eq!(
            (
                spec["batch_size"].as_u64(),
                spec["rows_per_second"].as_u64()
            ),
            (Some(100 + i), Some(1000 + i)),
            "pair {i}: one PATCH undid the other: {spec}"
        );
    }
    for i in 0..20 {
        let name = format!("ending-{i}");
        api.submit(hits_job(&name, json!({"pause": "1h", "batch_size": 50})))
            .await;
        let (job, cancel) = (
            format!("/api/v1/jobs/{name}"),
            format!("/api/v1/jobs/{name}/cancel"),
        );
        let (patched, cancelled) = tokio::join!(
            api.patch(&job, json!({"batch_size": 7})),
            api.post(&cancel, None),
        );
        assert_eq!(cancelled.0, StatusCode::OK, "{cancelled:?}");
        let kinds: Vec<String> = api
            .events(&name)
            .await
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        let cancel_at = kinds.iter().position(|k| k == "cancelled").unwrap();
        let batch_size = spec_of(&api, &name).await["batch_size"].as_u64();
        match patched.0 {
            StatusCode::OK => {
                let retuned_at = kinds.iter().position(|k| k == "retuned").unwrap();
                assert!(retuned_at < cancel_at, "{name}: {kinds:?}");
                assert_eq!(batch_size, Some(7));
            }
            StatusCode::CONFLICT => {
                assert!(!kinds.contains(&"retuned".to_string()), "{name}: {kinds:?}");
                assert_eq!(batch_size, Some(50), "{name}: an ended job was re-tuned");
            }
            other => panic!("{name}: PATCH answered {other}: {patched:?}"),
        }
    }
}

#[tokio::test]
async fn a_throttle_query_that_writes_is_refused_at_check_and_submit() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 100).await;
    let before = db.fingerprint().await;
    let daemon = Daemon::start(&db.url, &db.dir, "", &jobs_dir(&db));
    let api = Api::new(&daemon, None);
    for (i, query) in [
        "DELETE FROM t RETURNING false",
        "WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) > 0 FROM d",
        "UPDATE backfilld.jobs SET state = 'failed' RETURNING false",
        "SELECT false INTO stolen FROM t",
        "SELECT false FROM t FOR UPDATE",
        "SELECT dblink_exec('dbname=postgres', 'DROP TABLE t') IS NULL",
    ]
    .into_iter()
    .enumerate()
    {
        let job = db.write_job(
            "writer.toml",
            &format!(
                "name = \"writer-{i}\"\ntable = \"t\"\nkey = \"id\"\nthrottle_query = {query:?}\n[set]\nhits = \"hits + 1\"\n"
            ),
        );
        let output = db.cli(&["check", job.to_str().unwrap()]);
        let said = common::text(&output);
        assert_eq!(output.status.code(), Some(2), "{query}: {said}");
        assert!(said.contains("throttle_query"), "{query}: {said}");
        let (status, body) = api
            .post(
                "/api/v1/jobs",
                Some(hits_job(
                    &format!("writer-{i}"),
                    json!({"throttle_query": query}),
                )),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("throttle_query"),
            "{query}: {body}"
        );
    }
    let (_, list) = api.get("/api/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]));
    drop(daemon);
    // The daemon's own schema is new; the application's tables are as they were.
    db.exec("DROP SCHEMA backfilld CASCADE").await;
    assert_eq!(db.fingerprint().await, before);
}

#[tokio::test]
async fn odd_files_in_the_jobs_directory_neither_block_nor_leak_and_the_rest_load() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 100).await;
    let dir = jobs_dir(&db);
    let fifo = dir.join("a_fifo.toml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/dev/zero", dir.join("b_zero.toml")).unwrap();
    std::fs::write(
        dir.join("c_stranger.toml"),
        "root:SECRET-hunter2:0:0:root:/root:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("d_big.toml"),
        format!("# {}\n", "x".repeat(2 * 1024 * 1024)),
    )
    .unwrap();
    std::fs::write(
        dir.join("e_good.toml"),
        "name = \"good\"\ntable = \"t\"\nkey = \"id\"\n[set]\nhits = \"hits + 1\"\n",
    )
    .unwrap();
    let mut daemon = Daemon::start(&db.url, &db.dir, "", &dir);
    let api = Api::new(&daemon, None);
    api.wait_state("good", "completed", Duration::from_secs(30))
        .await;
    let log = daemon.log();
    for file in [
        "a_fifo.toml",
        "b_zero.toml",
        "c_stranger.toml",
        "d_big.toml",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(file) && l.contains("skipped")),
            "{file} not reported as skipped:\n{log}"
        );
    }
    assert!(
        !log.contains("hunter2"),
        "a file's content reached the log:\n{log}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
}

/// `GET path` on a fresh connection, with a deadline: the status, or `None` if no answer came.
fn get_within(base: &str, path: &str, within: Duration) -> Option<u16> {
    let address: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut stream = std::net::TcpStream::connect_timeout(&address, within).ok()?;
    stream.set_read_timeout(Some(within)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test]
async fn healthz_answers_under_500_idle_connections_with_256_descriptors() {
    let db = TestDb::new().await;
    let daemon = Daemon::start_with_open_files(&db.url, &db.dir, "", &jobs_dir(&db), 256);
    let address: std::net::SocketAddr = daemon.base.trim_start_matches("http://").parse().unwrap();
    // Half-open clients: connected, never a byte sent.
    let idle: Vec<std::net::TcpStream> = (0..500)
        .map(|_| std::net::TcpStream::connect(address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for probe in 0..3 {
        assert_eq!(
            get_within(&daemon.base, "/healthz", Duration::from_secs(3)),
            Some(200),
            "liveness probe {probe} unanswered under 500 idle connections\n{}",
            daemon.log()
        );
    }
    assert_eq!(
        get_within(&daemon.base, "/readyz", Duration::from_secs(3)),
        Some(200)
    );
    drop(idle);
    common::api::assert_no_panic(&daemon.log());
}

#[tokio::test]
async fn sigterm_ends_the_daemon_within_its_shutdown_timeout_despite_a_stalled_client() {
    let db = TestDb::new().await;
    let mut daemon = Daemon::start(
        &db.url,
        &db.dir,
        "shutdown_timeout = \"3s\"\n",
        &jobs_dir(&db),
    );
    let address: std::net::SocketAddr = daemon.base.trim_start_matches("http://").parse().unwrap();
    // A client pipelines requests for a large document and never reads the answers: the
    // daemon's writes block once the socket buffers are full.
    let mut stalled = std::net::TcpStream::connect(address).unwrap();
    stalled
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let request = format!("GET /api/v1/openapi.json HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let mut sent = 0;
    while stalled.write_all(request.as_bytes()).is_ok() {
        sent += 1;
        assert!(
            sent < 2_000_000,
            "the daemon kept reading a client that never reads"
        );
    }
    let started = std::time::Instant::now();
    daemon.signal("TERM");
    let code = daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", daemon.log());
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test]
async fn small_things_an_outsider_noticed() {
    let db = TestDb::new().await;
    // The scheme of a bearer token is case-insensitive; every response says nosniff.
    let daemon = Daemon::start(&db.url, &db.dir, common::api::TOKENS, &jobs_dir(&db));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/jobs", daemon.base))
            .header("authorization", format!("{scheme} admin-token-123"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    let missing = reqwest::get(format!("{}/nope", daemon.base)).await.unwrap();
    assert_eq!(missing.headers()["x-content-type-options"], "nosniff");
    drop(daemon);

    // A config file holding inline tokens and readable by others is worth a warning.
    use std::os::unix::fs::PermissionsExt;
    let config = db.dir.join("tokens.toml");
    std::fs::write(&config, common::api::TOKENS).unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        let output = common::command(&db.url, &["status", "--url", "http://127.0.0.1:1"])
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let said = common::text(&output);
        assert_eq!(
            said.contains("readable by others"),
            warned,
            "mode {mode:o}: {said}"
        );
    }

    // The compose demo publishes nothing beyond loopback and keeps its token off command lines.
    let compose: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
            .unwrap(),
    )
    .unwrap();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            assert!(
                port.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name:?} publishes {port:?} on every interface"
            );
        }
        let check = format!("{:?}", service["healthcheck"]["test"]);
        assert!(!check.contains("demo-token"), "{name:?}: {check}");
    }
}

/// The README's second least-privilege setup: an administrator applies backfilld's schema, and
/// the role gets only DML there. Starting, the daemon finds its migrations applied and creates
/// nothing (sqlx's migrator alone would `CREATE TABLE IF NOT EXISTS` its history table, which
/// needs CREATE on the schema even when the table exists).
#[tokio::test]
async fn a_role_with_only_dml_on_a_schema_an_administrator_migrated_runs_a_job() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2_000).await;
    let migrated = common::cli_with_url(&db.url, &["migrate"]);
    assert_eq!(
        migrated.status.code(),
        Some(0),
        "{}",
        common::text(&migrated)
    );
    let role = format!("dml_{}", &db.name[db.name.len() - 8..]);
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER;
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT, UPDATE ON public.t TO {role};
         GRANT USAGE ON SCHEMA backfilld TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA backfilld TO {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA backfilld TO {role};"
    ))
    .await;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let job = db.write_job(
        "dml.toml",
        "name = \"dml\"\ntable = \"t\"\nkey = \"id\"\n[set]\nhits = \"hits + 1\"\n",
    );
    let output = common::cli_with_url(&url, &["run", job.to_str().unwrap()]);
    let said = common::text(&output);
    db.exec(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    assert_eq!(output.status.code(), Some(0), "{said}");
    common::assert_each_hit_once(&db.pool, "t", 2_000).await;
}

#[tokio::test]
async fn an_ordinary_role_with_the_readme_grants_runs_a_job() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2_000).await;
    let role = format!("plain_{}", &db.name[db.name.len() - 8..]);
    // The README's grants, with the daemon's schema made for the role by an administrator.
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER;
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT, UPDATE ON public.t TO {role};
         CREATE SCHEMA backfilld AUTHORIZATION {role};"
    ))
    .await;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let job = db.write_job(
        "plain.toml",
        "name = \"plain\"\ntable = \"t\"\nkey = \"id\"\n[set]\nhits = \"hits + 1\"\n",
    );
    let output = common::cli_with_url(&url, &["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", common::text(&output));
    common::assert_each_hit_once(&db.pool, "t", 2_000).await;
    db.exec(&format!(
        "DROP SCHEMA backfilld CASCADE; DROP OWNED BY {role}; DROP ROLE {role}"
    ))
    .await;
}
