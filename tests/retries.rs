//! Errors that retrying can help, provoked for real against a running daemon: a lock timeout
//! (55P03) from a row the application holds, a statement timeout (57014) from a slow trigger, a
//! deadlock (40P01) and a serialization failure (40001). Each is retried and the job ends with
//! every row incremented exactly once; a batch that keeps failing fails the job with the
//! database's message, and `resume` retries it. (Dropped connections: tests/daemon.rs,
//! `connections_cut_under_a_running_job_then_it_completes_correctly`.)

mod common;

use std::time::Duration;

use common::api::{assert_no_panic, hits_job, jobs_dir, Api, ADMIN, TOKENS};
use common::{
    assert_each_hit_once, assert_table_matches_checkpoints, eventually, hits_table, hold_row,
    wait_for_a_lock_waiter, Daemon, TestDb,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn retried(job: &str) -> String {
    format!("database=\"default\",job=\"{job}\",outcome=\"retried\"")
}

async fn wait_retried(api: &Api, job: &str, at_least: f64) {
    eventually(Duration::from_secs(30), "retried batches", || async {
        (api.metric("backfill_batches_total", &retried(job)).await >= at_least).then_some(())
    })
    .await;
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_lock_timeout_is_retried_and_the_batch_succeeds_once_the_lock_is_gone() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    let app = hold_row(&db, 1_050).await;
    // Ten attempts with backoff from 100 ms give the lock several seconds to go away.
    api.submit(hits_job(
        "patient",
        json!({"lock_timeout": "100ms", "max_attempts": 10}),
    ))
    .await;
    wait_retried(&api, "patient", 2.0).await;
    assert_eq!(api.job("patient").await["state"], json!("running"));
    app.commit().await.unwrap();
    let job = api
        .wait_state("patient", "completed", Duration::from_secs(30))
        .await;
    assert_each_hit_once(&db.pool, "t", 2_000).await;
    assert_eq!(job["last_error"], Value::Null);
    assert_eq!(
        kinds(&api.events("patient").await),
        ["submitted", "running", "completed"]
    );
    assert!(daemon.log().contains("lock timeout"), "{}", daemon.log());
    assert_no_panic(&daemon.log());
}

#[tokio::test]
async fn a_batch_that_keeps_failing_fails_the_job_with_the_database_message_and_resume_retries_it()
{
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    let app = hold_row(&db, 1_050).await;
    api.submit(hits_job(
        "stuck",
        json!({"lock_timeout": "100ms", "max_attempts": 3}),
    ))
    .await;
    let job = api
        .wait_state("stuck", "failed", Duration::from_secs(30))
        .await;
    let last_error = job["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        last_error.contains("lock timeout")
            && last_error.contains("55P03")
            && last_error.contains("3 times"),
        "{job}"
    );
    let events = api.events("stuck").await;
    let failed = events.last().unwrap();
    assert_eq!(failed["kind"], json!("failed"), "{events:?}");
    assert_eq!(failed["actor"], json!("daemon"));
    assert!(
        failed["detail"].as_str().unwrap().contains("lock timeout"),
        "{failed}"
    );
    // Two retries, then the third attempt failed the job.
    assert_eq!(
        api.metric("backfill_batches_total", &retried("stuck"))
            .await,
        2.0
    );
    assert_eq!(
        api.metric(
            "backfill_batches_total",
            "database=\"default\",job=\"stuck\",outcome=\"failed\""
        )
        .await,
        1.0
    );
    // The rows before the held one are done; nothing of the failed batch remains.
    assert_table_matches_checkpoints(&db.pool, "t", "after the failed batch").await;
    assert_eq!(job["rows_scanned"], json!(1_000));

    app.commit().await.unwrap();
    let (status, body) = api.post("/api/v1/jobs/stuck/resume", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = api
        .wait_state("stuck", "completed", Duration::from_secs(30))
        .await;
    assert_eq!(job["last_error"], Value::Null, "{job}");
    assert_each_hit_once(&db.pool, "t", 2_000).await;
    assert_eq!(
        kinds(&api.events("stuck").await),
        ["submitted", "running", "failed", "running", "completed"]
    );
    assert_no_panic(&daemon.log());
}

#[tokio::test]
async fn a_statement_timeout_is_retried_until_the_statement_is_fast_again() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    // A statement-level trigger as slow as the control row says: one slow batch at a time.
    db.exec(
        "CREATE TABLE ctl (sleep_s float8 NOT NULL);
         INSERT INTO ctl VALUES (1);
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep((SELECT sleep_s FROM ctl)); RETURN NULL; END $$;
         CREATE TRIGGER slow BEFORE UPDATE ON t FOR EACH STATEMENT EXECUTE FUNCTION slow();",
    )
    .await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    api.submit(hits_job(
        "slow",
        json!({"statement_timeout": "300ms", "max_attempts": 10, "batch_size": 250}),
    ))
    .await;
    wait_retried(&api, "slow", 2.0).await;
    assert_eq!(api.job("slow").await["rows_scanned"], json!(0));
    db.exec("UPDATE ctl SET sleep_s = 0").await;
    api.wait_state("slow", "completed", Duration::from_secs(30))
        .await;
    assert_each_hit_once(&db.pool, "t", 1_000).await;
    let log = daemon.log();
    assert!(
        log.contains("statement timeout") && log.contains("57014"),
        "{log}"
    );
    assert_no_panic(&log);
}

#[tokio::test]
async fn a_deadlock_with_the_application_is_retried() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2_000).await;
    // The daemon's sessions look for deadlocks after 3 s; this test's after a minute. So the
    // batch, not the application, is the victim of the cycle built below.
    db.exec(&format!(
        "ALTER DATABASE \"{}\" SET deadlock_timeout = '3s'",
        db.name
    ))
    .await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    let mut app = hold_row(&db, 1_050).await;
    sqlx::query("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut *app)
        .await
        .unwrap();
    api.submit(hits_job("cyclic", json!({"max_attempts": 5})))
        .await;
    // The batch holds its partition's progress row (the fence) and waits for row 1050...
    wait_for_a_lock_waiter(&db, "the batch waiting on the row").await;
    // ...and the application now wants that progress row: a cycle.
    sqlx::query("SELECT 1 FROM backfilld.progress FOR UPDATE")
        .execute(&mut *app)
        .await
        .expect("the application must not be the deadlock victim");
    app.rollback().await.unwrap();
    api.wait_state("cyclic", "completed", Duration::from_secs(30))
        .await;
    assert_each_hit_once(&db.pool, "t", 2_000).await;
    assert!(
        api.metric("backfill_batches_total", &retried("cyclic"))
            .await
            >= 1.0
    );
    let log = daemon.log();
    assert!(
        log.contains("deadlock detected") && log.contains("40P01"),
        "{log}"
    );
    assert_no_panic(&log);
}

#[tokio::test]
async fn a_serialization_failure_under_repeatable_read_is_retried() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2_000).await;
    db.exec("ALTER TABLE t ADD COLUMN note text").await;
    // Some shops run every transaction at REPEATABLE READ; a batch whose row was changed by a
    // transaction that committed after the batch's snapshot then fails with 40001.
    db.exec(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'repeatable read'",
        db.name
    ))
    .await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    let mut app = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE t SET note = 'app' WHERE id = 1050")
        .execute(&mut *app)
        .await
        .unwrap();
    api.submit(hits_job("serial", json!({"max_attempts": 5})))
        .await;
    wait_for_a_lock_waiter(&db, "the batch waiting on the row").await;
    app.commit().await.unwrap();
    api.wait_state("serial", "completed", Duration::from_secs(30))
        .await;
    assert_each_hit_once(&db.pool, "t", 2_000).await;
    assert_eq!(
        db.scalar_string("SELECT note FROM t WHERE id = 1050").await,
        Some("app".into())
    );
    let log = daemon.log();
    assert!(
        log.contains("could not serialize") && log.contains("40001"),
        "{log}"
    );
    assert!(
        api.metric("backfill_batches_total", &retried("serial"))
            .await
            >= 1.0
    );
    assert_no_panic(&log);
}
