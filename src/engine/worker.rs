//! A partition's worker: takes batches one after another under the job's rate limit, retries
//! what can be retried, and looks at the cancellation token only between batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::engine::batch::{
    self, BatchContext, BatchError, Outcome, Position, Retry, Statements, Timeouts, Tunables,
};
use crate::engine::catalog::ResolvedJob;
use crate::engine::limiter::Limiter;
use crate::engine::sizer::Sizer;
use crate::engine::throttle::{HealthChecks, Throttle};
use crate::plumbing::db::Schema;
use crate::spec::JobSpec;
use crate::status::metrics::METRICS;
use crate::store::progress;
use crate::store::JobState;

/// Counters of what this process did for a job; the progress display and metrics read them.
#[derive(Debug, Default)]
pub struct JobStats {
    pub rows_scanned: AtomicU64,
    pub rows_updated: AtomicU64,
    pub batches_ok: AtomicU64,
    pub batches_retried: AtomicU64,
    pub batches_failed: AtomicU64,
    pub batch_size: AtomicU32,
    /// True while a worker of this job waits on the rate limiter.
    pub rate_limited: AtomicBool,
    /// Why the job waits right now (a health signal), if it does.
    pub throttle: Mutex<Option<Throttle>>,
    /// Why the batch size is what it is (adaptive batches).
    pub batch_size_reason: Mutex<Option<String>>,
    /// Every committed batch's transaction time, for the benchmark's percentiles (bounded:
    /// beyond `MAX_RECORDED_BATCHES` only the histogram metric keeps counting).
    pub batch_durations: Mutex<Vec<Duration>>,
}

const MAX_RECORDED_BATCHES: usize = 1_000_000;

impl JobStats {
    fn record_batch(&self, elapsed: Duration) {
        let mut durations = self
            .batch_durations
            .lock()
            .expect("durations lock poisoned");
        if durations.len() < MAX_RECORDED_BATCHES {
            durations.push(elapsed);
        }
    }
}

/// The jobs this process is running, by id, for the API's view of local state.
pub type LocalJobs = Arc<Mutex<HashMap<i64, Arc<JobRuntime>>>>;

/// Everything the workers of one job share in this process.
pub struct JobRuntime {
    pub id: i64,
    pub name: String,
    pub sql: crate::engine::statement::BatchSql,
    pub timeouts: Timeouts,
    pub max_attempts: u32,
    pub limiter: Limiter,
    pub stats: JobStats,
    /// `target_batch_time` and the size bounds, when batches adapt.
    pub adaptive: Option<(Duration, u32, u32)>,
    /// The health signals checked between batches, if any.
    pub health: Option<HealthChecks>,
    /// The latest tunables seen in a batch transaction; PATCHed values arrive through it.
    tunables: Mutex<Tunables>,
}

impl JobRuntime {
    pub fn new(id: i64, spec: &JobSpec, resolved: &ResolvedJob, lease_ttl: Duration) -> JobRuntime {
        let stats = JobStats::default();
        stats.batch_size.store(spec.batch_size, Ordering::Relaxed);
        METRICS.touch(&spec.name);
        JobRuntime {
            id,
            name: spec.name.clone(),
            sql: resolved.sql.clone(),
            timeouts: Timeouts {
                lock_timeout: spec.lock_timeout,
                statement_timeout: spec.statement_timeout,
                idle_in_transaction: Some(lease_ttl),
                synchronous_commit: spec.synchronous_commit,
            },
            max_attempts: spec.max_attempts,
            limiter: Limiter::new(spec.rows_per_second, spec.batch_size),
            stats,
            adaptive: spec.target_batch_time.map(|target| {
                let (min, max) = spec.batch_size_bounds();
                (target, min, max)
            }),
            health: HealthChecks::of(spec),
            tunables: Mutex::new(Tunables::of(spec)),
        }
    }

    pub fn tunables(&self) -> Tunables {
        self.tunables
            .lock()
            .expect("tunables lock poisoned")
            .clone()
    }

    /// Applies new tunables (from a batch's fence read, or a PATCH seen by the scheduler).
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
}

/// How a worker's run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerExit {
    PartitionDone,
    JobCompleted,
    Stopped(JobState),
    LeaseLost,
    /// The job was marked failed with this message.
    Failed(String),
    /// The root token was cancelled; the last batch committed.
    Shutdown,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A batch committed (or a retry is due); go on after the pause.
    Continue {
        pause: Option<Duration>,
    },
    Exit(WorkerExit),
}

/// Shared, process-wide things a worker needs.
#[derive(Clone)]
pub struct WorkerEnv {
    pub pool: PgPool,
    pub schema: Schema,
    pub lease_ttl: Duration,
    pub actor: String,
}

pub struct Worker {
    env: WorkerEnv,
    job: Arc<JobRuntime>,
    pub position: Position,
    /// Tries of the current batch that failed; reset when a batch commits.
    failed_attempts: u32,
    /// Consecutive waits for an unreachable database (they do not spend attempts).
    reconnect_waits: u32,
    /// Sizes batches toward `target_batch_time`, when the job asks for it.
    sizer: Option<Sizer>,
    /// This worker's generated SQL, built once.
    statements: Statements,
    /// The worker's own connection, with the job's timeouts set for the session, so a batch is
    /// one statement and one round trip.
    conn: Option<PgConnection>,
}

impl Worker {
    pub fn new(env: WorkerEnv, job: Arc<JobRuntime>, position: Position) -> Worker {
        let start = job.tunables().batch_size;
        let sizer = job
            .adaptive
            .map(|(target, min, max)| Sizer::new(target, min, max, start));
        Worker {
            sizer,
            statements: Statements::default(),
            conn: None,
            env,
            job,
            position,
            failed_attempts: 0,
            reconnect_waits: 0,
        }
    }

    /// Runs batches until the partition ends, the job stops, or `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> WorkerExit {
        loop {
            if cancel.is_cancelled() {
                return WorkerExit::Shutdown;
            }
            match self.step(&cancel).await {
                Step::Exit(exit) => return exit,
                Step::Continue { pause: None } => {}
                Step::Continue { pause: Some(pause) } => {
                    tokio::select! {
                        _ = cancel.cancelled() => return WorkerExit::Shutdown,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// One batch: wait for health and the rate limiter, run the batch statement, account for
    /// the outcome.
    /// Tests drive this directly instead of sleeping.
    pub async fn step(&mut self, cancel: &CancellationToken) -> Step {
        if !self.wait_until_healthy(cancel).await {
            return Step::Exit(WorkerExit::Shutdown);
        }
        let tunables = self.job.tunables();
        let size = match &mut self.sizer {
            Some(sizer) => sizer.next(tunables.batch_size),
            None => tunables.batch_size,
        };
        let limited = &self.job.stats.rate_limited;
        if !self.job.limiter.acquire(size, cancel, limited).await {
            return Step::Exit(WorkerExit::Shutdown);
        }
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => match self.connect().await {
                Ok(conn) => conn,
                Err(error) => return self.on_error(error.into(), cancel).await,
            },
        };
        let ctx = BatchContext {
            schema: &self.env.schema,
            sql: &self.job.sql,
            lease_ttl: self.env.lease_ttl,
            actor: &self.env.actor,
        };
        let started = Instant::now();
        let result = batch::run(
            &ctx,
            &mut conn,
            &mut self.statements,
            &mut self.position,
            size,
        )
        .await;
        // A connection that failed at the network level is dropped; the next batch opens anew.
        if !matches!(&result, Err(e) if e.retry == Retry::Reconnect) {
            self.conn = Some(conn);
        }
        match result {
            Ok(Outcome::Committed {
                scanned,
                updated,
                partition_done,
                job_completed,
                tunables,
            }) => {
                self.failed_attempts = 0;
                self.reconnect_waits = 0;
                let job = self.job.name.as_str();
                let metrics = &*METRICS;
                metrics
                    .rows_scanned
                    .with_label_values(&[job])
                    .inc_by(scanned as u64);
                metrics
                    .rows_updated
                    .with_label_values(&[job])
                    .inc_by(updated as u64);
                metrics.batches.with_label_values(&[job, "ok"]).inc();
                let elapsed = started.elapsed();
                metrics
                    .batch_duration
                    .with_label_values(&[job])
                    .observe(elapsed.as_secs_f64());
                let stats = &self.job.stats;
                stats.record_batch(elapsed);
                if let Some(sizer) = &mut self.sizer {
                    sizer.observe(scanned as u64, size, elapsed);
                    stats.batch_size.store(sizer.current(), Ordering::Relaxed);
                    *stats
                        .batch_size_reason
                        .lock()
                        .expect("reason lock poisoned") = Some(sizer.reason().to_string());
                }
                stats
                    .rows_scanned
                    .fetch_add(scanned as u64, Ordering::Relaxed);
                stats
                    .rows_updated
                    .fetch_add(updated as u64, Ordering::Relaxed);
                stats.batches_ok.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    job = %self.job.name,
                    partition = self.position.partition_index,
                    scanned,
                    updated,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
                let pause = tunables.pause;
                self.job.apply(tunables);
                if job_completed {
                    Step::Exit(WorkerExit::JobCompleted)
                } else if partition_done {
                    Step::Exit(WorkerExit::PartitionDone)
                } else {
                    Step::Continue { pause }
                }
            }
            Ok(Outcome::Stopped(state)) => Step::Exit(WorkerExit::Stopped(state)),
            Ok(Outcome::LeaseLost) => Step::Exit(WorkerExit::LeaseLost),
            Err(error) => self.on_error(error, cancel).await,
        }
    }

    async fn on_error(&mut self, error: BatchError, cancel: &CancellationToken) -> Step {
        if let (Some(sizer), Some(cause)) = (&mut self.sizer, timeout_cause(&error)) {
            sizer.halve(cause);
            let stats = &self.job.stats;
            stats.batch_size.store(sizer.current(), Ordering::Relaxed);
            *stats
                .batch_size_reason
                .lock()
                .expect("reason lock poisoned") = Some(sizer.reason().to_string());
        }
        let stats = &self.job.stats;
        let delay = match error.retry {
            Retry::Reconnect => {
                self.reconnect_waits += 1;
                Some(backoff(self.reconnect_waits))
            }
            Retry::Attempt if self.failed_attempts + 1 < self.job.max_attempts => {
                self.failed_attempts += 1;
                Some(backoff(self.failed_attempts))
            }
            Retry::Attempt | Retry::Never => {
                self.failed_attempts += 1;
                None
            }
        };
        if let Some(delay) = delay {
            stats.batches_retried.fetch_add(1, Ordering::Relaxed);
            METRICS
                .batches
                .with_label_values(&[self.job.name.as_str(), "retried"])
                .inc();
            tracing::warn!(
                job = %self.job.name,
                partition = self.position.partition_index,
                attempt = self.failed_attempts,
                max_attempts = self.job.max_attempts,
                retry_in_ms = delay.as_millis() as u64,
                error = %error,
                "batch failed; retrying"
            );
            tokio::select! {
                _ = cancel.cancelled() => return Step::Exit(WorkerExit::Shutdown),
                _ = tokio::time::sleep(delay) => {}
            }
            return Step::Continue { pause: None };
        }
        stats.batches_failed.fetch_add(1, Ordering::Relaxed);
        METRICS
            .batches
            .with_label_values(&[self.job.name.as_str(), "failed"])
            .inc();
        let message = if error.retry == Retry::Attempt {
            format!(
                "batch on partition {} failed {} times, last: {}",
                self.position.partition_index, self.failed_attempts, error.message
            )
        } else {
            format!(
                "batch on partition {} failed: {}",
                self.position.partition_index, error.message
            )
        };
        tracing::error!(job = %self.job.name, "{message}");
        if let Err(e) = batch::fail_job(
            &self.env.pool,
            &self.env.schema,
            self.job.id,
            &self.env.actor,
            &message,
        )
        .await
        {
            tracing::error!(job = %self.job.name, error = %e, "could not record the failure");
        }
        Step::Exit(WorkerExit::Failed(message))
    }
}

impl Worker {
    /// Opens the worker's connection, like the pool's but its own, with the job's timeouts.
    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let options = self.env.pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await?;
        progress::apply_settings(&mut conn, &self.job.timeouts).await?;
        Ok(conn)
    }

    /// Waits while a health signal says so, re-checking every second. False if cancelled.
    async fn wait_until_healthy(&mut self, cancel: &CancellationToken) -> bool {
        let Some(health) = &self.job.health else {
            return true;
        };
        loop {
            let throttle = health.check(&self.env.pool).await;
            let changed = {
                let mut current = self
                    .job
                    .stats
                    .throttle
                    .lock()
                    .expect("throttle lock poisoned");
                let changed =
                    current.as_ref().map(|t| t.reason) != throttle.as_ref().map(|t| t.reason);
                *current = throttle.clone();
                changed
            };
            let Some(throttle) = throttle else {
                if changed {
                    tracing::info!(job = %self.job.name, "health checks pass again; resuming batches");
                }
                return true;
            };
            if changed {
                tracing::warn!(job = %self.job.name, reason = throttle.reason, "throttled: {}", throttle.detail);
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(HEALTH_RECHECK) => {}
            }
        }
    }
}

/// How often a throttled worker looks again.
const HEALTH_RECHECK: Duration = Duration::from_secs(1);

/// The timeout a failed batch hit, if it was one (adaptive batches halve after it).
fn timeout_cause(error: &BatchError) -> Option<&'static str> {
    match error.sqlstate.as_deref() {
        Some("55P03") => Some("lock_timeout"),
        Some("57014") => Some("statement_timeout"),
        _ => None,
    }
}

/// Exponential backoff from 100 ms, capped at 10 s, with up to 50% jitter so workers that
/// failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(7))
        .min(10_000);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}
