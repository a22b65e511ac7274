//! Connecting to PostgreSQL, the settings of a worker's own session, and naming the daemon's
//! own schema; every module that owns a table builds its SQL from the quoted names here.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, SqlSafeStr, SqlStr};

use crate::spec::SynchronousCommit;

/// Quotes an identifier the way PostgreSQL's `quote_ident` always would.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Marks SQL this crate assembled from quoted identifiers and fixed text as safe to send.
/// Values never go through here: they are bound as parameters.
pub fn sql(text: String) -> SqlStr {
    AssertSqlSafe(text).into_sql_str()
}

/// A database error as people should read it: PostgreSQL's message with its detail and hint.
/// sqlx's own display adds " at line N", the line of PostgreSQL's C source that raised the
/// error, which reads as a line of the job file; it also prefixes "error returned from
/// database:". Use it wherever a database error becomes text for people.
pub fn message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => {
            let mut message = db.message().to_string();
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    message.push_str(&format!(" ({detail})"));
                }
                if let Some(hint) = pg.hint() {
                    message.push_str(&format!(" hint: {hint}"));
                }
            }
            message
        }
        // The migrator wraps the database's error in its own.
        sqlx::Error::Migrate(migrate) => match &**migrate {
            sqlx::migrate::MigrateError::Execute(inner)
            | sqlx::migrate::MigrateError::ExecuteMigration(inner, _) => message(inner),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// The daemon's schema, quoted once.
#[derive(Debug, Clone)]
pub struct Schema {
    pub name: String,
    /// The quoted schema name, ready to prefix a table: `"backfilld"`.
    pub q: String,
}

impl Schema {
    pub fn new(name: &str) -> Schema {
        Schema {
            name: name.to_string(),
            q: quote_ident(name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the database at {target}: {source}")]
pub struct ConnectError {
    target: String,
    #[source]
    source: sqlx::Error,
}

/// Opens a pool. The URL's password never appears in the error.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, ConnectError> {
    let target = redact(url);
    let options: PgConnectOptions = url.parse().map_err(|source| ConnectError {
        target: target.clone(),
        source,
    })?;
    let options = options.application_name("backfilld");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|source| ConnectError { target, source })
}

/// Session settings for a worker's own connection; a `None` timeout keeps the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionSettings {
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub idle_in_transaction: Option<Duration>,
    pub synchronous_commit: SynchronousCommit,
}

/// Applies `settings` to a worker's connection for its whole life.
pub async fn apply_settings(
    conn: &mut PgConnection,
    settings: &SessionSettings,
) -> Result<(), sqlx::Error> {
    let millis = |d: Option<Duration>| d.map(|d| format!("{}ms", d.as_millis().max(1)));
    sqlx::query(
        "SELECT set_config('lock_timeout', coalesce($1, current_setting('lock_timeout')), false),
                set_config('statement_timeout', coalesce($2, current_setting('statement_timeout')), false),
                set_config('idle_in_transaction_session_timeout',
                           coalesce($3, current_setting('idle_in_transaction_session_timeout')), false),
                -- The batch statement's generic plan is a bounded index range scan (a test
                -- asserts it), so planning it again for every batch would only cost time.
                set_config('plan_cache_mode', 'force_generic_plan', false),
                -- Off by default: a batch's rows and checkpoint are lost together or kept
                -- together, so waiting for each batch's flush buys nothing (see `SynchronousCommit`).
                set_config('synchronous_commit', $4, false)",
    )
    .bind(millis(settings.lock_timeout))
    .bind(millis(settings.statement_timeout))
    .bind(millis(settings.idle_in_transaction))
    .bind(settings.synchronous_commit.as_setting())
    .execute(conn)
    .await?;
    Ok(())
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_redacts() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            redact("postgres://u:pw@h:5432/d"),
            "postgres://u@h:5432/d".to_string()
        );
        assert_eq!(redact("postgres://h/d"), "postgres://h/d");
    }
}
