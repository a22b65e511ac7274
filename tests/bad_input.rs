//! Bad input: each case exits 2 with a message naming the problem, and no row of any table
//! changes — not even backfilld's own schema is created.

mod common;

use common::{cli_with_url, job_toml, text, TestDb};

const SETUP: &str = "
    CREATE TABLE users (id bigint PRIMARY KEY, customer_email text, email text, note text, score int,
                        total int GENERATED ALWAYS AS (id * 2) STORED);
    INSERT INTO users (id, customer_email) SELECT i, 'u' || i || '@example.com' FROM generate_series(1, 50) i;
    CREATE TABLE no_key (id bigint NOT NULL, v text);
    CREATE TABLE nullable_key (id bigint UNIQUE, v text);
    CREATE TABLE partial_unique (id bigint NOT NULL, v text);
    CREATE UNIQUE INDEX ON partial_unique (id) WHERE id > 10;
    CREATE TABLE stamped (id bigint, created_at timestamptz, v text, PRIMARY KEY (id, created_at));
    CREATE TABLE descending (id bigint NOT NULL, v text);
    CREATE UNIQUE INDEX descending_id ON descending (id DESC);
    CREATE TABLE \"Capitals\" (id bigint PRIMARY KEY, v text);";

fn valid(extra: &str, set: &str) -> String {
    job_toml("copy_email", "public.users", "\"id\"", set, extra)
}

/// (case, job file body, words the message must contain)
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let email = "email = \"customer_email\"";
    vec![
        (
            "malformed toml",
            "name = \"x\"\ntable = [".to_string(),
            vec!["bad.toml"],
        ),
        (
            "unknown field",
            valid("colour = \"blue\"", email),
            vec!["colour"],
        ),
        (
            "missing set",
            "name = \"x\"\ntable = \"users\"\nkey = \"id\"\n".to_string(),
            vec!["set"],
        ),
        (
            "bad name",
            job_toml("Copy Email!", "users", "\"id\"", email, ""),
            vec!["name", "Copy Email!"],
        ),
        (
            "nonexistent table",
            job_toml("x", "public.nope", "\"id\"", email, ""),
            vec!["table", "public.nope", "does not exist"],
        ),
        (
            "sql in the table name",
            job_toml("x", "users; DROP TABLE users", "\"id\"", email, ""),
            vec!["table", "does not exist"],
        ),
        (
            // Folded to capitals, as PostgreSQL would: the message says how to keep them.
            "unquoted name of a table created with capitals",
            job_toml("x", "Capitals", "\"id\"", "v = \"'x'\"", ""),
            vec![
                "\"Capitals\" does not exist",
                "put a name with capitals in double quotes",
            ],
        ),
        (
            "nonexistent set column",
            valid("", "emial = \"customer_email\""),
            vec!["set", "emial", "does not exist"],
        ),
        (
            "nonexistent key column",
            job_toml("x", "users", "\"uid\"", email, ""),
            vec!["key", "uid", "does not exist"],
        ),
        (
            "key without a unique index",
            job_toml("x", "no_key", "\"id\"", "v = \"'x'\"", ""),
            vec!["key", "not unique"],
        ),
        (
            "key only unique where a predicate holds",
            job_toml("x", "partial_unique", "\"id\"", "v = \"'x'\"", ""),
            vec!["key", "not unique"],
        ),
        (
            // The rows are unique, but each batch would seq-scan and sort to find its keys.
            "composite key in an order no index has",
            job_toml(
                "x",
                "stamped",
                "[\"created_at\", \"id\"]",
                "v = \"'x'\"",
                "",
            ),
            vec![
                "key: (created_at, id) has no index in this order",
                "the primary key stamped_pkey is on (id, created_at)",
                "use key = [\"id\", \"created_at\"]",
            ],
        ),
        (
            "key unique only through a descending index",
            job_toml("x", "descending", "\"id\"", "v = \"'x'\"", ""),
            vec!["key", "descending_id", "ascending"],
        ),
        (
            "nullable key",
            job_toml("x", "nullable_key", "\"id\"", "v = \"'x'\"", ""),
            vec!["key", "nullable"],
        ),
        (
            "set expression that does not compile",
            valid("", "email = \"lower(customer_emial)\""),
            vec!["set.email", "customer_emial"],
        ),
        (
            "set expression smuggling a second statement",
            valid("", "email = \"customer_email; DROP TABLE users\""),
            vec!["set.email"],
        ),
        (
            "set expression smuggling a second column",
            valid("", "email = \"customer_email), note = ('pwned'\""),
            vec!["set", "single expression"],
        ),
        (
            "where that does not compile",
            valid("where = \"email IS NUL\"", email),
            vec!["where"],
        ),
        (
            "where that is not boolean",
            valid("where = \"id + 1\"", email),
            vec!["where", "boolean"],
        ),
        (
            "set value of the wrong type",
            valid("", "score = \"customer_email\""),
            vec!["batch statement", "score", "integer"],
        ),
        (
            "generated column",
            valid("", "total = \"1\""),
            vec!["set", "total", "generated"],
        ),
        (
            "a key column in set",
            valid("", "id = \"id + 1\""),
            vec!["set", "key column"],
        ),
        (
            "zero batch size",
            valid("batch_size = 0", email),
            vec!["batch_size"],
        ),
        (
            "bad duration",
            valid("pause = \"soon\"", email),
            vec!["pause"],
        ),
        (
            "zero duty cycle",
            valid("duty_cycle = 0", email),
            vec!["duty_cycle must be more than 0 and at most 1"],
        ),
        (
            "duty cycle above 1",
            valid("duty_cycle = 1.5", email),
            vec!["duty_cycle must be more than 0 and at most 1"],
        ),
        (
            "duty cycle with three decimals",
            valid("duty_cycle = 0.333", email),
            vec!["duty_cycle", "two decimals"],
        ),
        (
            "duty cycle as text",
            valid("duty_cycle = \"half\"", email),
            vec!["duty_cycle", "number"],
        ),
    ]
}

#[tokio::test]
async fn every_bad_job_exits_2_naming_the_problem_and_changes_nothing() {
    let db = TestDb::new().await;
    db.exec(SETUP).await;
    let before = db.fingerprint().await;
    let mut failures = Vec::new();
    for (case, body, words) in cases() {
        let path = db.write_job("bad.toml", &body);
        for command in ["run", "check"] {
            let output = db.cli(&[command, path.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            let named = words.iter().all(|w| stderr.contains(w));
            if output.status.code() != Some(2) || !named {
                failures.push(format!(
                    "{case} ({command}): wanted {words:?}\n{}",
                    text(&output)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(
        db.fingerprint().await,
        before,
        "a bad job changed the database"
    );
    let schema = db
        .scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'backfilld'")
        .await;
    assert_eq!(
        schema, 0,
        "bad input must not even create backfilld's schema"
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM users").await, 50);
}

#[tokio::test]
async fn an_unreachable_database_exits_2() {
    let db = TestDb::new().await;
    let path = db.write_job("ok.toml", &valid("", "email = \"customer_email\""));
    // Port 1 on loopback: nothing listens there. Said at once, not after the pool's timeout.
    for command in ["run", "check", "verify"] {
        let started = std::time::Instant::now();
        let output = cli_with_url(
            "postgres://postgres@127.0.0.1:1/postgres",
            &[command, path.to_str().unwrap()],
        );
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{command} took {:?}",
            started.elapsed()
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        if command == "verify" {
            continue; // the job has no `where`: refused before connecting
        }
        assert!(
            stderr.contains(
                "cannot connect to the database at postgres://postgres@127.0.0.1:1/postgres: connection refused"
            ),
            "{stderr}"
        );
    }
    // A database that does not exist is named, without sqlx's source line.
    let nowhere = common::with_database(&common::server_url(), "backfilld_nowhere");
    let output = cli_with_url(&nowhere, &["check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("database \"backfilld_nowhere\" does not exist")
            && !stderr.contains(" at line "),
        "{stderr}"
    );
    let missing = db.cli(&["run", db.dir.join("missing.toml").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.toml"));
}

#[tokio::test]
async fn check_reports_the_plan_and_writes_nothing() {
    let db = TestDb::new().await;
    db.exec(SETUP).await;
    db.exec("ANALYZE users").await;
    let before = db.fingerprint().await;
    let path = db.write_job(
        "ok.toml",
        &valid("where = \"email IS NULL\"", "email = \"customer_email\""),
    );
    let output = db.cli(&["check", path.to_str().unwrap(), "--sql"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "job copy_email: OK",
        "public.users",
        "rows in the table  50 (counted)",
        "rows pending       50 (counted)",
        "batch size         1,000 keys per batch",
        "rate limit         none",
        "pause              none",
        "lock timeout",
        "statement timeout",
        "synchronous_commit off",
        "window             none",
        "throttles          none",
        "passes             up to 2",
        "sync trigger       none",
        "key walk",
        "the index users_pkey",
        "duration           at least",
        "a read-only sample walked 50 keys",
        "UPDATE \"public\".\"users\" SET \"email\"",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
    assert!(!stdout.contains("variants"), "{stdout}");
    assert_eq!(db.fingerprint().await, before);
    let schema = db
        .scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'backfilld'")
        .await;
    assert_eq!(schema, 0);
}

/// PostgreSQL reports the line of its own C source an error came from, and sqlx's display of a
/// database error appends it (" at line 3655"): users read it as a line of their job file.
#[tokio::test]
async fn database_messages_carry_no_source_line() {
    let db = TestDb::new().await;
    db.exec(SETUP).await;
    let email = "email = \"customer_email\"";
    for (case, body) in [
        ("set", valid("", "email = \"lower(customer_emial)\"")),
        ("where", valid("where = \"email IS NUL\"", email)),
        (
            "throttle_query",
            valid("throttle_query = \"SELECT nope\"", email),
        ),
    ] {
        let path = db.write_job("bad.toml", &body);
        let output = db.cli(&["check", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{case}: {}", text(&output));
        assert!(stderr.contains(case), "{case}: {stderr}");
        assert!(!stderr.contains(" at line "), "{case}: {stderr}");
    }
    // A role that may not create the daemon's schema: the migration's own error.
    let role = format!("nocreate_{}", &db.name[db.name.len() - 8..]);
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER; GRANT SELECT, UPDATE ON users TO {role};"
    ))
    .await;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let path = db.write_job("ok.toml", &valid("", email));
    let output = cli_with_url(&url, &["run", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    db.exec(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!stderr.contains(" at line "), "{stderr}");
}

/// What the database finds wrong with a job names the job file, in every command that reads one.
#[tokio::test]
async fn errors_found_against_the_database_name_the_file() {
    let db = TestDb::new().await;
    db.exec(SETUP).await;
    let path = db.write_job(
        "typo.toml",
        &valid("where = \"email IS NULL\"", "emial = \"customer_email\""),
    );
    for command in ["check", "run", "verify"] {
        let output = db.cli(&[command, path.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command}: {}",
            text(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("error: {}: set: column \"emial\"", path.display())),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_bad_log_format_names_the_key_and_the_choices() {
    let db = TestDb::new().await;
    let config = db.dir.join("config.toml");
    std::fs::write(&config, "log_format = \"xml\"\n").unwrap();
    let path = db.write_job("ok.toml", &valid("", "email = \"customer_email\""));
    let from_file = db.cli(&[
        "check",
        path.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let from_flag = db.cli(&["check", path.to_str().unwrap(), "--log-format", "yaml"]);
    for (output, value) in [(from_file, "xml"), (from_flag, "yaml")] {
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "log_format: \"{value}\" is not a log format: use text or json"
            )),
            "{stderr}"
        );
    }
}

/// A table of 100,000 rows or more is not counted: the planner estimates it and what matches
/// `where`. The duration comes from the rate limit; the timed sample evaluates `set` in a
/// read-only transaction, so an expression that would write (nextval) gives no sample and
/// changes nothing.
#[tokio::test]
async fn check_estimates_a_large_table_and_its_sample_writes_nothing() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int);
         INSERT INTO big SELECT i, CASE WHEN i % 4 = 0 THEN NULL ELSE 1 END FROM generate_series(1, 120000) i;
         ANALYZE big;
         CREATE SEQUENCE counter;",
    )
    .await;
    let before = db.fingerprint().await;
    let path = db.write_job(
        "big.toml",
        &job_toml(
            "big",
            "big",
            "\"id\"",
            "v = \"nextval('counter')\"",
            "where = \"v IS NULL\"\nrows_per_second = 10000",
        ),
    );
    let output = db.cli(&["check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let value = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} in\n{stdout}"))
            .trim()
            .to_string()
    };
    let table = value("rows in the table");
    assert!(
        table.starts_with("about 12") && table.contains("planner's estimate"),
        "{table}"
    );
    // The planner's estimate of `v IS NULL` is near the 30,000 true rows.
    let pending = value("rows pending");
    let estimate: i64 = pending
        .strip_prefix("about ")
        .and_then(|p| p.split_whitespace().next())
        .map(|n| n.replace(',', "").parse().unwrap())
        .unwrap_or_else(|| panic!("{pending}"));
    assert!((20_000..=40_000).contains(&estimate), "{pending}");
    let duration = value("duration");
    assert!(
        duration.starts_with("about 12s for the first pass, set by the rate limit"),
        "{duration}"
    );
    assert!(duration.contains("read-only transaction"), "{duration}");
    assert_eq!(db.fingerprint().await, before);
    assert_eq!(
        db.scalar_i64("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM counter")
            .await,
        0,
        "the sample advanced the sequence"
    );
}
