//! Shared test support: a fresh database per test on the real PostgreSQL, job files in a
//! temporary directory, and the real binary; jobs driven step by step through the library; the
//! hits table that a non-idempotent job (`hits = hits + 1`) runs over, with its checks (each
//! row once, the table against the checkpoints) and what tests wait for (progress, a batch
//! waiting on a lock, leases released). api.rs: the HTTP side; cluster.rs: throwaway servers; pgbouncer.rs: a pooler in front.
#![allow(dead_code)]

pub mod api;
pub mod cluster;
pub mod pgbouncer;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use backfilld::plumbing::db::{Db, PoolMode};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgExecutor};

/// The shared server, over plain connections unless DATABASE_URL names an sslmode: sqlx 0.9.0
/// leaves Nagle's algorithm on, so a TLS handshake waits out two delayed ACKs (~90 ms on
/// loopback), which tests that time things were not written for. tests/tls.rs covers TLS.
pub fn server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    match (url.contains("sslmode="), url.contains('?')) {
        (true, _) => url,
        (false, true) => format!("{url}&sslmode=disable"),
        (false, false) => format!("{url}?sslmode=disable"),
    }
}

/// A database created for one test and dropped (with its connections) when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The test database through the daemon's own pool type: every statement its own
    /// transaction, unnamed, as the daemon runs them.
    pub pool: Db,
    pub dir: PathBuf,
}

impl TestDb {
    pub async fn new() -> TestDb {
        // reqwest has no crypto provider of its own: the tests' clients use the daemon's.
        backfilld::plumbing::tls::install_crypto_provider();
        let server = server_url();
        let name = format!(
            "backfilld_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server)
            .await
            .expect("DATABASE_URL must point at a running PostgreSQL");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = with_database(&server, &name);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .unwrap();
        let pool = Db::from_pool(pool, PoolMode::Session);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        TestDb {
            name,
            url,
            pool,
            dir,
        }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn scalar_string(&self, sql: &str) -> Option<String> {
        sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A fingerprint of every row of every table outside the system schemas: equal before and
    /// after means nothing changed.
    pub async fn fingerprint(&self) -> String {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
              WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut parts = Vec::new();
        for table in tables {
            let digest = self
                .scalar_string(&format!(
                    "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
                ))
                .await
                .unwrap_or_default();
            parts.push(format!("{table}:{digest}"));
        }
        parts.join("\n")
    }

    pub fn write_job(&self, file: &str, toml: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Runs the real binary against this database and waits for it.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_url(&self.url, args)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Best effort, synchronously: the test's runtime may already be gone.
        let _ = Command::new("psql")
            .arg(server_url())
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    format!("{}/{}{}", &base[..path_start], name, query)
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_backfilld"))
}

/// A loopback port nothing listens on (at the moment of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where `tool` is on `PATH`, if it is.
pub fn on_path(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(tool))
        .find(|p| p.exists())
}

/// The real binary with `args` against the database at `url`, logging at info.
pub fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(bin());
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("BACKFILLD_CONFIG")
        .env("RUST_LOG", "info");
    command
}

pub fn cli_with_url(url: &str, args: &[&str]) -> Output {
    command(url, args).output().expect("spawn backfilld")
}

/// Starts the real binary with `args` against the database at `url`, its output piped.
pub fn spawn(url: &str, args: &[&str]) -> Child {
    command(url, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfilld")
}

/// Sends `name` (e.g. `TERM`) to process `pid`.
pub fn signal(pid: impl std::fmt::Display, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A simple job file body.
pub fn job_toml(name: &str, table: &str, key: &str, set: &str, extra: &str) -> String {
    format!("name = \"{name}\"\ntable = \"{table}\"\nkey = {key}\n{extra}\n[set]\n{set}\n")
}

/// A real `backfilld serve` process on a free loopback port, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub base: String,
    pub stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `serve` with `config` (TOML, may be empty) against `url`, with `jobs_dir`, and
    /// waits until `/readyz` says it is ready.
    pub fn start(url: &str, dir: &Path, config: &str, jobs_dir: &Path) -> Daemon {
        Daemon::start_unready(url, dir, config, jobs_dir).ready()
    }

    /// Waits (30 s at most) until `/readyz` says the daemon is ready.
    fn ready(self) -> Daemon {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while http_status(&self.base, "/readyz") != Some(200) {
            assert!(
                std::time::Instant::now() < deadline,
                "daemon not ready in 30s\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self
    }

    /// Starts `serve` without waiting for readiness.
    pub fn start_unready(url: &str, dir: &Path, config: &str, jobs_dir: &Path) -> Daemon {
        Daemon::launch(url, dir, config, jobs_dir, None)
    }

    /// Starts `serve` under a limit of `open_files` file descriptors (soft and hard, through
    /// util-linux's `prlimit`, which then runs the daemon itself), waiting for readiness.
    pub fn start_with_open_files(
        url: &str,
        dir: &Path,
        config: &str,
        jobs_dir: &Path,
        open_files: u32,
    ) -> Daemon {
        Daemon::launch(url, dir, config, jobs_dir, Some(open_files)).ready()
    }

    fn launch(
        url: &str,
        dir: &Path,
        config: &str,
        jobs_dir: &Path,
        open_files: Option<u32>,
    ) -> Daemon {
        use std::io::{BufRead, BufReader};
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let config_path = dir.join(format!("config-{}.toml", &suffix[..8]));
        std::fs::write(&config_path, config).unwrap();
        let stderr_path = dir.join(format!("daemon-{}.log", &suffix[..8]));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let args = ["serve", "--listen", "127.0.0.1:0", "--config"];
        let mut command = match open_files {
            None => command(url, &args),
            Some(limit) => {
                let mut limited = command(url, &[]);
                let mut wrapper = Command::new("prlimit");
                wrapper
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(bin())
                    .args(args)
                    .envs(limited.get_envs().filter_map(|(k, v)| Some((k, v?))))
                    .env_remove("BACKFILLD_CONFIG");
                limited = wrapper;
                limited
            }
        };
        let mut child = command
            .arg(&config_path)
            .arg("--jobs-dir")
            .arg(jobs_dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn backfilld serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the daemon's first line");
        let base = line
            .trim()
            .strip_prefix("backfilld listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Daemon {
            child,
            base,
            stderr_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Waits (bounded) for the process to exit and returns its code.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not exit in time\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns Some, failing after `within`.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A minimal blocking GET returning the status code, for use outside async code.
pub fn http_status(base: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let address = base.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

use std::sync::Arc;

use backfilld::engine::lease::Presence;
use backfilld::engine::runtime::JobRuntime;
use backfilld::engine::submit;
use backfilld::engine::worker::WorkerEnv;
use backfilld::plumbing::db::Schema;
use backfilld::spec::JobSpec;
use backfilld::store::{jobs, progress, JobState};

/// Lease time-to-live for jobs driven step by step from a test.
pub const JOB_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Submits a job through the library and claims its partitions as this test's "process".
pub async fn start_job(
    db: &TestDb,
    toml: &str,
) -> (Arc<JobRuntime>, WorkerEnv, Vec<progress::Claim>, Presence) {
    let spec = JobSpec::from_toml(toml, "test").unwrap();
    let schema = Schema::new("backfilld");
    backfilld::store::migrate::run(&db.pool, &schema)
        .await
        .unwrap();
    let resolved = submit::resolve(&db.pool, &spec).await.unwrap();
    let submitted = submit::find_or_submit(&db.pool, &schema, &spec, resolved.clone(), "test")
        .await
        .unwrap();
    let id = submitted.job.id;
    let mut tx = db.pool.begin().await.unwrap();
    jobs::transition(&mut tx, &schema, id, JobState::Running, "test", None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let presence = Presence::new(&db.pool.connect_options(), db.pool.mode());
    let holder = presence.holder().await.unwrap();
    let claims = progress::claim(&db.pool, &schema, &holder, JOB_TTL, Some(id), 100)
        .await
        .unwrap();
    let runtime = Arc::new(JobRuntime::new(id, &spec, &resolved, JOB_TTL, "default"));
    let env = WorkerEnv {
        pool: db.pool.clone(),
        schema,
        lease_ttl: JOB_TTL,
        actor: "test".into(),
    };
    (runtime, env, claims, presence)
}

/// Keys the jobs in the database behind `executor` have checkpointed, as other sessions see
/// them; 0 before backfilld's schema exists (a test may poll before the binary migrated).
pub async fn checkpointed<'e>(executor: impl PgExecutor<'e>) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(sum(rows_scanned), 0)::int8 FROM backfilld.progress",
    )
    .fetch_one(executor)
    .await
    .unwrap_or(0)
}

/// Waits (bounded by `within`) until the checkpoints cover at least `rows` keys.
pub async fn wait_for_progress(db: &TestDb, rows: i64, within: std::time::Duration) {
    eventually(within, &format!("{rows} rows checkpointed"), || async {
        (checkpointed(&db.pool).await >= rows).then_some(())
    })
    .await
}

/// `table (id <key_type> PRIMARY KEY, hits int NOT NULL DEFAULT 0)` with one row per `i` in
/// 1..=rows, its key `key_expr` (an expression over `i`). A non-idempotent job over it
/// (`hits = hits + 1`) shows a lost batch as `hits = 0` and a doubled one as `hits = 2`.
pub async fn hits_table<'e>(
    executor: impl PgExecutor<'e>,
    table: &str,
    key_type: &str,
    key_expr: &str,
    rows: i64,
) {
    let sql = format!(
        "CREATE TABLE {table} (id {key_type} PRIMARY KEY, hits int NOT NULL DEFAULT 0);
         INSERT INTO {table} (id) SELECT {key_expr} FROM generate_series(1, {rows}) i;"
    );
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(executor)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `rows` rows in `table`, every one with `hits = 1`.
pub async fn assert_each_hit_once<'e>(executor: impl PgExecutor<'e>, table: &str, rows: i64) {
    let summary: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) || ' rows, min ' || coalesce(min(hits), 0) || ', max ' || coalesce(max(hits), 0) FROM {table}"
    )))
    .fetch_one(executor)
    .await
    .unwrap();
    assert_eq!(
        summary.as_deref(),
        Some(&*format!("{rows} rows, min 1, max 1")),
        "{table}: not every row incremented exactly once"
    );
}

/// Rows of `table` with `hits = 1` equal the rows the checkpoints say were scanned, and none
/// has more: nothing half-written, nothing doubled (`when` says at which point of the test).
/// One statement, so one snapshot, even while batches commit. Returns the rows checkpointed.
pub async fn assert_table_matches_checkpoints<'e>(
    executor: impl PgExecutor<'e>,
    table: &str,
    when: &str,
) -> i64 {
    let (once, more, scanned): (i64, i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM {table} WHERE hits = 1),
                (SELECT count(*) FROM {table} WHERE hits > 1),
                (SELECT coalesce(sum(rows_scanned), 0)::int8 FROM backfilld.progress)"
    )))
    .fetch_one(executor)
    .await
    .unwrap();
    assert_eq!(
        (once, more),
        (scanned, 0),
        "{table} against the checkpoints {when}"
    );
    scanned
}

/// The application holds row `id` of `t` (FOR UPDATE) until the transaction ends.
pub async fn hold_row(db: &TestDb, id: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM t WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits (bounded) until exactly one backfilld session of this database waits on a lock, as
/// pg_stat_activity says: a batch blocked by what the test holds.
pub async fn wait_for_a_lock_waiter(db: &TestDb, what: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = '{}' AND application_name = 'backfilld' AND state = 'active'
            AND wait_event_type = 'Lock'",
        db.name
    );
    eventually(std::time::Duration::from_secs(30), what, || async {
        (db.scalar_i64(&sql).await == 1).then_some(())
    })
    .await
}

/// Partitions whose lease some process holds.
pub async fn held_leases(db: &TestDb) -> i64 {
    db.scalar_i64("SELECT count(*) FROM backfilld.progress WHERE lease_token IS NOT NULL")
        .await
}

/// Waits (bounded) until every process has let go of its partitions.
pub async fn wait_for_leases_released(db: &TestDb) {
    eventually(
        std::time::Duration::from_secs(10),
        "leases released",
        || async { (held_leases(db).await == 0).then_some(()) },
    )
    .await
}
