//! `backfilld verify JOB.toml`: counts the rows that still match the job's `where`, whether or
//! not the job ever ran — the gate a deploy pipeline runs before the contract step. Read-only
//! on the application's tables, in short keyset chunks. Exit 0 when none are pending, 4 when
//! some are, 2 for an invalid job or connection.

use std::path::Path;

use crate::commands::error::CliError;
use crate::engine::{catalog, verify};
use crate::plumbing::config::Settings;
use crate::plumbing::db::Schema;
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
    let pool = super::connect(settings, 2).await?;
    let resolved = {
        let mut pinned = pool.pinned().await.map_err(CliError::invalid)?;
        let resolved = catalog::resolve(&mut pinned, &spec).await;
        pinned.rollback().await?;
        resolved.map_err(CliError::invalid)?
    };
    // Short transactions of its own, one per chunk: no snapshot lives long.
    let mut conn = pool.acquire_for_own_transactions().await?;
    let verified = verify::count_pending(&mut conn, &resolved.sql)
        .await
        .map_err(|e| CliError::Other(e.into()))?
        .expect("a job with `where` is verifiable");
    println!(
        "job {}: {} row(s) of {} still match `where` ({} keys walked in {:.1}s)",
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
    if let Ok(Some(job)) = jobs::find_by_name(&pool, &schema, &spec.name).await {
        if let Err(e) = passes::record_pending(&pool, &schema, job.id, Some(verified.pending)).await
        {
            tracing::debug!(error = %e, "could not record the count in the job");
        }
    }
    Ok(if verified.pending == 0 { 0 } else { PENDING })
}
