//! `backfilld run JOB.toml`: runs one job in the foreground to its end. Running the same file
//! again after any interruption continues from the checkpoint.
//!
//! Exit codes (README, "Running a job in the foreground"): 0 completed (also when it already was), 1 failed, 2 invalid job,
//! config or connection, 3 paused or cancelled by an operator, 130/143 after SIGINT/SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;

use crate::commands::display::{Baseline, Display, Ending};
use crate::commands::error::CliError;
use crate::engine::runtime::{JobRuntime, LocalJobs};
use crate::engine::scheduler::{Scheduler, SchedulerExit};
use crate::engine::submit::{self, SubmitError};
use crate::plumbing::config::Settings;
use crate::plumbing::db::Schema;
use crate::plumbing::shutdown::Shutdown;
use crate::spec::JobSpec;
use crate::status::text;
use crate::store::{jobs, progress, JobState};
use tokio_util::sync::CancellationToken;

/// Recorded as the actor of what a foreground run does.
pub const ACTOR: &str = "cli";

pub async fn execute(settings: &Settings, path: &Path, serve_api: bool) -> Result<i32, CliError> {
    let spec = JobSpec::from_file(path).map_err(CliError::invalid)?;
    let shutdown = Shutdown::install().map_err(|e| CliError::Other(e.into()))?;
    run_job(settings, &spec, &shutdown, serve_api)
        .await
        .map_err(|e| e.in_file(path))
}

/// Runs `spec` to its end (or until `shutdown`); returns the exit code. With `serve_api`, the
/// HTTP API listens on `settings.listen` while the job runs.
pub async fn run_job(
    settings: &Settings,
    spec: &JobSpec,
    shutdown: &Shutdown,
    serve_api: bool,
) -> Result<i32, CliError> {
    let pool = super::connect(settings, spec.partitions.saturating_add(3)).await?;
    let submit_error = |e: SubmitError| match e {
        SubmitError::Database(e) => CliError::from(e),
        other => CliError::job(other),
    };
    let resolved = submit::resolve(&pool, spec).await.map_err(submit_error)?;
    let schema = super::migrate(settings, &pool).await?;
    let submitted = submit::find_or_submit(&pool, &schema, spec, resolved, ACTOR)
        .await
        .map_err(submit_error)?;
    let job = submitted.job;
    if submitted.created {
        tracing::info!(job = %spec.name, "submitted");
    }
    match job.state {
        JobState::Completed => {
            println!(
                "job {} is already completed ({} rows updated); nothing to do",
                job.name,
                text::signed_count(updated_rows(&pool, &schema, job.id).await?)
            );
            return Ok(0);
        }
        JobState::Cancelled => {
            println!(
                "job {} was cancelled by an operator; submit the work under a new name to run it again",
                job.name
            );
            return Ok(3);
        }
        JobState::Paused => {
            println!(
                "job {} is paused by an operator; resume it (`backfilld resume {}`) and run again",
                job.name, job.name
            );
            return Ok(3);
        }
        JobState::Queued | JobState::Failed => {
            let detail = match job.state {
                JobState::Failed => "resumed by a new run after a failure",
                _ => "started by run",
            };
            let mut tx = pool.begin().await?;
            jobs::transition(
                &mut tx,
                &schema,
                job.id,
                JobState::Running,
                ACTOR,
                Some(detail),
            )
            .await?;
            tx.commit().await?;
        }
        JobState::Running => {}
    }
    retune_from_file(&pool, &schema, &job, spec).await?;

    let runtime = Arc::new(JobRuntime::new(
        job.id,
        spec,
        &submitted.resolved,
        settings.lease_ttl,
    ));
    let partitions = progress::list(&pool, &schema, job.id).await?;
    let baseline = Baseline {
        scanned: partitions.iter().map(|p| p.rows_scanned as u64).sum(),
        updated: partitions.iter().map(|p| p.rows_updated as u64).sum(),
        estimated_total: job.estimated_rows.max(0) as u64,
    };
    if baseline.scanned > 0 {
        tracing::info!(
            job = %spec.name,
            rows_scanned = baseline.scanned,
            "resuming from the checkpoint"
        );
    }
    let local = LocalJobs::default();
    let http_stop = CancellationToken::new();
    let http = if serve_api {
        let http = super::serve::start_http(
            settings,
            pool.clone(),
            schema.clone(),
            local.clone(),
            http_stop.clone(),
            false,
        )
        .await?;
        tracing::info!("API listening on {}", http.url());
        Some(http)
    } else {
        None
    };
    let started = Instant::now();
    let display = Display::start(runtime.clone(), baseline);
    let scheduler = Scheduler::new(
        pool.clone(),
        schema.clone(),
        settings.lease_ttl,
        partitions.len().max(1),
        ACTOR,
    )
    .only(runtime)
    .register_in(local);
    let exit = scheduler.run(shutdown.token()).await;
    display
        .finish(match &exit {
            Ok(SchedulerExit::Shutdown) => Ending::Interrupted,
            Ok(SchedulerExit::JobEnded(JobState::Completed)) => Ending::Completed,
            Ok(SchedulerExit::JobEnded(JobState::Cancelled)) => Ending::Cancelled,
            Ok(SchedulerExit::JobEnded(JobState::Paused | JobState::Queued)) => Ending::Paused,
            Ok(SchedulerExit::JobEnded(_)) | Err(_) => Ending::Failed,
        })
        .await;
    http_stop.cancel();
    if let Some(http) = http {
        http.join(settings.shutdown_timeout).await;
    }
    let exit = exit?;

    let job = jobs::find(&pool, &schema, job.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {} disappeared", spec.name))?;
    let partitions = progress::list(&pool, &schema, job.id).await?;
    let scanned = text::signed_count(partitions.iter().map(|p| p.rows_scanned).sum());
    let updated = text::signed_count(partitions.iter().map(|p| p.rows_updated).sum());
    let elapsed = text::duration(started.elapsed());
    let code = match exit {
        SchedulerExit::Shutdown => {
            let signal = shutdown
                .signal()
                .unwrap_or(crate::plumbing::shutdown::SIGINT);
            println!(
                "job {}: interrupted after {elapsed}; checkpoint written at {scanned} rows scanned. Run the same file again to continue.",
                job.name
            );
            128 + signal
        }
        SchedulerExit::JobEnded(JobState::Completed) => {
            println!(
                "job {}: completed — {scanned} rows scanned, {updated} updated (this run: {elapsed})",
                job.name
            );
            0
        }
        SchedulerExit::JobEnded(JobState::Failed) => {
            eprintln!(
                "job {}: failed — {}. Fix the cause and run again to retry from the checkpoint.",
                job.name,
                job.last_error.as_deref().unwrap_or("no error recorded")
            );
            1
        }
        SchedulerExit::JobEnded(state) => {
            println!(
                "job {}: {state} by an operator at {scanned} rows scanned",
                job.name
            );
            3
        }
    };
    Ok(code)
}

/// The file is authoritative for a foreground run: tunables that differ from the stored job
/// (an earlier file, or a PATCH) are written back, and the change is logged as an event.
async fn retune_from_file(
    pool: &PgPool,
    schema: &Schema,
    job: &jobs::JobRow,
    spec: &JobSpec,
) -> Result<(), CliError> {
    let mut tx = pool.begin().await?;
    let Some(job) = jobs::lock(&mut tx, schema, job.id).await? else {
        return Err(CliError::Other(anyhow::anyhow!(
            "job {} disappeared",
            spec.name
        )));
    };
    let stored = job.spec().map_err(CliError::invalid)?;
    if stored == *spec {
        return Ok(());
    }
    let changed = stored.differences(spec).join(", ");
    jobs::replace_spec(&mut tx, schema, job.id, spec, ACTOR, &changed).await?;
    tx.commit().await?;
    tracing::info!(job = %spec.name, changed = %changed, "applied the file's tunables");
    Ok(())
}

async fn updated_rows(pool: &PgPool, schema: &Schema, job_id: i64) -> Result<i64, CliError> {
    let partitions = progress::list(pool, schema, job_id).await?;
    Ok(partitions.iter().map(|p| p.rows_updated).sum())
}
