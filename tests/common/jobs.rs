//! Jobs driven step by step through the library (submitted and claimed as the test's own
//! "process"), the hits table a non-idempotent job runs over with its checks (each row once,
//! the table against the checkpoints), and what tests wait for: progress, a batch waiting on a
//! lock, leases released.

use sqlx::{AssertSqlSafe, PgExecutor};

use super::{eventually, TestDb};
use std::sync::Arc;

use backfilld::engine::lease::Presence;
use backfilld::engine::runtime::JobRuntime;
use backfilld::engine::submit;
use backfilld::engine::worker::WorkerEnv;
use backfilld::plumbing::db::Schema;
use backfilld::spec::JobSpec;
use backfilld::store::{jobs, progress, JobState};

/// Lease time-to-live for jobs driven step by step from a test.
pub const JOB_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Moves job `id` to state `to` as `actor` would (an operator in another process: the state
/// lives in the database).
pub async fn set_state(db: &TestDb, id: i64, to: JobState, actor: &str) {
    let mut tx = db.pool.begin().await.unwrap();
    jobs::transition(&mut tx, &Schema::new("backfilld"), id, to, actor, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Submits a job through the library and claims its partitions as this test's "process".
pub async fn start_job(
    db: &TestDb,
    toml: &str,
) -> (Arc<JobRuntime>, WorkerEnv, Vec<progress::Claim>, Presence) {
    let spec = JobSpec::from_toml(toml, "test").unwrap();
    let schema = Schema::new("backfilld");
    backfilld::store::migrate::run(&db.pool, &schema)
        .await
        .unwrap();
    let resolved = submit::resolve(&db.pool, &spec).await.unwrap();
    let submitted = submit::find_or_submit(&db.pool, &schema, &spec, resolved.clone(), "test")
        .await
        .unwrap();
    let id = submitted.job.id;
    set_state(db, id, JobState::Running, "test").await;
    let presence = Presence::new(&db.pool.connect_options(), db.pool.mode());
    let holder = presence.holder().await.unwrap();
    let claims = progress::claim(&db.pool, &schema, &holder, JOB_TTL, Some(id), 100)
        .await
        .unwrap();
    let runtime = Arc::new(JobRuntime::new(id, &spec, &resolved, JOB_TTL, "default"));
    let env = WorkerEnv {
        pool: db.pool.clone(),
        schema,
        lease_ttl: JOB_TTL,
        actor: "test".into(),
    };
    (runtime, env, claims, presence)
}

/// Keys the jobs in the database behind `executor` have checkpointed, as other sessions see
/// them; 0 before backfilld's schema exists (a test may poll before the binary migrated).
pub async fn checkpointed<'e>(executor: impl PgExecutor<'e>) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(sum(rows_scanned), 0)::int8 FROM backfilld.progress",
    )
    .fetch_one(executor)
    .await
    .unwrap_or(0)
}

/// Waits (bounded by `within`) until the checkpoints cover at least `rows` keys.
pub async fn wait_for_progress(db: &TestDb, rows: i64, within: std::time::Duration) {
    eventually(within, &format!("{rows} rows checkpointed"), || async {
        (checkpointed(&db.pool).await >= rows).then_some(())
    })
    .await
}

/// `table (id <key_type> PRIMARY KEY, hits int NOT NULL DEFAULT 0)` with one row per `i` in
/// 1..=rows, its key `key_expr` (an expression over `i`). A non-idempotent job over it
/// (`hits = hits + 1`) shows a lost batch as `hits = 0` and a doubled one as `hits = 2`.
pub async fn hits_table<'e>(
    executor: impl PgExecutor<'e>,
    table: &str,
    key_type: &str,
    key_expr: &str,
    rows: i64,
) {
    let sql = format!(
        "CREATE TABLE {table} (id {key_type} PRIMARY KEY, hits int NOT NULL DEFAULT 0);
         INSERT INTO {table} (id) SELECT {key_expr} FROM generate_series(1, {rows}) i;"
    );
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(executor)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `rows` rows in `table`, every one with `hits = 1`.
pub async fn assert_each_hit_once<'e>(executor: impl PgExecutor<'e>, table: &str, rows: i64) {
    let summary: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) || ' rows, min ' || coalesce(min(hits), 0) || ', max ' || coalesce(max(hits), 0) FROM {table}"
    )))
    .fetch_one(executor)
    .await
    .unwrap();
    assert_eq!(
        summary.as_deref(),
        Some(&*format!("{rows} rows, min 1, max 1")),
        "{table}: not every row incremented exactly once"
    );
}

/// Rows of `table` with `hits = 1` equal the rows the checkpoints say were scanned, and none
/// has more: nothing half-written, nothing doubled (`when` says at which point of the test).
/// One statement, so one snapshot, even while batches commit. Returns the rows checkpointed.
pub async fn assert_table_matches_checkpoints<'e>(
    executor: impl PgExecutor<'e>,
    table: &str,
    when: &str,
) -> i64 {
    let (once, more, scanned): (i64, i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM {table} WHERE hits = 1),
                (SELECT count(*) FROM {table} WHERE hits > 1),
                (SELECT coalesce(sum(rows_scanned), 0)::int8 FROM backfilld.progress)"
    )))
    .fetch_one(executor)
    .await
    .unwrap();
    assert_eq!(
        (once, more),
        (scanned, 0),
        "{table} against the checkpoints {when}"
    );
    scanned
}

/// The application holds row `id` of `t` (FOR UPDATE) until the transaction ends.
pub async fn hold_row(db: &TestDb, id: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM t WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits (bounded) until exactly one backfilld session of this database waits on a lock, as
/// pg_stat_activity says: a batch blocked by what the test holds.
pub async fn wait_for_a_lock_waiter(db: &TestDb, what: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = '{}' AND application_name = 'backfilld' AND state = 'active'
            AND wait_event_type = 'Lock'",
        db.name
    );
    eventually(std::time::Duration::from_secs(30), what, || async {
        (db.scalar_i64(&sql).await == 1).then_some(())
    })
    .await
}

/// Rows per second the checkpoints moved by over about `window`, timed by the database's clock
/// in the same statements that read the counts: a reply slowed by a loaded machine then shifts
/// both ends of the window alike instead of shortening it.
pub async fn measured_rate(db: &TestDb, window: std::time::Duration) -> f64 {
    let read = || async {
        sqlx::query_as::<_, (i64, f64)>(
            "SELECT coalesce(sum(rows_scanned), 0)::int8,
                    extract(epoch FROM clock_timestamp())::float8
               FROM backfilld.progress",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let (before, t0) = read().await;
    tokio::time::sleep(window).await;
    let (after, t1) = read().await;
    (after - before) as f64 / (t1 - t0)
}

/// Waits (bounded) until no backfilld session of this database is left: after a SIGKILL, the
/// server may still run (and commit) a statement the process had sent before it died.
pub async fn wait_for_no_backfilld_sessions(db: &TestDb) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = '{}' AND application_name = 'backfilld'",
        db.name
    );
    eventually(
        std::time::Duration::from_secs(30),
        "the killed process's sessions to end",
        || async { (db.scalar_i64(&sql).await == 0).then_some(()) },
    )
    .await
}

/// Partitions whose lease some process holds.
pub async fn held_leases(db: &TestDb) -> i64 {
    db.scalar_i64("SELECT count(*) FROM backfilld.progress WHERE lease_token IS NOT NULL")
        .await
}

/// Waits (bounded) until every process has let go of its partitions.
pub async fn wait_for_leases_released(db: &TestDb) {
    eventually(
        std::time::Duration::from_secs(10),
        "leases released",
        || async { (held_leases(db).await == 0).then_some(()) },
    )
    .await
}
