//! Through a real PgBouncer. Transaction mode: two `serve` replicas (one SIGKILLed mid-job) and
//! a foreground `run` finish their jobs with every row updated exactly once, while a client of
//! the same pooler never sees a setting or a prepared statement of the daemon's. Session mode
//! with a pool of 4: `serve` finishes its job while probes and scrapes hammer it. And a budget
//! too small for the workers is refused by name.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pgbouncer::PgBouncer;
use common::{assert_each_hit_once, eventually, hits_table, Daemon, TestDb};
use sqlx::{Connection, PgConnection, Row};

/// What a backfilld session or transaction sets, and what could leak to another client of a
/// transaction pooler, as a fresh session sees it; with the count of prepared statements.
const SEEN: &str = "SELECT current_setting('synchronous_commit') || ' ' ||
        current_setting('lock_timeout') || ' ' || current_setting('statement_timeout') || ' ' ||
        current_setting('plan_cache_mode') || ' ' ||
        current_setting('idle_in_transaction_session_timeout') || ' ' ||
        current_setting('search_path') || ' prepared=' ||
        (SELECT count(*) FROM pg_prepared_statements)";

/// `SEEN` over the simple protocol (which a transaction pooler carries for any client).
async fn seen(conn: &mut PgConnection) -> String {
    let rows = sqlx::raw_sql(SEEN).fetch_all(conn).await.unwrap();
    rows[0].try_get::<String, _>(0).unwrap()
}

fn job(name: &str, table: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ntable = \"{table}\"\nkey = \"id\"\nbatch_size = 50\n\
         lock_timeout = \"3s\"\nstatement_timeout = \"20s\"\n{extra}\n[set]\nhits = \"hits + 1\"\n"
    )
}

async fn job_state(db: &TestDb, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM backfilld.jobs WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn jobs_run_exactly_once_through_pgbouncer_in_transaction_mode() {
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start("transaction", 3);
    let url = bouncer.url(&db.name);
    hits_table(&db.pool, "a", "bigint", "i", 2_000).await;
    hits_table(&db.pool, "b", "bigint", "i", 4_000).await;
    let defaults = {
        let mut direct = PgConnection::connect(&db.url).await.unwrap();
        seen(&mut direct).await
    };
    assert!(defaults.ends_with("prepared=0"), "{defaults}");

    // A client of the same pooler watches for anything of the daemon's on the servers.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (url, stop, defaults) = (url.clone(), stop.clone(), defaults.clone());
        async move {
            // The daemon's own connect options: without sqlx's `extra_float_digits`, which
            // PgBouncer refuses.
            let options = backfilld::plumbing::db::connect_options(&url).unwrap();
            let mut conn = PgConnection::connect_with(&options).await.unwrap();
            let mut looks = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let now = seen(&mut conn).await;
                assert_eq!(now, defaults, "another client of the pooler sees this");
                looks += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            looks
        }
    });

    let config = "pool_mode = \"transaction\"\nlease_ttl = \"2s\"\nworkers = 2\n";
    let jobs = common::api::jobs_dir(&db);
    std::fs::write(
        jobs.join("b.toml"),
        job("b", "b", "partitions = 4\nrows_per_second = 1500"),
    )
    .unwrap();
    let mut first = Daemon::start(&url, &db.dir, config, &jobs);
    let second = Daemon::start(&url, &db.dir, config, &jobs);

    // Killed once it has committed batches, with leases held: the other replica takes its
    // partitions over once those leases expire.
    eventually(Duration::from_secs(30), "b progresses", || async {
        (db.scalar_i64("SELECT coalesce(sum(rows_scanned), 0)::int8 FROM backfilld.progress")
            .await
            > 500)
            .then_some(())
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));

    // Meanwhile a foreground run of another job through the same pooler.
    let file = db.write_job("a.toml", &job("a", "a", "partitions = 2"));
    let run = common::command(&url, &["run", file.to_str().unwrap()])
        .env("BACKFILLD__POOL_MODE", "transaction")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", common::text(&run));

    eventually(Duration::from_secs(60), "b completes", || async {
        (job_state(&db, "b").await.as_deref() == Some("completed")).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let looks = watcher
        .await
        .expect("the watcher saw something of the daemon's");
    assert!(looks > 20, "the watcher looked only {looks} times");
    assert_each_hit_once(&db.pool, "a", 2_000).await;
    assert_each_hit_once(&db.pool, "b", 4_000).await;
    for log in [first.log(), second.log(), common::text(&run)] {
        assert!(!log.contains("prepared statement"), "{log}");
        common::api::assert_no_panic(&log);
    }
    assert!(
        !bouncer.log().contains("unsupported startup parameter"),
        "{}",
        bouncer.log()
    );
}

#[tokio::test]
async fn serve_finishes_through_a_small_session_pool_while_probes_hammer_it() {
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start("session", 4);
    let url = bouncer.url(&db.name);
    hits_table(&db.pool, "t", "bigint", "i", 3_000).await;
    let jobs = common::api::jobs_dir(&db);
    std::fs::write(jobs.join("t.toml"), job("t", "t", "rows_per_second = 1000")).unwrap();
    // Exactly the pool: one worker, the presence session, one for the API, one for claims.
    let daemon = Daemon::start(&url, &db.dir, "workers = 1\nmax_connections = 4\n", &jobs);
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_probe_ms = Arc::new(AtomicU64::new(0));
    let mut hammers = Vec::new();
    for i in 0..16 {
        let (base, stop, slowest) = (daemon.base.clone(), stop.clone(), slowest_probe_ms.clone());
        let path = ["/readyz", "/metrics", "/api/v1/jobs", "/api/v1/jobs/t"][i % 4];
        hammers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let _ = client
                    .get(format!("{base}{path}"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                if path == "/readyz" {
                    slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    eventually(Duration::from_secs(60), "the job completes", || async {
        (job_state(&db, "t").await.as_deref() == Some("completed")).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for hammer in hammers {
        hammer.await.unwrap();
    }
    assert_each_hit_once(&db.pool, "t", 3_000).await;
    // A probe answers within its bound even while the API's connection is busy.
    let slowest = slowest_probe_ms.load(Ordering::Relaxed);
    assert!(slowest < 2_000, "a /readyz took {slowest} ms");
    common::api::assert_no_panic(&daemon.log());
}

#[tokio::test]
async fn a_connection_budget_too_small_for_the_workers_is_refused_by_name() {
    let db = TestDb::new().await;
    let config = db.dir.join("small.toml");
    std::fs::write(&config, "workers = 3\nmax_connections = 4\n").unwrap();
    let output = common::cli_with_url(
        &db.url,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let text = common::text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("max_connections") && text.contains("at least 6"),
        "{text}"
    );
}
