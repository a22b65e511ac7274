//! `serve` over several target databases: one engine per target (its own pools, presence
//! session, migrations and scheduler), all in this process. `max_connections` budgets each
//! target alike, so every database sees what a single-database daemon would open on it;
//! `workers` is per target too, so a slow target never takes another's workers.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::commands::error::CliError;
use crate::engine::fleet::shares::FleetShares;
use crate::engine::fleet::{Fleet, Target};
use crate::engine::rates::Rates;
use crate::engine::runtime::LocalJobs;
use crate::engine::scheduler::{Scheduler, SchedulerExit};
use crate::plumbing::config::{Settings, DEFAULT_DATABASE};
use crate::plumbing::db::{self, Db, Schema};
use crate::plumbing::pool::Budget;
use crate::plumbing::retry::backoff;
use crate::store::migrate::MigrateError;

/// How long the jobs directory waits for the other targets' first migration: a target that
/// is away then does not hold up the jobs of the others (its jobs are skipped, saying why).
const JOBS_DIR_WAIT: Duration = Duration::from_secs(10);

/// Every target: the daemon's own database (with the pools `serve` made for it) first, then
/// the `[[databases]]`, each with pools of its own that connect on first use.
pub fn build(
    settings: &Settings,
    budget: &Budget,
    pool: &Db,
    api_pool: &Db,
    local: &LocalJobs,
) -> Result<Fleet, CliError> {
    let configured = settings.target_databases().map_err(CliError::invalid)?;
    let mut targets = Vec::with_capacity(configured.len());
    for target in configured {
        if target.name == DEFAULT_DATABASE {
            targets.push(Target {
                name: target.name,
                pool: pool.clone(),
                api_pool: api_pool.clone(),
                local: local.clone(),
                rates: Rates::default(),
            });
            continue;
        }
        let options = db::connect_options(&target.url)
            .map_err(|e| CliError::invalid(format!("databases: {}: {e}", target.name)))?;
        let pool = Db::lazy(options, budget.engine, settings.pool_mode);
        targets.push(Target {
            name: target.name,
            api_pool: pool.sibling(budget.api),
            pool,
            local: LocalJobs::default(),
            rates: Rates::default(),
        });
    }
    Ok(Fleet::new(targets))
}

/// The other targets' engines, running in the background.
pub struct Others {
    /// Each job's live leases on every target, for the rate shares.
    pub shares: FleetShares,
    migrated: Vec<watch::Receiver<bool>>,
    tasks: Vec<JoinHandle<Result<SchedulerExit, sqlx::Error>>>,
}

/// Starts, for every target but the daemon's own, its migrations (retried with backoff while
/// it is away, naming it) and then its scheduler, until `root` is cancelled.
pub fn start_others(
    fleet: &Fleet,
    schema: &Schema,
    settings: &Settings,
    workers: usize,
    root: &CancellationToken,
    actor: &str,
) -> Others {
    let shares = FleetShares::default();
    let mut migrated = Vec::new();
    let mut tasks = Vec::new();
    for target in fleet.targets() {
        if target.name == DEFAULT_DATABASE {
            continue;
        }
        let (done, seen) = watch::channel(false);
        migrated.push(seen);
        let scheduler = Scheduler::new(
            target.pool.clone(),
            schema.clone(),
            settings.lease_ttl,
            workers,
            actor,
        )
        .register_in(target.local.clone())
        .in_fleet(shares.clone(), &target.name);
        let (target, schema, root) = (target.clone(), schema.clone(), root.clone());
        tasks.push(tokio::spawn(async move {
            if !migrate_with_backoff(&target.pool, &schema, &root, &target.name).await {
                return Ok(SchedulerExit::Shutdown);
            }
            let _ = done.send(true);
            tracing::info!(database = %target.name, "target database migrated; scheduling its jobs");
            scheduler.run(root).await
        }));
    }
    Others {
        shares,
        migrated,
        tasks,
    }
}

impl Others {
    /// Waits (at most `JOBS_DIR_WAIT` in all) for every other target's first migration.
    pub async fn wait_migrated(&self) {
        let deadline = tokio::time::Instant::now() + JOBS_DIR_WAIT;
        for seen in &self.migrated {
            let mut seen = seen.clone();
            let _ = tokio::time::timeout_at(deadline, seen.wait_for(|done| *done)).await;
        }
    }

    /// Runs `home` (the daemon's own scheduler) and waits for it and every other target's;
    /// the first error wins, as a single scheduler's would.
    pub async fn join_with(
        self,
        home: impl std::future::Future<Output = Result<SchedulerExit, sqlx::Error>>,
    ) -> Result<SchedulerExit, sqlx::Error> {
        let mut result = home.await;
        for task in self.tasks {
            match task.await {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Err(e) => tracing::error!(error = %e, "a target's worker pool panicked"),
                _ => {}
            }
        }
        result
    }

    /// Stops them (the daemon is shutting down before its own database answered).
    pub fn abort(self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Applies migrations to the target `database`, retrying with backoff until it answers (a
/// schema newer than this binary is refused, naming the database, and retried the same way,
/// for a rollback to end). False if shut down first.
pub async fn migrate_with_backoff(
    pool: &Db,
    schema: &Schema,
    stop: &CancellationToken,
    database: &str,
) -> bool {
    let mut attempt = 0;
    loop {
        let error = match crate::store::migrate::run(pool, schema).await {
            Ok(_) => return true,
            // In words: a certificate that does not verify says whose and why.
            Err(MigrateError::Database(e)) => db::describe(&e, pool.connect_options().get_host()),
            Err(other) => other.to_string(),
        };
        attempt += 1;
        let delay = backoff(attempt);
        tracing::warn!(database, error = %error, retry_in = ?delay, "database not ready");
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
