//! Applies the daemon's own migrations (`migrations/*.sql`, embedded by `sqlx::migrate!`) with
//! sqlx's migrator, inside the daemon's schema: the migrator runs on a connection of its own
//! whose `search_path` is that schema alone, so its history table (`_sqlx_migrations`) and
//! every table the migrations create land there, where the application's own migration tool
//! never sees them. A new migration is just a new file in `migrations/`.

use std::collections::BTreeSet;

use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};

use crate::plumbing::db::{self, sql, Schema};

/// Every migration, read from `migrations/` at compile time so the binary carries its schema
/// (`build.rs` makes a new file there trigger a rebuild).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The history table sqlx's migrator keeps; created unqualified, so in the daemon's schema.
const HISTORY: &str = "_sqlx_migrations";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) was changed after it was applied; refusing to continue")]
    Changed { version: i64, name: &'static str },
    #[error(
        "migration {version} is applied in the database but unknown to this binary (an older \
         backfilld against a newer schema?); refusing to continue"
    )]
    Unknown { version: i64 },
    #[error("migration {version} ({name}) failed: {}", db::message(.source))]
    Failed {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration {version} is recorded as partially applied; refusing to continue")]
    Dirty { version: i64 },
    #[error("applying migrations: {}", db::message(.0))]
    Database(#[from] sqlx::Error),
    #[error("applying migrations: {0}")]
    Migrator(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::migrate::MigrateError> for MigrateError {
    fn from(error: sqlx::migrate::MigrateError) -> MigrateError {
        use sqlx::migrate::MigrateError as Sqlx;
        match error {
            Sqlx::VersionMismatch(version) => MigrateError::Changed {
                version,
                name: name_of(version),
            },
            Sqlx::VersionMissing(version) => MigrateError::Unknown { version },
            Sqlx::ExecuteMigration(source, version) => MigrateError::Failed {
                version,
                name: name_of(version),
                source,
            },
            Sqlx::Dirty(version) => MigrateError::Dirty { version },
            Sqlx::Execute(source) => MigrateError::Database(source),
            other => MigrateError::Migrator(other),
        }
    }
}

/// Applies what is missing and returns how many migrations this call applied.
pub async fn run(pool: &PgPool, schema: &Schema) -> Result<usize, MigrateError> {
    let mut conn = pool.acquire().await?;
    // This connection's search_path is about to change, and other code resolves the
    // application's unqualified table names through the pool's: it must never go back to the
    // pool, even if this future is dropped half-way.
    conn.close_on_drop();
    let applied = apply(&mut conn, schema).await;
    // Closing also ends the session, which releases its advisory locks on every path (sqlx's
    // migrator does not release its own when it fails). A failure to close changes nothing
    // about what was applied, so it is not reported as a failed migration.
    if let Err(error) = conn.close().await {
        tracing::debug!(%error, "closing the migration connection");
    }
    applied
}

async fn apply(conn: &mut PgConnection, schema: &Schema) -> Result<usize, MigrateError> {
    // Replicas starting together serialize here, so the schema is created once (concurrent
    // CREATE SCHEMA IF NOT EXISTS can still fail on the catalog's unique index) and the count
    // below is what this call applied. A session lock rather than a transaction's, because it
    // must span the migrator's own transactions; the connection is closed afterwards, which
    // releases it. The key is the one the earlier runner locked, so it serializes with that too.
    sqlx::query("SELECT pg_advisory_lock(hashtext('backfilld.migrate:' || $1))")
        .bind(&schema.name)
        .execute(&mut *conn)
        .await?;
    // Only when missing: even CREATE SCHEMA IF NOT EXISTS needs CREATE on the database, which
    // a role given a schema made for it by an administrator does not have.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema.name)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        sqlx::raw_sql(sql(format!("CREATE SCHEMA IF NOT EXISTS {}", schema.q)))
            .execute(&mut *conn)
            .await?;
    }
    // The schema alone: the migrations use unqualified names, and nothing they create or drop
    // may resolve to the application's tables (pg_catalog is always searched anyway). Notices
    // are muted: the migrations are idempotent (IF [NOT] EXISTS), and their "already exists,
    // skipping" would otherwise be logged on every upgrade as if something were wrong.
    sqlx::query(
        "SELECT set_config('search_path', $1, false),
                set_config('client_min_messages', 'warning', false)",
    )
    .bind(&schema.q)
    .execute(&mut *conn)
    .await?;
    let before = applied_versions(conn, schema).await?;
    // `run_direct` is `Migrator::run` on a plain connection: `run` itself takes an `Acquire`,
    // whose per-lifetime impls make its future not `Send` in general (sqlx issues #954, #2016),
    // and callers may spawn this one. It is public, hidden, and kept by sqlx for this purpose.
    MIGRATOR.run_direct(None, conn, false).await?;
    let after = applied_versions(conn, schema).await?;
    let mut count = 0;
    for migration in MIGRATOR.iter() {
        if after.contains(&migration.version) && !before.contains(&migration.version) {
            tracing::info!(
                version = migration.version,
                name = %migration.description,
                schema = %schema.name,
                "applied migration"
            );
            count += 1;
        }
    }
    Ok(count)
}

/// Whether every migration this binary knows is applied: what `/readyz` asks.
pub async fn is_current(pool: &PgPool, schema: &Schema) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let applied = applied_versions(&mut conn, schema).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.contains(&m.version)))
}

/// The versions the schema's history records as applied; none before the history exists.
/// Names are qualified so this works on any connection, whatever its search_path.
async fn applied_versions(
    conn: &mut PgConnection,
    schema: &Schema,
) -> Result<BTreeSet<i64>, sqlx::Error> {
    let table = format!("{}.{HISTORY}", schema.q);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar(sql(format!("SELECT version FROM {table} WHERE success")))
            .fetch_all(&mut *conn)
            .await?;
    Ok(versions.into_iter().collect())
}

/// A known migration's name (its file name's description), for error messages.
fn name_of(version: i64) -> &'static str {
    MIGRATOR
        .iter()
        .find(|m| m.version == version)
        .map_or("unknown", |m| &*m.description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_embedded_in_order() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(&versions[..2], &[1, 2]);
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(name_of(1), "init");
        assert_eq!(name_of(2), "sqlx history");
    }

    #[test]
    fn an_edited_migration_is_named_in_the_error() {
        let error = MigrateError::from(sqlx::migrate::MigrateError::VersionMismatch(1));
        assert_eq!(
            error.to_string(),
            "migration 1 (init) was changed after it was applied; refusing to continue"
        );
    }
}
