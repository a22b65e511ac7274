//! How a command fails: the error every command returns, carrying its exit code.

/// A command's failure, carrying its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Invalid job, config or connection: exit 2.
    #[error("{0}")]
    Invalid(String),
    /// What the database found wrong with a job definition (a missing column, an expression
    /// that does not prepare): exit 2, and the message names the file once it is known.
    #[error("{0}")]
    Job(String),
    /// Anything else that stopped the command: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn invalid(error: impl std::fmt::Display) -> CliError {
        CliError::Invalid(error.to_string())
    }

    /// A job definition the database refused.
    pub fn job(error: impl std::fmt::Display) -> CliError {
        CliError::Job(error.to_string())
    }

    /// Names the job file in front of what the database found wrong with it.
    pub fn in_file(self, path: &std::path::Path) -> CliError {
        match self {
            CliError::Job(message) => CliError::Job(format!("{}: {message}", path.display())),
            other => other,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) | CliError::Job(_) => 2,
            CliError::Other(_) => 1,
        }
    }
}

/// A database error that stops a command: the message reads as PostgreSQL's own, without
/// sqlx's " at line N" (see `plumbing::db::message`); the error stays the source.
impl From<sqlx::Error> for CliError {
    fn from(error: sqlx::Error) -> CliError {
        let message = crate::plumbing::db::message(&error);
        CliError::Other(anyhow::Error::from(error).context(message))
    }
}
