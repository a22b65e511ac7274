//! `backfilld verify JOB.toml`: counts the rows that still match the job's `where`, whether or
//! not the job ever ran — the gate a deploy pipeline runs before the contract step. Read-only
//! on the application's tables, in short keyset chunks. Exit 0 when none are pending, 4 when
//! some are, 2 for an invalid job or connection. A job with `databases` is counted on every
//! database it names, each one's count printed and then the total; one that cannot be counted
//! makes it exit 2.

use std::path::Path;

use crate::commands::error::CliError;
use crate::engine::{catalog, verify};
use crate::plumbing::config::Settings;
use crate::plumbing::db::{Db, Schema};
use crate::spec::JobSpec;
use crate::store::{jobs, passes};

/// The exit code when rows are still pending.
pub const PENDING: i32 = 4;

pub async fn execute(settings: &Settings, path: &Path) -> Result<i32, CliError> {
    let spec = JobSpec::from_file(path).map_err(CliError::invalid)?;
    if spec.filter.is_none() {
        return Err(CliError::invalid(format!(
            "{}: job {:?} has no `where`: there is nothing to verify (every row it walks is updated)",
            path.display(),
            spec.name
        )));
    }
    if spec.databases.is_empty() {
        let pool = super::connect(settings, 2).await?;
        let pending = count_on(settings, &pool, &spec, path, None).await?;
        return Ok(if pending == 0 { 0 } else { PENDING });
    }
    let (mut total, mut failed) = (0, Vec::new());
    let targets = super::connect_targets(settings, &spec, 2).await?;
    for (name, pool) in &targets {
        let counted = match pool {
            Ok(pool) => count_on(settings, pool, &spec, path, Some(name)).await,
            Err(e) => Err(CliError::invalid(e)),
        };
        match counted {
            Ok(pending) => total += pending,
            Err(e) => {
                println!("database {name}: job {}: cannot count: {e}", spec.name);
                failed.push(name.as_str());
            }
        }
    }
    if !failed.is_empty() {
        return Err(CliError::invalid(format!(
            "job {}: database(s) {} could not be counted ({total} row(s) pending on the others)",
            spec.name,
            failed.join(", ")
        )));
    }
    println!(
        "job {}: {total} row(s) still match `where` over {} database(s)",
        spec.name,
        targets.len()
    );
    Ok(if total == 0 { 0 } else { PENDING })
}

/// Counts the rows pending on one database (`database`: its name, printed, when the job
/// names several) and records the count in the job there.
async fn count_on(
    settings: &Settings,
    pool: &Db,
    spec: &JobSpec,
    path: &Path,
    database: Option<&str>,
) -> Result<i64, CliError> {
    let resolved = {
        let mut pinned = pool.pinned().await.map_err(CliError::invalid)?;
        let resolved = catalog::resolve(&mut pinned, spec).await;
        pinned.rollback().await?;
        resolved.map_err(|e| CliError::job(e).in_file(path))?
    };
    // Short transactions of its own, one per chunk: no snapshot lives long.
    let mut conn = pool.acquire_for_own_transactions().await?;
    let verified = verify::count_pending(&mut conn, &resolved.sql)
        .await
        .map_err(|e| CliError::Other(e.into()))?
        .expect("a job with `where` is verifiable");
    let on = database.map_or(String::new(), |name| format!("database {name}: "));
    println!(
        "{on}job {}: {} row(s) of {} still match `where` ({} keys walked in {:.1}s)",
        spec.name,
        verified.pending,
        resolved.sql.table(),
        verified.scanned,
        verified.elapsed.as_secs_f64()
    );
    if !verified.samples.is_empty() {
        println!("  e.g. keys {}", verified.samples.join("; "));
    }
    // The job view shows the count too, when backfilld knows the job here (best effort: the
    // database may be a read-only standby, or the daemon's schema may not exist).
    let schema = Schema::new(&settings.schema);
    if let Ok(Some(job)) = jobs::find_by_name(pool, &schema, &spec.name).await {
        if let Err(e) = passes::record_pending(pool, &schema, job.id, Some(verified.pending)).await
        {
            tracing::debug!(error = %e, "could not record the count in the job");
        }
    }
    Ok(verified.pending)
}
