//! Keys that break naive walkers and splitters (extending tests/engine.rs, which covers plain
//! uuid, text and composite keys): integers at the ends of their types with gaps of millions,
//! empty and one-row tables, text keys that look like NULL, clustered uuids, a composite key
//! whose first column has one value, timestamps and numerics split at sampled quantiles — each
//! with several partitions, each row incremented exactly once. Then schema changes under a
//! running job: it fails with the database's message and nothing is half-written.

mod common;

use std::time::Duration;

use common::api::{assert_no_panic, hits_job, jobs_dir, Api, ADMIN, TOKENS};
use common::{
    assert_each_hit_once, assert_table_matches_checkpoints, checkpointed, hits_table, job_toml,
    text, wait_for_progress, Daemon, TestDb,
};
use serde_json::json;

/// (table, key column type or composite definition, key for the job, rows SQL, partitions)
struct Case {
    table: &'static str,
    columns: &'static str,
    key: &'static str,
    rows: &'static str,
    partitions: u32,
}

const CASES: &[Case] = &[
    Case {
        table: "sparse",
        columns: "k bigint PRIMARY KEY",
        key: "\"k\"",
        // Gaps of a million, plus both ends of bigint: an even split of [min, max] must
        // neither overflow nor lose the extremes.
        rows: "SELECT i * 1000003 FROM generate_series(1, 1500) i
               UNION ALL VALUES (-9223372036854775808), (9223372036854775807), (0), (-5000000000)",
        partitions: 8,
    },
    Case {
        table: "small_ends",
        columns: "k smallint PRIMARY KEY",
        key: "\"k\"",
        rows: "VALUES (-32768), (-1), (0), (7), (32767)",
        partitions: 4,
    },
    Case {
        table: "int_ends",
        columns: "k int PRIMARY KEY",
        key: "\"k\"",
        rows: "SELECT i FROM generate_series(-2147483648, -2147483448) i
               UNION ALL SELECT i FROM generate_series(2147483447, 2147483647) i",
        partitions: 5,
    },
    Case {
        table: "single",
        columns: "k bigint PRIMARY KEY",
        key: "\"k\"",
        rows: "VALUES (42::int8)",
        partitions: 4,
    },
    Case {
        table: "nullish_text",
        columns: "k text PRIMARY KEY",
        key: "\"k\"",
        // Only awkward values, so the sampled split points are awkward too.
        rows: "VALUES (''), ('null'), ('NULL'), ('Null'), (' '), (E'\\t'), ('\\N'), ('\"\"'),
                      ('{}'), ('{null}'), ('''null'''), ('a,b'), ('ß'), ('日本'), (repeat('z', 3000))",
        partitions: 4,
    },
    Case {
        table: "clustered_uuid",
        columns: "k uuid PRIMARY KEY",
        key: "\"k\"",
        // All but one in the first sliver of the uuid space: an even split puts them in one
        // partition and leaves the others empty.
        rows: "SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid
                 FROM generate_series(0, 999) i
               UNION ALL VALUES ('ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)",
        partitions: 8,
    },
    Case {
        table: "one_tenant",
        columns: "tenant_id int NOT NULL, id text NOT NULL, PRIMARY KEY (tenant_id, id)",
        key: "[\"tenant_id\", \"id\"]",
        // Partitions split on the first key column, which has a single value here.
        rows: "SELECT 1, i::text FROM generate_series(1, 800) i",
        partitions: 4,
    },
    Case {
        table: "tenants",
        columns: "tenant_id int NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, name)",
        key: "[\"tenant_id\", \"name\"]",
        rows: "SELECT t, n FROM generate_series(-3, 3) t,
                 (VALUES (''), ('null'), ('a'), ('b b'), ('Ω')) v(n)",
        partitions: 3,
    },
    Case {
        table: "stamped",
        columns: "k timestamptz PRIMARY KEY",
        key: "\"k\"",
        rows: "SELECT timestamptz '2001-01-01 00:00:00.123456+00' + i * interval '1 day 1 microsecond'
                 FROM generate_series(0, 900) i
               UNION ALL VALUES ('-infinity'::timestamptz), ('infinity'::timestamptz)",
        partitions: 3,
    },
    Case {
        table: "numbered",
        columns: "k numeric PRIMARY KEY",
        key: "\"k\"",
        rows: "SELECT (i / 7.0)::numeric(30, 20) FROM generate_series(-400, 400) i
               UNION ALL VALUES (1e30), (-1e-30)",
        partitions: 3,
    },
];

#[tokio::test]
async fn hard_keys_with_partitions_increment_each_row_once() {
    let db = TestDb::new().await;
    let mut failures = Vec::new();
    for case in CASES {
        let table = case.table;
        db.exec(&format!(
            "CREATE TABLE {table} ({}, hits int NOT NULL DEFAULT 0);
             INSERT INTO {table} SELECT * FROM ({}) r;",
            case.columns, case.rows
        ))
        .await;
        let rows = db
            .scalar_i64(&format!("SELECT count(*) FROM {table}"))
            .await;
        let job = db.write_job(
            &format!("{table}.toml"),
            &job_toml(
                table,
                table,
                case.key,
                "hits = \"hits + 1\"",
                &format!("batch_size = 7\npartitions = {}", case.partitions),
            ),
        );
        let output = db.cli(&["run", job.to_str().unwrap()]);
        if output.status.code() != Some(0) {
            failures.push(format!("{table}: {}", text(&output)));
            continue;
        }
        let wrong = db
            .scalar_i64(&format!("SELECT count(*) FROM {table} WHERE hits <> 1"))
            .await;
        if wrong != 0 {
            failures.push(format!(
                "{table}: {wrong} of {rows} rows not hit exactly once"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn an_empty_table_completes_at_once_with_any_number_of_partitions() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "empty", "bigint", "i", 0).await;
    for partitions in [1, 4] {
        let name = format!("empty{partitions}");
        let job = db.write_job(
            "empty.toml",
            &job_toml(
                &name,
                "empty",
                "\"id\"",
                "hits = \"hits + 1\"",
                &format!("partitions = {partitions}"),
            ),
        );
        let output = db.cli(&["run", job.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let state = db
            .scalar_string(&format!(
                "SELECT state FROM backfilld.jobs WHERE name = '{name}'"
            ))
            .await;
        assert_eq!(state.as_deref(), Some("completed"));
    }
    // A row inserted after the empty job completed is not the job's business any more; one
    // inserted into a fresh job's unbounded last range is.
    db.exec("INSERT INTO empty (id) VALUES (5)").await;
    let job = db.write_job(
        "late.toml",
        &job_toml(
            "late",
            "empty",
            "\"id\"",
            "hits = \"hits + 1\"",
            "partitions = 4",
        ),
    );
    let output = db.cli(&["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_each_hit_once(&db.pool, "empty", 1).await;
}

/// `t (id, base, derived, hits)`: the job reads `base`, writes `derived` and counts in `hits`.
async fn derived_table(db: &TestDb) {
    db.exec(
        "CREATE TABLE t (id bigint PRIMARY KEY, base int NOT NULL, derived int,
                         hits int NOT NULL DEFAULT 0);
         INSERT INTO t (id, base) SELECT i, i FROM generate_series(1, 6000) i;",
    )
    .await;
}

fn derived_job(name: &str) -> serde_json::Value {
    let mut job = hits_job(name, json!({"rows_per_second": 1000, "partitions": 2}));
    job["set"] = json!({"derived": "base * 2", "hits": "hits + 1"});
    job
}

/// Starts a daemon on the derived job, changes the schema under it with `ddl`, and returns
/// the failed job's view (after checking nothing was half-written in `table_after`).
async fn change_schema_under_the_job(ddl: &str, table_after: &str) -> serde_json::Value {
    let db = TestDb::new().await;
    derived_table(&db).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    api.submit(derived_job("doomed")).await;
    wait_for_progress(&db, 600, Duration::from_secs(30)).await;
    db.exec(ddl).await;
    let job = api
        .wait_state("doomed", "failed", Duration::from_secs(30))
        .await;
    // Nothing half-written: the rows hit are exactly those the checkpoints cover, each once.
    assert_table_matches_checkpoints(&db.pool, table_after, "after the schema change").await;
    let scanned = checkpointed(&db.pool).await;
    assert!(scanned < 6_000, "the job finished before the change");
    assert_eq!(job["rows_scanned"], json!(scanned));
    println!("last_error: {}", job["last_error"]);
    let events = api.events("doomed").await;
    assert_eq!(
        events.last().unwrap()["kind"],
        json!("failed"),
        "{events:?}"
    );
    assert_no_panic(&daemon.log());
    job
}

#[tokio::test]
async fn dropping_a_column_the_job_reads_fails_it_with_the_database_message() {
    let job = change_schema_under_the_job("ALTER TABLE t DROP COLUMN base", "t").await;
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("base") && error.contains("does not exist"),
        "{job}"
    );
}

#[tokio::test]
async fn renaming_the_table_under_the_job_fails_it_with_the_database_message() {
    let job = change_schema_under_the_job("ALTER TABLE t RENAME TO t_renamed", "t_renamed").await;
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"public.t\"")
            || error.contains("relation") && error.contains("does not exist"),
        "{job}"
    );
}
