//! One job over several target databases (README, "Several databases"): three databases on
//! the local server and one on a throwaway cluster of its own, run by two `serve` replicas.
//! One replica is SIGKILLed and the throwaway server stopped and restarted mid-run; every row
//! on every database must still be incremented exactly once. Also: the job's view shows each
//! database and the totals, and bad input changes nothing anywhere.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use common::api::{hits_job, jobs_dir, Api};
use common::cluster::{self, as_postgres, ScratchDir};
use common::{assert_each_hit_once, eventually, free_port, hits_table, Daemon, TestDb};

const ROWS: i64 = 3000;

/// Three local databases (`shard-1..3`) and one on a throwaway cluster (`shard-4`), each
/// with `t` (`ROWS` rows, `hits = 0`), and a home database for the daemons' `database_url`.
struct Fleet {
    home: TestDb,
    local: Vec<TestDb>,
    scratch: ScratchDir,
    data: std::path::PathBuf,
    port: u16,
    remote: PgPool,
}

impl Fleet {
    async fn start() -> Fleet {
        let home = TestDb::new().await;
        let mut local = Vec::new();
        for _ in 0..3 {
            let db = TestDb::new().await;
            hits_table(&db.pool, "t", "bigint", "i", ROWS).await;
            local.push(db);
        }
        let mut scratch = ScratchDir::new("fleet");
        let port = free_port();
        let data = scratch.initdb("shard4");
        scratch.start(&data, port, &["fsync=off"]);
        let remote = pool(&cluster::url(port)).await;
        hits_table(&remote, "t", "bigint", "i", ROWS).await;
        Fleet {
            home,
            local,
            scratch,
            data,
            port,
            remote,
        }
    }

    fn config(&self, extra: &str) -> String {
        let mut config = format!("workers = 2\nlease_ttl = \"3s\"\n{extra}\n");
        for (i, db) in self.local.iter().enumerate() {
            config.push_str(&format!(
                "[[databases]]\nname = \"shard-{}\"\nurl = \"{}\"\n",
                i + 1,
                db.url
            ));
        }
        config.push_str(&format!(
            "[[databases]]\nname = \"shard-4\"\nurl = \"{}\"\n",
            cluster::url(self.port)
        ));
        config
    }

    fn daemon(&self, config: &str) -> Daemon {
        Daemon::start(
            &self.home.url,
            &self.home.dir,
            config,
            &jobs_dir(&self.home),
        )
    }

    fn stop_remote(&self) {
        as_postgres(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }

    fn restart_remote(&mut self) {
        let data = self.data.clone();
        self.scratch.start(&data, self.port, &["fsync=off"]);
    }

    /// Rows with `hits > 0` on each database, shard-1 first.
    async fn done(&self) -> Vec<i64> {
        let mut done = Vec::new();
        for db in &self.local {
            done.push(db.scalar_i64("SELECT count(*) FROM t WHERE hits > 0").await);
        }
        done.push(count_hit(&self.remote).await);
        done
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

async fn count_hit(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM t WHERE hits > 0")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

fn shards_job(name: &str, extra: Value) -> Value {
    let mut job = hits_job(name, extra);
    job["databases"] = json!(["shard-*"]);
    job["partitions"] = json!(2);
    job["batch_size"] = json!(50);
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_databases_two_replicas_a_kill_and_a_server_restart_each_row_once() {
    let mut fleet = Fleet::start().await;
    let config = fleet.config("");
    let mut a = fleet.daemon(&config);
    let b = fleet.daemon(&config);
    let (api_a, api_b) = (Api::new(&a, None), Api::new(&b, None));
    api_a
        .submit(shards_job("fleet", json!({"rows_per_second": 2000})))
        .await;

    // Mid-run on every database: kill a replica (its leases free at once: its presence
    // sessions are gone) and take the throwaway server away, then bring it back.
    eventually(
        Duration::from_secs(30),
        "work on every database",
        || async {
            let done = fleet.done().await;
            done.iter().all(|n| *n > 0).then_some(())
        },
    )
    .await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10));
    fleet.stop_remote();
    let view = eventually(
        Duration::from_secs(15),
        "shard-4 shown unreachable",
        || async {
            let job = api_b.job("fleet").await;
            let shard4 = job["databases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["database"] == "shard-4")
                .cloned()
                .unwrap();
            shard4["error"].is_string().then_some(job)
        },
    )
    .await;
    assert_eq!(view["databases"].as_array().unwrap().len(), 4, "{view}");
    // The others go on meanwhile.
    let before = fleet.done().await;
    eventually(
        Duration::from_secs(15),
        "the other databases to go on",
        || async {
            let now = fleet.done().await;
            (now[..3].iter().zip(&before[..3]).any(|(n, b)| n > b)
                || now[..3].iter().all(|n| *n == ROWS))
            .then_some(())
        },
    )
    .await;
    fleet.restart_remote();

    let job = api_b
        .wait_state("fleet", "completed", Duration::from_secs(90))
        .await;
    for db in &fleet.local {
        assert_each_hit_once(&db.pool, "t", ROWS).await;
    }
    assert_each_hit_once(&fleet.remote, "t", ROWS).await;
    // One job to its users: the totals, and each database's part.
    assert_eq!(job["rows_updated"], json!(4 * ROWS), "{job}");
    assert_eq!(job["progress"], json!(1.0), "{job}");
    let parts = job["databases"].as_array().unwrap();
    let names: Vec<&str> = parts
        .iter()
        .map(|d| d["database"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shard-1", "shard-2", "shard-3", "shard-4"]);
    for part in parts {
        assert_eq!(part["state"], "completed", "{part}");
        assert_eq!(part["rows_updated"], json!(ROWS), "{part}");
        assert!(part["error"].is_null(), "{part}");
    }
    // The daemon's own database never held the job.
    let home_jobs = fleet
        .home
        .scalar_i64("SELECT count(*) FROM backfilld.jobs")
        .await;
    assert_eq!(home_jobs, 0);
    common::api::assert_no_panic(&b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_database_and_nothing_is_submitted() {
    let fleet = Fleet::start().await;
    // shard-2 lacks the table.
    fleet.local[1].exec("DROP TABLE t").await;
    let daemon = fleet.daemon(&fleet.config(""));
    let api = Api::new(&daemon, None);
    let (status, body) = api
        .post("/api/v1/jobs", Some(shards_job("missing", json!({}))))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("database shard-2") && error.contains("nothing was submitted"),
        "{error}"
    );
    // A glob that matches nothing.
    let mut job = shards_job("nowhere", json!({}));
    job["databases"] = json!(["eu-*"]);
    let (status, body) = api.post("/api/v1/jobs", Some(job)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    common::api::assert_error_says(&body, "\"eu-*\" matches no configured database");
    // An unreachable target refuses the submission (nothing anywhere).
    fleet.stop_remote();
    let mut job = shards_job("away", json!({}));
    job["databases"] = json!(["shard-1", "shard-4"]);
    let (status, body) = api.post("/api/v1/jobs", Some(job)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    common::api::assert_error_says(&body, "database shard-4");
    for db in [&fleet.local[0], &fleet.local[2]] {
        let jobs = db.scalar_i64("SELECT count(*) FROM backfilld.jobs").await;
        assert_eq!(jobs, 0, "a refused submission stored a job on {}", db.name);
    }
    let (status, _) = api.get("/api/v1/jobs/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
