//! Gentleness against a real PostgreSQL: a `duty_cycle` rests each worker in proportion to
//! its batches' time, and a re-tune reaches the next batch (driven step by step); bad adaptive
//! and throttle settings are refused at check time.

mod common;

use std::time::{Duration, Instant};

use backfilld::engine::worker::{Step, Worker};
use backfilld::store::jobs;
use common::{hits_table, job_toml, start_job, TestDb};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_duty_cycle_rests_as_long_as_each_batch_took_and_is_retuned_through_the_fence() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 1_000).await;
    // Each row sleeps 2 ms (the subquery is correlated, so it runs per row): a batch of 20
    // takes at least 40 ms.
    let (runtime, env, mut positions, _presence) = start_job(
        &db,
        &job_toml(
            "duty",
            "t",
            "\"id\"",
            "hits = \"hits + 1 + (SELECT 0 FROM pg_sleep(0.002 + 0 * id))\"",
            "batch_size = 20\nduty_cycle = 0.5",
        ),
    )
    .await;
    let schema = env.schema.clone();
    let cancel = CancellationToken::new();
    let mut worker = Worker::new(env, runtime, positions.remove(0));
    let floor = Duration::from_millis(40);
    // The rest is the batch's own transaction time: no shorter than its sleeps, no longer than
    // the whole step around it.
    for _ in 0..2 {
        let started = Instant::now();
        let step = worker.step(&cancel).await;
        let wall = started.elapsed();
        match step {
            Step::Continue { pause: Some(pause) } => {
                assert!(pause >= floor && pause <= wall, "{pause:?} (step {wall:?})")
            }
            other => panic!("{other:?}"),
        }
    }
    // An operator re-tunes it to 0.25 (what PATCH does): the next batch reads it under its
    // fence and rests three times as long as it took.
    let job = jobs::find_by_name(&db.pool, &schema, "duty")
        .await
        .unwrap()
        .unwrap();
    let mut spec = job.spec().unwrap();
    spec.duty_cycle = Some("0.25".parse().unwrap());
    let mut tx = db.pool.begin().await.unwrap();
    jobs::replace_spec(&mut tx, &schema, job.id, &spec, "test", "duty_cycle")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let started = Instant::now();
    let step = worker.step(&cancel).await;
    let wall = started.elapsed();
    match step {
        Step::Continue { pause: Some(pause) } => {
            assert!(
                pause >= 3 * floor && pause <= 3 * wall,
                "{pause:?} (step {wall:?})"
            )
        }
        other => panic!("{other:?}"),
    }
    // A pause longer than the sized rest wins; removing both leaves no rest at all.
    spec.pause = Some(Duration::from_secs(5));
    let mut tx = db.pool.begin().await.unwrap();
    jobs::replace_spec(&mut tx, &schema, job.id, &spec, "test", "pause")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let step = worker.step(&cancel).await;
    assert_eq!(
        step,
        Step::Continue {
            pause: Some(Duration::from_secs(5))
        }
    );
    (spec.pause, spec.duty_cycle) = (None, None);
    let mut tx = db.pool.begin().await.unwrap();
    jobs::replace_spec(&mut tx, &schema, job.id, &spec, "test", "pause, duty_cycle")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(worker.step(&cancel).await, Step::Continue { pause: None });
    assert_eq!(worker.claim.cursor, Some(vec!["100".to_string()]));
}

#[tokio::test]
async fn bad_adaptive_and_throttle_settings_are_refused_at_check_time() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10).await;
    let before = db.fingerprint().await;
    let cases = [
        (
            "target_batch_time = \"200ms\"\nmin_batch_size = 5000\nmax_batch_size = 100",
            vec!["min_batch_size", "larger than max_batch_size"],
        ),
        (
            "throttle_query = \"SELECT count(*) FROM pg_stat_activity\"",
            vec!["throttle_query", "one boolean", "int8"],
        ),
        (
            "throttle_query = \"SELECT true, false\"",
            vec!["throttle_query", "one boolean"],
        ),
        (
            "throttle_query = \"SELECT busy FROM nowhere\"",
            vec!["throttle_query", "nowhere"],
        ),
        ("window = \"late-night\"", vec!["window", "HH:MM"]),
        (
            "window = \"22:00-06:00 Mars/Olympus\"",
            vec!["window", "Mars/Olympus"],
        ),
        ("target_batch_time = \"1ms\"", vec!["target_batch_time"]),
        ("max_wal_rate = \"16MB\"", vec!["max_wal_rate", "16MB/s"]),
    ];
    for (extra, words) in cases {
        let file = db.write_job(
            "bad.toml",
            &job_toml("bad", "t", "\"id\"", "hits = \"hits + 1\"", extra),
        );
        for command in ["check", "run"] {
            let output = db.cli(&[command, file.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{extra} ({command}): {stderr}"
            );
            for word in &words {
                assert!(
                    stderr.contains(word),
                    "{extra} ({command}): {word:?} not in {stderr}"
                );
            }
        }
    }
    assert_eq!(db.fingerprint().await, before);
}
