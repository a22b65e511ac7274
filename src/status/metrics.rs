//! Prometheus metrics (README, "Metrics"), defined once here; the dashboard queries exactly these
//! names. Counters and the batch histogram count what this process did (a dashboard sums them
//! across replicas); the gauges describe the job as the database knows it, so every replica
//! exports the same value (a dashboard takes the max). Every job series carries `database`: the
//! target's name, `default` for a job on the daemon's own database.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::status::view::JobView;
use crate::status::Reason;
use crate::store::JobState;

pub struct Metrics {
    registry: Registry,
    pub rows_scanned: IntCounterVec,
    pub rows_updated: IntCounterVec,
    pub batches: IntCounterVec,
    pub batch_duration: HistogramVec,
    pub batch_size: IntGaugeVec,
    pub progress: GaugeVec,
    pub eta: GaugeVec,
    pub job_state: IntGaugeVec,
    pub throttled: IntGaugeVec,
    pub rate_limit: GaugeVec,
    /// The job's measured rate over every replica, from the database's counts.
    pub rate: GaugeVec,
    pub pending_rows: IntGaugeVec,
    pub pass: IntGaugeVec,
    /// Notifications (`[[notify]]`) by endpoint, `scheme://host[:port]`: the only series
    /// without a `job` label.
    pub notifications_sent: IntCounterVec,
    pub notifications_failed: IntCounterVec,
}

/// The process's metrics. One registry per process, like the process itself.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let job = &["job", "database"];
        let m = Metrics {
            rows_scanned: IntCounterVec::new(
                Opts::new(
                    "backfill_rows_scanned_total",
                    "Keys walked by this process's batches",
                ),
                job,
            )
            .expect("valid metric"),
            rows_updated: IntCounterVec::new(
                Opts::new(
                    "backfill_rows_updated_total",
                    "Rows changed by this process's batches",
                ),
                job,
            )
            .expect("valid metric"),
            batches: IntCounterVec::new(
                Opts::new(
                    "backfill_batches_total",
                    "Batch transactions by outcome: ok, retried, failed",
                ),
                &["job", "database", "outcome"],
            )
            .expect("valid metric"),
            batch_duration: HistogramVec::new(
                HistogramOpts::new(
                    "backfill_batch_duration_seconds",
                    "One batch transaction, commit included",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
                ]),
                job,
            )
            .expect("valid metric"),
            batch_size: IntGaugeVec::new(
                Opts::new("backfill_batch_size", "Current batch size (keys per batch)"),
                job,
            )
            .expect("valid metric"),
            progress: GaugeVec::new(
                Opts::new("backfill_progress_ratio", "Progress of the job, 0..1"),
                job,
            )
            .expect("valid metric"),
            eta: GaugeVec::new(
                Opts::new("backfill_eta_seconds", "Estimated time left, in seconds"),
                job,
            )
            .expect("valid metric"),
            job_state: IntGaugeVec::new(
                Opts::new(
                    "backfill_job_state",
                    "1 for the job's current state, 0 for the others",
                ),
                &["job", "database", "state"],
            )
            .expect("valid metric"),
            throttled: IntGaugeVec::new(
                Opts::new(
                    "backfill_throttled",
                    "1 while the job is throttled for that reason",
                ),
                &["job", "database", "reason"],
            )
            .expect("valid metric"),
            rate_limit: GaugeVec::new(
                Opts::new(
                    "backfill_rate_limit_rows_per_second",
                    "Configured rate limit (absent when unlimited)",
                ),
                job,
            )
            .expect("valid metric"),
            rate: GaugeVec::new(
                Opts::new(
                    "backfill_rate_rows_per_second",
                    "Keys walked per second over the last 15 seconds, by every replica together",
                ),
                job,
            )
            .expect("valid metric"),
            pending_rows: IntGaugeVec::new(
                Opts::new(
                    "backfill_pending_rows",
                    "Rows still matching `where` at the last completed pass or verify",
                ),
                job,
            )
            .expect("valid metric"),
            pass: IntGaugeVec::new(
                Opts::new(
                    "backfill_pass",
                    "The pass the job is in (1 = the backfill, 2.. = sweeps)",
                ),
                job,
            )
            .expect("valid metric"),
            notifications_sent: IntCounterVec::new(
                Opts::new(
                    "backfill_notifications_sent_total",
                    "Notifications this process delivered, by endpoint",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
            notifications_failed: IntCounterVec::new(
                Opts::new(
                    "backfill_notifications_failed_total",
                    "Notification attempts that failed (retried with backoff), by endpoint",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.rows_scanned.clone()),
            Box::new(m.rows_updated.clone()),
            Box::new(m.batches.clone()),
            Box::new(m.batch_duration.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.progress.clone()),
            Box::new(m.eta.clone()),
            Box::new(m.job_state.clone()),
            Box::new(m.throttled.clone()),
            Box::new(m.rate_limit.clone()),
            Box::new(m.rate.clone()),
            Box::new(m.pending_rows.clone()),
            Box::new(m.pass.clone()),
            Box::new(m.notifications_sent.clone()),
            Box::new(m.notifications_failed.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            m.registry
                .register(collector)
                .expect("metric registered once");
        }
        m
    }

    /// Creates a job's series on `database` at zero, so rates and "no errors" show as 0
    /// instead of no data.
    pub fn touch(&self, job: &str, database: &str) {
        self.rows_scanned.with_label_values(&[job, database]);
        self.rows_updated.with_label_values(&[job, database]);
        for outcome in ["ok", "retried", "failed"] {
            self.batches.with_label_values(&[job, database, outcome]);
        }
    }

    /// Sets the job-level gauges of the job's part on `database` from that database's view.
    pub fn observe_job(&self, database: &str, view: &JobView) {
        let job = view.name.as_str();
        let labels = &[job, database];
        self.touch(job, database);
        self.batch_size
            .with_label_values(labels)
            .set(i64::from(view.batch_size));
        self.progress.with_label_values(labels).set(view.progress);
        match view.eta_seconds {
            Some(eta) => self.eta.with_label_values(labels).set(eta),
            None => {
                let _ = self.eta.remove_label_values(labels);
            }
        }
        for state in JobState::ALL {
            self.job_state
                .with_label_values(&[job, database, state.as_str()])
                .set(i64::from(state == view.state));
        }
        for reason in Reason::ALL {
            let on = view.throttled.as_deref() == Some(reason.as_str());
            self.throttled
                .with_label_values(&[job, database, reason.as_str()])
                .set(i64::from(on));
        }
        self.pass
            .with_label_values(labels)
            .set(i64::from(view.pass));
        match view.pending_rows {
            Some(pending) => self.pending_rows.with_label_values(labels).set(pending),
            None => {
                let _ = self.pending_rows.remove_label_values(labels);
            }
        }
        self.rate
            .with_label_values(labels)
            .set(view.rate_rows_per_second);
        match view.rate_limit_rows_per_second {
            Some(limit) => self
                .rate_limit
                .with_label_values(labels)
                .set(f64::from(limit)),
            None => {
                let _ = self.rate_limit.remove_label_values(labels);
            }
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("exposition is UTF-8")
    }
}
