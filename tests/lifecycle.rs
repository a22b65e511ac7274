//! A job's life cycle as on-call lives it, against real daemons and the real binary: pause
//! from `queued` and twice, delete and reuse a name (not while the sync trigger stays),
//! `--replace` after a failed `set` continuing from the checkpoint exactly once, `run
//! --resume`, which tunables win when a foreground run restarts after a PATCH, and the logs:
//! one line per job event in `serve`, no WARN in a normal run with long batches.

mod common;

use std::time::Duration;

use common::api::{hits_job, jobs_dir, Api, ADMIN, TOKENS};
use common::{eventually, free_port, text, Daemon, TestDb};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_from_queued_and_asking_twice_are_fine() {
    let db = TestDb::new().await;
    common::hits_table(&db.pool, "t", "bigint", "i", 3000).await;
    // One worker: while the slow job holds it, the next one stays queued.
    let daemon = Daemon::start(&db.url, &db.dir, "workers = 1\n", &jobs_dir(&db));
    let api = Api::new(&daemon, None);
    api.submit(hits_job(
        "slow",
        json!({"rows_per_second": 200, "batch_size": 20}),
    ))
    .await;
    api.wait_state("slow", "running", Duration::from_secs(10))
        .await;
    common::wait_for_progress(&db, 1, Duration::from_secs(10)).await;
    api.submit(hits_job("next", json!({}))).await;
    assert_eq!(api.state("next").await, "queued");

    for _ in 0..2 {
        let (status, job) = api.post("/api/v1/jobs/next/pause", None).await;
        assert_eq!(
            (status, job["state"].clone()),
            (StatusCode::OK, json!("paused")),
            "{job}"
        );
    }
    // A job paused while queued goes back to the queue, and asking again changes nothing.
    for _ in 0..2 {
        let (status, job) = api.post("/api/v1/jobs/next/resume", None).await;
        assert_eq!(
            (status, job["state"].clone()),
            (StatusCode::OK, json!("queued")),
            "{job}"
        );
    }
    assert_eq!(
        kinds(&api.events("next").await),
        ["submitted", "paused", "queued"],
        "a no-op records no event"
    );

    for (action, state) in [
        ("pause", "paused"),
        ("pause", "paused"),
        ("resume", "running"),
        ("resume", "running"),
        ("cancel", "cancelled"),
        ("cancel", "cancelled"),
    ] {
        let (status, job) = api.post(&format!("/api/v1/jobs/slow/{action}"), None).await;
        assert_eq!(
            (status, job["state"].clone()),
            (StatusCode::OK, json!(state)),
            "{action}: {job}"
        );
    }
    // Still refused: what the state does not allow.
    let (status, body) = api.post("/api/v1/jobs/slow/resume", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    common::api::assert_error_says(&body, "cancelled");
    // The slot is free: the queued job runs to its end.
    api.wait_state("next", "completed", Duration::from_secs(30))
        .await;
    let log = daemon.log();
    for line in [
        "job paused",
        "job resumed",
        "job cancelled",
        "job started",
        "job completed",
    ] {
        assert!(
            log.contains(line),
            "no {line:?} line in serve's log:\n{log}"
        );
    }
    let completed = log.lines().find(|l| l.contains("job completed")).unwrap();
    for field in [
        "job=next",
        "rows_scanned=3000",
        "duration=",
        "rows_per_second=",
    ] {
        assert!(completed.contains(field), "{field} missing: {completed}");
    }
}

async fn delete(api: &Api, name: &str) -> (StatusCode, Value) {
    api.send(Method::DELETE, &format!("/api/v1/jobs/{name}"), None)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_frees_the_name_and_waits_for_the_sync_trigger_to_go() {
    let db = TestDb::new().await;
    common::hits_table(&db.pool, "t", "bigint", "i", 500).await;
    db.exec("ALTER TABLE t ADD COLUMN email text, ADD COLUMN customer_email text DEFAULT 'x'")
        .await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let admin = Api::new(&daemon, Some(ADMIN));
    let operator = Api::new(&daemon, Some("operate-token-123"));

    admin
        .submit(hits_job(
            "once",
            json!({"rows_per_second": 200, "batch_size": 20}),
        ))
        .await;
    admin
        .wait_state("once", "running", Duration::from_secs(10))
        .await;
    let (status, body) = delete(&admin, "once").await;
    assert_eq!(status, StatusCode::CONFLICT, "a running job: {body}");
    common::api::assert_error_says(&body, "backfilld cancel once");
    assert_eq!(delete(&operator, "once").await.0, StatusCode::FORBIDDEN);
    assert_eq!(delete(&admin, "nobody").await.0, StatusCode::NOT_FOUND);
    let (status, _) = admin.post("/api/v1/jobs/once/cancel", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = delete(&admin, "once").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = admin.get("/api/v1/jobs/once").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The name is free: the same job again, from the start.
    db.exec("UPDATE t SET hits = 0").await;
    admin.submit(hits_job("once", json!({}))).await;
    admin
        .wait_state("once", "completed", Duration::from_secs(30))
        .await;
    common::assert_each_hit_once(&db.pool, "t", 500).await;
    // And through the CLI.
    let output = db.cli(&["delete", "once", "--url", &daemon.base, "--token", ADMIN]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("deleted"),
        "{}",
        text(&output)
    );
    let output = db.cli(&["delete", "once", "--url", &daemon.base, "--token", ADMIN]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));

    // A job whose sync trigger is still installed keeps its name until `sync remove`.
    let sync_job = "name = \"mail\"\ntable = \"t\"\nkey = \"id\"\nwhere = \"email IS DISTINCT FROM customer_email\"\n[sync]\n[set]\nemail = \"customer_email\"\n";
    let file = db.write_job("mail.toml", sync_job);
    let (status, body) = admin
        .http
        .post(format!("{}/api/v1/jobs", daemon.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/toml")
        .body(sync_job)
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    admin
        .wait_state("mail", "completed", Duration::from_secs(30))
        .await;
    let (status, body) = delete(&admin, "mail").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    common::api::assert_error_says(&body, "backfilld sync remove");
    let output = db.cli(&["sync", "remove", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(delete(&admin, "mail").await.0, StatusCode::NO_CONTENT);
    let log = daemon.log();
    assert_eq!(
        log.matches("job completed").count(),
        2,
        "one completion line per job:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_after_a_failed_set_continues_from_the_checkpoint_exactly_once() {
    let db = TestDb::new().await;
    common::hits_table(&db.pool, "t", "bigint", "i", 1000).await;
    // Rows past the first six batches hold text that is no number.
    db.exec(
        "ALTER TABLE t ADD COLUMN v text, ADD COLUMN n int;
             UPDATE t SET v = CASE WHEN id BETWEEN 651 AND 660 THEN 'oops' ELSE id::text END",
    )
    .await;
    let job = |set_n: &str, extra: &str| {
        format!("name = \"cast\"\ntable = \"t\"\nkey = \"id\"\nbatch_size = 100\nmax_attempts = 2\n{extra}\n[set]\nhits = \"hits + 1\"\nn = \"{set_n}\"\n")
    };
    let broken = db.write_job("broken.toml", &job("v::int", ""));
    let output = db.cli(&["run", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        600
    );

    let fixed = db.write_job(
        "fixed.toml",
        &job("CASE WHEN v ~ '^[0-9]+$' THEN v::int END", ""),
    );
    // Without --replace the changed definition is refused, and the message says what to do.
    let output = db.cli(&["run", fixed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("--replace"), "{}", text(&output));
    // Another table is refused, with the reason.
    db.exec(
        "CREATE TABLE other (id bigint PRIMARY KEY, hits int NOT NULL DEFAULT 0, v text, n int)",
    )
    .await;
    let elsewhere = db.write_job(
        "elsewhere.toml",
        &job("1", "").replace("table = \"t\"", "table = \"other\""),
    );
    let output = db.cli(&["run", elsewhere.to_str().unwrap(), "--replace"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("table cannot change"),
        "{}",
        text(&output)
    );

    let output = db.cli(&["run", fixed.to_str().unwrap(), "--replace"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    common::assert_each_hit_once(&db.pool, "t", 1000).await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE n IS NULL")
            .await,
        10
    );
    let replaced = db
        .scalar_string("SELECT detail FROM backfilld.events WHERE kind = 'replaced'")
        .await
        .unwrap();
    let detail: Value = serde_json::from_str(&replaced).unwrap();
    assert_eq!(detail["old"]["set"]["n"], json!("v::int"), "{detail}");
    assert_eq!(
        detail["new"]["set"]["n"],
        json!("CASE WHEN v ~ '^[0-9]+$' THEN v::int END")
    );
    // A completed job is refused, with what to do instead.
    let output = db.cli(&["run", broken.to_str().unwrap(), "--replace"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("backfilld delete cast"),
        "{}",
        text(&output)
    );
}

/// `run FILE --listen` on a free port, and the API it serves.
async fn foreground(db: &TestDb, file: &str, extra: &[&str]) -> (std::process::Child, Api) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["run", file, "--listen", &listen];
    args.extend_from_slice(extra);
    let child = common::spawn(&db.url, &args);
    let api = Api::at(&format!("http://{listen}"), None);
    eventually(Duration::from_secs(20), "the run's API", || async {
        (common::http_status(&api.base, "/healthz") == Some(200)).then_some(())
    })
    .await;
    (child, api)
}

fn wait(child: std::process::Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_foreground_job_resumes_with_run_resume() {
    let db = TestDb::new().await;
    common::hits_table(&db.pool, "t", "bigint", "i", 2000).await;
    let file = db.write_job(
        "job.toml",
        &common::job_toml(
            "fg",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 50\nrows_per_second = 500",
        ),
    );
    let file = file.to_str().unwrap();
    let (child, api) = foreground(&db, file, &[]).await;
    common::wait_for_progress(&db, 50, Duration::from_secs(20)).await;
    let (status, _) = api.post("/api/v1/jobs/fg/pause", None).await;
    assert_eq!(status, StatusCode::OK);
    let output = wait(child);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));

    let output = db.cli(&["run", file]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(text(&output).contains("--resume"), "{}", text(&output));

    let output = common::command(&db.url, &["run", file, "--resume"])
        .env("USER", "alice")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    common::assert_each_hit_once(&db.pool, "t", 2000).await;
    let who = db
        .scalar_string(
            "SELECT actor FROM backfilld.events WHERE kind = 'running' AND from_state = 'paused'",
        )
        .await;
    assert_eq!(who.as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_survives_a_foreground_restart_unless_the_file_changed_that_value() {
    let db = TestDb::new().await;
    common::hits_table(&db.pool, "t", "bigint", "i", 3000).await;
    let toml = |rate: u32, extra: &str| {
        common::job_toml(
            "tuned",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            &format!("batch_size = 50\nrows_per_second = {rate}\n{extra}"),
        )
    };
    let file = db.write_job("job.toml", &toml(200, ""));
    let file = file.to_str().unwrap();
    let (child, api) = foreground(&db, file, &[]).await;
    let (status, body) = api
        .patch("/api/v1/jobs/tuned", json!({"rows_per_second": 300}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    common::signal(child.id(), "INT");
    assert_eq!(wait(child).status.code(), Some(130));

    // The file did not change its rate: the operator's 300 stays, and says so.
    let (child, api) = foreground(&db, file, &[]).await;
    assert_eq!(
        api.job("tuned").await["spec"]["rows_per_second"],
        json!(300)
    );
    let kept: Vec<Value> = api
        .events("tuned")
        .await
        .into_iter()
        .filter(|e| e["kind"] == "tunables_kept")
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0]["detail"]
            .as_str()
            .unwrap()
            .contains("rows_per_second = 300 (the file says 200)"),
        "{kept:?}"
    );
    common::signal(child.id(), "INT");
    let output = wait(child);
    assert_eq!(output.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("kept the live rows_per_second = 300"),
        "{}",
        text(&output)
    );

    // The author edits the file's rate and adds a duty cycle: the file wins, from the live
    // values to its own, and the duty cycle reaches the jobs table's column.
    db.write_job("job.toml", &toml(5000, "duty_cycle = 0.5"));
    let output = db.cli(&["run", file]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let retuned = db
        .scalar_string(
            "SELECT detail FROM backfilld.events WHERE kind = 'retuned' AND actor = 'cli'",
        )
        .await
        .unwrap();
    assert!(retuned.contains("rows_per_second 300 → 5000"), "{retuned}");
    assert!(retuned.contains("duty_cycle 1 → 0.5"), "{retuned}");
    let live = db
        .scalar_i64("SELECT duty_cycle_percent::int8 FROM backfilld.jobs WHERE name = 'tuned'")
        .await;
    assert_eq!(live, 50);
    common::assert_each_hit_once(&db.pool, "t", 3000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_batches_log_no_warning() {
    let db = TestDb::new().await;
    common::hits_table(&db.pool, "t", "bigint", "i", 1500).await;
    // 2 ms a row: a 600-row batch takes over a second, the target being two.
    let file = db.write_job(
        "slow.toml",
        &common::job_toml(
            "slow",
            "t",
            "\"id\"",
            "hits = \"hits + 1 + length(pg_sleep(0.002)::text)\"",
            "batch_size = 600\ntarget_batch_time = \"2s\"\nmax_batch_size = 800",
        ),
    );
    let output = db.cli(&["run", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let log = String::from_utf8_lossy(&output.stderr);
    let slowest = db
        .scalar_i64("SELECT max(batches) FROM backfilld.progress")
        .await;
    assert!(slowest >= 2, "{log}");
    assert!(
        !log.contains("WARN"),
        "a normal run logged a warning:\n{log}"
    );
    assert!(log.contains("job completed"), "{log}");
}
