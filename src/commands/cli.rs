//! The command line (README, "Running a job in the foreground" and "Operating the daemon"):
//! argument parsing and dispatch to the commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::commands::api_client::Client;
use crate::commands::error::CliError;
use crate::plumbing::config::{Overrides, Settings};

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

/// Where the client commands find the daemon.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The daemon's URL.
    #[arg(long, env = "BACKFILLD_URL", default_value = "http://127.0.0.1:9780")]
    pub url: String,
    /// Bearer token.
    #[arg(long, env = "BACKFILLD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of certificate authorities to trust for an https:// URL, besides the
    /// system's: the private CA that signed the daemon's certificate.
    #[arg(long, env = "BACKFILLD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: runs submitted jobs and serves the HTTP API until SIGTERM.
    Serve {
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        #[arg(long, value_name = "DIR")]
        jobs_dir: Option<PathBuf>,
    },
    /// Run one job in the foreground to its end; run it again to resume after any interruption.
    Run {
        /// The job definition (TOML).
        job: PathBuf,
        /// PostgreSQL URL; defaults to $DATABASE_URL.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Also serve the HTTP API (status, pause, metrics) while the job runs.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Give a failed, paused or cancelled job of this name the file's definition (same
        /// table, key and partitions), keeping its checkpoint.
        #[arg(long)]
        replace: bool,
        /// Resume the job if an operator paused it (recorded with your OS user name).
        #[arg(long)]
        resume: bool,
    },
    /// Check a job against the database without writing anything.
    Check {
        job: PathBuf,
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Count the rows that still match a job's `where` (read-only): exit 0 none, 4 some.
    Verify {
        job: PathBuf,
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// The sync trigger of a job with `[sync]`.
    Sync {
        #[command(subcommand)]
        action: SyncAction,
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
        /// Only create and fill the demo tables; leave the jobs to a daemon.
        #[arg(long)]
        setup_only: bool,
    },
    /// Submit a job file to a running daemon.
    Submit {
        job: PathBuf,
        /// Give a failed, paused or cancelled job of this name the file's definition (same
        /// table, key and partitions), keeping its checkpoint.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a completed, cancelled or failed job with its history, freeing its name.
    Delete {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show jobs (or one job with its partitions) as a table, or as JSON.
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Pause a job: every partition stops within one batch, on every replica.
    Pause {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Resume a paused or failed job from its checkpoints.
    Resume {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a job for good.
    Cancel {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// What `sync` does.
#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Drop the job's sync trigger and its function (the step before contracting).
    Remove {
        job: PathBuf,
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
}

impl Cli {
    fn overrides(&self) -> Overrides {
        let mut overrides = Overrides {
            config_file: self.config.clone(),
            log_format: self.log_format.clone(),
            ..Overrides::default()
        };
        match &self.command {
            Command::Serve {
                listen,
                database_url,
                jobs_dir,
            } => {
                overrides.listen = listen.clone();
                overrides.database_url = database_url.clone();
                overrides.jobs_dir = jobs_dir.clone();
            }
            Command::Run {
                database_url,
                listen,
                ..
            } => {
                overrides.listen = listen.clone();
                overrides.database_url = database_url.clone();
            }
            Command::Check { database_url, .. }
            | Command::Verify { database_url, .. }
            | Command::Sync {
                action: SyncAction::Remove { database_url, .. },
            }
            | Command::Migrate { database_url }
            | Command::Demo { database_url, .. } => {
                overrides.database_url = database_url.clone();
            }
            Command::Submit { .. }
            | Command::Delete { .. }
            | Command::Status { .. }
            | Command::Pause { .. }
            | Command::Resume { .. }
            | Command::Cancel { .. } => {}
        }
        overrides
    }

    /// Loads settings for the chosen command (exit 2 on a bad value) and runs it.
    pub async fn execute(self) -> Result<i32, CliError> {
        let settings = Settings::load(&self.overrides()).map_err(CliError::invalid)?;
        crate::plumbing::telemetry::init(settings.log_format);
        settings.warn_if_tokens_readable();
        let client = |remote: &Remote| {
            Client::new(&remote.url, remote.token.clone(), remote.cacert.as_deref())
                .map_err(CliError::invalid)
        };
        match self.command {
            Command::Serve { .. } => commands::serve::execute(&settings).await,
            Command::Run {
                job,
                listen,
                replace,
                resume,
                ..
            } => {
                let options = commands::run::Options {
                    serve_api: listen.is_some(),
                    replace,
                    resume,
                };
                commands::run::execute(&settings, &job, options).await
            }
            Command::Check { job, .. } => commands::check::execute(&settings, &job).await,
            Command::Verify { job, .. } => commands::verify::execute(&settings, &job).await,
            Command::Sync {
                action: SyncAction::Remove { job, .. },
            } => commands::sync::remove(&settings, &job).await,
            Command::Migrate { .. } => commands::migrate::execute(&settings).await,
            Command::Demo {
                rows, setup_only, ..
            } => commands::demo::execute(&settings, rows, setup_only).await,
            Command::Submit {
                job,
                replace,
                remote,
            } => commands::remote::submit(&client(&remote)?, &job, replace).await,
            Command::Delete { name, remote } => {
                commands::remote::delete(&client(&remote)?, &name).await
            }
            Command::Status { name, json, remote } => {
                commands::remote::status(&client(&remote)?, name.as_deref(), json).await
            }
            Command::Pause { name, remote } => {
                commands::remote::act(&client(&remote)?, &name, "pause").await
            }
            Command::Resume { name, remote } => {
                commands::remote::act(&client(&remote)?, &name, "resume").await
            }
            Command::Cancel { name, remote } => {
                commands::remote::act(&client(&remote)?, &name, "cancel").await
            }
        }
    }
}
