//! Shared test support: a fresh database per test on the real PostgreSQL, job files in a
//! temporary directory, and the real binary; jobs driven step by step through the library; the
//! hits table that a non-idempotent job (`hits = hits + 1`) runs over, with its checks, and
//! what tests wait for (jobs.rs). api.rs: the HTTP side; cluster.rs: throwaway servers; pgbouncer.rs: a pooler in front.
#![allow(dead_code)]

pub mod api;
pub mod cluster;
mod jobs;
pub mod pgbouncer;

#[allow(unused_imports)] // not every test binary uses them
pub use jobs::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use backfilld::plumbing::db::{Db, PoolMode};
use sqlx::postgres::PgPoolOptions;
use sqlx::AssertSqlSafe;

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

/// A loopback port nothing listens on (at the moment of asking), never one this test process
/// handed out before: the kernel may offer a port again once it is let go, and two tests (or
/// two endpoints of one) would then share it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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
