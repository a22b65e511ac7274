//! How a command fails: the error every command returns, carrying its exit code.

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

/// A database error that stops a command: the message reads as PostgreSQL's own, without
/// sqlx's " at line N" (see `plumbing::db::message`); the error stays the source.
impl From<sqlx::Error> for CliError {
    fn from(error: sqlx::Error) -> CliError {
        let message = crate::plumbing::db::message(&error);
        CliError::Other(anyhow::Error::from(error).context(message))
    }
}
