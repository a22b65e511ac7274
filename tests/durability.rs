//! A database server crash under a running job. Batches commit with `synchronous_commit = off`
//! unless the job says otherwise, so a crash can take the last few commits with it: each must
//! go whole, rows and checkpoint together, and the job, run again, must do every row exactly
//! once. With `synchronous_commit = "on"` no commit that other sessions could see is lost.
//!
//! The crash is made deterministic on a throwaway server: its WAL writer is stopped (SIGSTOP)
//! so asynchronous commits stay in the shared WAL buffers (the background writer and autovacuum,
//! which could flush them, are off), and is then killed (SIGKILL), which the postmaster treats
//! as a crash: every backend ends, shared memory is thrown away, and the server recovers from
//! the WAL that reached the files.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use common::cluster::{self, ScratchDir};
use common::{free_port, signal};

const ROWS: i64 = 20_000;

async fn connect(url: &str) -> PgConnection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut conn) = PgConnection::connect(url).await {
            // Connections are refused, then fail, while the server recovers.
            let ready: Result<bool, _> = sqlx::query_scalar("SELECT NOT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await;
            if ready.unwrap_or(false) {
                return conn;
            }
        }
        assert!(Instant::now() < deadline, "server not back within 60s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scalar(conn: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(conn)
        .await
        .unwrap()
}

fn run(url: &str, job: &Path, log: &Path) -> std::process::Child {
    common::command(url, &["run", job.to_str().unwrap()])
        // No lease renewal (a synchronous commit, which would flush the buffered WAL) may
        // land between stopping the WAL writer and the crash.
        .env("BACKFILLD__LEASE_TTL", "10m")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn backfilld run")
}

/// A throwaway server where nothing but the WAL writer and synchronous commits writes WAL out:
/// no background writer, no autovacuum, no timed checkpoint.
fn crashable_server() -> (ScratchDir, u16) {
    let mut dir = ScratchDir::new("crash");
    let port = free_port();
    let data = dir.initdb("crash");
    dir.start(
        &data,
        port,
        &[
            // Only a process crash is simulated: WAL written to the files survives it.
            "fsync=off",
            "autovacuum=off",
            "bgwriter_lru_maxpages=0",
            "checkpoint_timeout=1h",
        ],
    );
    (dir, port)
}

async fn walwriter(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// What the crash did: checkpointed rows other sessions saw before it, and after recovery.
struct Crash {
    seen: i64,
    recovered: i64,
}

/// Runs a `hits = hits + 1` job with `synchronous_commit` on a throwaway server, crashes the
/// server mid-run as the module says, checks that rows and checkpoint survived together, and
/// runs the job again to its end.
async fn crash_mid_run(synchronous_commit: &str) -> Crash {
    let (dir, port) = crashable_server();
    let url = cluster::url(port);
    let mut conn = connect(&url).await;
    common::hits_table(&mut conn, "t", "bigint", "i", ROWS).await;
    let job = dir.path.join("hits.toml");
    std::fs::write(
        &job,
        common::job_toml(
            "hits",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            &format!(
                "batch_size = 100\nrows_per_second = 2000\nsynchronous_commit = \"{synchronous_commit}\""
            ),
        ),
    )
    .unwrap();
    let log = dir.path.join("run.log");
    let mut first = run(&url, &job, &log);

    let deadline = Instant::now() + Duration::from_secs(60);
    while common::checkpointed(&mut conn).await < 2_000 {
        assert!(Instant::now() < deadline, "no progress within 60s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let walwriter = walwriter(&mut conn).await;
    signal(walwriter, "STOP");
    // A few more batches commit while nothing writes the WAL out.
    let stopped_at = common::checkpointed(&mut conn).await;
    while common::checkpointed(&mut conn).await < stopped_at + 500 {
        assert!(Instant::now() < deadline, "no progress within 60s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // Its last batch may still be running in its backend: wait until every other session is
    // gone, so `seen` is final.
    while scalar(
        &mut conn,
        "SELECT count(*) FROM pg_stat_activity
          WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .await
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "backfilld's sessions did not end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = common::checkpointed(&mut conn).await;
    drop(conn);
    signal(walwriter, "KILL");

    // The postmaster restarts the server through crash recovery.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = connect(&url).await;
    assert_crash_recovery(&dir, port);
    // Rows and checkpoint survived together: exactly the checkpointed keys were incremented.
    let recovered =
        common::assert_table_matches_checkpoints(&mut conn, "t", "after the crash").await;
    assert!(recovered > 0, "no checkpointed row survived the crash");
    assert_eq!(
        scalar(
            &mut conn,
            "SELECT count(*) FROM t WHERE hits = 1 AND id > (SELECT cursor[1]::int8 FROM backfilld.progress)"
        )
        .await,
        0,
        "a row past the recovered cursor was left incremented"
    );

    let output = run(&url, &job, &log).wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    common::assert_each_hit_once(&mut conn, "t", ROWS).await;
    println!("synchronous_commit = {synchronous_commit}: checkpointed rows seen before the crash {seen}, after recovery {recovered}");
    Crash { seen, recovered }
}

/// The server on `port` went through crash recovery, as its log says.
fn assert_crash_recovery(dir: &ScratchDir, port: u16) {
    let log = dir.log(port);
    assert!(
        log.contains("terminated by signal 9") && log.contains("redo done"),
        "the server did not go through crash recovery:\n{log}"
    );
}

#[tokio::test]
async fn a_server_crash_loses_asynchronous_batches_whole_and_the_rerun_does_each_row_once() {
    let crash = crash_mid_run("off").await;
    // The point of the setup: commits that other sessions saw were lost, and lost whole.
    assert!(
        crash.recovered < crash.seen,
        "no asynchronous commit was lost ({} seen, {} recovered): the crash did not test anything",
        crash.seen,
        crash.recovered
    );
}

#[tokio::test]
async fn with_synchronous_commit_on_no_seen_batch_is_lost_in_a_server_crash() {
    let crash = crash_mid_run("on").await;
    assert_eq!(crash.recovered, crash.seen);
}

#[tokio::test]
async fn a_job_completed_on_an_asynchronous_batch_session_stays_completed_after_a_crash() {
    let (dir, port) = crashable_server();
    let url = cluster::url(port);
    let schema = backfilld::plumbing::db::Schema::new("backfilld");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let db = backfilld::plumbing::db::Db::from_pool(
        pool.clone(),
        backfilld::plumbing::db::PoolMode::Session,
    );
    backfilld::store::migrate::run(&db, &schema).await.unwrap();
    // A running job whose only partition reached its end: completing it is all that is left.
    let job: i64 = sqlx::query_scalar(
        "WITH job AS (INSERT INTO backfilld.jobs (name, spec, state, batch_size)
                      VALUES ('finishing', '{}', 'running', 1000) RETURNING id)
         INSERT INTO backfilld.progress (job_id, partition_index, state)
         SELECT id, 0, 'done' FROM job RETURNING job_id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    // The worker's session, as a job with the default `synchronous_commit` sets it up.
    let mut worker = PgConnection::connect(&url).await.unwrap();
    backfilld::plumbing::db::apply_settings(
        &mut worker,
        &backfilld::plumbing::db::SessionSettings::default(),
        backfilld::plumbing::db::SettingsScope::Session,
    )
    .await
    .unwrap();
    let mut conn = connect(&url).await;
    let walwriter = walwriter(&mut conn).await;
    signal(walwriter, "STOP");
    assert_eq!(
        backfilld::store::passes::finish_pass(&mut worker, &schema, job, "test")
            .await
            .unwrap(),
        backfilld::store::passes::Finish::Completed
    );
    drop((worker, conn));
    signal(walwriter, "KILL");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = connect(&url).await;
    assert_crash_recovery(&dir, port);
    let state: String = sqlx::query_scalar("SELECT state FROM backfilld.jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        state, "completed",
        "the completion did not wait for its flush"
    );
}
