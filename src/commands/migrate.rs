//! `backfilld migrate`: applies the daemon's own schema and says what it did.

use crate::cli::CliError;
use crate::config::Settings;

pub async fn execute(settings: &Settings) -> Result<i32, CliError> {
    let pool = super::connect(settings, 2).await?;
    let schema = crate::db::Schema::new(&settings.schema);
    let applied = crate::migrate::run(&pool, &schema)
        .await
        .map_err(CliError::invalid)?;
    println!(
        "schema {}: {applied} migration(s) applied, up to date",
        settings.schema
    );
    Ok(0)
}
