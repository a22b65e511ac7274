//! The command line (DESIGN.md §3): argument parsing and dispatch to the commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::{Overrides, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "backfilld",
    version,
    about = "Runs long data backfills against a live PostgreSQL database, exactly once and resumable"
)]
pub struct Cli {
    /// Config file (TOML); also $BACKFILLD_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job in the foreground to its end; run it again to resume after any interruption.
    Run {
        /// The job definition (TOML).
        job: PathBuf,
        /// PostgreSQL URL; defaults to $DATABASE_URL.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Check a job against the database without writing anything.
    Check {
        job: PathBuf,
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Apply backfilld's own migrations to its schema.
    Migrate {
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Create demo tables and run the example jobs with visible progress.
    Demo {
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Rows per demo table.
        #[arg(long, default_value_t = 300_000)]
        rows: u64,
    },
}

/// A command's failure, carrying its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Invalid job, config or connection: exit 2.
    #[error("{0}")]
    Invalid(String),
    /// Anything else that stopped the command: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn invalid(error: impl std::fmt::Display) -> CliError {
        CliError::Invalid(error.to_string())
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) => 2,
            CliError::Other(_) => 1,
        }
    }
}

impl Cli {
    fn overrides(&self, database_url: Option<&String>) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            database_url: database_url.cloned(),
            log_format: self.log_format.clone(),
            ..Overrides::default()
        }
    }

    /// Loads settings for the chosen command (exit 2 on a bad value) and runs it.
    pub async fn execute(self) -> Result<i32, CliError> {
        let database_url = match &self.command {
            Command::Run { database_url, .. }
            | Command::Check { database_url, .. }
            | Command::Migrate { database_url }
            | Command::Demo { database_url, .. } => database_url.as_ref(),
        };
        let settings = Settings::load(&self.overrides(database_url)).map_err(CliError::invalid)?;
        crate::telemetry::init(settings.log_format);
        match self.command {
            Command::Run { job, .. } => commands::run::execute(&settings, &job).await,
            Command::Check { job, .. } => commands::check::execute(&settings, &job).await,
            Command::Migrate { .. } => commands::migrate::execute(&settings).await,
            Command::Demo { rows, .. } => commands::demo::execute(&settings, rows).await,
        }
    }
}
