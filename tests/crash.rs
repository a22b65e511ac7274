//! The real binary, interrupted: SIGKILL at random moments and SIGTERM, then run again. Every
//! row of a non-idempotent job (`hits = hits + 1`) must end up incremented exactly once.

mod common;

use std::time::Duration;

use common::{
    api, assert_each_hit_once, assert_table_matches_checkpoints, held_leases, hits_table, job_toml,
    spawn, text, wait_for_progress, TestDb,
};
use rand::Rng;

#[tokio::test]
async fn sigkill_at_random_moments_then_rerun_increments_every_row_once() {
    let db = TestDb::new().await;
    let rows = 20_000;
    hits_table(&db.pool, "t", "bigint", "i", rows).await;
    let job = db.write_job(
        "hits.toml",
        &job_toml(
            "hits",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            // Slow enough that the kills land mid-run; two partitions so they land mid-batch
            // on one while the other commits.
            "batch_size = 150\nrows_per_second = 8000\npartitions = 2",
        ),
    );
    let mut rng = rand::rng();
    let mut kills = 0;
    for round in 0..4 {
        let mut child = spawn(&db.url, &["run", job.to_str().unwrap()]);
        wait_for_progress(&db, (round + 1) * 1_000, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none() || status.code() == Some(0),
            "unexpected exit {status:?}"
        );
        // Between kills the table must always be consistent with the checkpoint: rows up to
        // the cursors were incremented once, the rest not at all.
        assert_table_matches_checkpoints(&db.pool, "t", &format!("after kill {round}")).await;
    }
    assert!(
        kills >= 3,
        "the job finished too early to be killed ({kills} kills)"
    );
    let output = db.cli(&["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_each_hit_once(&db.pool, "t", rows).await;
}

#[tokio::test]
async fn sigterm_writes_the_checkpoint_and_exits_143_then_resumes() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10000).await;
    let job = db.write_job(
        "hits.toml",
        &job_toml(
            "hits",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nrows_per_second = 2000",
        ),
    );
    let child = spawn(&db.url, &["run", job.to_str().unwrap()]);
    wait_for_progress(&db, 500, Duration::from_secs(60)).await;
    common::signal(child.id(), "TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("checkpoint written"),
        "{}",
        text(&output)
    );
    let scanned = assert_table_matches_checkpoints(&db.pool, "t", "after SIGTERM").await;
    assert!(scanned > 0 && scanned < 10_000, "scanned {scanned}");
    // The lease was released on the way out.
    assert_eq!(held_leases(&db).await, 0);
    let output = db.cli(&["run", job.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_each_hit_once(&db.pool, "t", 10_000).await;
}

#[tokio::test]
async fn a_changed_definition_under_a_known_name_is_refused() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE t (id bigint PRIMARY KEY, a int, b int);
         INSERT INTO t (id) SELECT i FROM generate_series(1, 100) i;",
    )
    .await;
    let first = db.write_job("a.toml", &job_toml("job", "t", "\"id\"", "a = \"1\"", ""));
    assert_eq!(
        db.cli(&["run", first.to_str().unwrap()]).status.code(),
        Some(0)
    );
    let changed = db.write_job("b.toml", &job_toml("job", "t", "\"id\"", "b = \"2\"", ""));
    let before = db.fingerprint().await;
    let output = db.cli(&["run", changed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("different definition") && stderr.contains("new name"),
        "{stderr}"
    );
    assert_eq!(db.fingerprint().await, before);
}

#[tokio::test]
async fn demo_runs_both_example_jobs() {
    let db = TestDb::new().await;
    let output = db.cli(&["demo", "--rows", "5000"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("job products_search: completed"),
        "{stdout}"
    );
    assert!(stdout.contains("job users_email: completed"), "{stdout}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM backfilld.jobs WHERE state = 'completed'")
            .await,
        2
    );
    // A second demo starts from zero again.
    let output = db.cli(&["demo", "--rows", "3000"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM users").await, 3000);
}

#[tokio::test]
async fn run_listen_serves_the_api_and_a_pause_from_it_exits_3() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 20_000).await;
    let job = db.write_job(
        "hits.toml",
        &job_toml(
            "listened",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nrows_per_second = 2000",
        ),
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let child = spawn(
        &db.url,
        &["run", job.to_str().unwrap(), "--listen", &listen],
    );
    let client = api::Api::at(&format!("http://{listen}"), None);
    common::eventually(Duration::from_secs(30), "the run's API", || async {
        let response = client
            .http
            .get(format!("http://{listen}/api/v1/jobs/listened"))
            .send()
            .await
            .ok()?;
        let job: serde_json::Value = response.json().await.ok()?;
        (job["state"] == "running" && job["rows_scanned"].as_i64()? > 0).then_some(())
    })
    .await;
    let (status, paused) = client.post("/api/v1/jobs/listened/pause", None).await;
    assert_eq!(status, 200, "{paused}");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("paused by an operator"));
    let scanned = assert_table_matches_checkpoints(&db.pool, "t", "after the pause").await;
    assert!(scanned < 20_000, "the pause came too late to matter");
    // Running the file again says it is paused, and exits 3 without touching a row.
    let again = db.cli(&["run", job.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM t WHERE hits = 1").await,
        scanned
    );
}
