//! Replica lag throttling against a real streaming standby: a throwaway primary and a
//! standby made with pg_basebackup, on their own ports, run as the postgres user. The standby's
//! replay is paused on purpose (`pg_wal_replay_pause()`), so it lags; the job must wait until
//! replay resumes, then finish exactly once.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use common::cluster::{self, as_postgres, ScratchDir};
use common::free_port;

/// A primary and a streaming standby in a temporary directory, stopped and removed on drop.
struct Cluster {
    dir: ScratchDir,
    primary_port: u16,
    standby_port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let mut dir = ScratchDir::new("replica");
        let (primary_port, standby_port) = (free_port(), free_port());
        let primary = dir.initdb("primary");
        dir.start(&primary, primary_port, &["fsync=off"]);
        let standby = dir.path.join("standby");
        as_postgres(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                standby.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
            ],
        );
        dir.start(&standby, standby_port, &["fsync=off"]);
        Cluster {
            dir,
            primary_port,
            standby_port,
        }
    }

    fn url(&self, port: u16) -> String {
        cluster::url(port)
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lagging_standby_holds_the_job_until_it_catches_up() {
    let cluster = Cluster::start();
    let primary = pool(&cluster.url(cluster.primary_port)).await;
    let standby = pool(&cluster.url(cluster.standby_port)).await;
    common::hits_table(&primary, "t", "bigint", "i", 20_000).await;
    common::eventually(
        Duration::from_secs(30),
        "the standby to catch up",
        || async {
            let rows: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(&standby)
                .await
                .ok();
            (rows == Some(20_000)).then_some(())
        },
    )
    .await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .unwrap();

    let dir = cluster.dir.path.join("job");
    std::fs::create_dir_all(&dir).unwrap();
    let job = dir.join("lagged.toml");
    std::fs::write(
        &job,
        common::job_toml(
            "lagged",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "batch_size = 100\nrows_per_second = 4000\nmax_replica_lag = \"1s\"",
        ),
    )
    .unwrap();
    let log_path = dir.join("run.log");
    let mut run = common::command(
        &cluster.url(cluster.primary_port),
        &["run", job.to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log_path).unwrap())
    .spawn()
    .unwrap();

    // The job's own writes pile up unreplayed WAL; once the standby is more than 1 s behind,
    // the job must stand still.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held_at = loop {
        assert!(
            Instant::now() < deadline,
            "the job never stopped for the lag"
        );
        assert!(
            run.try_wait().unwrap().is_none(),
            "the job ended while the standby lagged"
        );
        let lag: f64 = sqlx::query_scalar(
            "SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication",
        )
        .fetch_one(&primary)
        .await
        .unwrap();
        let before = common::checkpointed(&primary).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = common::checkpointed(&primary).await;
        if lag > 1.0 && before == after && after > 0 {
            break after;
        }
    };
    assert!(held_at < 20_000, "the job finished despite the lag");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("replica_lag"),
        "no throttle reason in the log:\n{log}"
    );

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish after replay resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    common::assert_each_hit_once(&primary, "t", 20_000).await;
}
