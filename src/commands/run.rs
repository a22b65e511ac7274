//! `backfilld run JOB.toml`: runs one job in the foreground to its end. Running the same file
//! again after any interruption continues from the checkpoint.
//!
//! Exit codes (README, "Running a job in the foreground"): 0 completed (also when it already was), 1 failed, 2 invalid job,
//! config or connection, 3 paused or cancelled by an operator, 130/143 after SIGINT/SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::commands::display::{Baseline, Display, Ending};
use crate::commands::error::CliError;
use crate::engine::fleet::{Fleet, Target};
use crate::engine::rates::Rates;
use crate::engine::runtime::{JobRuntime, LocalJobs};
use crate::engine::scheduler::{Scheduler, SchedulerExit};
use crate::engine::submit::{self, Replaced, SubmitError};
use crate::plumbing::config::{Settings, DEFAULT_DATABASE};
use crate::plumbing::db::{Db, Schema};
use crate::plumbing::pool::Budget;
use crate::plumbing::shutdown::Shutdown;
use crate::spec::{JobSpec, Tunables};
use crate::status::text;
use crate::store::{definition, events, jobs, progress, JobState};
use tokio_util::sync::CancellationToken;

/// Recorded as the actor of what a foreground run does.
pub const ACTOR: &str = "cli";

/// What `run` is asked besides its file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Serve the HTTP API on `listen` while the job runs.
    pub serve_api: bool,
    /// Give a failed, paused or cancelled job of this name the file's definition, keeping its
    /// checkpoint.
    pub replace: bool,
    /// Resume the job if an operator paused it.
    pub resume: bool,
}

pub async fn execute(settings: &Settings, path: &Path, options: Options) -> Result<i32, CliError> {
    let spec = JobSpec::from_file(path).map_err(CliError::invalid)?;
    if crate::engine::fleet::spans_databases(&spec) {
        return Err(CliError::invalid(format!(
            "{}: job {:?} names databases; `run` works on one database: submit it to `serve` (its jobs directory, or `backfilld submit`), which runs it on each",
            path.display(),
            spec.name
        )));
    }
    let shutdown = Shutdown::install().map_err(|e| CliError::Other(e.into()))?;
    run_job(settings, &spec, &shutdown, options)
        .await
        .map_err(|e| e.in_file(path))
}

/// Runs `spec` to its end (or until `shutdown`); returns the exit code.
pub async fn run_job(
    settings: &Settings,
    spec: &JobSpec,
    shutdown: &Shutdown,
    options: Options,
) -> Result<i32, CliError> {
    let budget = run_budget(settings, spec.partitions, options.serve_api)?;
    tracing::debug!(pool_mode = ?settings.pool_mode, "{budget}");
    let pool = super::connect(settings, budget.engine).await?;
    let submit_error = |e: SubmitError| match e {
        SubmitError::Database(e) => CliError::from(e),
        other => CliError::job(other),
    };
    let resolved = submit::resolve(&pool, spec).await.map_err(submit_error)?;
    let schema = super::migrate(settings, &pool).await?;
    let mut job = match submit::find_or_submit(&pool, &schema, spec, resolved.clone(), ACTOR).await
    {
        Ok(submitted) => {
            if submitted.created {
                tracing::info!(job = %spec.name, "submitted");
            }
            submitted.job
        }
        Err(SubmitError::Conflict { .. }) if options.replace => {
            match submit::replace(&pool, &schema, spec, &resolved, ACTOR)
                .await
                .map_err(submit_error)?
            {
                Replaced::Replaced(job) => {
                    println!(
                        "job {}: replaced its definition; it continues from its checkpoint",
                        job.name
                    );
                    job
                }
                Replaced::Created(job) | Replaced::Unchanged(job) => job,
            }
        }
        Err(other) => return Err(submit_error(other)),
    };
    if job.state == JobState::Paused && options.resume {
        let who = os_user();
        let mut tx = pool.begin().await?;
        jobs::resume(
            &mut tx,
            &schema,
            job.id,
            &who,
            Some("resumed by run --resume"),
        )
        .await?;
        tx.commit().await?;
        job = jobs::find(&pool, &schema, job.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("job {} disappeared", spec.name))?;
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
                "job {} was cancelled by an operator; to continue from its checkpoint, change the definition and run with --replace; to start over, delete it (`backfilld delete {}`) or use a new name",
                job.name, job.name
            );
            return Ok(3);
        }
        JobState::Paused => {
            println!(
                "job {} is paused by an operator; run again with --resume to resume it here (or `backfilld resume {}` against a daemon)",
                job.name, job.name
            );
            return Ok(3);
        }
        JobState::Queued | JobState::Failed => {
            let detail = match job.state {
                JobState::Failed => "resumed by a new run after a failure",
                _ => "started by run",
            };
            // Only from the state read above: an operator's pause since then stands (the run
            // then ends as paused).
            let mut tx = pool.begin().await?;
            jobs::transition_from(
                &mut tx,
                &schema,
                job.id,
                Some(&[job.state]),
                JobState::Running,
                ACTOR,
                Some(detail),
            )
            .await?;
            tx.commit().await?;
        }
        JobState::Running => {}
    }
    let spec = &settle_tunables(&pool, &schema, &job, spec).await?;

    let runtime = Arc::new(JobRuntime::new(
        job.id,
        spec,
        &resolved,
        settings.lease_ttl,
        DEFAULT_DATABASE,
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
    let http = if options.serve_api {
        let home = Target {
            name: DEFAULT_DATABASE.into(),
            pool: pool.clone(),
            api_pool: pool.sibling(budget.api),
            local: local.clone(),
            rates: Rates::default(),
        };
        let http = super::serve::start_http(
            settings,
            Fleet::new(vec![home]),
            schema.clone(),
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
        (budget.workers as usize).min(partitions.len()).max(1),
        ACTOR,
    )
    .only(runtime)
    .register_in(local);
    let exit = scheduler.run(shutdown.token()).await;
    display
        .finish(match &exit {
            Ok(SchedulerExit::Shutdown) => Ending::Interrupted,
            Ok(SchedulerExit::Replaced) => Ending::Replaced,
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
        SchedulerExit::Replaced => {
            println!(
                "job {}: given a new definition (--replace) while this run held it; run the new definition's file",
                job.name
            );
            3
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

/// The tunables a restarted foreground run uses, per value: the file's where the file changed
/// it since the job last saw the file (its author edited it), else the live one, which an
/// operator may have changed over the API meanwhile. Values taken from the file are written
/// back with a `retuned` event; live values kept over the file's are logged with a
/// `tunables_kept` event. Returns the file's definition with those tunables.
async fn settle_tunables(
    pool: &Db,
    schema: &Schema,
    job: &jobs::JobRow,
    spec: &JobSpec,
) -> Result<JobSpec, CliError> {
    let mut tx = pool.begin().await?;
    let Some(job) = jobs::lock(&mut tx, schema, job.id).await? else {
        return Err(CliError::Other(anyhow::anyhow!(
            "job {} disappeared",
            spec.name
        )));
    };
    // Under the lock, the stored definition must still be the file's: a replacement since
    // this run read it is not undone by writing the file's definition back.
    let stored = job.spec().map_err(CliError::invalid)?;
    if !stored.same_work(spec) {
        return Err(CliError::job(format!(
            "job {:?} was given another definition (--replace) while this run started; run the file that holds it, or replace it again with this file",
            spec.name
        )));
    }
    let live = stored.tunables();
    let authored = job.authored().map_err(CliError::invalid)?;
    let choice = TunableChoice::new(spec.tunables(), authored.tunables(), live);
    let effective = stored.with_tunables(choice.chosen);
    if !choice.from_file.is_empty() {
        let changed = format!("from the file: {}", choice.from_file.join(", "));
        jobs::replace_spec(&mut tx, schema, job.id, &effective, ACTOR, &changed).await?;
        tracing::info!(job = %spec.name, "the file changed tunables: {}", choice.from_file.join(", "));
    }
    if !choice.kept.is_empty() {
        let detail = format!(
            "kept the live {} over the job file (changed over the API since the file was last run); edit the file's value to override",
            choice.kept.join(", ")
        );
        events::record(
            &mut *tx,
            schema,
            job.id,
            ACTOR,
            "tunables_kept",
            None,
            Some(&detail),
        )
        .await?;
        tracing::info!(job = %spec.name, "{detail}");
    }
    if authored != *spec {
        definition::set_authored(&mut tx, schema, job.id, spec).await?;
    }
    tx.commit().await?;
    Ok(effective)
}

/// Which tunables win when a foreground run restarts (see [`settle_tunables`]).
#[derive(Debug, PartialEq)]
struct TunableChoice {
    chosen: Tunables,
    /// "field old → new" for each value taken from the file over a different live one.
    from_file: Vec<String>,
    /// "field = live (the file says …)" for each live value kept over the file's.
    kept: Vec<String>,
}

impl TunableChoice {
    /// `file` is what the file says now, `authored` what it (or the submission) said when the
    /// job last saw it, `live` what the job runs with.
    fn new(file: Tunables, authored: Tunables, live: Tunables) -> TunableChoice {
        let mut choice = TunableChoice {
            chosen: live,
            from_file: Vec::new(),
            kept: Vec::new(),
        };
        let rate = |r: Option<u32>| r.map_or_else(|| "none".to_string(), |r| r.to_string());
        let pause = |p: Option<std::time::Duration>| {
            p.map_or_else(
                || "none".to_string(),
                |p| humantime::format_duration(p).to_string(),
            )
        };
        choice.pick(
            "batch_size",
            (file.batch_size, authored.batch_size, live.batch_size),
            |c| &mut c.batch_size,
            |v| v.to_string(),
        );
        choice.pick(
            "rows_per_second",
            (
                file.rows_per_second,
                authored.rows_per_second,
                live.rows_per_second,
            ),
            |c| &mut c.rows_per_second,
            rate,
        );
        choice.pick(
            "pause",
            (file.pause, authored.pause, live.pause),
            |c| &mut c.pause,
            pause,
        );
        choice.pick(
            "duty_cycle",
            (file.duty_cycle, authored.duty_cycle, live.duty_cycle),
            |c| &mut c.duty_cycle,
            |d| d.map_or_else(|| "1".to_string(), |d| d.to_string()),
        );
        choice
    }

    fn pick<T: PartialEq + Copy>(
        &mut self,
        field: &str,
        (file, authored, live): (T, T, T),
        slot: impl Fn(&mut Tunables) -> &mut T,
        show: impl Fn(T) -> String,
    ) {
        if file == live {
            return;
        }
        if file != authored {
            *slot(&mut self.chosen) = file;
            self.from_file
                .push(format!("{field} {} → {}", show(live), show(file)));
        } else {
            self.kept.push(format!(
                "{field} = {} (the file says {})",
                show(live),
                show(file)
            ));
        }
    }
}

/// Who resumed a job with `run --resume`: the OS user, or `cli` when unknown.
fn os_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| ACTOR.to_string())
}

/// A foreground run works on all its partitions at once unless `max_connections` says
/// otherwise (`Budget::fit`).
fn run_budget(settings: &Settings, partitions: u32, serve_api: bool) -> Result<Budget, CliError> {
    Budget::fit(
        settings.max_connections,
        partitions,
        settings.pool_mode,
        serve_api,
    )
    .map_err(|m| CliError::invalid(format!("config: max_connections: {m}")))
}

async fn updated_rows(pool: &Db, schema: &Schema, job_id: i64) -> Result<i64, CliError> {
    let partitions = progress::list(pool, schema, job_id).await?;
    Ok(partitions.iter().map(|p| p.rows_updated).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(batch_size: u32, rows_per_second: Option<u32>, pause_ms: Option<u64>) -> Tunables {
        Tunables {
            batch_size,
            rows_per_second,
            pause: pause_ms.map(Duration::from_millis),
            duty_cycle: None,
        }
    }

    #[test]
    fn a_live_change_stays_unless_the_file_changed_that_value() {
        // An operator lowered the rate over the API; the file still says what it said.
        let choice = TunableChoice::new(
            t(100, Some(500), None),
            t(100, Some(500), None),
            t(100, Some(200), None),
        );
        assert_eq!(choice.chosen, t(100, Some(200), None));
        assert_eq!(choice.kept, ["rows_per_second = 200 (the file says 500)"]);
        assert!(choice.from_file.is_empty());
        // The author edited the file's rate and pause: the file wins for those, and only those.
        let choice = TunableChoice::new(
            t(100, Some(800), Some(50)),
            t(100, Some(500), None),
            t(300, Some(200), None),
        );
        assert_eq!(choice.chosen, t(300, Some(800), Some(50)));
        assert_eq!(
            choice.from_file,
            ["rows_per_second 200 → 800", "pause none → 50ms"]
        );
        assert_eq!(choice.kept, ["batch_size = 300 (the file says 100)"]);
        // A duty cycle added to the file: "1" is its absence.
        let (off, mut half) = (t(1, None, None), t(1, None, None));
        half.duty_cycle = "0.5".parse().ok();
        let choice = TunableChoice::new(half, off, off);
        assert_eq!(choice.chosen, half);
        assert_eq!(choice.from_file, ["duty_cycle 1 → 0.5"]);
        // Nothing differs: nothing to say.
        let same = t(100, None, None);
        let choice = TunableChoice::new(same, same, same);
        assert!(choice.kept.is_empty() && choice.from_file.is_empty());
    }
}
