//! Several `serve` processes on one job, and the faults a fleet sees: a process that stalls
//! mid-batch past its lease (SIGSTOP), one that dies (SIGKILL), and all of it at random. The
//! job is non-idempotent (`hits = hits + 1`), so a lost batch shows as `hits = 0` and a doubled
//! one as `hits = 2`.

mod common;

use std::time::{Duration, Instant};

use common::api::{assert_no_panic, hits_job, jobs_dir, Api, ADMIN, TOKENS};
use common::{
    assert_each_hit_once, assert_table_matches_checkpoints, checkpointed, eventually, hits_table,
    hold_row, http_status, wait_for_a_lock_waiter, wait_for_progress, Daemon, TestDb,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The partition owners as the database records them.
async fn owners(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT lease_owner FROM backfilld.progress WHERE lease_owner IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// A lease owner is `host:pid:nonce`.
fn owned_by(owner: &str, daemon: &Daemon) -> bool {
    owner.split(':').nth(1) == Some(&*daemon.child.id().to_string())
}

#[tokio::test]
async fn a_process_stopped_mid_batch_past_its_lease_cannot_commit_when_it_wakes() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 3_000).await;
    let dir = jobs_dir(&db);
    let config = format!("lease_ttl = \"2s\"\nworkers = 2\n{TOKENS}");
    let mut stalled = Daemon::start(&db.url, &db.dir, &config, &dir);
    let api = Api::new(&stalled, Some(ADMIN));

    // The application holds a row the walk will reach, so the first daemon's batch for keys
    // 1001..1100 waits on it, with the partition's fence (its progress row) locked.
    let app = hold_row(&db, 1_050).await;
    api.submit(hits_job("fenced", json!({}))).await;
    wait_for_a_lock_waiter(&db, "a batch waiting on the row lock").await;
    assert_eq!(checkpointed(&db.pool).await, 1_000);
    let stale_owner = owners(&db).await;
    assert!(owned_by(&stale_owner[0], &stalled), "{stale_owner:?}");

    // The process stalls (a long GC pause, a frozen VM) with its batch in flight.
    stalled.signal("STOP");
    let taker = Daemon::start(&db.url, &db.dir, &config, &dir);
    // The lock goes away. The batch is one statement that checked the lease when it started
    // and holds the fence until it ends, so it completes and commits on the server as a whole
    // (rows and checkpoint together) while its client sleeps; nobody could take the partition
    // in between.
    app.commit().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the in-flight batch to commit whole",
        || async { (checkpointed(&db.pool).await == 1_100).then_some(()) },
    )
    .await;
    assert_table_matches_checkpoints(&db.pool, "t", "once the in-flight batch committed").await;
    // The lease lapses (the stalled process cannot renew it), and the other process takes the
    // partition over from the checkpoint.
    Api::new(&taker, Some(ADMIN))
        .wait_state("fenced", "completed", Duration::from_secs(60))
        .await;
    assert_each_hit_once(&db.pool, "t", 3_000).await;

    // The stalled process wakes up, still believing it holds the partition mid-batch.
    stalled.signal("CONT");
    eventually(
        Duration::from_secs(20),
        "the woken process to notice",
        || async {
            let log = stalled.log();
            log.contains("taken over").then_some(())
        },
    )
    .await;
    for line in stalled.log().lines().filter(|l| l.contains("WARN")) {
        println!("woken process: {line}");
    }
    assert_eq!(http_status(&stalled.base, "/healthz"), Some(200));
    // Its stale batch did not commit: still exactly once, and the checkpoints agree.
    assert_each_hit_once(&db.pool, "t", 3_000).await;
    assert_eq!(checkpointed(&db.pool).await, 3_000);
    assert_no_panic(&stalled.log());
    assert_no_panic(&taker.log());
    stalled.signal("TERM");
    assert_eq!(stalled.wait_exit(Duration::from_secs(30)), Some(0));
}

#[tokio::test]
async fn a_killed_process_has_its_partitions_taken_over() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10_000).await;
    let dir = jobs_dir(&db);
    // A long lease: the takeover must come from the dead process's presence session closing,
    // not from waiting the lease out.
    let config = format!("lease_ttl = \"60s\"\nworkers = 4\n{TOKENS}");
    let mut victim = Daemon::start(&db.url, &db.dir, &config, &dir);
    Api::new(&victim, Some(ADMIN))
        .submit(hits_job(
            "orphaned",
            json!({"partitions": 2, "rows_per_second": 800}),
        ))
        .await;
    eventually(
        Duration::from_secs(30),
        "the victim holding both partitions",
        || async {
            let owners = owners(&db).await;
            (owners.len() == 2
                && owners.iter().all(|o| owned_by(o, &victim))
                && checkpointed(&db.pool).await >= 1_000)
                .then_some(())
        },
    )
    .await;
    let heir = Daemon::start(&db.url, &db.dir, &config, &dir);
    victim.child.kill().unwrap(); // SIGKILL: no drain, no release
    victim.child.wait().unwrap();
    let at_kill = checkpointed(&db.pool).await;
    assert!(at_kill < 10_000, "the job ended before the kill");
    let api = Api::new(&heir, Some(ADMIN));
    eventually(
        Duration::from_secs(20),
        "the heir holding the partitions",
        || async {
            let owners = owners(&db).await;
            let job = api.job("orphaned").await;
            (job["state"] == json!("completed")
                || (!owners.is_empty() && owners.iter().all(|o| owned_by(o, &heir))))
            .then_some(())
        },
    )
    .await;
    // Well within the 60 s lease: the takeover did not wait for it.
    api.wait_state("orphaned", "completed", Duration::from_secs(40))
        .await;
    assert_each_hit_once(&db.pool, "t", 10_000).await;
    assert_no_panic(&heir.log());
}

/// One replica and what the chaos loop has done to it.
struct Replica {
    daemon: Option<Daemon>,
    stopped_until: Option<Instant>,
}

#[tokio::test]
async fn three_replicas_under_random_kill_stop_and_restart_increment_every_row_once() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("chaos seed {seed} (rerun with CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let rows = 30_000;
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", rows).await;
    let dir = jobs_dir(&db);
    let config = format!("lease_ttl = \"2s\"\nworkers = 2\nshutdown_timeout = \"5s\"\n{TOKENS}");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica {
            daemon: Some(Daemon::start(&db.url, &db.dir, &config, &dir)),
            stopped_until: None,
        })
        .collect();
    Api::new(replicas[0].daemon.as_ref().unwrap(), Some(ADMIN))
        .submit(hits_job(
            "chaos",
            json!({"partitions": 4, "rows_per_second": 1200, "batch_size": 60}),
        ))
        .await;
    wait_for_progress(&db, 1, Duration::from_secs(30)).await;

    let mut actions = Vec::new();
    let mut landed_while_running = 0;
    // A number of faults, not a span of time: on a loaded machine a restart or a drain takes
    // seconds, and a deadline would leave too few of them to land while the job runs.
    while actions.len() < 14 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let now = Instant::now();
        for replica in &mut replicas {
            if replica.stopped_until.is_some_and(|t| t <= now) {
                replica.daemon.as_ref().unwrap().signal("CONT");
                replica.stopped_until = None;
            }
        }
        let pick = rng.random_range(0..replicas.len());
        let replica = &mut replicas[pick];
        let action = if replica.daemon.is_none() {
            "start"
        } else if replica.stopped_until.is_some() {
            "kill" // SIGKILL works on a stopped process too
        } else {
            ["kill", "stop", "term", "kill+restart"][rng.random_range(0..4)]
        };
        match action {
            "start" => {
                replica.daemon = Some(Daemon::start(&db.url, &db.dir, &config, &dir));
            }
            "kill" | "kill+restart" => {
                let mut daemon = replica.daemon.take().unwrap();
                daemon.child.kill().unwrap();
                daemon.child.wait().unwrap();
                assert_no_panic(&daemon.log());
                replica.stopped_until = None;
                if action == "kill+restart" {
                    replica.daemon = Some(Daemon::start(&db.url, &db.dir, &config, &dir));
                }
            }
            "stop" => {
                // Sometimes shorter than the lease, sometimes well past it.
                let stall = Duration::from_millis(rng.random_range(500..4500));
                replica.daemon.as_ref().unwrap().signal("STOP");
                replica.stopped_until = Some(Instant::now() + stall);
            }
            "term" => {
                let mut daemon = replica.daemon.take().unwrap();
                daemon.signal("TERM");
                let code = daemon.wait_exit(Duration::from_secs(30));
                assert_eq!(code, Some(0), "{}", daemon.log());
                assert_no_panic(&daemon.log());
            }
            _ => unreachable!(),
        }
        let state = db
            .scalar_string("SELECT state FROM backfilld.jobs WHERE name = 'chaos'")
            .await;
        if state.as_deref() == Some("running") {
            landed_while_running += 1;
        }
        actions.push(format!("{action} #{pick}"));
        // Between faults, the table always agrees with the checkpoints.
        assert_table_matches_checkpoints(
            &db.pool,
            "t",
            &format!("after {action} #{pick} (seed {seed})"),
        )
        .await;
    }
    println!("chaos actions (seed {seed}): {}", actions.join(", "));
    assert!(
        landed_while_running >= 6,
        "only {landed_while_running} faults landed while the job ran (seed {seed})"
    );

    // Heal: wake the stopped, start the dead, and let the job finish.
    for replica in &mut replicas {
        if replica.stopped_until.take().is_some() {
            replica.daemon.as_ref().unwrap().signal("CONT");
        }
        if replica.daemon.is_none() {
            replica.daemon = Some(Daemon::start(&db.url, &db.dir, &config, &dir));
        }
    }
    let api = Api::new(replicas[0].daemon.as_ref().unwrap(), Some(ADMIN));
    let job = api
        .wait_state("chaos", "completed", Duration::from_secs(90))
        .await;
    assert_each_hit_once(&db.pool, "t", rows).await;
    assert_eq!(job["rows_scanned"], json!(rows), "seed {seed}: {job}");
    for replica in &replicas {
        assert_no_panic(&replica.daemon.as_ref().unwrap().log());
    }
}
