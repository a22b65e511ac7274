//! backfilld's own migrations: where sqlx's migrator keeps them, the upgrade from the earlier,
//! hand-written runner, and that migrating leaves the pool's connections as they were.

mod common;

use backfilld::plumbing::db::Schema;
use backfilld::store::migrate::{self, MigrateError};
use common::TestDb;
use sqlx::postgres::PgPoolOptions;

/// How many migrations the binary carries: every file in `migrations/`.
fn known() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count()
}

/// The schemas holding a table of this name, in order.
async fn schemas_of(db: &TestDb, table: &str) -> String {
    db.scalar_string(&format!(
        "SELECT coalesce(string_agg(schemaname, ',' ORDER BY schemaname), '') FROM pg_tables
          WHERE tablename = '{table}'"
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_database_the_old_runner_migrated_upgrades_keeping_its_rows() {
    let db = TestDb::new().await;
    // What the hand-written runner left: its history table with version 1, and 0001 applied
    // with search_path set to the schema (0001 only gained IF NOT EXISTS since).
    db.exec(&format!(
        "CREATE SCHEMA backfilld;
         BEGIN;
         SET LOCAL search_path TO backfilld;
         CREATE TABLE schema_migrations (
             version    bigint PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         {}
         INSERT INTO schema_migrations (version, name, checksum) VALUES (1, 'init', '0123456789abcdef');
         INSERT INTO jobs (name, spec, state) VALUES ('kept', '{{\"k\": 1}}', 'paused');
         INSERT INTO progress (job_id, partition_index, cursor, rows_scanned)
              SELECT id, 0, ARRAY['41'], 41 FROM jobs;
         INSERT INTO events (job_id, actor, kind) SELECT id, 'test', 'submitted' FROM jobs;
         INSERT INTO jobs (name, spec, state)
              VALUES ('tuned', '{{\"batch_size\": 250, \"rows_per_second\": 40, \"pause\": \"1s 500ms\"}}', 'running');
         COMMIT;",
        include_str!("../migrations/0001_init.sql")
    ))
    .await;
    let schema = Schema::new("backfilld");
    assert!(!migrate::is_current(&db.pool, &schema).await.unwrap());

    let applied = migrate::run(&db.pool, &schema).await.unwrap();

    assert_eq!(
        applied,
        known(),
        "0001 is recorded (as a no-op) and the rest applied"
    );
    assert_eq!(
        db.scalar_string(
            "SELECT format('%s %s %s', name, spec, state) FROM backfilld.jobs WHERE name = 'kept'"
        )
        .await
        .unwrap(),
        "kept {\"k\": 1} paused"
    );
    assert_eq!(
        db.scalar_i64("SELECT rows_scanned FROM backfilld.progress")
            .await,
        41
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM backfilld.events").await,
        1
    );
    // The live tunables' columns take each job's values from its stored definition.
    assert_eq!(
        db.scalar_string(
            "SELECT string_agg(format('%s %s %s %s', name, batch_size, rows_per_second, pause_us), '; ' ORDER BY name)
               FROM backfilld.jobs"
        )
        .await
        .unwrap(),
        "kept 1000  ; tuned 250 40 1500000"
    );
    assert_eq!(schemas_of(&db, "_sqlx_migrations").await, "backfilld");
    assert_eq!(schemas_of(&db, "schema_migrations").await, "");
    assert!(migrate::is_current(&db.pool, &schema).await.unwrap());
    assert_eq!(migrate::run(&db.pool, &schema).await.unwrap(), 0);
}

#[tokio::test]
async fn another_schema_gets_everything_and_the_pool_keeps_its_search_path() {
    let db = TestDb::new().await;
    // One connection: if migrating handed its connection back, the next query would get it.
    let pool = backfilld::plumbing::db::Db::from_pool(
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await
            .unwrap(),
        backfilld::plumbing::db::PoolMode::Session,
    );
    let show = || async {
        sqlx::query_scalar::<_, String>("SHOW search_path")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let default = show().await;
    let schema = Schema::new("bf_other");
    assert!(!migrate::is_current(&pool, &schema).await.unwrap());

    assert_eq!(migrate::run(&pool, &schema).await.unwrap(), known());

    assert_eq!(show().await, default);
    for table in ["_sqlx_migrations", "jobs", "progress", "events"] {
        assert_eq!(schemas_of(&db, table).await, "bf_other", "{table}");
    }
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'bf_other'
                AND indexname IN ('progress_claimable', 'events_by_job')"
        )
        .await,
        2
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'backfilld'")
            .await,
        0
    );
    assert!(migrate::is_current(&pool, &schema).await.unwrap());
    assert!(!migrate::is_current(&pool, &Schema::new("backfilld"))
        .await
        .unwrap());
    assert_eq!(migrate::run(&pool, &schema).await.unwrap(), 0);
    assert_eq!(show().await, default);
}

#[tokio::test]
async fn replicas_starting_together_apply_each_migration_once() {
    let db = TestDb::new().await;
    let schema = Schema::new("backfilld");
    let runs = (0..4).map(|_| {
        let (pool, schema) = (db.pool.clone(), schema.clone());
        tokio::spawn(async move { migrate::run(&pool, &schema).await })
    });
    let mut total = 0;
    for run in runs.collect::<Vec<_>>() {
        total += run.await.unwrap().unwrap();
    }
    assert_eq!(total, known());
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM backfilld._sqlx_migrations")
            .await,
        known() as i64
    );
}

#[tokio::test]
async fn an_edited_or_unknown_migration_is_refused_naming_its_version() {
    let db = TestDb::new().await;
    let schema = Schema::new("backfilld");
    migrate::run(&db.pool, &schema).await.unwrap();

    let original = db
        .scalar_string(
            "SELECT encode(checksum, 'hex') FROM backfilld._sqlx_migrations WHERE version = 1",
        )
        .await
        .unwrap();
    db.exec("UPDATE backfilld._sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .await;
    let error = migrate::run(&db.pool, &schema).await.unwrap_err();
    assert!(
        matches!(
            error,
            MigrateError::Changed {
                version: 1,
                name: "init"
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("migration 1 (init) was changed"),
        "{error}"
    );

    db.exec(&format!(
        "UPDATE backfilld._sqlx_migrations SET checksum = decode('{original}', 'hex') WHERE version = 1;
         INSERT INTO backfilld._sqlx_migrations (version, description, success, checksum, execution_time)
              VALUES (999999, 'from the future', true, '\\x00', 0)"
    ))
    .await;
    let error = migrate::run(&db.pool, &schema).await.unwrap_err();
    assert!(
        matches!(error, MigrateError::Unknown { version: 999999 }),
        "{error:?}"
    );
    assert!(error.to_string().contains("migration 999999"), "{error}");
}
