//! Operating one job over several target databases (README, "Several databases"), on local
//! databases only: the metrics carry each database's series, `status` and the API show each
//! database and the totals, a pause stops every target within one batch, and the rate limit
//! holds over all targets and replicas together.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::api::{hits_job, jobs_dir, Api};
use common::{checkpointed, eventually, hits_table, Daemon, TestDb};

/// `n` local databases (`shard-1..n`), each with `t` of `rows` rows, and a home database for
/// the daemons' own `database_url`.
struct LocalFleet {
    home: TestDb,
    shards: Vec<TestDb>,
}

impl LocalFleet {
    async fn start(n: usize, rows: i64) -> LocalFleet {
        let home = TestDb::new().await;
        let mut shards = Vec::new();
        for _ in 0..n {
            let db = TestDb::new().await;
            hits_table(&db.pool, "t", "bigint", "i", rows).await;
            shards.push(db);
        }
        LocalFleet { home, shards }
    }

    fn config(&self) -> String {
        let mut config = "workers = 2\nlease_ttl = \"3s\"\n".to_string();
        for (i, db) in self.shards.iter().enumerate() {
            config.push_str(&format!(
                "[[databases]]\nname = \"shard-{}\"\nurl = \"{}\"\n",
                i + 1,
                db.url
            ));
        }
        config
    }

    fn daemon(&self) -> Daemon {
        let config = self.config();
        Daemon::start(
            &self.home.url,
            &self.home.dir,
            &config,
            &jobs_dir(&self.home),
        )
    }

    /// Runs the command line with this fleet's config: its exit code and output.
    fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let config = self.home.dir.join("fleet-config.toml");
        std::fs::write(&config, self.config()).unwrap();
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let output = common::command(&self.home.url, &all).output().unwrap();
        (output.status.code(), common::text(&output))
    }

    /// Rows the checkpoints cover on each database, shard-1 first.
    async fn checkpointed(&self) -> Vec<i64> {
        let mut counts = Vec::new();
        for db in &self.shards {
            counts.push(checkpointed(&db.pool).await);
        }
        counts
    }
}

fn shards_job(name: &str, extra: Value) -> Value {
    let mut job = hits_job(name, extra);
    job["databases"] = json!(["shard-*"]);
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_api_show_each_database_and_the_totals() {
    const ROWS: i64 = 2000;
    let fleet = LocalFleet::start(2, ROWS).await;
    let daemon = fleet.daemon();
    let api = Api::new(&daemon, None);
    api.submit(shards_job(
        "metered",
        json!({"batch_size": 200, "partitions": 2}),
    ))
    .await;
    let job = api
        .wait_state("metered", "completed", Duration::from_secs(60))
        .await;
    assert_eq!(job["rows_updated"], json!(2 * ROWS), "{job}");
    assert_eq!(job["progress"], json!(1.0), "{job}");
    for (i, part) in job["databases"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            part["database"],
            json!(format!("shard-{}", i + 1)),
            "{part}"
        );
        assert_eq!(part["rows_updated"], json!(ROWS), "{part}");
        assert_eq!(part["progress"], json!(1.0), "{part}");
    }

    let metrics = api.metrics().await;
    for shard in ["shard-1", "shard-2"] {
        for line in [
            format!("backfill_rows_updated_total{{database=\"{shard}\",job=\"metered\"}} {ROWS}"),
            format!("backfill_progress_ratio{{database=\"{shard}\",job=\"metered\"}} 1"),
            format!("backfill_job_state{{database=\"{shard}\",job=\"metered\",state=\"completed\"}} 1"),
            format!("backfill_batches_total{{database=\"{shard}\",job=\"metered\",outcome=\"failed\"}} 0"),
        ] {
            assert!(metrics.contains(&line), "{line:?} not in\n{metrics}");
        }
    }
    // The job is not on the daemon's own database: no series claims it is.
    assert!(
        !metrics.contains("database=\"default\",job=\"metered\""),
        "{metrics}"
    );

    // `status NAME` shows the totals, then each database's part.
    let output = common::command(
        &fleet.home.url,
        &["status", "--url", &daemon.base, "metered"],
    )
    .output()
    .unwrap();
    let text = common::text(&output);
    assert!(output.status.success(), "{text}");
    let line = |start: &str| {
        (text.lines())
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line for {start} in\n{text}"))
            .to_string()
    };
    assert!(line("metered").contains("4,000"), "{text}");
    for shard in ["shard-1", "shard-2"] {
        let part = line(shard);
        assert!(
            part.contains("completed") && part.contains("100%") && part.contains("2,000"),
            "{part}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_every_database_within_one_batch_and_resume_goes_on() {
    const ROWS: i64 = 3000;
    const BATCH: i64 = 50;
    let fleet = LocalFleet::start(3, ROWS).await;
    let daemon = fleet.daemon();
    let api = Api::new(&daemon, None);
    // One partition per database: at most one batch of the job is in flight on each.
    api.submit(shards_job(
        "pausable",
        json!({"batch_size": BATCH, "partitions": 1, "rows_per_second": 1500}),
    ))
    .await;
    eventually(
        Duration::from_secs(30),
        "work on every database",
        || async {
            let counts = fleet.checkpointed().await;
            counts.iter().all(|n| *n >= 2 * BATCH).then_some(())
        },
    )
    .await;

    let (status, job) = api.post("/api/v1/jobs/pausable/pause", None).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], json!("paused"), "{job}");
    let at_pause = fleet.checkpointed().await;
    assert!(
        at_pause.iter().all(|n| *n < ROWS),
        "paused too late: {at_pause:?}"
    );
    // Every worker lets go of its partition once it has noticed, on every database.
    for db in &fleet.shards {
        common::wait_for_leases_released(db).await;
    }
    let stopped = fleet.checkpointed().await;
    for (i, (before, after)) in at_pause.iter().zip(&stopped).enumerate() {
        assert!(
            after - before <= BATCH,
            "shard-{}: more than one batch after the pause: {before} -> {after}",
            i + 1
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.checkpointed().await,
        stopped,
        "still moving after the pause"
    );
    for db in &fleet.shards {
        let state = db
            .scalar_string("SELECT state::text FROM backfilld.jobs WHERE name = 'pausable'")
            .await;
        assert_eq!(state.as_deref(), Some("paused"), "on {}", db.name);
    }

    let (status, job) = api.post("/api/v1/jobs/pausable/resume", None).await;
    assert_eq!(status, 200, "{job}");
    api.wait_state("pausable", "completed", Duration::from_secs(60))
        .await;
    for db in &fleet.shards {
        common::assert_each_hit_once(&db.pool, "t", ROWS).await;
    }

    // The events of every database, each marked with its database, in time order.
    let events = api.events("pausable").await;
    let times: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] <= w[1]),
        "not in time order: {times:?}"
    );
    for shard in ["shard-1", "shard-2", "shard-3"] {
        let on: Vec<&Value> = (events.iter())
            .filter(|e| e["database"] == json!(shard))
            .collect();
        for state in ["paused", "completed"] {
            assert!(
                on.iter().any(|e| e["to_state"] == json!(state)),
                "{shard}: no event to {state} in {events:?}"
            );
        }
    }
    assert!(
        events.iter().all(|e| e["database"].is_string()),
        "an event without its database: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_over_all_databases_and_replicas() {
    const LIMIT: f64 = 600.0;
    let fleet = LocalFleet::start(3, 20_000).await;
    let (a, b) = (fleet.daemon(), fleet.daemon());
    let api = Api::new(&a, None);
    // Four partitions per database and two workers per target each: neither replica can
    // hold them all, so both share the limit.
    api.submit(shards_job(
        "limited",
        json!({"batch_size": 20, "partitions": 4, "rows_per_second": LIMIT as u32}),
    ))
    .await;
    // Both replicas hold leases before the window opens, so it measures the shared limit.
    // (Each process has its own presence session, so its own lease owner, on each target.)
    eventually(
        Duration::from_secs(30),
        "both replicas at work on every database",
        || async {
            for db in &fleet.shards {
                let owners = db
                    .scalar_i64(
                        "SELECT count(DISTINCT lease_owner) FROM backfilld.progress
                          WHERE lease_token IS NOT NULL",
                    )
                    .await;
                if owners != 2 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Each replica re-reads its share of the rate every 2 s: wait out one re-read and more.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (start, before) = (Instant::now(), fleet.checkpointed().await);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = fleet.checkpointed().await;
    let elapsed = start.elapsed().as_secs_f64();
    let moved: i64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let rate = moved as f64 / elapsed;
    eprintln!(
        "3 databases, 2 replicas: {rate:.1} rows/s over {elapsed:.1}s (limit {LIMIT}); per database: {:?}",
        after.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<_>>()
    );
    assert!(
        (rate - LIMIT).abs() <= 0.1 * LIMIT,
        "the job ran at {rate:.0} rows/s over all databases, not within 10% of {LIMIT}"
    );
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "every database takes part: {before:?} -> {after:?}"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_verify_report_on_every_database_and_in_total() {
    let fleet = LocalFleet::start(3, 100).await;
    let job = fleet.home.write_job(
        "fleet.toml",
        &common::job_toml(
            "gate",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "databases = [\"shard-*\"]\nwhere = \"hits = 0\"",
        ),
    );
    let job = job.to_str().unwrap();
    // Nothing done anywhere yet, then all of shard-1 and half of shard-3.
    fleet.shards[0].exec("UPDATE t SET hits = 1").await;
    fleet.shards[2]
        .exec("UPDATE t SET hits = 1 WHERE id <= 50")
        .await;
    let (code, text) = fleet.cli(&["verify", job]);
    assert_eq!(code, Some(4), "{text}");
    for line in [
        "database shard-1: job gate: 0 row(s)",
        "database shard-2: job gate: 100 row(s)",
        "database shard-3: job gate: 50 row(s)",
        "job gate: 150 row(s) still match `where` over 3 database(s)",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    for db in &fleet.shards[1..] {
        db.exec("UPDATE t SET hits = 1").await;
    }
    let (code, text) = fleet.cli(&["verify", job]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("job gate: 0 row(s) still match `where` over 3 database(s)"),
        "{text}"
    );

    let (code, text) = fleet.cli(&["check", job]);
    assert_eq!(code, Some(0), "{text}");
    for shard in ["shard-1", "shard-2", "shard-3"] {
        assert!(text.contains(&format!("== database {shard} ==")), "{text}");
    }
    assert_eq!(text.matches("job gate: OK").count(), 3, "{text}");

    // A table missing on one database: check and verify name it and exit 2.
    fleet.shards[1].exec("DROP TABLE t").await;
    for command in ["check", "verify"] {
        let (code, text) = fleet.cli(&[command, job]);
        assert_eq!(code, Some(2), "{command}: {text}");
        assert!(text.contains("shard-2"), "{command}: {text}");
    }
    let (code, text) = fleet.cli(&["check", job]);
    assert_eq!(text.matches("job gate: OK").count(), 2, "{code:?} {text}");
}
