//! Progress in the terminal for long work: a bar with rows, rate and ETA on a TTY, a plain log
//! line every few seconds otherwise (CI logs, `kubectl logs`), and in both a last line saying
//! how the run ended.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::runtime::JobRuntime;
use crate::plumbing::telemetry;
use crate::status::text;

/// How often the plain log line is written when not on a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Rows already done when this process started, and the job's expected total.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub scanned: u64,
    pub updated: u64,
    pub estimated_total: u64,
}

/// How a run ended, as its last progress line says it (never "ETA 0s" for a run that stopped
/// short of the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Paused,
    Cancelled,
    Failed,
    /// SIGINT or SIGTERM: the checkpoint is written and the same file continues.
    Interrupted,
    /// Another definition replaced the job's (`--replace`) while it ran.
    Replaced,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Paused => "paused",
            Ending::Cancelled => "cancelled",
            Ending::Failed => "failed",
            Ending::Interrupted => "interrupted",
            Ending::Replaced => "stopped: its definition was replaced",
        }
    }
}

/// Where a run stands: the job's totals, and what this run (this process) did of them.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub scanned: u64,
    pub updated: u64,
    /// The rows the job is expected to walk (the planner's estimate, or more once passed).
    pub total: u64,
    /// Keys walked by this run only: a resumed run's rate must not count earlier runs' rows.
    pub this_run: u64,
    pub elapsed: Duration,
}

impl Progress {
    /// Rows per second walked by this run.
    pub fn rate(&self) -> f64 {
        self.this_run as f64 / self.elapsed.as_secs_f64().max(0.001)
    }

    fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (self.this_run > 0 && rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.scanned) as f64 / rate))
    }

    /// `12,000 / 300,000 rows (4%) · 11,800 updated · 2,000 rows/s · ETA 2m 24s`; once the run
    /// has ended, the ending and how long this run took instead of an ETA.
    pub fn line(&self, ending: Option<Ending>) -> String {
        let total = self.total.max(self.scanned);
        let percent = match (ending, total) {
            (Some(Ending::Completed), _) => 100,
            (_, 0) => 0,
            _ => (self.scanned as f64 * 100.0 / total as f64).floor() as u64,
        };
        let last = match ending {
            Some(Ending::Completed) => format!("completed in {}", text::duration(self.elapsed)),
            Some(other) => format!("{} after {}", other.as_str(), text::duration(self.elapsed)),
            None => match self.eta() {
                Some(eta) => format!("ETA {}", text::duration(eta)),
                None => "ETA unknown".into(),
            },
        };
        format!(
            "{} / {} rows ({percent}%) · {} updated · {} rows/s · {last}",
            text::count(self.scanned),
            text::count(total),
            text::count(self.updated),
            text::rate(self.rate()),
        )
    }
}

pub struct Display {
    stop: CancellationToken,
    ending: tokio::sync::watch::Sender<Option<Ending>>,
    task: JoinHandle<()>,
}

impl Display {
    pub fn start(job: Arc<JobRuntime>, baseline: Baseline) -> Display {
        let stop = CancellationToken::new();
        let (ending, ended) = tokio::sync::watch::channel(None);
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(draw_bar(job, baseline, stop.clone(), ended))
        } else {
            tokio::spawn(log_lines(job, baseline, stop.clone(), ended))
        };
        Display { stop, ending, task }
    }

    /// Stops the display, leaving a last line that says how the run ended.
    pub async fn finish(self, ending: Ending) {
        let _ = self.ending.send(Some(ending));
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn progress(job: &JobRuntime, baseline: Baseline, started: Instant) -> Progress {
    let now = job.snapshot();
    Progress {
        scanned: baseline.scanned + now.rows_scanned,
        updated: baseline.updated + now.rows_updated,
        total: baseline.estimated_total,
        this_run: now.rows_scanned,
        elapsed: started.elapsed(),
    }
}

async fn draw_bar(
    job: Arc<JobRuntime>,
    baseline: Baseline,
    stop: CancellationToken,
    ended: tokio::sync::watch::Receiver<Option<Ending>>,
) {
    let started = Instant::now();
    let bar = ProgressBar::with_draw_target(
        Some(baseline.estimated_total.max(1)),
        ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix:.bold} [{bar:32.cyan/blue}] {msg}")
            .expect("progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(job.name.clone());
    telemetry::set_active_bar(Some(bar.clone()));
    let draw = |ending: Option<Ending>| {
        let now = progress(&job, baseline, started);
        bar.set_length(now.total.max(now.scanned).max(1));
        bar.set_position(now.scanned);
        bar.set_message(now.line(ending));
    };
    loop {
        draw(None);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    draw(*ended.borrow());
    bar.abandon();
    telemetry::set_active_bar(None);
}

async fn log_lines(
    job: Arc<JobRuntime>,
    baseline: Baseline,
    stop: CancellationToken,
    ended: tokio::sync::watch::Receiver<Option<Ending>>,
) {
    let started = Instant::now();
    let log = |ending: Option<Ending>| {
        let now = progress(&job, baseline, started);
        tracing::info!(
            job = %job.name,
            rows_scanned = now.scanned,
            rows_updated = now.updated,
            rows_per_second = now.rate().round() as u64,
            "{}",
            now.line(ending)
        );
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(LOG_EVERY) => {}
        }
        log(None);
    }
    // However short the run, a log reader sees how far it got and how it ended.
    log(*ended.borrow());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(scanned: u64, this_run: u64, secs: u64) -> Progress {
        Progress {
            scanned,
            updated: scanned / 2,
            total: 1_000_000,
            this_run,
            elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_resumed_run_counts_only_its_own_rows() {
        // 600,000 rows were done before; this run walked 200,000 in 10 s.
        let resumed = at(800_000, 200_000, 10);
        assert_eq!(resumed.rate(), 20_000.0);
        assert_eq!(
            resumed.line(None),
            "800,000 / 1,000,000 rows (80%) · 400,000 updated · 20,000 rows/s · ETA 10s"
        );
    }

    #[test]
    fn an_ended_run_says_how_instead_of_an_eta() {
        let stopped = at(500_000, 500_000, 25);
        let paused = stopped.line(Some(Ending::Paused));
        assert!(
            paused.ends_with("20,000 rows/s · paused after 25s"),
            "{paused}"
        );
        let interrupted = stopped.line(Some(Ending::Interrupted));
        assert!(
            interrupted.ends_with("interrupted after 25s"),
            "{interrupted}"
        );
        assert!(!interrupted.contains("ETA"));
        let done = at(1_000_000, 1_000_000, 50).line(Some(Ending::Completed));
        assert!(
            done.contains("(100%)") && done.ends_with("completed in 50s"),
            "{done}"
        );
    }

    #[test]
    fn a_run_that_walked_nothing_has_no_eta_and_slow_rates_keep_a_decimal() {
        assert!(at(5, 0, 3).line(None).ends_with("0 rows/s · ETA unknown"));
        let slow = at(10, 10, 4).line(None);
        assert!(slow.contains("2.5 rows/s"), "{slow}");
    }
}
