//! Connecting to PostgreSQL and naming the daemon's own schema; every module that owns a table
//! builds its SQL from the quoted names here.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr, SqlStr};

/// Quotes an identifier the way PostgreSQL's `quote_ident` always would.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Marks SQL this crate assembled from quoted identifiers and fixed text as safe to send.
/// Values never go through here: they are bound as parameters.
pub fn sql(text: String) -> SqlStr {
    AssertSqlSafe(text).into_sql_str()
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
