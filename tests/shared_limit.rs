//! `rows_per_second` holds over the whole job, whatever the number of replicas: three real
//! `serve` processes on one job share its limit through the leases in the database, and when
//! one is killed the other two take over its share within a few seconds. Rates are measured
//! from the database's own checkpoint counts.

mod common;

use std::time::Duration;

use common::api::{hits_job, jobs_dir, Api};
use common::{eventually, measured_rate, Daemon, TestDb};
use reqwest::StatusCode;
use serde_json::json;

const LIMIT: f64 = 600.0;
/// Each replica runs two partitions; with six, each of the three holds two.
const CONFIG: &str = "workers = 2\nlease_ttl = \"3s\"\n";

/// Waits (bounded) until each daemon's log says it runs `share` (e.g. "2 of the job's 6").
async fn wait_for_share(daemons: &[&Daemon], share: &str) {
    let wanted = format!("rate share: {share} running partitions");
    eventually(Duration::from_secs(20), &wanted, || async {
        daemons
            .iter()
            .all(|d| d.log().contains(&wanted))
            .then_some(())
    })
    .await
}

fn assert_near_limit(rate: f64, when: &str) {
    assert!(
        (rate - LIMIT).abs() <= 0.1 * LIMIT,
        "{when}: the job ran at {rate:.0} rows/s, not within 10% of its limit of {LIMIT}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_one_limit_and_take_over_a_killed_ones_share() {
    let db = TestDb::new().await;
    common::hits_table(&db.pool, "t", "bigint", "i", 60_000).await;
    let dir = jobs_dir(&db);
    let daemons: Vec<Daemon> = (0..3)
        .map(|_| Daemon::start(&db.url, &db.dir, CONFIG, &dir))
        .collect();
    let api = Api::new(&daemons[0], None);
    api.submit(hits_job(
        "shared",
        json!({"partitions": 6, "rows_per_second": LIMIT as u32, "batch_size": 20}),
    ))
    .await;
    eventually(
        Duration::from_secs(20),
        "each replica to hold two partitions",
        || async {
            let (owners, held): (i64, i64) = sqlx::query_as(
                "SELECT count(DISTINCT lease_owner), count(*) FROM backfilld.progress
              WHERE lease_token IS NOT NULL",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (owners == 3 && held == 6).then_some(())
        },
    )
    .await;
    wait_for_share(&daemons.iter().collect::<Vec<_>>(), "2 of the job's 6").await;

    let three = measured_rate(&db, Duration::from_secs(10)).await;
    eprintln!("three replicas: {three:.1} rows/s (limit {LIMIT})");
    assert_near_limit(three, "three replicas");
    let job = api.job("shared").await;
    assert_eq!(job["rate_limit_rows_per_second"], json!(LIMIT as u32));
    let shown = job["rate_rows_per_second"].as_f64().unwrap();
    assert!(
        (shown - LIMIT).abs() <= 0.15 * LIMIT,
        "the API shows {shown} rows/s over every replica"
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains(
            "backfill_rate_limit_rows_per_second{database=\"default\",job=\"shared\"} 600"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("backfill_rate_rows_per_second{database=\"default\",job=\"shared\"}"),
        "{metrics}"
    );

    // SIGKILL: no release, no goodbye. Its partitions' leases die with its presence session.
    let mut daemons = daemons;
    let mut killed = daemons.pop().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    wait_for_share(&daemons.iter().collect::<Vec<_>>(), "2 of the job's 4").await;
    let two = measured_rate(&db, Duration::from_secs(10)).await;
    eprintln!("two replicas after a SIGKILL: {two:.1} rows/s (limit {LIMIT})");
    assert_near_limit(two, "two replicas after a SIGKILL");

    let (status, body) = api.post("/api/v1/jobs/shared/cancel", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The survivors let go of theirs; the killed one's stay behind, dead, until claimed.
    let survivors_held = format!(
        "SELECT count(*) FROM backfilld.progress
          WHERE lease_token IS NOT NULL AND lease_owner NOT LIKE '%:{}:%'",
        killed.child.id()
    );
    eventually(
        Duration::from_secs(10),
        "the survivors' leases released",
        || async { (db.scalar_i64(&survivors_held).await == 0).then_some(()) },
    )
    .await;
    common::assert_table_matches_checkpoints(&db.pool, "t", "after the kill and cancel").await;
    for daemon in &daemons {
        common::api::assert_no_panic(&daemon.log());
    }
}
