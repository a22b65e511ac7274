//! Adaptive batch sizes and health throttling, driven step by step against a real PostgreSQL.

mod common;

use std::time::Duration;

use backfilld::engine::worker::{Step, Worker};
use common::{
    api, assert_each_hit_once, eventually, hits_table, hold_row, job_toml, start_job, TestDb,
};
use tokio_util::sync::CancellationToken;

fn reason(worker_job: &backfilld::engine::runtime::JobRuntime) -> String {
    worker_job.snapshot().batch_size_reason.unwrap_or_default()
}

#[tokio::test]
async fn adaptive_batches_grow_toward_the_target_and_halve_after_a_lock_timeout() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 200_000).await;
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "adaptive",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 50\ntarget_batch_time = \"100ms\"\nlock_timeout = \"100ms\"\nmax_attempts = 10",
        ),
    )
    .await;
    let cancel = CancellationToken::new();
    let mut worker = Worker::new(env, runtime.clone(), positions.remove(0));
    for _ in 0..6 {
        assert!(matches!(worker.step(&cancel).await, Step::Continue { .. }));
    }
    // Any machine updates far more than 1,000 rows/s: 100 ms holds more than 100 rows, so the
    // size has grown (at most doubling per batch).
    let grown = runtime.snapshot().batch_size;
    assert!(grown > 100, "batch size stayed at {grown}");
    assert!(
        reason(&runtime).contains("toward 100 ms"),
        "{}",
        reason(&runtime)
    );

    // Another session holds a lock on the next batch's rows: the batch times out, and the
    // retry is half the size.
    let cursor: i64 = worker.claim.cursor.as_ref().unwrap()[0].parse().unwrap();
    let blocker = hold_row(&db, cursor + 1).await;
    let before = runtime.snapshot().batch_size;
    assert!(matches!(worker.step(&cancel).await, Step::Continue { .. }));
    assert_eq!(runtime.snapshot().batch_size, before / 2);
    assert!(
        reason(&runtime).contains("halved after lock_timeout"),
        "{}",
        reason(&runtime)
    );
    let retried = runtime.snapshot().batches_retried;
    assert_eq!(retried, 1);
    blocker.rollback().await.unwrap();
    // Nothing of the timed-out batch was written.
    let updated = db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await;
    assert_eq!(updated, cursor);
    assert!(matches!(worker.step(&cancel).await, Step::Continue { .. }));
    assert!(db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await > cursor);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits > 1").await,
        0
    );
}

/// Runs one step in the background, so a test can watch it wait.
fn step_in_background(mut worker: Worker) -> tokio::task::JoinHandle<(Worker, Step)> {
    tokio::spawn(async move {
        let cancel = CancellationToken::new();
        let step = worker.step(&cancel).await;
        (worker, step)
    })
}

async fn throttle_reason(job: &backfilld::engine::runtime::JobRuntime) -> Option<(String, String)> {
    job.snapshot()
        .throttle
        .map(|t| (t.reason.to_string(), t.detail))
}

#[tokio::test]
async fn a_throttle_query_holds_the_job_and_a_failing_one_fails_safe() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    db.exec("CREATE TABLE health (busy bool NOT NULL); INSERT INTO health VALUES (true);")
        .await;
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "gentle",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nthrottle_query = \"SELECT busy FROM health\"",
        ),
    )
    .await;
    let worker = Worker::new(env, runtime.clone(), positions.remove(0));
    let step = step_in_background(worker);
    let (reason, _) = eventually(Duration::from_secs(10), "the throttle", || async {
        throttle_reason(&runtime).await
    })
    .await;
    assert_eq!(reason, "throttle_query");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        0
    );
    db.exec("UPDATE health SET busy = false").await;
    let (worker, outcome) = tokio::time::timeout(Duration::from_secs(10), step)
        .await
        .expect("the step goes on once the query says so")
        .unwrap();
    assert!(matches!(outcome, Step::Continue { .. }));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        100
    );
    assert!(throttle_reason(&runtime).await.is_none());

    // The query starts failing (its table is gone): the job waits and says why.
    db.exec("DROP TABLE health").await;
    let step = step_in_background(worker);
    let (reason, detail) = eventually(
        Duration::from_secs(10),
        "the fail-safe throttle",
        || async { throttle_reason(&runtime).await },
    )
    .await;
    assert_eq!(reason, "throttle_query");
    assert!(
        detail.contains("failed") && detail.contains("health"),
        "{detail}"
    );
    assert!(!detail.contains(" at line "), "{detail}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        100
    );
    step.abort();
}

#[tokio::test]
async fn busy_databases_and_closed_windows_hold_the_job() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    // Three application sessions busy at once.
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let pool = db.pool.clone();
        sleepers.push(tokio::spawn(async move {
            let _ = sqlx::query("SELECT pg_sleep(30)").execute(&pool).await;
        }));
    }
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "polite",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nmax_active_sessions = 1",
        ),
    )
    .await;
    let worker = Worker::new(env, runtime.clone(), positions.remove(0));
    let step = step_in_background(worker);
    let (reason, detail) = eventually(Duration::from_secs(10), "the throttle", || async {
        throttle_reason(&runtime).await
    })
    .await;
    assert_eq!(reason, "active_sessions");
    assert!(detail.contains("3 active sessions"), "{detail}");
    db.exec(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
          WHERE query = 'SELECT pg_sleep(30)' AND datname = current_database()",
    )
    .await;
    let (_, outcome) = tokio::time::timeout(Duration::from_secs(10), step)
        .await
        .expect("the step goes on once the sessions are idle")
        .unwrap();
    assert!(matches!(outcome, Step::Continue { .. }));
    for sleeper in sleepers {
        let _ = sleeper.await;
    }

    // A window that closed an hour ago and opens in an hour, in a named zone.
    let now_minute = db
        .scalar_i64("SELECT (extract(hour FROM now() AT TIME ZONE 'Asia/Tokyo') * 60 + extract(minute FROM now() AT TIME ZONE 'Asia/Tokyo'))::int8")
        .await;
    let at = |m: i64| {
        format!(
            "{:02}:{:02}",
            m.rem_euclid(1440) / 60,
            m.rem_euclid(1440) % 60
        )
    };
    let window = format!("{}-{} Asia/Tokyo", at(now_minute + 60), at(now_minute - 60));
    hits_table(&db.pool, "u", "bigint", "i", 100).await;
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "nightly",
            "u",
            "\"id\"",
            "hits = \"hits + 1\"",
            &format!("window = \"{window}\""),
        ),
    )
    .await;
    let worker = Worker::new(env, runtime.clone(), positions.remove(0));
    let step = step_in_background(worker);
    let (reason, detail) = eventually(Duration::from_secs(10), "the window", || async {
        throttle_reason(&runtime).await
    })
    .await;
    assert_eq!(reason, "window");
    assert!(detail.contains("Asia/Tokyo"), "{detail}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM u WHERE hits = 1").await,
        0
    );
    step.abort();
}

/// The server's WAL rate, the job's own included: a burst of WAL from another session (logical
/// messages, written at once and outside any transaction) holds the job, and it resumes within
/// a few seconds of the burst's end.
#[tokio::test]
async fn a_wal_burst_holds_the_job_until_the_rate_falls() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "frugal",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nmax_wal_rate = \"16MB/s\"",
        ),
    )
    .await;
    let bursting = CancellationToken::new();
    let burst = {
        let (pool, bursting) = (db.pool.clone(), bursting.clone());
        tokio::spawn(async move {
            // 4 MB at a time, as fast as the server takes it: far above 16 MB/s on any disk.
            while !bursting.is_cancelled() {
                sqlx::raw_sql(
                    "SELECT pg_logical_emit_message(false, 'backfilld-test', repeat('x', 4194304))",
                )
                .execute(&pool)
                .await
                .unwrap();
            }
        })
    };
    let step = step_in_background(Worker::new(env, runtime.clone(), positions.remove(0)));
    let (reason, detail) = eventually(Duration::from_secs(10), "the throttle", || async {
        throttle_reason(&runtime).await
    })
    .await;
    bursting.cancel();
    burst.await.unwrap();
    assert_eq!(reason, "wal_rate");
    assert!(
        detail.contains("max_wal_rate 16.0MB/s") && detail.contains("MB/s over the last"),
        "{detail}"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        0,
        "a batch ran while the WAL rate was over the limit"
    );
    let (_, outcome) = tokio::time::timeout(Duration::from_secs(20), step)
        .await
        .expect("the step goes on once the burst is over")
        .unwrap();
    assert!(matches!(outcome, Step::Continue { .. }));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        100
    );
    assert!(throttle_reason(&runtime).await.is_none());
}

/// `check` refuses `max_wal_rate` where the WAL position cannot be read (here EXECUTE on the
/// function is revoked in this database; on a standby PostgreSQL refuses it during recovery).
#[tokio::test]
async fn max_wal_rate_is_refused_where_the_wal_position_cannot_be_read() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 100).await;
    let role = format!("nowal_{}", &db.name[db.name.len() - 8..]);
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER;
         GRANT SELECT, UPDATE ON t TO {role};
         GRANT CREATE ON DATABASE {} TO {role};
         REVOKE EXECUTE ON FUNCTION pg_current_wal_insert_lsn() FROM PUBLIC;",
        db.name
    ))
    .await;
    let file = db.write_job(
        "frugal.toml",
        &job_toml(
            "frugal",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "max_wal_rate = \"16MB/s\"",
        ),
    );
    let output = common::cli_with_url(
        &db.url.replacen("postgres@", &format!("{role}@"), 1),
        &["check", file.to_str().unwrap()],
    );
    db.exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';
         DROP OWNED BY {role}; DROP ROLE {role};"
    ))
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", common::text(&output));
    assert!(
        stderr.contains("max_wal_rate") && stderr.contains("permission denied"),
        "{stderr}"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        0
    );
}

/// A worker whose role cannot see other roles' activity (no pg_monitor) cannot count their
/// active sessions: PostgreSQL hides their state, so it would count 0 and never wait.
#[tokio::test]
async fn active_sessions_that_cannot_be_seen_hold_the_job() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    let role = format!("blind_{}", &db.name[db.name.len() - 8..]);
    db.exec(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER"))
        .await;
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let pool = db.pool.clone();
        sleepers.push(tokio::spawn(async move {
            let _ = sqlx::query("SELECT pg_sleep(30)").execute(&pool).await;
        }));
    }
    // Submitted by the superuser (as by a replica with other grants), run as the role.
    let (runtime, mut env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "unseen",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nmax_active_sessions = 1",
        ),
    )
    .await;
    env.pool = backfilld::plumbing::db::Db::from_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&db.url.replacen("postgres@", &format!("{role}@"), 1))
            .await
            .unwrap(),
        backfilld::plumbing::db::PoolMode::Session,
    );
    let step = step_in_background(Worker::new(env, runtime.clone(), positions.remove(0)));
    // Polled without panicking, so that the role is dropped whatever happens.
    let mut throttle = None;
    for _ in 0..100 {
        throttle = throttle_reason(&runtime).await;
        if throttle.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step.abort();
    let _ = step.await;
    db.exec(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
          WHERE query = 'SELECT pg_sleep(30)' AND datname = current_database()",
    )
    .await;
    for sleeper in sleepers {
        let _ = sleeper.await;
    }
    db.exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .await;
    db.exec(&format!("DROP ROLE {role}")).await;
    let (reason, detail) = throttle.expect("the job never waited");
    assert_eq!(reason, "active_sessions");
    assert!(
        detail.contains("pg_monitor") && detail.contains("max_active_sessions"),
        "{detail}"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        0
    );
}

#[tokio::test]
async fn the_api_and_metrics_show_the_throttle_reason() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2_000).await;
    db.exec("CREATE TABLE health (busy bool NOT NULL); INSERT INTO health VALUES (true);")
        .await;
    let jobs = api::jobs_dir(&db);
    std::fs::write(
        jobs.join("held.toml"),
        job_toml(
            "held",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\ntarget_batch_time = \"200ms\"\nthrottle_query = \"SELECT busy FROM health\"",
        ),
    )
    .unwrap();
    let daemon = common::Daemon::start(&db.url, &db.dir, "", &jobs);
    let client = api::Api::new(&daemon, None);
    let job = eventually(Duration::from_secs(20), "a throttled view", || async {
        let job = client.job("held").await;
        (job["throttled"] == "throttle_query").then_some(job)
    })
    .await;
    assert_eq!(job["target_batch_time"], "200ms");
    assert!(job["throttle_detail"]
        .as_str()
        .unwrap()
        .contains("returned true"));
    let metrics = client.metrics().await;
    assert!(
        metrics.contains(
            "backfill_throttled{database=\"default\",job=\"held\",reason=\"throttle_query\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "backfill_throttled{database=\"default\",job=\"held\",reason=\"replica_lag\"} 0"
    ));
    db.exec("UPDATE health SET busy = false").await;
    client
        .wait_state("held", "completed", Duration::from_secs(30))
        .await;
    assert_each_hit_once(&db.pool, "t", 2_000).await;
}

#[tokio::test]
async fn a_throttle_query_that_calls_a_writing_function_fails_read_only_and_throttles() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    db.exec(
        "CREATE TABLE precious (x int); INSERT INTO precious VALUES (1);
         CREATE FUNCTION sneaky() RETURNS bool LANGUAGE plpgsql AS
           $$ BEGIN DELETE FROM precious; RETURN false; END $$;",
    )
    .await;
    // It reads like a SELECT, so it passes the submit-time check; only running it shows.
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "sneaky",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nthrottle_query = \"SELECT sneaky()\"",
        ),
    )
    .await;
    let worker = Worker::new(env, runtime.clone(), positions.remove(0));
    let step = step_in_background(worker);
    let (reason, detail) = eventually(Duration::from_secs(10), "the throttle", || async {
        throttle_reason(&runtime).await
    })
    .await;
    assert_eq!(reason, "throttle_query");
    assert!(detail.contains("read-only"), "{detail}");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM precious").await, 1);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        0
    );
    step.abort();
}
