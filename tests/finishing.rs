//! Finishing an expand–contract against a real PostgreSQL: sweeps catch rows written behind
//! the cursors, the sync trigger keeps rows the old code writes in step, `verify` tells a
//! deploy pipeline whether it is safe to contract, and `sync remove` leaves nothing behind.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cli_with_url, eventually, text, TestDb};

/// Keeps inserting rows with random uuid keys (so most land behind the cursor) until `stop`.
fn insert_random_keys(
    pool: backfilld::plumbing::db::Db,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut inserted = 0;
        while !stop.load(Ordering::Relaxed) {
            sqlx::query("INSERT INTO u (id) SELECT gen_random_uuid() FROM generate_series(1, 20)")
                .execute(&pool)
                .await
                .unwrap();
            inserted += 20;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        inserted
    })
}

async fn uuid_table(db: &TestDb) {
    db.exec(
        "CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v int);
         INSERT INTO u (id) SELECT gen_random_uuid() FROM generate_series(1, 20000);",
    )
    .await;
}

fn uuid_job(db: &TestDb, extra: &str) -> std::path::PathBuf {
    db.write_job(
        "u.toml",
        &format!(
            "name = \"fill\"\ntable = \"u\"\nkey = \"id\"\nwhere = \"v IS NULL\"\nbatch_size = 500\npause = \"20ms\"\n{extra}\n[set]\nv = \"1\"\n"
        ),
    )
}

/// A field of the job's row; `None` also before `run` has created the daemon's schema.
async fn job_field(db: &TestDb, field: &str) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(format!(
        "SELECT {field}::int8 FROM backfilld.jobs WHERE name = 'fill'"
    )))
    .fetch_optional(&db.pool)
    .await
    .ok()
    .flatten()
    .flatten()
}

#[tokio::test]
async fn a_sweep_catches_rows_inserted_behind_the_cursor_and_one_pass_reports_them_exactly() {
    // The inserts during the backfill land behind its cursor; the sweeps get them. The writer
    // stops once the first sweep has begun, so what lands behind that sweep's cursor meanwhile
    // is the second sweep's.
    let db = TestDb::new().await;
    uuid_table(&db).await;
    let job = uuid_job(&db, "passes = 3");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = insert_random_keys(db.pool.clone(), stop.clone());
    let mut run = common::spawn(&db.url, &["run", job.to_str().unwrap()]);
    eventually(Duration::from_secs(60), "the sweep to begin", || async {
        (job_field(&db, "pass").await >= Some(2)).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let inserted = writer.await.unwrap();
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(inserted > 0);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM u WHERE v IS NULL")
            .await,
        0
    );
    assert_eq!(job_field(&db, "pending_rows").await, Some(0));
    let output = cli_with_url(&db.url, &["verify", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // One pass: what the writer left behind the cursor is counted exactly, and verify agrees.
    let db = TestDb::new().await;
    uuid_table(&db).await;
    let job = uuid_job(&db, "passes = 1");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = insert_random_keys(db.pool.clone(), stop.clone());
    let mut run = common::spawn(&db.url, &["run", job.to_str().unwrap()]);
    eventually(Duration::from_secs(60), "half of the backfill", || async {
        (common::checkpointed(&db.pool).await >= 10_000).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(run.wait().unwrap().code(), Some(0));
    let left = db
        .scalar_i64("SELECT count(*) FROM u WHERE v IS NULL")
        .await;
    assert!(left > 0, "no insert landed behind the cursor");
    assert_eq!(job_field(&db, "pending_rows").await, Some(left));
    let output = cli_with_url(&db.url, &["verify", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    assert!(
        text(&output).contains(&format!("{left} row(s)")),
        "{}",
        text(&output)
    );
}

async fn users(db: &TestDb) {
    db.exec(
        "CREATE TABLE users (id bigint PRIMARY KEY, customer_email text NOT NULL, email text);
         INSERT INTO users (id, customer_email) SELECT i, 'u' || i || '@old' FROM generate_series(1, 20000) i;",
    )
    .await;
}

/// The old code: keeps rewriting `customer_email` only, until `stop`, then 200 writes more.
fn old_code(
    pool: backfilld::plumbing::db::Db,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut round = 0;
        let mut after = 0;
        while after < 10 {
            if stop.load(Ordering::Relaxed) {
                after += 1;
            }
            round += 1;
            sqlx::query(
                "UPDATE users SET customer_email = 'r' || $1 || '-' || id || '@old'
                  WHERE id IN (SELECT (random() * 19999)::int8 + 1 FROM generate_series(1, 20))",
            )
            .bind(round)
            .execute(&pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

async fn rename(sync: bool) -> i64 {
    let db = TestDb::new().await;
    users(&db).await;
    let job = db.write_job(
        "email.toml",
        &format!(
            "name = \"email\"\ntable = \"users\"\nkey = \"id\"\nwhere = \"email IS DISTINCT FROM customer_email\"\nbatch_size = 500\npause = \"5ms\"\n{}[set]\nemail = \"customer_email\"\n",
            if sync { "[sync]\non = [\"customer_email\"]\n" } else { "" }
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = old_code(db.pool.clone(), stop.clone());
    let output = cli_with_url(&db.url, &["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let stale = db
        .scalar_i64("SELECT count(*) FROM users WHERE email IS DISTINCT FROM customer_email")
        .await;
    if sync {
        let output = cli_with_url(&db.url, &["verify", job.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        for _ in 0..2 {
            let output = cli_with_url(&db.url, &["sync", "remove", job.to_str().unwrap()]);
            assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        }
        assert_eq!(
            db.scalar_i64(
                "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bf_sync_%')
                      + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'bf_sync_%')"
            )
            .await,
            0,
            "sync remove left a trigger or a function"
        );
    }
    stale
}

#[tokio::test]
async fn the_sync_trigger_keeps_what_the_old_code_writes_in_step_and_without_it_rows_go_stale() {
    assert_eq!(rename(true).await, 0, "with [sync]");
    assert!(
        rename(false).await > 0,
        "without [sync] the old code's writes should go stale"
    );
}

#[tokio::test]
async fn verify_walks_in_short_snapshots_and_exits_0_4_or_2() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int);
         INSERT INTO big (id, v) SELECT i, CASE WHEN i % 100000 = 7 THEN NULL ELSE 1 END
           FROM generate_series(1, 500000) i;",
    )
    .await;
    let job = db.write_job(
        "big.toml",
        "name = \"big\"\ntable = \"big\"\nkey = \"id\"\nwhere = \"v IS NULL\"\n[set]\nv = \"1\"\n",
    );
    // Watch the verifying session: no transaction of it may live long.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (pool, watching) = (db.pool.clone(), watching.clone());
        tokio::spawn(async move {
            let (mut oldest, mut snapshots) = (0.0f64, std::collections::BTreeSet::new());
            while watching.load(Ordering::Relaxed) {
                let rows: Vec<(f64, String)> = sqlx::query_as(
                    "SELECT extract(epoch FROM now() - xact_start)::float8, xact_start::text
                       FROM pg_stat_activity
                      WHERE application_name = 'backfilld' AND datname = current_database()
                        AND xact_start IS NOT NULL",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                for (age, start) in rows {
                    oldest = oldest.max(age);
                    snapshots.insert(start);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (oldest, snapshots.len())
        })
    };
    // Off the test's runtime, so the watcher runs meanwhile.
    let (url, path) = (db.url.clone(), job.clone());
    let output = tokio::task::spawn_blocking(move || {
        cli_with_url(&url, &["verify", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    watching.store(false, Ordering::Relaxed);
    let (oldest, snapshots) = watcher.await.unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    let said = text(&output);
    assert!(said.contains("5 row(s)"), "{said}");
    assert!(said.contains("500000 keys walked"), "{said}");
    assert!(said.contains("e.g. keys 7; 100007"), "{said}");
    assert!(oldest < 1.0, "a verify transaction lived {oldest:.2}s");
    assert!(
        snapshots > 1,
        "verify should take many short snapshots, saw {snapshots}"
    );

    db.exec("UPDATE big SET v = 1 WHERE v IS NULL").await;
    let output = cli_with_url(&db.url, &["verify", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    // Nothing to verify without `where`; an invalid job file.
    let plain = db.write_job(
        "plain.toml",
        "name = \"plain\"\ntable = \"big\"\nkey = \"id\"\n[set]\nv = \"v + 1\"\n",
    );
    let output = cli_with_url(&db.url, &["verify", plain.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("nothing to verify"),
        "{}",
        text(&output)
    );
    let broken = db.write_job("broken.toml", "name = \"x\"\n");
    let output = cli_with_url(&db.url, &["verify", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[tokio::test]
async fn the_trigger_waits_out_a_busy_table_under_lock_timeout_and_is_recorded_once() {
    let db = TestDb::new().await;
    users(&db).await;
    // An application transaction holds the table (ROW EXCLUSIVE) while the job starts:
    // creating the trigger must give up after lock_timeout and try again, not queue every
    // other writer behind it.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE users SET customer_email = customer_email WHERE id = 1")
        .execute(&mut *holder)
        .await
        .unwrap();
    let job = db.write_job(
        "email.toml",
        "name = \"email\"\ntable = \"users\"\nkey = \"id\"\nwhere = \"email IS DISTINCT FROM customer_email\"\nlock_timeout = \"100ms\"\n[sync]\n[set]\nemail = \"customer_email\"\n",
    );
    let run = common::spawn(&db.url, &["run", job.to_str().unwrap()]);
    // Another writer meanwhile is not stuck behind the trigger's lock request. (Waiting for
    // the request itself, not a fixed time: under load `run` may not have asked yet.)
    common::wait_for_a_lock_waiter(&db, "the trigger's lock request").await;
    let other = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("UPDATE users SET customer_email = 'other@old' WHERE id = 2").execute(&db.pool),
    )
    .await;
    assert!(other.is_ok(), "a writer queued behind the trigger's DDL");
    holder.commit().await.unwrap();
    let output = run.wait_with_output().unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(
        said.contains("installing the sync trigger failed; retrying"),
        "{said}"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM backfilld.events WHERE kind = 'sync_installed'")
            .await,
        1
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM users WHERE email IS DISTINCT FROM customer_email")
            .await,
        0
    );
}

/// A sweep about to start: 10,000 even keys backfilled by pass 1 (driven step by step, 100
/// batches of `batch_size = 100`), then 10 odd keys inserted behind its cursor, which the
/// sweep must find (as an application's writes land); the sweep's worker, its runtime and the
/// presence its lease hangs on. `extra` adds lines to the job.
async fn a_sweep_about_to_start(
    db: &TestDb,
    extra: &str,
) -> (
    backfilld::engine::worker::Worker,
    std::sync::Arc<backfilld::engine::runtime::JobRuntime>,
    backfilld::engine::lease::Presence,
) {
    use backfilld::engine::worker::{Step, Worker, WorkerExit};
    use backfilld::store::progress;
    use tokio_util::sync::CancellationToken;

    db.exec(
        "CREATE TABLE t (id bigint PRIMARY KEY, v int, hits int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT 2 * i FROM generate_series(1, 10000) i;",
    )
    .await;
    let toml = common::job_toml(
        "sweep",
        "t",
        "\"id\"",
        "v = \"1\"\nhits = \"hits + 1\"",
        &format!("where = \"v IS NULL\"\nbatch_size = 100\npasses = 2\n{extra}"),
    );
    let (runtime, env, mut claims, presence) = common::start_job(db, &toml).await;
    let cancel = CancellationToken::new();
    let mut pass1 = Worker::new(env.clone(), runtime.clone(), claims.remove(0));
    assert_eq!(pass1.claim.pass, 1);
    let mut batches = 0;
    let exit = loop {
        match pass1.step(&cancel).await {
            Step::Continue { .. } => batches += 1,
            Step::Exit(exit) => break exit,
        }
    };
    assert_eq!(exit, WorkerExit::PartitionDone, "the sweep follows");
    assert_eq!(batches, 100, "the backfill walks batch_size keys at a time");
    progress::release(&db.pool, &env.schema, pass1.claim.lease_token)
        .await
        .unwrap();
    db.exec("INSERT INTO t (id) SELECT i FROM generate_series(15001, 15019, 2) i")
        .await;

    let holder = presence.holder().await.unwrap();
    let mut claims = progress::claim(
        &db.pool,
        &env.schema,
        &holder,
        common::JOB_TTL,
        Some(runtime.id),
        10,
    )
    .await
    .unwrap();
    assert_eq!(claims.len(), 1, "the sweep's partition");
    let sweep = Worker::new(env, runtime.clone(), claims.remove(0));
    assert_eq!(sweep.claim.pass, 2);
    (sweep, runtime, presence)
}

#[tokio::test]
async fn a_sweep_walks_further_while_nothing_is_pending_and_updates_each_pending_row_once() {
    use backfilld::engine::worker::{Step, WorkerExit};
    use tokio_util::sync::CancellationToken;

    let db = TestDb::new().await;
    let (mut sweep, runtime, _presence) = a_sweep_about_to_start(&db, "").await;
    let cancel = CancellationToken::new();
    let mut batches = 0;
    let mut largest = 0;
    let exit = loop {
        match sweep.step(&cancel).await {
            Step::Continue { .. } => batches += 1,
            Step::Exit(exit) => break exit,
        }
        largest = largest.max(runtime.snapshot().batch_size);
        assert!(batches < 1000, "the sweep should end");
    };
    assert_eq!(exit, WorkerExit::JobCompleted);
    // 10,010 keys: walks of 100, 200, … up to 16 × 100 while nothing is pending, back to 100
    // at the odd keys, then growing again: 16 batches where the backfill took 100.
    assert!(
        batches <= 20,
        "{batches} sweep batches over 10,010 keys with batch_size 100"
    );
    assert_eq!(
        largest, 1600,
        "walks grow to 16 × batch_size and no further"
    );
    assert!(runtime
        .snapshot()
        .batch_size_reason
        .is_some_and(|r| r.starts_with("sweep")));
    common::assert_each_hit_once(&db.pool, "t", 10_010).await;
}

#[tokio::test]
async fn a_grown_sweep_walk_that_hits_lock_timeout_walks_batch_size_again() {
    use backfilld::engine::worker::{Step, WorkerExit};
    use tokio_util::sync::CancellationToken;

    let db = TestDb::new().await;
    let (mut sweep, runtime, _presence) =
        a_sweep_about_to_start(&db, "lock_timeout = \"200ms\"").await;
    let cancel = CancellationToken::new();
    // The application holds one of the pending rows: the grown walk that meets it waits, and
    // gives up at lock_timeout.
    let held = common::hold_row(&db, 15_001).await;
    let mut largest = 0;
    let mut steps = 0;
    while !runtime
        .snapshot()
        .batch_size_reason
        .is_some_and(|r| r.contains("after lock_timeout"))
    {
        assert!(
            matches!(sweep.step(&cancel).await, Step::Continue { .. }),
            "the walk should meet the held row before the end"
        );
        largest = largest.max(runtime.snapshot().batch_size);
        steps += 1;
        assert!(steps < 100, "the walk should hit lock_timeout");
    }
    assert_eq!(largest, 1600, "the walk had grown");
    assert_eq!(runtime.snapshot().batch_size, 100, "back to batch_size");
    drop(held);
    let exit = loop {
        if let Step::Exit(exit) = sweep.step(&cancel).await {
            break exit;
        }
        steps += 1;
        assert!(steps < 1000, "the sweep should end");
    };
    assert_eq!(exit, WorkerExit::JobCompleted);
    common::assert_each_hit_once(&db.pool, "t", 10_010).await;
}
