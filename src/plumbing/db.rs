//! Connecting to PostgreSQL (TLS as the URL's libpq parameters ask), connection errors in
//! words, the settings of a worker's own session, and naming the daemon's own schema; every
//! module that owns a table builds its SQL from the quoted names here.

use std::path::Path;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{AssertSqlSafe, PgConnection, SqlSafeStr, SqlStr};

pub use crate::plumbing::pool::{query, query_as, query_scalar, Db, PoolMode};
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

/// Why the database could not be reached (or its URL not used), in words: the URL's password
/// never appears, and neither do sqlx's PostgreSQL source line numbers.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the database at {target}: {reason}")]
pub struct ConnectError {
    target: String,
    reason: String,
}

/// Opens a pool of `size` connections and one connection of it, so a bad URL, password or
/// certificate fails here.
pub async fn connect(url: &str, size: u32, mode: PoolMode) -> Result<Db, ConnectError> {
    let options = connect_options(url)?;
    let host = options.get_host().to_string();
    Db::connect(options, size, mode)
        .await
        .map_err(|error| ConnectError {
            target: redact(url),
            reason: describe(&error, &host),
        })
}

/// The options every connection of this process is opened with — the pool's, each worker's
/// own (which copy the pool's) and the presence session's — so all honour the URL's TLS
/// parameters alike. sqlx reads `sslmode` (default `prefer`), `sslrootcert`, `sslcert` and
/// `sslkey` (or `$PGSSLMODE`…); on top, libpq's rules that sqlx lacks:
///
/// - `sslmode=require` with a root certificate verifies the chain, as `verify-ca` does (libpq
///   checks the chain whenever it has a root certificate);
/// - `sslrootcert=system` trusts the well-known authorities (here the Mozilla roots built into
///   the binary) and needs `sslmode=verify-full`, its default then;
/// - the files must be readable certificates and keys, checked now rather than at the first
///   connection, which for the daemon may be much later; `sslcert` and `sslkey` go together.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, ConnectError> {
    let fail = |reason: String| ConnectError {
        target: redact(url),
        reason,
    };
    let mut parsed = url::Url::parse(url).map_err(|e| fail(format!("not a URL: {e}")))?;
    let param = |names: &[&str], env: &str| {
        parsed
            .query_pairs()
            .filter(|(k, _)| names.contains(&k.as_ref()))
            .last()
            .map(|(_, v)| v.into_owned())
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    };
    let mode_given = param(&["sslmode", "ssl-mode"], "PGSSLMODE");
    let root = param(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT");
    let cert = param(&["sslcert", "ssl-cert"], "PGSSLCERT");
    let key = param(&["sslkey", "ssl-key"], "PGSSLKEY");
    let system_roots = root.as_deref() == Some("system");
    let mut text = url.to_string();
    if system_roots {
        // sqlx would read a file named "system"; without a root file it trusts its built-in
        // roots, which is what libpq's "system" asks for.
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, v)| {
                !(["sslrootcert", "ssl-root-cert", "ssl-ca"].contains(&k.as_ref()) && v == "system")
            })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(kept);
        text = parsed.to_string();
    }
    let options: PgConnectOptions = text
        .parse()
        .map_err(|e: sqlx::Error| fail(describe(&e, "")))?;
    let mode = options.get_ssl_mode();
    if system_roots && mode_given.is_some() && !matches!(mode, PgSslMode::VerifyFull) {
        return Err(fail(
            "sslrootcert=system needs sslmode=verify-full (a well-known authority signs certificates for anyone's host names)".into(),
        ));
    }
    let root = root.filter(|_| !system_roots);
    if let Some(path) = root.as_deref().filter(|r| !is_inline_pem(r)) {
        crate::plumbing::tls::read_certificates(Path::new(path))
            .map_err(|e| fail(format!("sslrootcert: {e}")))?;
    }
    match (&cert, &key) {
        (Some(_), None) => return Err(fail("sslcert is given without sslkey".into())),
        (None, Some(_)) => return Err(fail("sslkey is given without sslcert".into())),
        _ => {}
    }
    if let Some(path) = cert.as_deref().filter(|c| !is_inline_pem(c)) {
        crate::plumbing::tls::read_certificates(Path::new(path))
            .map_err(|e| fail(format!("sslcert: {e}")))?;
    }
    if let Some(path) = key.as_deref().filter(|k| !is_inline_pem(k)) {
        std::fs::read(path).map_err(|e| fail(format!("sslkey: cannot read {path}: {e}")))?;
    }
    let mode = match mode {
        _ if system_roots && mode_given.is_none() => PgSslMode::VerifyFull,
        PgSslMode::Require if root.is_some() => PgSslMode::VerifyCa,
        other => other,
    };
    // No `extra_float_digits` startup parameter: PgBouncer refuses connections that send one
    // unless told to ignore it, and the daemon reads floats in binary anyway.
    Ok(quiet_statements(
        options
            .ssl_mode(mode)
            .application_name("backfilld")
            .extra_float_digits(None),
    ))
}

/// Statements log at debug, slow ones too: a batch that takes its `target_batch_time` (seconds,
/// by design) is not slow, and sqlx's default would print its whole statement as a WARN on
/// every batch.
fn quiet_statements(options: PgConnectOptions) -> PgConnectOptions {
    use sqlx::ConnectOptions;
    options
        .log_statements(log::LevelFilter::Debug)
        .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1))
}

/// sqlx takes a value that looks like PEM text as the certificate itself, not a file name.
fn is_inline_pem(value: &str) -> bool {
    value.trim_start().starts_with("-----BEGIN")
}

/// A database error in words, for a person: a certificate that did not verify says whose and
/// why (`host` is the server's name as the URL gives it), a server's error is its message,
/// and neither carries the PostgreSQL source line sqlx appends (" at line 1234").
pub fn describe(error: &sqlx::Error, host: &str) -> String {
    use crate::plumbing::tls;
    if let Some(handshake) = tls::rustls_error(error) {
        let mut text = tls::explain(handshake, host);
        if tls::is_unknown_issuer(handshake) {
            text.push_str(" (give the authority's certificate with sslrootcert=FILE)");
        }
        return text;
    }
    match error {
        sqlx::Error::Database(_) | sqlx::Error::Migrate(_) => message(error),
        other => without_source_line(&other.to_string()).to_string(),
    }
}

/// `message at line 1234` → `message`.
fn without_source_line(message: &str) -> &str {
    match message.rsplit_once(" at line ") {
        Some((text, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => text,
        _ => message,
    }
}

/// Session settings for a worker's own connection; a `None` timeout keeps the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionSettings {
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub idle_in_transaction: Option<Duration>,
    pub synchronous_commit: SynchronousCommit,
}

/// How long settings last: the session's life, or the current transaction's (through a
/// transaction pooler, where a session setting would stay on a server other clients use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsScope {
    Session,
    Transaction,
}

/// Applies `settings` to a worker's connection, for its session or its current transaction.
pub async fn apply_settings(
    conn: &mut PgConnection,
    settings: &SessionSettings,
    scope: SettingsScope,
) -> Result<(), sqlx::Error> {
    let millis = |d: Option<Duration>| d.map(|d| format!("{}ms", d.as_millis().max(1)));
    query(
        "SELECT set_config('lock_timeout', coalesce($1, current_setting('lock_timeout')), $5),
                set_config('statement_timeout', coalesce($2, current_setting('statement_timeout')), $5),
                set_config('idle_in_transaction_session_timeout',
                           coalesce($3, current_setting('idle_in_transaction_session_timeout')), $5),
                -- The batch statement's generic plan is a bounded index range scan (a test
                -- asserts it), so planning it again for every batch would only cost time.
                set_config('plan_cache_mode', 'force_generic_plan', $5),
                -- Off by default: a batch's rows and checkpoint are lost together or kept
                -- together, so waiting for each batch's flush buys nothing (see `SynchronousCommit`).
                set_config('synchronous_commit', $4, $5)",
    )
    .bind(millis(settings.lock_timeout))
    .bind(millis(settings.statement_timeout))
    .bind(millis(settings.idle_in_transaction))
    .bind(settings.synchronous_commit.as_setting())
    .bind(scope == SettingsScope::Transaction)
    .execute(conn)
    .await?;
    Ok(())
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`, and without a `password`
/// query parameter (sqlx takes one there too). Only the authority is searched for the `@`, so
/// a parameter such as `sslrootcert=/certs@2024/ca.pem` is left whole.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.find("://") {
        Some(scheme_end) => {
            let (scheme, rest) = base.split_at(scheme_end + 3);
            let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
            match authority.rfind('@') {
                Some(at) => {
                    let user = authority[..at].split(':').next().unwrap_or("");
                    format!("{scheme}{user}{}", &rest[at..])
                }
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.starts_with("password="))
        .collect();
    if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
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
        assert_eq!(
            redact("postgres://u:p@ss@h/d?sslmode=require&password=pw2&sslrootcert=/c@1/ca.pem"),
            "postgres://u@h/d?sslmode=require&sslrootcert=/c@1/ca.pem"
        );
        assert_eq!(
            without_source_line("no such role at line 332"),
            "no such role"
        );
        assert_eq!(without_source_line("at line x"), "at line x");
    }

    #[test]
    fn tls_parameters_follow_libpq() {
        let mode = |url: &str| connect_options(url).map(|o| o.get_ssl_mode());
        assert!(matches!(
            mode("postgres://h/d?sslmode=disable"),
            Ok(PgSslMode::Disable)
        ));
        assert!(matches!(
            mode("postgres://h/d?sslrootcert=system"),
            Ok(PgSslMode::VerifyFull)
        ));
        let weak = connect_options("postgres://u:pw@h/d?sslmode=require&sslrootcert=system")
            .unwrap_err()
            .to_string();
        assert!(
            weak.contains("verify-full") && !weak.contains("pw"),
            "{weak}"
        );
        let missing =
            connect_options("postgres://h/d?sslmode=require&sslrootcert=/nonexistent.pem")
                .unwrap_err()
                .to_string();
        assert!(
            missing.contains("sslrootcert: cannot read /nonexistent.pem"),
            "{missing}"
        );
        let alone = connect_options("postgres://h/d?sslcert=/c.pem")
            .unwrap_err()
            .to_string();
        assert!(alone.contains("sslcert is given without sslkey"), "{alone}");
    }
}
