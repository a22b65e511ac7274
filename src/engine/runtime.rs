//! What the workers of one job share in this process: the resolved statement, the rate
//! limiter, the live tunables and the counters, and the [`RuntimeSnapshot`] of them that the
//! API, the metrics and the terminal read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::catalog::ResolvedJob;
use crate::engine::limiter::Limiter;
use crate::engine::statement::{BatchSql, SyncTrigger};
use crate::engine::throttle::Signals;
use crate::plumbing::db::SessionSettings;
use crate::spec::{JobSpec, Tunables};
use crate::status::metrics::METRICS;
use crate::status::{RuntimeSnapshot, Throttle};

/// The jobs this process is running, by id, for the API's view of local state.
pub type LocalJobs = Arc<Mutex<HashMap<i64, Arc<JobRuntime>>>>;

/// A callback told each committed batch's transaction time (the benchmark keeps its own
/// percentiles with it; production needs only the histogram metric).
pub type BatchObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// Counters of what this process did for a job. Workers write them; readers take a
/// [`RuntimeSnapshot`].
#[derive(Debug, Default)]
struct JobStats {
    rows_scanned: AtomicU64,
    rows_updated: AtomicU64,
    batches_retried: AtomicU64,
    batch_size: AtomicU32,
    /// True while a worker of this job waits on the rate limiter.
    rate_limited: AtomicBool,
    /// Why the job waits right now (a throttle signal), if it does.
    throttle: Mutex<Option<Throttle>>,
    /// Why the batch size is what it is (adaptive batches).
    batch_size_reason: Mutex<Option<String>>,
}

/// Everything the workers of one job share in this process.
pub struct JobRuntime {
    pub id: i64,
    pub name: String,
    /// The target database this runtime works on (`default`: the daemon's own), the
    /// `database` label of its metrics.
    pub database: String,
    /// The definition this runtime was built from: a replaced one needs a new runtime.
    pub definition: JobSpec,
    pub sql: BatchSql,
    /// The settings of each worker's own connection.
    pub session: SessionSettings,
    pub max_attempts: u32,
    pub(crate) limiter: Limiter,
    /// `target_batch_time` and the size bounds, when batches adapt.
    pub adaptive: Option<(Duration, u32, u32)>,
    /// The throttle signals checked between batches, if any.
    pub(crate) signals: Option<Signals>,
    /// The job's sync trigger, if it has `[sync]`, and whether this process has made sure it
    /// is installed (before the job's first batch here).
    pub sync: Option<SyncTrigger>,
    pub(crate) sync_installed: AtomicBool,
    stats: JobStats,
    /// The latest tunables read under a batch's fence: how a PATCH reaches the workers.
    tunables: Mutex<Tunables>,
    batch_observer: Option<BatchObserver>,
}

impl JobRuntime {
    pub fn new(
        id: i64,
        spec: &JobSpec,
        resolved: &ResolvedJob,
        lease_ttl: Duration,
        database: &str,
    ) -> JobRuntime {
        let stats = JobStats::default();
        stats.batch_size.store(spec.batch_size, Ordering::Relaxed);
        METRICS.touch(&spec.name, database);
        JobRuntime {
            id,
            name: spec.name.clone(),
            database: database.to_string(),
            definition: spec.clone(),
            sql: resolved.sql.clone(),
            session: SessionSettings {
                lock_timeout: spec.lock_timeout,
                statement_timeout: spec.statement_timeout,
                idle_in_transaction: Some(lease_ttl),
                synchronous_commit: spec.synchronous_commit,
            },
            max_attempts: spec.max_attempts,
            limiter: Limiter::new(spec.rows_per_second, spec.batch_size),
            adaptive: spec.target_batch_time.map(|target| {
                let (min, max) = spec.batch_size_bounds();
                (target, min, max)
            }),
            signals: Signals::of(spec),
            sync: resolved.sync.clone(),
            sync_installed: AtomicBool::new(false),
            stats,
            tunables: Mutex::new(spec.tunables()),
            batch_observer: None,
        }
    }

    /// Tells `observer` every committed batch's transaction time.
    pub fn with_batch_observer(mut self, observer: BatchObserver) -> JobRuntime {
        self.batch_observer = Some(observer);
        self
    }

    pub fn tunables(&self) -> Tunables {
        *self.tunables.lock().expect("tunables lock poisoned")
    }

    /// Applies the tunables a batch read under its fence.
    pub fn apply(&self, tunables: Tunables) {
        self.limiter
            .configure(tunables.rows_per_second, tunables.batch_size);
        if self.adaptive.is_none() {
            self.stats
                .batch_size
                .store(tunables.batch_size, Ordering::Relaxed);
        }
        *self.tunables.lock().expect("tunables lock poisoned") = tunables;
    }

    /// A plain copy of what this process knows about the job right now.
    pub fn snapshot(&self) -> RuntimeSnapshot {
        let stats = &self.stats;
        RuntimeSnapshot {
            rows_scanned: stats.rows_scanned.load(Ordering::Relaxed),
            rows_updated: stats.rows_updated.load(Ordering::Relaxed),
            batches_retried: stats.batches_retried.load(Ordering::Relaxed),
            batch_size: stats.batch_size.load(Ordering::Relaxed),
            batch_size_reason: stats
                .batch_size_reason
                .lock()
                .expect("reason lock poisoned")
                .clone(),
            throttle: stats
                .throttle
                .lock()
                .expect("throttle lock poisoned")
                .clone(),
            rate_limited: stats.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// Accounts for a committed batch: this process's counters and the job's metrics.
    pub(crate) fn record_batch(&self, scanned: i64, updated: i64, elapsed: Duration) {
        let (job, database) = (self.name.as_str(), self.database.as_str());
        METRICS
            .rows_scanned
            .with_label_values(&[job, database])
            .inc_by(scanned as u64);
        METRICS
            .rows_updated
            .with_label_values(&[job, database])
            .inc_by(updated as u64);
        METRICS
            .batches
            .with_label_values(&[job, database, "ok"])
            .inc();
        METRICS
            .batch_duration
            .with_label_values(&[job, database])
            .observe(elapsed.as_secs_f64());
        self.stats
            .rows_scanned
            .fetch_add(scanned as u64, Ordering::Relaxed);
        self.stats
            .rows_updated
            .fetch_add(updated as u64, Ordering::Relaxed);
        if let Some(observer) = &self.batch_observer {
            observer(elapsed);
        }
    }

    /// Accounts for a failed batch that will be tried again (`retried`) or not (`failed`).
    pub(crate) fn record_failure(&self, retried: bool) {
        let outcome = if retried { "retried" } else { "failed" };
        if retried {
            self.stats.batches_retried.fetch_add(1, Ordering::Relaxed);
        }
        METRICS
            .batches
            .with_label_values(&[self.name.as_str(), self.database.as_str(), outcome])
            .inc();
    }

    /// The adaptive batch size changed, and why.
    pub(crate) fn record_batch_size(&self, size: u32, reason: &str) {
        self.stats.batch_size.store(size, Ordering::Relaxed);
        *self
            .stats
            .batch_size_reason
            .lock()
            .expect("reason lock poisoned") = Some(reason.to_string());
    }

    /// Sets the throttle holding the job (or none); true when the reason changed.
    pub(crate) fn record_throttle(&self, throttle: Option<Throttle>) -> bool {
        let mut current = self.stats.throttle.lock().expect("throttle lock poisoned");
        let changed = current.as_ref().map(|t| t.reason) != throttle.as_ref().map(|t| t.reason);
        *current = throttle;
        changed
    }

    /// The flag a worker holds up while it waits on the rate limiter.
    pub(crate) fn rate_limited_flag(&self) -> &AtomicBool {
        &self.stats.rate_limited
    }
}
