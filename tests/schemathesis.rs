//! The HTTP API under schemathesis (PyPI; `.ci/run` installs the pinned version), driven by
//! the daemon's own `/api/v1/openapi.json`: no 5xx, and every response matches the document
//! (status codes, content types, headers, bodies). Two bounded passes: one with random job
//! names, one aimed at a live job so pause, resume, cancel and PATCH reach their real logic.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::api::{assert_no_panic, hits_job, jobs_dir, Api, ADMIN, TOKENS};
use common::{hits_table, on_path, text, Daemon, TestDb};
use serde_json::json;

/// The version `.ci/run` installs.
const PINNED: &str = "4.32.5";

fn schemathesis() -> PathBuf {
    ["schemathesis", "st"]
        .into_iter()
        .find_map(on_path)
        .unwrap_or_else(|| {
            panic!(
                "schemathesis is not installed: pip install schemathesis=={PINNED} (.ci/run does)"
            )
        })
}

/// Runs one pass and fails the test on any failure schemathesis reports.
fn run_pass(daemon: &Daemon, config: Option<&std::path::Path>, seed: u32) {
    let mut command = Command::new(schemathesis());
    if let Some(config) = config {
        command.arg("--config-file").arg(config);
    }
    command
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", daemon.base))
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        // Every check but `positive_data_acceptance`: the document describes a job's shape,
        // not every rule of the README's "A job file" (name pattern, ranges), so schema-valid
        // bodies that the validation refuses with a 400 are expected, not a bug.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "25", "--seed", &seed.to_string()])
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
        .current_dir(std::env::temp_dir());
    let output = command.output().expect("run schemathesis");
    let report = text(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "schemathesis failed:\n{report}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("passed") && !stdout.contains("FAILURES") && !stdout.contains("ERRORS"),
        "{report}"
    );
}

#[tokio::test]
async fn the_api_conforms_to_its_openapi_document_under_schemathesis() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 5_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    // A slow live job for the pass that aims at it.
    api.submit(hits_job(
        "existing",
        json!({"rows_per_second": 20, "batch_size": 10}),
    ))
    .await;
    run_pass(&daemon, None, 1);
    let config = db.dir.join("schemathesis.toml");
    std::fs::write(&config, "[parameters]\n\"path.name\" = \"existing\"\n").unwrap();
    run_pass(&daemon, Some(&config), 2);
    assert_no_panic(&daemon.log());
    assert!(
        !daemon.log().contains("database error in an API request"),
        "{}",
        daemon.log()
    );
    // Whatever the passes did to the job, it did not double a row.
    let doubled = db.scalar_i64("SELECT count(*) FROM t WHERE hits > 1").await;
    assert_eq!(doubled, 0);
}
