//! A backfill under live application traffic: pgbench (which ships with PostgreSQL) updates and
//! inserts rows of the same table at a steady rate while the job runs.
//!
//! The application has already been deployed with the new code path, so every write it makes
//! keeps `derived = base * 3 + 7`; the backfill fills `derived` for the old rows and counts its
//! visits in `hits`. The exact expected result:
//! - every row, old or new, has `derived = base * 3 + 7`, whatever order the app's updates and
//!   the batches took (a batch that computed `derived` from a stale `base` would break this);
//! - every row that existed before the job has `hits = 1`; rows the app inserted have 0 or 1
//!   (1 when the walk reached them: the last partition has no upper bound);
//! - the rows with `hits = 1` are exactly the keys the checkpoints say were scanned;
//! - pgbench saw no failed transaction, and PostgreSQL counted no deadlock in the database.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{assert_table_matches_checkpoints, job_toml, spawn, text, wait_for_progress, TestDb};

const ROWS: i64 = 20_000;

const APP_SCRIPT: &str = r"
\set id random(1, 20000)
BEGIN;
UPDATE t SET base = base + 1, derived = (base + 1) * 3 + 7 WHERE id = :id;
INSERT INTO t (id, base, derived) VALUES (nextval('app_ids'), :id, :id * 3 + 7);
END;
";

#[tokio::test]
async fn pgbench_updates_and_inserts_while_the_job_runs_and_the_result_is_exact() {
    let pgbench = ["/usr/bin/pgbench", "/usr/lib/postgresql/15/bin/pgbench"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("pgbench");
    let db = TestDb::new().await;
    db.exec(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, base int NOT NULL, derived int,
                         hits int NOT NULL DEFAULT 0);
         INSERT INTO t (id, base) SELECT i, i % 1000 FROM generate_series(1, {ROWS}) i;
         CREATE SEQUENCE app_ids START 1000001;"
    ))
    .await;
    let job = db.write_job(
        "derive.toml",
        &job_toml(
            "derive",
            "t",
            "\"id\"",
            "derived = \"base * 3 + 7\"\nhits = \"hits + 1\"",
            // About five seconds of work, like the traffic.
            "batch_size = 200\nrows_per_second = 4000\npartitions = 2",
        ),
    );
    let run = spawn(&db.url, &["run", job.to_str().unwrap()]);
    // The job under way.
    wait_for_progress(&db, 1, Duration::from_secs(30)).await;

    let script = db.dir.join("app.sql");
    std::fs::write(&script, APP_SCRIPT).unwrap();
    let bench = Command::new(pgbench)
        .args(["-n", "-T", "5", "-R", "200", "-c", "4", "-j", "2", "-f"])
        .arg(&script)
        .arg(&db.url)
        .output()
        .expect("run pgbench");
    let bench_out = text(&bench);
    let run = run.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    assert_eq!(bench.status.code(), Some(0), "{bench_out}");
    assert!(
        bench_out.contains("number of failed transactions: 0 ")
            && !bench_out.contains("ERROR")
            && !bench_out.contains("aborted"),
        "{bench_out}"
    );
    let processed: i64 = bench_out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in\n{bench_out}"));
    assert!(processed > 200, "pgbench barely ran\n{bench_out}");
    let inserted = db
        .scalar_i64("SELECT count(*) FROM t WHERE id > 1000000")
        .await;
    assert_eq!(inserted, processed, "each app transaction inserts one row");

    // Overlap: the application's writes landed while the job was running.
    let overlapped = db
        .scalar_i64(
            "SELECT count(*) FROM t WHERE id > 1000000
               AND xmin::text::int8 < (SELECT max(xmin::text::int8) FROM backfilld.progress)",
        )
        .await;
    assert!(overlapped > 0, "the traffic did not overlap the job");

    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE derived IS DISTINCT FROM base * 3 + 7")
            .await,
        0,
        "a row's derived value does not match its base"
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM t WHERE id <= {ROWS} AND hits <> 1"
        ))
        .await,
        0
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE id > 1000000 AND hits NOT IN (0, 1)")
            .await,
        0
    );
    assert_table_matches_checkpoints(&db.pool, "t", "after the run").await;
    // The app updated the rows under the batches: their base moved on, and derived followed.
    assert!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM t WHERE id <= {ROWS} AND base <> id % 1000"
        ))
        .await
            > 0
    );
    let deadlocks = db
        .scalar_i64(&format!(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = '{}'",
            db.name
        ))
        .await;
    assert_eq!(deadlocks, 0, "PostgreSQL counted deadlocks");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains("retrying"), "{stderr}");
}
