//! The batch engine against a real PostgreSQL: results equal a plain UPDATE, partitions and key
//! types, rows inserted during a run, pause and lost leases, driven step by step.

mod common;

use std::time::Instant;

use backfilld::engine::worker::{Step, Worker, WorkerExit};
use backfilld::store::{jobs, JobState};
use common::{assert_each_hit_once, checkpointed, hits_table, job_toml, start_job, text, TestDb};
use tokio_util::sync::CancellationToken;

/// A products table, and a copy to which one plain UPDATE is applied for comparison.
async fn products(db: &TestDb, rows: i64) {
    for table in ["products", "expected"] {
        db.exec(&format!(
            "CREATE TABLE {table} (
                id bigint PRIMARY KEY, name text, brand text, description text,
                search_tsvector tsvector);
             INSERT INTO {table} (id, name, brand, description, search_tsvector)
             SELECT i * 3, 'Widget ' || i, 'Brand ' || (i % 7), 'A fine widget number ' || i,
                    CASE WHEN i % 10 = 0 THEN to_tsvector('english', 'already done') END
               FROM generate_series(1, {rows}) i;"
        ))
        .await;
    }
}

const SEARCH_SET: &str = r#"search_tsvector = """
  setweight(to_tsvector('english', coalesce(name, '')), 'A') ||
  setweight(to_tsvector('english', coalesce(brand, '')), 'B') ||
  setweight(to_tsvector('english', coalesce(description, '')), 'C')""""#;

#[tokio::test]
async fn completed_job_equals_one_plain_update() {
    let db = TestDb::new().await;
    products(&db, 5_000).await;
    db.exec(
        "UPDATE expected SET search_tsvector =
           setweight(to_tsvector('english', coalesce(name, '')), 'A') ||
           setweight(to_tsvector('english', coalesce(brand, '')), 'B') ||
           setweight(to_tsvector('english', coalesce(description, '')), 'C')
         WHERE search_tsvector IS NULL",
    )
    .await;
    let job = db.write_job(
        "search.toml",
        &job_toml(
            "search",
            "public.products",
            "\"id\"",
            SEARCH_SET,
            "where = \"search_tsvector IS NULL\"\nbatch_size = 300",
        ),
    );
    let output = db.cli(&["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("completed"), "{stdout}");

    let differing = db
        .scalar_i64(
            "SELECT count(*) FROM products p FULL JOIN expected e USING (id)
              WHERE p.search_tsvector IS DISTINCT FROM e.search_tsvector
                 OR p.id IS NULL OR e.id IS NULL",
        )
        .await;
    assert_eq!(differing, 0);
    // 10% of rows were already done: scanned, not updated. The backfill updated rows, so a
    // sweep walked the key range again (another 5,000 keys) and found nothing left to update.
    let (scanned, updated) = (
        checkpointed(&db.pool).await,
        db.scalar_i64("SELECT sum(rows_updated)::int8 FROM backfilld.progress")
            .await,
    );
    assert_eq!((scanned, updated), (10_000, 4_500));
    let state = db
        .scalar_string("SELECT state FROM backfilld.jobs WHERE name = 'search'")
        .await;
    assert_eq!(state.as_deref(), Some("completed"));

    // Running the completed file again is a no-op that exits 0.
    let again = db.cli(&["run", job.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already completed"));
    let events = db
        .scalar_i64("SELECT count(*) FROM backfilld.events WHERE kind IN ('submitted', 'running', 'completed')")
        .await;
    assert_eq!(events, 3, "submitted, started, completed, each once");
}

#[tokio::test]
async fn four_partitions_give_the_same_result_as_one() {
    let db = TestDb::new().await;
    products(&db, 4_000).await;
    db.exec("CREATE TABLE products_one AS SELECT * FROM products; ALTER TABLE products_one ADD PRIMARY KEY (id);")
        .await;
    for (name, table, partitions) in [("one", "products_one", 1), ("four", "products", 4)] {
        let job = db.write_job(
            &format!("{name}.toml"),
            &job_toml(
                name,
                table,
                "\"id\"",
                SEARCH_SET,
                &format!(
                    "where = \"search_tsvector IS NULL\"\nbatch_size = 250\npartitions = {partitions}"
                ),
            ),
        );
        let output = db.cli(&["run", job.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    }
    let partitions = db
        .scalar_i64("SELECT count(*) FROM backfilld.progress p JOIN backfilld.jobs j ON j.id = p.job_id WHERE j.name = 'four'")
        .await;
    assert_eq!(partitions, 4);
    let differing = db
        .scalar_i64(
            "SELECT count(*) FROM products p FULL JOIN products_one o USING (id)
              WHERE p.search_tsvector IS DISTINCT FROM o.search_tsvector OR p.id IS NULL OR o.id IS NULL",
        )
        .await;
    assert_eq!(differing, 0);
    let nulls = db
        .scalar_i64("SELECT count(*) FROM products WHERE search_tsvector IS NULL")
        .await;
    assert_eq!(nulls, 0);
}

#[tokio::test]
async fn uuid_text_and_composite_keys_each_row_once() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "by_uuid", "uuid", "gen_random_uuid()", 3_000).await;
    // Text keys with awkward values: empty, 'null', mixed case and non-ASCII.
    hits_table(&db.pool, "by_text", "text", "md5(i::text)", 2_000).await;
    db.exec("INSERT INTO by_text (id) VALUES (''), ('null'), ('NULL'), ('Zürich'), ('a b')")
        .await;
    db.exec(
        "CREATE TABLE by_pair (tenant_id int NOT NULL, id bigint NOT NULL, hits int NOT NULL DEFAULT 0,
                               PRIMARY KEY (tenant_id, id));
         INSERT INTO by_pair (tenant_id, id) SELECT i % 7, i FROM generate_series(1, 2500) i;",
    )
    .await;
    let cases = [
        ("uuids", "by_uuid", "\"id\"", 4, 3_000),
        ("texts", "by_text", "\"id\"", 3, 2_005),
        ("pairs", "by_pair", "[\"tenant_id\", \"id\"]", 3, 2_500),
    ];
    for (name, table, key, partitions, rows) in cases {
        let job = db.write_job(
            &format!("{name}.toml"),
            &job_toml(
                name,
                table,
                key,
                "hits = \"hits + 1\"",
                &format!("batch_size = 97\npartitions = {partitions}"),
            ),
        );
        let output = db.cli(&["run", job.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{name}: {}", text(&output));
        assert_each_hit_once(&db.pool, table, rows).await;
    }
}

/// `table` in PostgreSQL's own syntax, as people paste it: quoted names keep their case, spaces,
/// dots and doubled quotes; unquoted names fold to lower case.
#[tokio::test]
async fn tables_named_in_sql_syntax_run_end_to_end() {
    let db = TestDb::new().await;
    db.exec("CREATE SCHEMA \"Sales Data\"").await;
    let cases = [
        ("\"Sales Data\".\"Users\"", "'\"Sales Data\".\"Users\"'"),
        (
            "\"Sales Data\".\"v1.\"\"old\"\"\"",
            "'\"Sales Data\".\"v1.\"\"old\"\"\"'",
        ),
        ("plain", "\"PUBLIC . Plain\""),
    ];
    for (i, (sql_name, toml_value)) in cases.into_iter().enumerate() {
        hits_table(&db.pool, sql_name, "bigint", "i", 500).await;
        let job = db.write_job(
            "quoted.toml",
            &format!(
                "name = \"quoted-{i}\"\ntable = {toml_value}\nkey = \"id\"\nbatch_size = 70\n\
                 [set]\nhits = \"hits + 1\"\n"
            ),
        );
        let output = db.cli(&["run", job.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{sql_name}: {}",
            text(&output)
        );
        assert_each_hit_once(&db.pool, sql_name, 500).await;
    }
}

#[tokio::test]
async fn rows_inserted_above_the_cursor_during_the_run_are_processed() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "grow",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 300",
        ),
    )
    .await;
    let cancel = CancellationToken::new();
    let mut worker = Worker::new(env, runtime, positions.remove(0));
    assert!(matches!(worker.step(&cancel).await, Step::Continue { .. }));
    assert_eq!(worker.claim.cursor, Some(vec!["300".to_string()]));
    // The application keeps inserting, above the cursor and beyond the old maximum.
    db.exec("INSERT INTO t (id) SELECT i FROM generate_series(1001, 1500) i")
        .await;
    let mut steps = 1;
    loop {
        match worker.step(&cancel).await {
            Step::Continue { .. } => steps += 1,
            Step::Exit(exit) => {
                assert_eq!(exit, WorkerExit::JobCompleted);
                break;
            }
        }
        assert!(steps < 20, "the walk should end");
    }
    assert_each_hit_once(&db.pool, "t", 1_500).await;
}

#[tokio::test]
async fn a_paused_job_or_a_lost_lease_writes_nothing() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "careful",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100",
        ),
    )
    .await;
    let cancel = CancellationToken::new();
    let mut worker = Worker::new(env, runtime, positions.remove(0));
    assert!(matches!(worker.step(&cancel).await, Step::Continue { .. }));
    assert_eq!(db.scalar_i64("SELECT sum(hits)::int8 FROM t").await, 100);

    // An operator pauses the job (from any process: the state lives in the database).
    let job_id = worker.claim.job_id;
    common::set_state(&db, job_id, JobState::Paused, "oncall").await;
    assert_eq!(
        worker.step(&cancel).await,
        Step::Exit(WorkerExit::Stopped(JobState::Paused))
    );
    assert_eq!(db.scalar_i64("SELECT sum(hits)::int8 FROM t").await, 100);

    // Resumed, but meanwhile another process took the lease over: this worker is fenced out.
    common::set_state(&db, job_id, JobState::Running, "oncall").await;
    db.exec("UPDATE backfilld.progress SET lease_token = gen_random_uuid()")
        .await;
    assert_eq!(
        worker.step(&cancel).await,
        Step::Exit(WorkerExit::LeaseLost)
    );
    assert_eq!(db.scalar_i64("SELECT sum(hits)::int8 FROM t").await, 100);
    let cursor = db
        .scalar_string("SELECT array_to_string(cursor, ',') FROM backfilld.progress")
        .await;
    assert_eq!(cursor.as_deref(), Some("100"));
}

#[tokio::test]
async fn the_rate_limit_holds_over_several_seconds() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10_000).await;
    let job = db.write_job(
        "slow.toml",
        &job_toml(
            "slow",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nrows_per_second = 2000\npartitions = 2",
        ),
    );
    let started = Instant::now();
    let output = db.cli(&["run", job.to_str().unwrap()]);
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    // Measured from the checkpoints the database recorded, not from process start-up.
    let span = sqlx::query_scalar::<_, f64>(
        "SELECT extract(epoch FROM max(p.updated_at) - min(p.started_at))::float8 FROM backfilld.progress p",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let rate = 10_000.0 / span;
    println!(
        "rate limit 2000 rows/s: measured {rate:.0} rows/s over {span:.2}s (process {elapsed:.2}s)"
    );
    // Loose bounds: the limiter must never let the job run fast; a slow shared machine may
    // make it run slower than the limit, so the lower bound is generous.
    assert!(rate <= 2_200.0, "rate {rate:.0} rows/s exceeds the limit");
    assert!(
        rate >= 1_000.0,
        "rate {rate:.0} rows/s is far below the limit"
    );
    assert_each_hit_once(&db.pool, "t", 10_000).await;
}

/// The batch statement (from a cursor, fenced) of a `hits = hits + 1` job over `t` with `filter`
/// as its `where`, resolved against the database.
async fn batch_statement(
    db: &TestDb,
    schema: &backfilld::plumbing::db::Schema,
    filter: &str,
) -> String {
    let toml = job_toml(
        "plan",
        "t",
        "\"id\"",
        "hits = \"hits + 1\"",
        &format!("where = \"{filter}\""),
    );
    let spec = backfilld::spec::JobSpec::from_toml(&toml, "test").unwrap();
    let resolved = backfilld::engine::submit::resolve(&db.pool, &spec)
        .await
        .unwrap();
    resolved.sql.batch(
        backfilld::engine::statement::Lower::Cursor,
        false,
        Some(schema),
    )
}

#[tokio::test]
async fn the_batch_statement_stays_a_bounded_index_scan_under_a_generic_plan() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 100_000).await;
    db.exec("ANALYZE t").await;
    let schema = backfilld::plumbing::db::Schema::new("backfilld");
    backfilld::store::migrate::run(&db.pool, &schema)
        .await
        .unwrap();
    let statement = batch_statement(&db, &schema, "hits = 0").await;
    // One connection: PREPARE and EXPLAIN EXECUTE must share a session.
    let mut conn = db.pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE batch AS {statement}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE batch('90000', 1000, 1, 0, '00000000-0000-0000-0000-000000000000', 30000, '{90000}')",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    // The walk and the update are both index range scans; nothing reads the table from its
    // start, whatever the cursor (the cost must not grow with progress).
    assert!(!plan.contains("Seq Scan on t"), "{plan}");
    assert!(!plan.contains("Merge Join"), "{plan}");
    assert!(plan.matches("Index").count() >= 2, "{plan}");
    // A walk that found nothing matching `where` skips the update's scan (a sweep is mostly
    // such walks).
    assert!(
        plan.lines()
            .any(|line| line.contains("One-Time Filter:") && line.ends_with(" > 0)")),
        "{plan}"
    );
    // Not with a volatile `where`: the update could judge a row otherwise than the walk did.
    for volatile in [
        "hits = 0 AND random() >= 0",
        "hits = 0 AND pg_catalog.clock_timestamp() IS NOT NULL",
    ] {
        let statement = batch_statement(&db, &schema, volatile).await;
        assert!(
            !statement.contains("(SELECT u FROM \"__backfilld_last\") > 0"),
            "{volatile}: {statement}"
        );
    }
}

#[tokio::test]
async fn retuned_values_reach_the_worker_through_the_next_batch_fence() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "retune",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100",
        ),
    )
    .await;
    let schema = env.schema.clone();
    let cancel = CancellationToken::new();
    let mut worker = Worker::new(env, runtime.clone(), positions.remove(0));
    assert_eq!(worker.step(&cancel).await, Step::Continue { pause: None });
    // An operator re-tunes the job (what PATCH does): smaller batches and a pause.
    let job = jobs::find_by_name(&db.pool, &schema, "retune")
        .await
        .unwrap()
        .unwrap();
    let mut spec = job.spec().unwrap();
    spec.batch_size = 7;
    spec.pause = Some(std::time::Duration::from_millis(250));
    let mut tx = db.pool.begin().await.unwrap();
    jobs::replace_spec(&mut tx, &schema, job.id, &spec, "test", "batch_size, pause")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The batch already sized reads the new values under its fence and pauses after itself...
    assert_eq!(
        worker.step(&cancel).await,
        Step::Continue {
            pause: Some(std::time::Duration::from_millis(250))
        }
    );
    assert_eq!(worker.claim.cursor, Some(vec!["200".to_string()]));
    // ...and the next one takes 7 keys.
    worker.step(&cancel).await;
    assert_eq!(worker.claim.cursor, Some(vec!["207".to_string()]));
    assert_eq!(runtime.snapshot().batch_size, 7);
    // Removing the pause reaches the worker the same way.
    spec.pause = None;
    let mut tx = db.pool.begin().await.unwrap();
    jobs::replace_spec(&mut tx, &schema, job.id, &spec, "test", "pause")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(worker.step(&cancel).await, Step::Continue { pause: None });
}
