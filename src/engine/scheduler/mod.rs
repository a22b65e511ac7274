//! The worker pool: claims runnable partitions from the database up to `workers` at a time, runs
//! a [`Worker`] for each, and releases leases as workers end. `run` uses it for one job, `serve`
//! for all of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::fleet::shares::FleetShares;
use crate::engine::lease::{self, HeldLeases, Presence};
use crate::engine::runtime::{JobRuntime, LocalJobs};
use crate::engine::worker::{Worker, WorkerEnv, WorkerExit};
use crate::engine::{catalog, completion, sync};
use crate::plumbing::config::DEFAULT_DATABASE;
use crate::plumbing::db::{self, Db, Schema};
use crate::store::{jobs, progress, JobState};

/// How often an idle scheduler looks for claimable work (a lease expiring, a job resumed).
mod rate_share;

const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often each job's share of its rate limit is read again from the leases, so a replica
/// that joins or dies moves the others' shares within a few seconds.
const SHARE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerExit {
    /// One-job mode: the job left `running` (completed, paused, cancelled, failed).
    JobEnded(JobState),
    /// One-job mode: the job was given another definition (`--replace`) meanwhile, which
    /// this runtime's statement does not run.
    Replaced,
    /// The root token was cancelled and every in-flight batch has committed.
    Shutdown,
}

pub struct Scheduler {
    env: WorkerEnv,
    workers: usize,
    /// `Some(id)`: run only this job and return when it leaves `running`.
    only_job: Option<i64>,
    presence: Arc<Presence>,
    held: HeldLeases,
    /// Resolved jobs by id, shared by their workers (rate limiter, counters), each with a
    /// token (a child of the root) cancelled when the job is seen leaving `running`, so
    /// workers waiting on the rate limit or a pause stop within one poll.
    runtimes: HashMap<i64, (Arc<JobRuntime>, CancellationToken)>,
    /// Where the API looks up what this process runs.
    registry: LocalJobs,
    /// The root token, set when `run` starts.
    root: CancellationToken,
    /// Which lease each worker task holds, so even a panicked worker's lease is released.
    tasks: HashMap<tokio::task::Id, Uuid>,
    /// When the rate shares were last read; `None` asks for a read now (after a claim or a
    /// release changed this process's leases).
    shares_read: Option<Instant>,
    /// One-job mode: the job's definition was replaced under this run.
    replaced: bool,
    /// With several target databases: this target's name, and where every target's
    /// scheduler in this process puts its jobs' live leases, so a job's rate limit is shared
    /// over all of them.
    fleet: Option<(FleetShares, String)>,
}

impl Scheduler {
    pub fn new(
        pool: Db,
        schema: Schema,
        lease_ttl: Duration,
        workers: usize,
        actor: &str,
    ) -> Scheduler {
        // The pool's options, so the presence session honours the same TLS settings.
        let presence = Arc::new(Presence::new(&pool.connect_options(), pool.mode()));
        Scheduler {
            env: WorkerEnv {
                pool,
                schema,
                lease_ttl,
                actor: actor.to_string(),
            },
            workers,
            only_job: None,
            presence,
            held: HeldLeases::default(),
            runtimes: HashMap::new(),
            registry: LocalJobs::default(),
            root: CancellationToken::new(),
            tasks: HashMap::new(),
            shares_read: None,
            replaced: false,
            fleet: None,
        }
    }

    /// Runs as the scheduler of `target`, one of several target databases: rate shares count
    /// each job's live leases on all of them (`shares`).
    /// The target this scheduler runs on: `default` unless it is one of several.
    fn database(&self) -> &str {
        (self.fleet.as_ref()).map_or(DEFAULT_DATABASE, |(_, target)| target.as_str())
    }

    pub fn in_fleet(mut self, shares: FleetShares, target: &str) -> Scheduler {
        self.fleet = Some((shares, target.to_string()));
        self
    }

    /// Restricts the pool to one job whose runtime the caller already built (and watches).
    pub fn only(mut self, runtime: Arc<JobRuntime>) -> Scheduler {
        self.only_job = Some(runtime.id);
        self.runtimes
            .insert(runtime.id, (runtime, CancellationToken::new()));
        self
    }

    /// Shares the runtimes of running jobs with the API.
    pub fn register_in(mut self, registry: LocalJobs) -> Scheduler {
        self.registry = registry;
        self
    }

    pub async fn run(mut self, cancel: CancellationToken) -> Result<SchedulerExit, sqlx::Error> {
        self.root = cancel.clone();
        for (runtime, token) in self.runtimes.values_mut() {
            *token = cancel.child_token();
            self.registry
                .lock()
                .expect("registry lock poisoned")
                .insert(runtime.id, runtime.clone());
        }
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(lease::heartbeat(
            self.env.pool.clone(),
            self.env.schema.clone(),
            self.presence.clone(),
            self.held.clone(),
            self.env.lease_ttl,
            heartbeat_stop.clone(),
        ));
        let result = self.schedule(&cancel).await;
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        self.presence.close().await;
        result
    }

    async fn schedule(&mut self, cancel: &CancellationToken) -> Result<SchedulerExit, sqlx::Error> {
        let mut active: JoinSet<WorkerExit> = JoinSet::new();
        loop {
            if cancel.is_cancelled() {
                // Stop taking batches; the workers notice between batches and return.
                while let Some(joined) = active.join_next_with_id().await {
                    self.finish(joined).await;
                }
                return Ok(SchedulerExit::Shutdown);
            }
            if let Err(e) = self.watch_jobs().await {
                tracing::warn!(error = %db::message(&e), "could not read job states; will retry");
            }
            let free = self.workers.saturating_sub(active.len());
            if free > 0 {
                if let Err(e) = self.claim_and_spawn(free, &mut active).await {
                    tracing::warn!(error = %db::message(&e), "could not claim partitions; will retry");
                }
            }
            if self
                .shares_read
                .is_none_or(|at| at.elapsed() >= SHARE_EVERY)
            {
                if let Err(e) = self.read_shares().await {
                    tracing::warn!(error = %db::message(&e), "could not read the rate shares; will retry");
                }
            }
            if active.is_empty() && self.replaced {
                return Ok(SchedulerExit::Replaced);
            }
            if active.is_empty() {
                if let Some(job_id) = self.only_job {
                    let state = jobs::find(&self.env.pool, &self.env.schema, job_id)
                        .await?
                        .map(|j| j.state)
                        .unwrap_or(JobState::Cancelled);
                    if state != JobState::Running {
                        return Ok(SchedulerExit::JobEnded(state));
                    }
                    // Still running but nothing to claim: another process holds the rest.
                }
            }
            tokio::select! {
                Some(joined) = active.join_next_with_id() => self.finish(joined).await,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    async fn claim_and_spawn(
        &mut self,
        free: usize,
        active: &mut JoinSet<WorkerExit>,
    ) -> Result<(), sqlx::Error> {
        if self.only_job.is_none() {
            self.start_queued_jobs().await?;
        }
        self.complete_finished_jobs().await?;
        let holder = self.presence.holder().await?;
        let claims = progress::claim(
            &self.env.pool,
            &self.env.schema,
            &holder,
            self.env.lease_ttl,
            self.only_job,
            free as i64,
        )
        .await?;
        let mut claims = claims.into_iter();
        while let Some(claim) = claims.next() {
            let token = claim.lease_token;
            self.held.insert(token);
            if let Err(error) = self.spawn_worker(claim, active).await {
                // This lease and the rest of the batch's go back now: kept in `held`, the
                // heartbeat would renew them for a worker that never runs.
                self.release(token).await;
                for rest in claims {
                    self.release(rest.lease_token).await;
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Starts a worker on `claim` (whose lease is in `held`), or releases the lease when the
    /// job no longer runs here or its sync trigger cannot be installed.
    async fn spawn_worker(
        &mut self,
        claim: progress::Claim,
        active: &mut JoinSet<WorkerExit>,
    ) -> Result<(), sqlx::Error> {
        let Some((runtime, job_cancel)) = self.runtime(claim.job_id).await? else {
            self.release(claim.lease_token).await;
            return Ok(());
        };
        // Before the job's first batch in this process: rows written from now on stay in
        // step, so no write slips between the backfill and the trigger.
        if let Err(message) =
            sync::ensure_installed(&self.env.pool, &self.env.schema, &runtime, &self.env.actor)
                .await
        {
            tracing::error!(job = %runtime.name, "{message}");
            jobs::fail(
                &self.env.pool,
                &self.env.schema,
                claim.job_id,
                &self.env.actor,
                &message,
            )
            .await?;
            self.release(claim.lease_token).await;
            return Ok(());
        }
        tracing::info!(
            job = %runtime.name,
            partition = claim.partition_index,
            cursor = %crate::status::text::cursor(claim.cursor.as_deref()),
            "claimed partition"
        );
        let token = claim.lease_token;
        self.shares_read = None;
        let worker = Worker::new(self.env.clone(), runtime, claim);
        let handle = active.spawn(worker.run(job_cancel));
        self.tasks.insert(handle.id(), token);
        Ok(())
    }

    /// The job's runtime, resolving its spec against the catalog the first time. A job that no
    /// longer resolves (its table or a column is gone) is failed with the reason.
    async fn runtime(
        &mut self,
        job_id: i64,
    ) -> Result<Option<(Arc<JobRuntime>, CancellationToken)>, sqlx::Error> {
        let Some(row) = jobs::find(&self.env.pool, &self.env.schema, job_id).await? else {
            return Ok(None);
        };
        if let Some((runtime, token)) = self.runtimes.get(&job_id) {
            // A definition replaced since (`--replace`) runs another statement: never the
            // old one. (Its workers stopped: a replacement revokes the job's leases.)
            let current = row.spec().ok();
            if current.is_none_or(|spec| spec.same_work(&runtime.definition)) {
                return Ok(Some((runtime.clone(), token.clone())));
            }
            if self.only_job == Some(job_id) {
                self.replaced = true;
                return Ok(None);
            }
            token.cancel();
            self.runtimes.remove(&job_id);
        }
        let resolved = match row.spec() {
            Ok(spec) => {
                let mut conn = self.env.pool.pinned().await?;
                let resolved = catalog::resolve(&mut conn, &spec).await;
                conn.rollback().await?;
                resolved
                    .map(|resolved| (spec, resolved))
                    .map_err(|e| e.to_string())
            }
            Err(message) => Err(message),
        };
        match resolved {
            Ok((spec, resolved)) => {
                let runtime = Arc::new(JobRuntime::new(
                    job_id,
                    &spec,
                    &resolved,
                    self.env.lease_ttl,
                    self.database(),
                ));
                self.registry
                    .lock()
                    .expect("registry lock poisoned")
                    .insert(job_id, runtime.clone());
                let entry = (runtime, self.root.child_token());
                self.runtimes.insert(job_id, entry.clone());
                Ok(Some(entry))
            }
            Err(message) => {
                let message = format!("job no longer matches the database: {message}");
                tracing::error!(job = %row.name, "{message}");
                jobs::fail(
                    &self.env.pool,
                    &self.env.schema,
                    job_id,
                    &self.env.actor,
                    &message,
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Looks at the jobs this process runs: a job that left `running` has its workers
    /// stopped now (not at their next batch), even those waiting on the rate limit or a
    /// throttle. (Re-tuned values reach the workers through their batches' fence.)
    async fn watch_jobs(&mut self) -> Result<(), sqlx::Error> {
        if self.runtimes.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = self.runtimes.keys().copied().collect();
        let states = jobs::states(&self.env.pool, &self.env.schema, &ids).await?;
        for id in ids {
            let running = states
                .iter()
                .any(|(job, state)| *job == id && *state == JobState::Running);
            if running {
                // A one-job run paused and resumed between two looks: its stopped workers'
                // token must not stop the next ones at once (they would spin).
                if let Some((_, token)) = self.runtimes.get_mut(&id) {
                    if token.is_cancelled() && self.only_job == Some(id) {
                        *token = self.root.child_token();
                    }
                }
                continue;
            }
            if self.only_job == Some(id) {
                // One-job mode keeps its runtime (the caller watches it); its workers stop at
                // the next batch or through the token.
                if let Some((_, token)) = self.runtimes.get(&id) {
                    token.cancel();
                }
                continue;
            }
            if let Some((_, token)) = self.runtimes.remove(&id) {
                token.cancel();
            }
            self.registry
                .lock()
                .expect("registry lock poisoned")
                .remove(&id);
        }
        Ok(())
    }

    /// Completes running jobs whose partitions are all done (a process that died between its
    /// last batch and marking the job completed leaves one behind).
    async fn complete_finished_jobs(&mut self) -> Result<(), sqlx::Error> {
        let ids = jobs::finished_but_running(&self.env.pool, &self.env.schema).await?;
        for id in ids {
            if self.only_job.is_some_and(|only| only != id) {
                continue;
            }
            let Some((runtime, _)) = self.runtime(id).await? else {
                continue;
            };
            // Its steps are transactions of their own; counting what is pending walks the
            // table in short ones.
            let mut conn = self.env.pool.acquire_for_own_transactions().await?;
            completion::finish(
                &mut conn,
                &self.env.schema,
                &runtime.sql,
                (id, &runtime.name),
                &self.env.actor,
            )
            .await?;
        }
        Ok(())
    }

    /// Moves queued jobs to running (the daemon starts what was submitted).
    async fn start_queued_jobs(&self) -> Result<(), sqlx::Error> {
        for id in jobs::queued(&self.env.pool, &self.env.schema).await? {
            let mut tx = self.env.pool.begin().await?;
            // Only if still queued: a pause since the list was read stands.
            jobs::transition_from(
                &mut tx,
                &self.env.schema,
                id,
                Some(&[JobState::Queued]),
                JobState::Running,
                &self.env.actor,
                Some("started by the daemon"),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        joined: Result<(tokio::task::Id, WorkerExit), tokio::task::JoinError>,
    ) {
        let (id, exit) = match joined {
            Ok((id, exit)) => (id, Some(exit)),
            Err(e) => {
                tracing::error!(error = %e, "worker task panicked");
                (e.id(), None)
            }
        };
        let Some(token) = self.tasks.remove(&id) else {
            return;
        };
        tracing::debug!(?exit, "worker ended");
        if exit == Some(WorkerExit::LeaseLost) {
            self.held.remove(&token);
            tracing::warn!("a partition's lease was taken over by another process");
        } else {
            self.release(token).await;
        }
    }

    async fn release(&mut self, token: Uuid) {
        self.shares_read = None;
        self.held.remove(&token);
        if let Err(e) = progress::release(&self.env.pool, &self.env.schema, token).await {
            // The lease expires on its own; nothing is lost, another process waits a TTL.
            tracing::warn!(error = %db::message(&e), "could not release a lease");
        }
    }
}
