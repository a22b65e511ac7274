//! The daemon as users meet it: real `serve` processes on free ports, real HTTP clients, a real
//! PostgreSQL. Waiting is bounded polling of observable state, never a bare sleep-and-hope.

mod common;

use std::time::{Duration, Instant};

use common::api::{self, Api, ADMIN, TOKENS};
use common::{
    assert_each_hit_once, assert_table_matches_checkpoints, checkpointed, eventually, held_leases,
    hits_table, job_toml, wait_for_leases_released, wait_for_progress, Daemon, TestDb,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ONCALL: &str = "operate-token-123";

/// The shared job body, with extra fields given as JSON text.
fn hits_job(name: &str, extra: &str) -> Value {
    api::hits_job(name, serde_json::from_str(extra).unwrap())
}

#[tokio::test]
async fn submit_runs_to_completion_over_json_and_toml() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 3_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    let (status, job) = api
        .post(
            "/api/v1/jobs",
            Some(hits_job("by-json", r#"{"partitions": 2}"#)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["partitions"].as_array().unwrap().len(), 2);
    api.wait_state("by-json", "completed", Duration::from_secs(60))
        .await;
    assert_each_hit_once(&db.pool, "t", 3_000).await;

    // The same document as TOML, under another name, to a second column.
    db.exec("ALTER TABLE t ADD COLUMN copied int").await;
    let toml = job_toml("by-toml", "t", "\"id\"", "copied = \"hits\"", "");
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs", daemon.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/toml")
        .body(toml)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    api.wait_state("by-toml", "completed", Duration::from_secs(60))
        .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE copied = 1")
            .await,
        3_000
    );

    let (_, job) = api.get("/api/v1/jobs/by-json").await;
    for field in [
        "name",
        "state",
        "spec",
        "rows_scanned",
        "rows_updated",
        "progress",
        "eta_seconds",
        "batch_size",
        "rate_rows_per_second",
        "throttled",
        "last_error",
        "created_at",
        "started_at",
        "finished_at",
        "partitions",
    ] {
        assert!(job.get(field).is_some(), "job view lacks {field}: {job}");
    }
    assert_eq!(job["progress"], json!(1.0));
    assert_eq!(job["rows_updated"], json!(3000));
    let (_, list) = api.get("/api/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let (_, events) = api.get("/api/v1/jobs/by-json/events").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["submitted", "running", "completed"]);
    assert_eq!(events["events"][0]["actor"], json!("admin"));
    assert_eq!(events["events"][1]["actor"], json!("daemon"));
}

#[tokio::test]
async fn pause_stops_within_one_batch_per_partition_and_resume_skips_nothing() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 6_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let admin = Api::new(&daemon, Some(ADMIN));
    let oncall = Api::new(&daemon, Some(ONCALL));
    let (status, _) = admin
        .post(
            "/api/v1/jobs",
            Some(hits_job(
                "pausable",
                r#"{"partitions": 2, "rows_per_second": 1500}"#,
            )),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    wait_for_progress(&db, 500, Duration::from_secs(60)).await;
    let (status, job) = oncall.post("/api/v1/jobs/pausable/pause", None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], json!("paused"));
    let at_pause = checkpointed(&db.pool).await;
    // Every worker lets go of its partition once it has noticed.
    wait_for_leases_released(&db).await;
    let stopped = checkpointed(&db.pool).await;
    assert!(
        stopped - at_pause <= 2 * 100,
        "more than one batch per partition after the pause: {at_pause} -> {stopped}"
    );
    // Still nothing a second later: the job really is stopped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(checkpointed(&db.pool).await, stopped);
    assert_eq!(
        assert_table_matches_checkpoints(&db.pool, "t", "after the pause").await,
        stopped
    );

    // Asking again is no error: the job is where the request wants it.
    let (status, job) = oncall.post("/api/v1/jobs/pausable/pause", None).await;
    assert_eq!(status, StatusCode::OK, "pausing a paused job: {job}");
    assert_eq!(job["state"], json!("paused"));
    let (status, job) = oncall.post("/api/v1/jobs/pausable/resume", None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    oncall
        .wait_state("pausable", "completed", Duration::from_secs(60))
        .await;
    assert_each_hit_once(&db.pool, "t", 6_000).await;
    let (_, events) = oncall.get("/api/v1/jobs/pausable/events").await;
    let pause = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == json!("paused"))
        .expect("a paused event");
    assert_eq!(pause["actor"], json!("oncall"));
}

#[tokio::test]
async fn cancel_stops_the_job_for_good() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 5_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    api.post(
        "/api/v1/jobs",
        Some(hits_job("doomed", r#"{"rows_per_second": 1000}"#)),
    )
    .await;
    wait_for_progress(&db, 200, Duration::from_secs(60)).await;
    let (status, job) = api.post("/api/v1/jobs/doomed/cancel", None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], json!("cancelled"));
    wait_for_leases_released(&db).await;
    let stopped = checkpointed(&db.pool).await;
    assert!(stopped < 5_000);
    for action in ["resume", "pause"] {
        let (status, _) = api
            .post(&format!("/api/v1/jobs/doomed/{action}"), None)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{action} after cancel");
    }
    // Cancelling again changes nothing and is no error.
    let (status, job) = api.post("/api/v1/jobs/doomed/cancel", None).await;
    assert_eq!(
        (status, job["state"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let (status, _) = api
        .patch("/api/v1/jobs/doomed", json!({"batch_size": 10}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        assert_table_matches_checkpoints(&db.pool, "t", "after the cancel").await,
        stopped
    );
}

#[tokio::test]
async fn patch_changes_the_measured_rate_within_a_batch() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 30_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let admin = Api::new(&daemon, Some(ADMIN));
    let oncall = Api::new(&daemon, Some(ONCALL));
    admin
        .post(
            "/api/v1/jobs",
            Some(hits_job(
                "tunable",
                r#"{"rows_per_second": 400, "batch_size": 50}"#,
            )),
        )
        .await;
    wait_for_progress(&db, 100, Duration::from_secs(60)).await;
    let slow = common::measured_rate(&db, Duration::from_secs(3)).await;
    let (status, job) = oncall
        .patch(
            "/api/v1/jobs/tunable",
            json!({"rows_per_second": 5000, "batch_size": 250}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["batch_size"], json!(250));
    assert_eq!(job["spec"]["rows_per_second"], json!(5000));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fast = common::measured_rate(&db, Duration::from_secs(2)).await;
    println!("PATCH rows_per_second 400 -> 5000: measured {slow:.0} -> {fast:.0} rows/s");
    assert!(
        slow <= 440.0,
        "the limit of 400 rows/s was exceeded: {slow:.0}"
    );
    assert!(
        fast > 3.0 * slow,
        "PATCH had no effect: {slow:.0} -> {fast:.0}"
    );

    // Bad tuning is refused and changes nothing.
    for body in [
        json!({"batch_size": 0}),
        json!({"batch_size": -5}),
        json!({"rows_per_second": 0}),
        json!({"pause": "soon"}),
        json!({"colour": "blue"}),
        json!("not an object"),
    ] {
        let (status, answer) = oncall.patch("/api/v1/jobs/tunable", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (_, job) = oncall.get("/api/v1/jobs/tunable").await;
    assert_eq!(job["batch_size"], json!(250));
    let (_, events) = oncall.get("/api/v1/jobs/tunable/events").await;
    let retuned: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == json!("retuned"))
        .collect();
    assert_eq!(retuned.len(), 1);
    assert_eq!(retuned[0]["actor"], json!("oncall"));

    // A bad duty cycle is refused naming the field; a good one shows in the job view.
    for bad in [json!(0), json!(1.5), json!(0.333), json!("half")] {
        let body = json!({ "duty_cycle": bad });
        let (status, answer) = oncall.patch("/api/v1/jobs/tunable", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains("duty_cycle"), "{bad}: {answer}");
    }
    let (_, job) = oncall.get("/api/v1/jobs/tunable").await;
    assert_eq!(job["duty_cycle"], Value::Null, "{job}");
    for (body, shown) in [(json!(0.5), json!(0.5)), (Value::Null, Value::Null)] {
        let (status, job) = oncall
            .patch("/api/v1/jobs/tunable", json!({ "duty_cycle": body }))
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        assert_eq!(job["duty_cycle"], shown, "{job}");
        assert_eq!(
            job["spec"].get("duty_cycle").cloned(),
            Some(shown).filter(|v| !v.is_null())
        );
    }
    let (_, doc) = oncall.get("/api/v1/openapi.json").await;
    for schema in ["Tuning", "JobView"] {
        let field = &doc["components"]["schemas"][schema]["properties"]["duty_cycle"];
        assert!(field.is_object(), "{schema}: {field}");
    }
}

#[tokio::test]
async fn two_daemons_share_a_job_exactly_once_and_a_pause_stops_both() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 20_000).await;
    let jobs_dir = api::jobs_dir(&db);
    let config = format!("workers = 2\n{TOKENS}");
    let first = Daemon::start(&db.url, &db.dir, &config, &jobs_dir);
    let second = Daemon::start(&db.url, &db.dir, &config, &jobs_dir);
    let one = Api::new(&first, Some(ADMIN));
    let two = Api::new(&second, Some(ADMIN));
    one.post(
        "/api/v1/jobs",
        Some(hits_job(
            "shared",
            r#"{"partitions": 4, "rows_per_second": 4000}"#,
        )),
    )
    .await;
    // Both processes hold partitions.
    eventually(Duration::from_secs(30), "both daemons working", || async {
        let owners = db
            .scalar_i64("SELECT count(DISTINCT lease_owner) FROM backfilld.progress WHERE lease_owner IS NOT NULL")
            .await;
        (owners == 2).then_some(())
    })
    .await;
    // A pause sent to the second stops the work of both.
    let (status, _) = two.post("/api/v1/jobs/shared/pause", None).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_leases_released(&db).await;
    let stopped = checkpointed(&db.pool).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        checkpointed(&db.pool).await,
        stopped,
        "work went on after the pause"
    );
    let (status, _) = one.post("/api/v1/jobs/shared/resume", None).await;
    assert_eq!(status, StatusCode::OK);
    one.wait_state("shared", "completed", Duration::from_secs(60))
        .await;
    assert_each_hit_once(&db.pool, "t", 20_000).await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_batches_and_exits_0() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10_000).await;
    let mut daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    api.post(
        "/api/v1/jobs",
        Some(hits_job(
            "drained",
            r#"{"partitions": 2, "rows_per_second": 2000}"#,
        )),
    )
    .await;
    wait_for_progress(&db, 300, Duration::from_secs(60)).await;
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
    assert_table_matches_checkpoints(&db.pool, "t", "after SIGTERM").await;
    assert_eq!(held_leases(&db).await, 0, "leases released on the way out");
    // Another daemon picks the job up from the checkpoints.
    let next = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    Api::new(&next, Some(ADMIN))
        .wait_state("drained", "completed", Duration::from_secs(60))
        .await;
    assert_each_hit_once(&db.pool, "t", 10_000).await;
}

#[tokio::test]
async fn connections_cut_under_a_running_job_then_it_completes_correctly() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 12_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    api.post(
        "/api/v1/jobs",
        Some(hits_job(
            "resilient",
            r#"{"partitions": 2, "rows_per_second": 3000}"#,
        )),
    )
    .await;
    for round in 0..3 {
        wait_for_progress(&db, 1_500 * (round + 1), Duration::from_secs(30)).await;
        // Every backfilld session in this database, mid-batch or idle, is cut.
        let cut = db
            .scalar_i64(&format!(
                "SELECT count(pg_terminate_backend(pid))::int8 FROM pg_stat_activity
                  WHERE datname = '{}' AND application_name = 'backfilld' AND pid <> pg_backend_pid()",
                db.name
            ))
            .await;
        assert!(cut > 0, "no backfilld session to cut");
    }
    api.wait_state("resilient", "completed", Duration::from_secs(90))
        .await;
    assert_each_hit_once(&db.pool, "t", 12_000).await;
}

#[tokio::test]
async fn the_daemon_waits_for_an_unreachable_database_and_says_why() {
    let db = TestDb::new().await;
    let dir = api::jobs_dir(&db);
    // Nothing listens on port 1.
    let daemon = Daemon::start_unready(
        "postgres://postgres@127.0.0.1:1/postgres",
        &db.dir,
        "",
        &dir,
    );
    let api = Api::new(&daemon, None);
    assert_eq!(api.get("/healthz").await.0, StatusCode::OK);
    // Within a probe's timeout (the Kubernetes manifests give it 2 s): not after the pool has
    // given up on connecting (5 s).
    let asked = Instant::now();
    let (status, body) = api.get("/readyz").await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    common::api::assert_error_says(&body, "unreachable");
}

#[tokio::test]
async fn jobs_dir_submits_new_leaves_known_and_skips_changed() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 500).await;
    db.exec("ALTER TABLE t ADD COLUMN other int").await;
    let dir = api::jobs_dir(&db);
    std::fs::write(
        dir.join("a.toml"),
        job_toml("from-dir", "t", "\"id\"", "hits = \"hits + 1\"", ""),
    )
    .unwrap();
    std::fs::write(dir.join("broken.toml"), "name = ").unwrap();
    let mut first = Daemon::start(&db.url, &db.dir, TOKENS, &dir);
    let api = Api::new(&first, Some(ADMIN));
    api.wait_state("from-dir", "completed", Duration::from_secs(30))
        .await;
    assert!(first.log().contains("broken.toml"), "{}", first.log());
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)), Some(0));

    // Same file again: left alone. A changed definition under the same name: skipped, loudly.
    std::fs::write(
        dir.join("a.toml"),
        job_toml("from-dir", "t", "\"id\"", "other = \"1\"", ""),
    )
    .unwrap();
    let second = Daemon::start(&db.url, &db.dir, TOKENS, &dir);
    let api = Api::new(&second, Some(ADMIN));
    eventually(
        Duration::from_secs(10),
        "the changed file to be reported",
        || async { second.log().contains("different definition").then_some(()) },
    )
    .await;
    let (_, job) = api.get("/api/v1/jobs/from-dir").await;
    assert_eq!(job["state"], json!("completed"));
    assert_eq!(job["spec"]["set"], json!({"hits": "hits + 1"}));
    assert_each_hit_once(&db.pool, "t", 500).await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE other IS NOT NULL")
            .await,
        0
    );
}
