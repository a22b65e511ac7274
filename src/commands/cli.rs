//! The command line (README, "Running a job in the foreground" and "Operating the daemon"):
//! argument parsing and dispatch to the commands.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands;
use crate::commands::error::CliError;
use crate::commands::remote::Remote;
use crate::plumbing::config::{Overrides, Role, Settings};

const RUN_HELP: &str = "Exit codes:
  0    completed (also when it already was)
  1    failed: a batch failed max_attempts times (fix the cause and run again)
  2    invalid job, config or connection
  3    paused or cancelled by an operator
  130  interrupted by SIGINT (Ctrl-C), checkpoint written: run the same file to continue
  143  interrupted by SIGTERM, checkpoint written

Example:
  backfilld run jobs/users_email.toml --database-url postgres://app@db.internal/app";

const CHECK_HELP: &str = "Exit codes:
  0    the job is valid; its plan is printed
  2    invalid job, config or connection, or the name is taken by a different definition

Example:
  backfilld check jobs/users_email.toml --sql";

const VERIFY_HELP: &str = "Exit codes:
  0    no row matches `where` any more: safe to contract
  2    invalid job, config or connection
  4    some rows still match `where` (the count and a few keys are printed)

Example:
  backfilld verify jobs/users_email.toml && run-the-contract-migration";

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
    /// Log format: text or json (default text; also log_format in the config file).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: runs submitted jobs and serves the HTTP API until SIGTERM.
    Serve {
        /// Address the API listens on, such as 127.0.0.1:9780 or localhost:9780.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// PostgreSQL URL [default: database_url in the config file, else $DATABASE_URL].
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Directory of job files (*.toml) submitted at start-up [default: jobs].
        #[arg(long, value_name = "DIR")]
        jobs_dir: Option<PathBuf>,
    },
    /// Run one job in the foreground to its end; run it again to resume after any interruption.
    #[command(after_help = RUN_HELP)]
    Run {
        /// The job definition (TOML).
        job: PathBuf,
        /// PostgreSQL URL [default: database_url in the config file, else $DATABASE_URL].
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
    /// Check a job against the database and print its plan, without writing anything.
    #[command(after_help = CHECK_HELP)]
    Check {
        /// The job definition (TOML).
        job: PathBuf,
        /// PostgreSQL URL [default: database_url in the config file, else $DATABASE_URL].
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Also print the batch statement the job runs.
        #[arg(long)]
        sql: bool,
    },
    /// Count the rows that still match a job's `where` (read-only): exit 0 none, 4 some.
    #[command(after_help = VERIFY_HELP)]
    Verify {
        /// The job definition (TOML); it must have `where`.
        job: PathBuf,
        /// PostgreSQL URL [default: database_url in the config file, else $DATABASE_URL].
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
        /// PostgreSQL URL [default: database_url in the config file, else $DATABASE_URL].
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Create demo tables and run the example jobs with visible progress.
    Demo {
        /// PostgreSQL URL [default: database_url in the config file, else $DATABASE_URL].
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Rows per demo table.
        #[arg(long, default_value_t = 300_000, value_name = "N")]
        rows: u64,
        /// Only create and fill the demo tables; leave the jobs to a daemon.
        #[arg(long)]
        setup_only: bool,
    },
    /// Submit a job file to a running daemon (needs an admin token).
    Submit {
        /// The job definition (TOML).
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
        /// The job's name (it must be completed, cancelled or failed, without a sync trigger).
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show jobs (or one job with its partitions) as a table, or as JSON.
    Status {
        /// One job's name; all jobs when absent.
        name: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh until Ctrl-C: in place on a terminal, as plain lines otherwise.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration, requires = "watch")]
        interval: std::time::Duration,
        #[command(flatten)]
        remote: Remote,
    },
    /// Pause a job: every partition stops within one batch, on every replica.
    Pause {
        /// The job's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Resume a paused or failed job from its checkpoints.
    Resume {
        /// The job's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a job for good.
    Cancel {
        /// The job's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a job's event log: every submission, state change and re-tune, with who asked.
    Events {
        /// The job's name.
        name: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-tune a live job (takes effect within one batch) and print its new settings.
    #[command(group(clap::ArgGroup::new("tunables").required(true).multiple(true)
        .args(["rows_per_second", "batch_size", "pause", "duty_cycle"])))]
    Tune {
        /// The job's name.
        name: String,
        /// Rate limit over the whole job, in rows per second; `none` removes it.
        #[arg(long, value_name = "N|none")]
        rows_per_second: Option<String>,
        /// Keys per batch (the starting size for adaptive batches).
        #[arg(long, value_name = "N")]
        batch_size: Option<u32>,
        /// Sleep after each batch, such as 50ms; `none` removes it.
        #[arg(long, value_name = "DURATION|none")]
        pause: Option<String>,
        /// The most of its time each partition spends in batches, such as 0.5 (it rests as
        /// long as each batch took); `none` removes it.
        #[arg(long, value_name = "FRACTION|none")]
        duty_cycle: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a shell completion script, e.g. `backfilld completions bash > /etc/bash_completion.d/backfilld`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// What `sync` does.
#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Drop the job's sync trigger and its function (the step before contracting).
    Remove {
        /// The job definition (TOML) whose trigger to drop.
        job: PathBuf,
        /// PostgreSQL URL [default: database_url in the config file, else $DATABASE_URL].
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
            | Command::Cancel { .. }
            | Command::Events { .. }
            | Command::Tune { .. }
            | Command::Completions { .. } => {}
        }
        overrides
    }

    /// Loads settings for the chosen command (exit 2 on a bad value) and runs it.
    pub async fn execute(self) -> Result<i32, CliError> {
        if let Command::Completions { shell } = self.command {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "backfilld",
                &mut std::io::stdout(),
            );
            return Ok(0);
        }
        let settings = Settings::load(&self.overrides()).map_err(CliError::invalid)?;
        crate::plumbing::telemetry::init(settings.log_format);
        settings.warn_if_tokens_readable();
        let client =
            |remote: &Remote, role: Role| commands::remote::client(remote, &settings, role);
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
            Command::Check { job, sql, .. } => commands::check::execute(&settings, &job, sql).await,
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
            } => commands::remote::submit(&client(&remote, Role::Admin)?, &job, replace).await,
            Command::Delete { name, remote } => {
                commands::remote::delete(&client(&remote, Role::Admin)?, &name).await
            }
            Command::Status {
                name,
                json,
                watch: false,
                remote,
                ..
            } => {
                commands::remote::status(&client(&remote, Role::Read)?, name.as_deref(), json).await
            }
            Command::Status {
                name,
                interval,
                remote,
                ..
            } => {
                commands::watch::execute(&client(&remote, Role::Read)?, name.as_deref(), interval)
                    .await
            }
            Command::Pause { name, remote } => {
                commands::remote::act(&client(&remote, Role::Operate)?, &name, "pause").await
            }
            Command::Resume { name, remote } => {
                commands::remote::act(&client(&remote, Role::Operate)?, &name, "resume").await
            }
            Command::Cancel { name, remote } => {
                commands::remote::act(&client(&remote, Role::Operate)?, &name, "cancel").await
            }
            Command::Events { name, json, remote } => {
                commands::remote::events(&client(&remote, Role::Read)?, &name, json).await
            }
            Command::Tune {
                name,
                rows_per_second,
                batch_size,
                pause,
                duty_cycle,
                remote,
            } => {
                let tuning = commands::remote::tuning(
                    rows_per_second.as_deref(),
                    batch_size,
                    pause.as_deref(),
                    duty_cycle.as_deref(),
                )?;
                commands::remote::tune(&client(&remote, Role::Operate)?, &name, tuning).await
            }
            Command::Completions { .. } => unreachable!("answered before the settings load"),
        }
    }
}
