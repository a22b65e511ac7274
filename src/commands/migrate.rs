//! `backfilld migrate`: applies the daemon's own schema and says what it did.

use crate::commands::error::CliError;
use crate::plumbing::config::Settings;

pub async fn execute(settings: &Settings) -> Result<i32, CliError> {
    let pool = super::connect(settings, 2).await?;
    let schema = crate::plumbing::db::Schema::new(&settings.schema);
    let applied = crate::store::migrate::run(&pool, &schema)
        .await
        .map_err(CliError::invalid)?;
    println!(
        "schema {}: {applied} migration(s) applied, up to date",
        settings.schema
    );
    Ok(0)
}
