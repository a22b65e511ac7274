//! Progress in the terminal for long work: a bar with rows, rate and ETA on a TTY, a plain log
//! line every few seconds otherwise (CI logs, `kubectl logs`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::runtime::JobRuntime;
use crate::plumbing::telemetry;

/// How often the plain log line is written when not on a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Rows already done when this process started, and the job's expected total.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub scanned: u64,
    pub updated: u64,
    pub estimated_total: u64,
}

pub struct Display {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Display {
    pub fn start(job: Arc<JobRuntime>, baseline: Baseline) -> Display {
        let stop = CancellationToken::new();
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(draw_bar(job, baseline, stop.clone()))
        } else {
            tokio::spawn(log_lines(job, baseline, stop.clone()))
        };
        Display { stop, task }
    }

    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn totals(job: &JobRuntime, baseline: Baseline) -> (u64, u64) {
    let now = job.snapshot();
    (
        baseline.scanned + now.rows_scanned,
        baseline.updated + now.rows_updated,
    )
}

async fn draw_bar(job: Arc<JobRuntime>, baseline: Baseline, stop: CancellationToken) {
    let bar = ProgressBar::with_draw_target(
        Some(baseline.estimated_total.max(1)),
        ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:32.cyan/blue}] {percent:>3}% {human_pos}/{human_len} rows · {per_sec} · ETA {eta} · {msg}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(job.name.clone());
    bar.set_position(baseline.scanned);
    bar.reset_eta();
    telemetry::set_active_bar(Some(bar.clone()));
    loop {
        let (scanned, updated) = totals(&job, baseline);
        if scanned > bar.length().unwrap_or(0) {
            bar.set_length(scanned);
        }
        bar.set_position(scanned);
        bar.set_message(format!("{updated} updated"));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let (scanned, updated) = totals(&job, baseline);
    bar.set_position(scanned);
    bar.set_message(format!("{updated} updated"));
    bar.abandon();
    telemetry::set_active_bar(None);
}

async fn log_lines(job: Arc<JobRuntime>, baseline: Baseline, stop: CancellationToken) {
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LOG_EVERY) => {}
        }
        let (scanned, updated) = totals(&job, baseline);
        let this_run = scanned - baseline.scanned;
        let rate = this_run as f64 / started.elapsed().as_secs_f64().max(0.001);
        let total = baseline.estimated_total.max(scanned).max(1);
        let eta = if rate > 0.0 {
            format!("{:.0}s", (total - scanned) as f64 / rate)
        } else {
            "unknown".into()
        };
        tracing::info!(
            job = %job.name,
            rows_scanned = scanned,
            rows_updated = updated,
            progress = format!("{:.1}%", scanned as f64 * 100.0 / total as f64),
            rows_per_second = rate.round() as u64,
            eta = %eta,
            "progress"
        );
    }
}
