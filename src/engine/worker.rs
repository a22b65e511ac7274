//! A partition's worker: takes batches one after another under the job's rate limit, retries
//! what can be retried, and looks at the cancellation token only between batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::engine::batch::{self, BatchContext, BatchError, Outcome, Statements};
use crate::engine::completion;
use crate::engine::runtime::JobRuntime;
use crate::engine::sizer::{Sizer, SweepWalk};
use crate::plumbing::db::{self, Db, Schema, SettingsScope};
use crate::plumbing::retry::{backoff, ErrorKind};
use crate::spec::Tunables;
use crate::status::Throttle;
use crate::store::progress::Claim;
use crate::store::{events, jobs, JobState};

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
    /// A batch committed (or a retry is due); go on after the pause (see [`rest_after`]).
    Continue {
        pause: Option<Duration>,
    },
    Exit(WorkerExit),
}

/// Shared, process-wide things a worker needs.
#[derive(Clone)]
pub struct WorkerEnv {
    pub pool: Db,
    pub schema: Schema,
    pub lease_ttl: Duration,
    pub actor: String,
}

pub struct Worker {
    env: WorkerEnv,
    job: Arc<JobRuntime>,
    /// The partition this worker holds, and its cursor.
    pub claim: Claim,
    /// Tries of the current batch that failed; reset when a batch commits.
    failed_attempts: u32,
    /// Consecutive waits for an unreachable database (they do not spend attempts).
    reconnect_waits: u32,
    /// Sizes batches toward `target_batch_time`, when the job asks for it.
    sizer: Option<Sizer>,
    /// Grows the walk of a sweep pass while nothing is pending, when batches do not adapt.
    sweep: Option<SweepWalk>,
    /// This worker's generated SQL, built once.
    statements: Statements,
    /// The worker's own connection, with the job's timeouts set for the session, so a batch is
    /// one statement and one round trip (through a transaction pooler, a transaction each).
    conn: Option<PgConnection>,
}

impl Worker {
    pub fn new(env: WorkerEnv, job: Arc<JobRuntime>, claim: Claim) -> Worker {
        let start = job.tunables().batch_size;
        let sizer = job
            .adaptive
            .map(|(target, min, max)| Sizer::new(target, min, max, start));
        let sweep = (sizer.is_none() && claim.pass >= 2).then(|| SweepWalk::new(start));
        Worker {
            sizer,
            sweep,
            statements: Statements::default(),
            conn: None,
            env,
            job,
            claim,
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
        let size = match (&mut self.sizer, &mut self.sweep) {
            (Some(sizer), _) => sizer.next(tunables.batch_size),
            (None, Some(sweep)) => sweep.next(tunables.batch_size),
            (None, None) => tunables.batch_size,
        };
        let limited = self.job.rate_limited_flag();
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
            per_batch: (!self.env.pool.mode().keeps_sessions()).then_some(&self.job.session),
        };
        let started = Instant::now();
        let result = batch::run(&ctx, &mut conn, &mut self.statements, &mut self.claim, size).await;
        // A connection that failed at the network level is dropped; the next batch opens anew.
        if !matches!(&result, Err(e) if e.kind == ErrorKind::Reconnect) {
            self.conn = Some(conn);
        }
        match result {
            Ok(Outcome::Committed {
                scanned,
                updated,
                partition_done,
                tunables,
            }) => {
                self.failed_attempts = 0;
                self.reconnect_waits = 0;
                let elapsed = started.elapsed();
                self.job.record_batch(scanned, updated, elapsed);
                if let Some(sizer) = &mut self.sizer {
                    sizer.observe(scanned as u64, size, elapsed);
                    self.job.record_batch_size(sizer.current(), sizer.reason());
                }
                tracing::debug!(
                    job = %self.job.name,
                    partition = self.claim.partition_index,
                    scanned,
                    updated,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "batch committed"
                );
                let pause = rest_after(elapsed, &tunables);
                self.job.apply(tunables);
                if let Some(sweep) = &mut self.sweep {
                    sweep.observe(scanned as u64, updated as u64, size);
                    self.job.record_batch_size(sweep.current(), sweep.reason());
                }
                // The end of a pass is not the batch's: counting what is still pending can walk
                // the table, which no batch duration should include.
                let job_completed = match (partition_done, self.conn.as_mut()) {
                    (true, Some(conn)) => match completion::finish(
                        conn,
                        &self.env.schema,
                        &self.job.sql,
                        (self.claim.job_id, &self.job.name),
                        &self.env.actor,
                    )
                    .await
                    {
                        Ok(completed) => completed,
                        Err(error) => return self.on_error(error.into(), cancel).await,
                    },
                    _ => false,
                };
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
            self.job.record_batch_size(sizer.current(), sizer.reason());
        }
        if let (Some(sweep), Some(cause)) = (&mut self.sweep, timeout_cause(&error)) {
            sweep.restart(cause);
            self.job.record_batch_size(sweep.current(), sweep.reason());
        }
        let delay = match error.kind {
            ErrorKind::Reconnect => {
                self.reconnect_waits += 1;
                Some(backoff(self.reconnect_waits))
            }
            ErrorKind::Retryable if self.failed_attempts + 1 < self.job.max_attempts => {
                self.failed_attempts += 1;
                Some(backoff(self.failed_attempts))
            }
            ErrorKind::Retryable | ErrorKind::Fatal => {
                self.failed_attempts += 1;
                None
            }
        };
        if let Some(delay) = delay {
            self.job.record_failure(true);
            tracing::warn!(
                job = %self.job.name,
                partition = self.claim.partition_index,
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
        self.job.record_failure(false);
        let message = if error.kind == ErrorKind::Retryable {
            format!(
                "batch on partition {} failed {} times, last: {}",
                self.claim.partition_index, self.failed_attempts, error.message
            )
        } else {
            format!(
                "batch on partition {} failed: {}",
                self.claim.partition_index, error.message
            )
        };
        tracing::error!(job = %self.job.name, "{message}");
        if let Err(e) = jobs::fail(
            &self.env.pool,
            &self.env.schema,
            self.job.id,
            &self.env.actor,
            &message,
        )
        .await
        {
            tracing::error!(job = %self.job.name, error = %db::message(&e), "could not record the failure");
        }
        Step::Exit(WorkerExit::Failed(message))
    }
}

impl Worker {
    /// Opens the worker's connection, like the pool's but its own, with the job's timeouts.
    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let options = self.env.pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await?;
        if self.env.pool.mode().keeps_sessions() {
            db::apply_settings(&mut conn, &self.job.session, SettingsScope::Session).await?;
        }
        Ok(conn)
    }

    /// Waits while a throttle signal says so, re-checking every second. False if cancelled.
    async fn wait_until_healthy(&mut self, cancel: &CancellationToken) -> bool {
        let Some(signals) = &self.job.signals else {
            return true;
        };
        loop {
            let throttle = signals.check(&self.env.pool).await;
            let changed = self.job.record_throttle(throttle.clone());
            let Some(throttle) = throttle else {
                if changed {
                    tracing::info!(job = %self.job.name, "health checks pass again; resuming batches");
                }
                return true;
            };
            if changed {
                tracing::warn!(job = %self.job.name, reason = %throttle.reason, "throttled: {}", throttle.detail);
                self.record_throttled(&throttle).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(HEALTH_RECHECK) => {}
            }
        }
    }
}

impl Worker {
    /// Puts the start of a throttle episode in the event log (where notifications pick it up),
    /// at most once per job per [`THROTTLED_EVENT_QUIET`]. A database that cannot take it now
    /// only costs the entry: the worker waits for the signal either way.
    async fn record_throttled(&self, throttle: &Throttle) {
        let detail = format!("{}: {}", throttle.reason, throttle.detail);
        let recorded = events::record_throttled(
            &self.env.pool,
            &self.env.schema,
            self.job.id,
            &self.env.actor,
            &detail,
            THROTTLED_EVENT_QUIET,
        )
        .await;
        if let Err(e) = recorded {
            tracing::debug!(job = %self.job.name, error = %db::message(&e), "could not record the throttled event");
        }
    }
}

/// A job throttled again within this time of its last `throttled` event records no new one.
const THROTTLED_EVENT_QUIET: Duration = Duration::from_secs(300);

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

/// How long a worker rests after a batch whose transaction took `busy`: the job's `pause`,
/// or with a `duty_cycle` d, `busy × (1 − d) / d`, whichever is longer (`pause` is a floor).
pub fn rest_after(busy: Duration, tunables: &Tunables) -> Option<Duration> {
    // At most the longest `pause` a job may set: a batch that waited long behind a lock must
    // not park its partition (and its lease) for many times as long.
    let sized = tunables
        .duty_cycle
        .map(|d| d.rest_after(busy).min(crate::spec::MAX_PAUSE));
    match (tunables.pause, sized) {
        (pause, None) => pause,
        (Some(pause), Some(sized)) => Some(pause.max(sized)),
        (None, Some(sized)) => Some(sized).filter(|d| !d.is_zero()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DutyCycle;

    fn tunables(pause_ms: Option<u64>, duty_percent: Option<i64>) -> Tunables {
        Tunables {
            batch_size: 100,
            rows_per_second: None,
            pause: pause_ms.map(Duration::from_millis),
            duty_cycle: duty_percent.map(|p| DutyCycle::from_percent(p).unwrap()),
        }
    }

    #[test]
    fn the_rest_follows_the_batch_time_with_pause_as_a_floor() {
        let ms = Duration::from_millis;
        let t = ms(100);
        // 0.5: rest as long as the batch took; when batches slow down, so do the rests.
        assert_eq!(rest_after(t, &tunables(None, Some(50))), Some(t));
        assert_eq!(
            rest_after(ms(300), &tunables(None, Some(50))),
            Some(ms(300))
        );
        // 0.25: three times as long.
        assert_eq!(rest_after(t, &tunables(None, Some(25))), Some(ms(300)));
        // 1 (or none): no rest sized from the batch.
        assert_eq!(rest_after(t, &tunables(None, Some(100))), None);
        assert_eq!(rest_after(t, &tunables(None, None)), None);
        assert_eq!(rest_after(t, &tunables(Some(50), None)), Some(ms(50)));
        // With both, the longer: a longer pause wins, a shorter one gives way.
        assert_eq!(rest_after(t, &tunables(Some(250), Some(50))), Some(ms(250)));
        assert_eq!(rest_after(t, &tunables(Some(20), Some(50))), Some(t));
        assert_eq!(rest_after(t, &tunables(Some(20), Some(100))), Some(ms(20)));
        // A batch that waited long (a lock) rests at most the longest pause: 99 × 10 min
        // would be 16.5 h.
        assert_eq!(
            rest_after(Duration::from_secs(600), &tunables(None, Some(1))),
            Some(crate::spec::MAX_PAUSE)
        );
    }
}
