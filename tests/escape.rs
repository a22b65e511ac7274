//! Whatever the text of `where` and `set`, a batch never touches a row outside its key range:
//! text that would escape its parentheses is refused before anything runs, and the statement
//! bounds the update by the key range on both sides of the author's text besides.

mod common;

use backfilld::engine::statement::{BatchSql, KeyColumn, Lower};
use common::{text, TestDb};

async fn table(db: &TestDb) {
    db.exec(
        "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0);
         INSERT INTO t (id) SELECT i FROM generate_series(1, 1000) i;",
    )
    .await;
}

#[tokio::test]
async fn a_where_that_escapes_its_parentheses_is_refused_and_the_table_is_untouched() {
    let db = TestDb::new().await;
    table(&db).await;
    // Each refused naming the field: by the scanner (it prepares, but does not balance its
    // own parentheses), or by the database (it does not even prepare in the probe's).
    for (file, filter, says) in [
        (
            "or.toml",
            "v >= 0) OR (true",
            "closes a parenthesis it did not open",
        ),
        (
            "and.toml",
            "v >= 0) AND (true",
            "closes a parenthesis it did not open",
        ),
        ("comment.toml", "(v >= 0 -- )", "syntax error"),
        (
            "block.toml",
            "v >= 0 /* ( */ ) OR (true",
            "closes a parenthesis it did not open",
        ),
    ] {
        let job = db.write_job(
            file,
            &format!(
                "name = \"escape\"\ntable = \"t\"\nkey = \"id\"\nwhere = {filter:?}\n[set]\nv = \"v + 1\"\n"
            ),
        );
        for command in ["check", "run"] {
            let output = db.cli(&[command, job.to_str().unwrap()]);
            let said = text(&output);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command} {filter:?}: {said}"
            );
            assert!(said.contains("where:"), "{command} {filter:?}: {said}");
            assert!(said.contains(says), "{command} {filter:?}: {said}");
        }
    }
    assert_eq!(db.scalar_i64("SELECT sum(v) FROM t").await, 0);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'backfilld'")
            .await,
        0,
        "refused input created nothing, not even the daemon's schema"
    );
}

#[tokio::test]
async fn even_an_escaped_where_cannot_widen_a_batch_beyond_its_key_range() {
    let db = TestDb::new().await;
    table(&db).await;
    // Built directly, past the checks a job's text goes through, to test the statement's own
    // structure: the batch after key 100, up to key 1000, of 50 keys.
    for escape in ["v >= 0) OR (true", "v >= 0) AND (true"] {
        let sql = BatchSql::new(
            "public",
            "t",
            vec![KeyColumn {
                name: "id".into(),
                type_sql: "bigint".into(),
            }],
            [("v".to_string(), "v + 1".to_string())],
            Some(escape.to_string()),
        );
        db.exec("UPDATE t SET v = 0").await;
        let statement = sql.batch(Lower::Cursor, true, None);
        let scanned: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
            .bind("100")
            .bind("1000")
            .bind(50_i64)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(scanned, 50, "{escape}");
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM t WHERE v <> 0").await,
            50,
            "{escape}: rows outside (100, 150] were updated"
        );
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM t WHERE v = 1 AND id BETWEEN 101 AND 150")
                .await,
            50,
            "{escape}"
        );
    }
}
