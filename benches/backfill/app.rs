//! The application beside a backfill: pgbench (PostgreSQL's own) at a fixed rate (`-R`) running
//! the workload's scripts against the same table, its per-transaction log read back for the
//! latency of the transactions scheduled while the backfill ran.
//!
//! With `-R`, pgbench measures each transaction from the time it was scheduled, so a
//! transaction that waited for a connection held up by a lock counts its wait too, as a user of
//! the application would. pgbench is stopped by killing it: it has no other way to end a `-T`
//! run early, and a killed pgbench loses what its log buffer (4 kB, under a second at these
//! rates) had not written yet, so it runs a few seconds past the window it reports on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};

use super::workload::Workload;

/// Application connections: a small pool, as an application server keeps.
const CLIENTS: u32 = 4;
/// Before the window: connections open, the rate steady.
const WARM_UP: Duration = Duration::from_secs(2);
/// After the window, before the kill: longer than the log buffer holds.
const TAIL: Duration = Duration::from_secs(3);

/// PostgreSQL's pgbench: on PATH, or in Debian's versioned directory.
pub fn pgbench() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin/pgbench"));
    on_path.chain(versioned).find(|p| p.is_file()).context(
        "pgbench not found on PATH nor in /usr/lib/postgresql/*/bin (Debian's postgresql-client)",
    )
}

/// The application's traffic: transactions per second, spread over [`CLIENTS`] connections.
pub struct App {
    pgbench: PathBuf,
    pub rate: u32,
}

/// pgbench running, with the directory its scripts and log are in.
pub struct Running {
    child: Child,
    dir: PathBuf,
}

/// What the application saw in one window.
#[derive(Debug, Clone)]
pub struct Latency {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Transactions pgbench logged as failed, plus clients that aborted on an error.
    pub failed: usize,
}

/// Seconds since the epoch: pgbench's log stamps transactions with the wall clock.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl App {
    pub fn new(rate: u32) -> Result<App> {
        Ok(App {
            pgbench: pgbench()?,
            rate,
        })
    }

    /// Starts pgbench on `workload`'s table (its first `rows` rows) and waits out the warm-up.
    pub async fn start(&self, url: &str, workload: Workload, rows: i64) -> Result<Running> {
        let dir = std::env::temp_dir().join(format!(
            "backfilld-bench-app-{}-{}",
            std::process::id(),
            now() as u64
        ));
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new(&self.pgbench);
        command.args(["-n", "-T", "3600", "-l", "-j", "1"]);
        command.arg(format!("-c{CLIENTS}"));
        command.arg(format!("-R{}", self.rate));
        command.arg(format!("--log-prefix={}", dir.join("app").display()));
        for (name, script, weight) in workload.app_scripts(rows) {
            let path = dir.join(format!("{name}.sql"));
            std::fs::write(&path, script)?;
            command
                .arg("-f")
                .arg(format!("{}@{weight}", path.display()));
        }
        let child = command
            .arg(url)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr"))?)
            .spawn()
            .with_context(|| format!("starting {}", self.pgbench.display()))?;
        tokio::time::sleep(WARM_UP).await;
        Ok(Running { child, dir })
    }
}

impl Running {
    /// Stops pgbench after the tail and reads the transactions scheduled in `[from, to]`
    /// (seconds since the epoch).
    pub async fn stop(mut self, from: f64, to: f64) -> Result<Latency> {
        tokio::time::sleep(TAIL).await;
        if let Some(status) = self.child.try_wait()? {
            let stderr = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
            bail!("pgbench ended early ({status}): {stderr}");
        }
        self.child.kill()?;
        self.child.wait()?;
        let latency = read_log(&self.dir, from, to);
        let _ = std::fs::remove_dir_all(&self.dir);
        latency
    }
}

/// Log lines: `client_id transaction_no time script_no time_epoch time_us schedule_lag`, where
/// `time` is the latency in µs from the scheduled start, or `failed`.
fn read_log(dir: &Path, from: f64, to: f64) -> Result<Latency> {
    let mut latencies = Vec::new();
    let mut failed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with("app.") {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, _, time, _, epoch, micros, ..] = fields[..] else {
                continue;
            };
            let done = epoch.parse::<f64>()? + micros.parse::<f64>()? / 1e6;
            match time.parse::<f64>() {
                Ok(us) => {
                    let scheduled = done - us / 1e6;
                    if (from..=to).contains(&scheduled) {
                        latencies.push(Duration::from_secs_f64(us / 1e6));
                    }
                }
                Err(_) if (from..=to + TAIL.as_secs_f64()).contains(&done) => failed += 1,
                Err(_) => {}
            }
        }
    }
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    failed += stderr.matches("aborted").count();
    ensure!(
        !latencies.is_empty(),
        "pgbench logged no transaction in the window: {stderr}"
    );
    latencies.sort();
    let at = |p: f64| {
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    Ok(Latency {
        per_second: latencies.len() as f64 / (to - from),
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
        failed,
    })
}
