//! `backfilld sync remove JOB.toml`: drops the job's sync trigger and its function, the step
//! before contracting. Idempotent: with nothing installed it says so and exits 0.

use std::path::Path;

use crate::commands::error::CliError;
use crate::engine::sync;
use crate::spec::JobSpec;

pub async fn remove(
    settings: &crate::plumbing::config::Settings,
    path: &Path,
) -> Result<i32, CliError> {
    let spec = JobSpec::from_file(path).map_err(CliError::invalid)?;
    let pool = super::connect(settings, 2).await?;
    let dropped = sync::remove(&pool, &spec.name, spec.lock_timeout)
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    if dropped.is_empty() {
        println!(
            "job {}: no sync trigger is installed ({}); nothing to remove",
            spec.name,
            crate::engine::statement::sync_name(&spec.name)
        );
    } else {
        for statement in &dropped {
            println!("{statement}");
        }
        println!("job {}: sync trigger removed", spec.name);
    }
    Ok(0)
}
