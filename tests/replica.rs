//! Replica lag throttling against a real streaming standby: a throwaway primary and a
//! standby made with pg_basebackup, on their own ports, run as the postgres user. The standby's
//! replay is paused on purpose (`pg_wal_replay_pause()`), so it lags; the job must wait until
//! replay resumes, then finish exactly once. The jobs run as an ordinary role: PostgreSQL shows
//! other sessions' lag and activity only to members of pg_monitor (or pg_read_all_stats), so
//! without it the health limits are refused at check and submit, and hold a running job.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use common::api::Api;
use common::cluster::{self, as_postgres, ScratchDir};
use common::free_port;
use reqwest::StatusCode;

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

    /// The primary as [`ROLE`].
    fn role_url(&self) -> String {
        self.url(self.primary_port)
            .replacen("postgres@", &format!("{ROLE}@"), 1)
    }
}

/// An ordinary role (no superuser, no pg_monitor) with what a job on `t` needs: the table, and
/// CREATE on the database for backfilld's own schema.
const ROLE: &str = "app";

/// The primary's and the standby's pools, with `t` on both and the standby's replay paused.
async fn lagging_standby(cluster: &Cluster, rows: i64) -> (PgPool, PgPool) {
    let primary = pool(&cluster.url(cluster.primary_port)).await;
    let standby = pool(&cluster.url(cluster.standby_port)).await;
    common::hits_table(&primary, "t", "bigint", "i", rows).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {ROLE} LOGIN NOSUPERUSER;
         GRANT SELECT, UPDATE ON t TO {ROLE};
         GRANT CREATE ON DATABASE postgres TO {ROLE};"
    )))
    .execute(&primary)
    .await
    .unwrap();
    common::eventually(
        Duration::from_secs(30),
        "the standby to catch up",
        || async {
            let count: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(&standby)
                .await
                .ok();
            (count == Some(rows)).then_some(())
        },
    )
    .await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .unwrap();
    (primary, standby)
}

/// The furthest standby's replay lag in seconds as `pool`'s role sees it: `None` when no
/// standby's is shown.
async fn replay_lag(pool: &PgPool) -> Option<f64> {
    sqlx::query_scalar(
        "SELECT max(extract(epoch FROM replay_lag))::float8 FROM pg_stat_replication",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn grant_monitor(primary: &PgPool, grant: bool) {
    let sql = match grant {
        true => format!("GRANT pg_monitor TO {ROLE}"),
        false => format!("REVOKE pg_monitor FROM {ROLE}"),
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(primary)
        .await
        .unwrap();
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

/// The job file `name.toml` in the cluster's directory, with `extra` fields.
fn job_file(cluster: &Cluster, name: &str, extra: &str) -> std::path::PathBuf {
    let dir = cluster.dir.path.join("job");
    std::fs::create_dir_all(&dir).unwrap();
    let job = dir.join(format!("{name}.toml"));
    let toml = common::job_toml(name, "t", "\"id\"", "hits = \"hits + 1\"", extra);
    std::fs::write(&job, toml).unwrap();
    job
}

#[tokio::test]
async fn without_pg_monitor_the_health_limits_are_refused_rather_than_read_as_zero() {
    let cluster = Cluster::start();
    let (primary, _standby) = lagging_standby(&cluster, 1_000).await;
    // Writes the standby receives and does not replay, until it is over a second behind.
    common::eventually(Duration::from_secs(60), "the standby to lag", || async {
        sqlx::query("UPDATE t SET hits = hits WHERE id <= 10")
            .execute(&primary)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        (replay_lag(&primary).await? > 1.0).then_some(())
    })
    .await;
    let app = pool(&cluster.role_url()).await;
    assert_eq!(
        replay_lag(&app).await,
        None,
        "PostgreSQL shows an ordinary role no standby's lag"
    );

    let limits = [
        ("max_replica_lag", "max_replica_lag = \"1s\""),
        ("max_active_sessions", "max_active_sessions = 1"),
    ];
    for (field, extra) in limits {
        let job = job_file(&cluster, "limited", extra);
        for command in ["check", "run"] {
            let output =
                common::cli_with_url(&cluster.role_url(), &[command, job.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{field} {command}: {}",
                common::text(&output)
            );
            assert!(
                stderr.contains(field) && stderr.contains("pg_monitor"),
                "{field} {command}: {stderr}"
            );
        }
    }
    let hits: i64 = sqlx::query_scalar("SELECT sum(hits)::int8 FROM t")
        .fetch_one(&primary)
        .await
        .unwrap();
    assert_eq!(hits, 0, "a refused job wrote rows");

    grant_monitor(&primary, true).await;
    for (field, extra) in limits {
        let job = job_file(&cluster, "limited", extra);
        let output = common::cli_with_url(&cluster.role_url(), &["check", job.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{field}: {}",
            common::text(&output)
        );
    }
}

#[tokio::test]
async fn a_lagging_standby_holds_the_job_until_it_catches_up() {
    let cluster = Cluster::start();
    let (primary, standby) = lagging_standby(&cluster, 20_000).await;
    // An ordinary role with pg_monitor runs the job as a superuser would.
    grant_monitor(&primary, true).await;
    let job = job_file(
        &cluster,
        "lagged",
        "batch_size = 100\nrows_per_second = 4000\nmax_replica_lag = \"1s\"",
    );
    let log_path = job.with_file_name("run.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut run = common::command(
        &cluster.role_url(),
        &["run", job.to_str().unwrap(), "--listen", &listen],
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
        let lag = replay_lag(&primary).await.unwrap_or(0.0);
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

    // pg_monitor taken away while the job waits, and the standby catching up: the job can no
    // longer see the lag, so it keeps waiting and says why instead of reading the lag as 0.
    grant_monitor(&primary, false).await;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .unwrap();
    common::eventually(
        Duration::from_secs(30),
        "the standby to replay everything",
        || async {
            let caught_up: Option<bool> = sqlx::query_scalar(
                "SELECT bool_and(replay_lsn = sent_lsn) FROM pg_stat_replication",
            )
            .fetch_one(&primary)
            .await
            .unwrap();
            caught_up.unwrap_or(false).then_some(())
        },
    )
    .await;
    let api = Api::at(&format!("http://{listen}"), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let detail = loop {
        if run.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(&log_path).unwrap();
            panic!("the job ran on blind and ended:\n{log}");
        }
        let (status, job) = api.get("/api/v1/jobs/lagged").await;
        assert_eq!(status, StatusCode::OK, "{job}");
        let detail = job["throttle_detail"].as_str().unwrap_or_default();
        if detail.contains("pg_monitor") {
            break detail.to_string();
        }
        assert!(Instant::now() < deadline, "no word of pg_monitor: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(detail.contains("max_replica_lag"), "{detail}");
    let before = common::checkpointed(&primary).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        common::checkpointed(&primary).await,
        before,
        "the job ran blind"
    );
    assert!(run.try_wait().unwrap().is_none(), "the job ended blind");

    grant_monitor(&primary, true).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish once it could see the standby again"
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
