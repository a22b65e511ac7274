//! One module per command of the command line.

pub(crate) mod api_client;
pub(crate) mod check;
pub mod cli;
pub mod demo;
pub(crate) mod display;
pub mod error;
pub mod fleet;
pub(crate) mod jobs_dir;
pub(crate) mod migrate;
pub(crate) mod remote;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod sync;
pub(crate) mod verify;
pub(crate) mod watch;

use crate::commands::error::CliError;
use crate::plumbing::config::Settings;
use crate::plumbing::db::{self, Db, PoolMode, Schema};

/// Connects: failures are exit-2 errors (config or connection).
pub async fn connect(settings: &Settings, size: u32) -> Result<Db, CliError> {
    let url = settings.require_database_url().map_err(CliError::invalid)?;
    let pool = db::connect(url, size, settings.pool_mode)
        .await
        .map_err(CliError::invalid)?;
    refuse_undeclared_pooler(settings, &pool).await?;
    Ok(pool)
}

/// With `pool_mode = "session"`, refuses a database reached through a transaction pooler (see
/// `pool::shares_servers_between_connections`): the worker's session settings and kept
/// statement would land on servers other clients share.
pub async fn refuse_undeclared_pooler(settings: &Settings, pool: &Db) -> Result<(), CliError> {
    if settings.pool_mode != PoolMode::Session {
        return Ok(());
    }
    match crate::plumbing::pool::shares_servers_between_connections(&pool.connect_options()).await
    {
        Ok(Some(pid)) => Err(CliError::invalid(format!(
            "the database is reached through a pooler in transaction mode (two connections of this process ran on the same server process, pid {pid}): set pool_mode = \"transaction\" in the config (or BACKFILLD__POOL_MODE=transaction), or connect directly or through the pooler's session mode"
        ))),
        Ok(None) => Ok(()),
        Err(error) => Err(CliError::from(error)),
    }
}

/// The `[[databases]]` a job with `databases` names, in the configured order, each connected
/// (or why not, naming it): what `check` and `verify` report on one by one. An error when a
/// pattern selects nothing.
pub async fn connect_targets(
    settings: &Settings,
    spec: &crate::spec::JobSpec,
    size: u32,
) -> Result<Vec<(String, Result<Db, CliError>)>, CliError> {
    let configured = settings.target_databases().map_err(CliError::invalid)?;
    let known: Vec<&str> = configured.iter().map(|t| t.name.as_str()).collect();
    let names = crate::plumbing::config::select(&spec.databases, &known)
        .map_err(|message| CliError::invalid(format!("databases: {message}")))?;
    let mut targets = Vec::with_capacity(names.len());
    for target in configured.iter().filter(|t| names.contains(&t.name)) {
        let pool = db::connect(&target.url, size, settings.pool_mode)
            .await
            .map_err(|e| CliError::invalid(format!("database {}: {e}", target.name)));
        targets.push((target.name.clone(), pool));
    }
    Ok(targets)
}

/// Applies backfilld's migrations; every command that writes calls this once it knows its
/// input is valid, so bad input leaves even the daemon's schema uncreated.
pub async fn migrate(settings: &Settings, pool: &Db) -> Result<Schema, CliError> {
    let schema = Schema::new(&settings.schema);
    crate::store::migrate::run(pool, &schema)
        .await
        .map_err(CliError::invalid)?;
    Ok(schema)
}
