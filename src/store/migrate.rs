//! Applies the daemon's own migrations (`migrations/*.sql`, embedded by `sqlx::migrate!`) with
//! sqlx's migrator, inside the daemon's schema: the migrator runs on a connection of its own
//! whose `search_path` is that schema alone, so its history table (`_sqlx_migrations`) and
//! every table the migrations create land there, where the application's own migration tool
//! never sees them. A new migration is just a new file in `migrations/`.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use sqlx::migrate::Migrator;
use sqlx::PgConnection;

use crate::plumbing::db::{self, sql, Db, Schema};

/// Every migration, read from `migrations/` at compile time so the binary carries its schema
/// (`build.rs` makes a new file there trigger a rebuild).
/// Its own session lock is off: [`run`] takes a transaction's lock instead, which a transaction
/// pooler cannot strand on a server.
static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    migrator
});

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
///
/// Everything happens in one transaction (sqlx's migrator makes each migration a savepoint of
/// it), so it holds through a transaction pooler, and a failure leaves the schema as it was.
/// Replicas starting together serialize on a transaction-scoped advisory lock, so the schema
/// is created once (concurrent CREATE SCHEMA IF NOT EXISTS can still fail on the catalog's
/// unique index) and the count below is what this call applied.
pub async fn run(pool: &Db, schema: &Schema) -> Result<usize, MigrateError> {
    let mut conn = pool.pinned().await?;
    let applied = apply(&mut conn, schema).await?;
    conn.commit().await?;
    for migration in MIGRATOR.iter().filter(|m| applied.contains(&m.version)) {
        tracing::info!(
            version = migration.version,
            name = %migration.description,
            schema = %schema.name,
            "applied migration"
        );
    }
    Ok(applied.len())
}

/// The versions this call applied, inside the caller's transaction.
async fn apply(conn: &mut PgConnection, schema: &Schema) -> Result<BTreeSet<i64>, MigrateError> {
    // The key is the one earlier versions locked for the session, so it serializes with them.
    db::query("SELECT pg_advisory_xact_lock(hashtext('backfilld.migrate:' || $1))")
        .bind(&schema.name)
        .execute(&mut *conn)
        .await?;
    // Up to date: nothing to create, so nothing that needs CREATE on the schema (the
    // migrator's `CREATE TABLE IF NOT EXISTS` checks it even when the table exists). A role
    // given only DML on a schema an administrator migrated starts here.
    if up_to_date(conn, schema).await? {
        return Ok(BTreeSet::new());
    }
    // Only when missing: even CREATE SCHEMA IF NOT EXISTS needs CREATE on the database, which
    // a role given a schema made for it by an administrator does not have.
    let exists: bool =
        db::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema.name)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        sqlx::raw_sql(sql(format!("CREATE SCHEMA IF NOT EXISTS {}", schema.q)))
            .execute(&mut *conn)
            .await?;
    }
    // The schema alone, for this transaction: the migrations use unqualified names, and
    // nothing they create or drop may resolve to the application's tables (pg_catalog is
    // always searched anyway). Notices are muted: the migrations are idempotent (IF [NOT]
    // EXISTS), and their "already exists, skipping" would otherwise be logged on every
    // upgrade as if something were wrong.
    db::query(
        "SELECT set_config('search_path', $1, true),
                set_config('client_min_messages', 'warning', true)",
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
    Ok(after.difference(&before).copied().collect())
}

/// True when the history records every migration this binary knows, as this binary knows it;
/// an edited, unknown or half-applied one is the error the migrator would give.
async fn up_to_date(conn: &mut PgConnection, schema: &Schema) -> Result<bool, MigrateError> {
    let applied = history(conn, schema).await?;
    for (version, checksum, success) in &applied {
        let Some(known) = MIGRATOR.iter().find(|m| m.version == *version) else {
            return Err(MigrateError::Unknown { version: *version });
        };
        if !success {
            return Err(MigrateError::Dirty { version: *version });
        }
        if *known.checksum != checksum[..] {
            return Err(MigrateError::Changed {
                version: *version,
                name: name_of(*version),
            });
        }
    }
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.iter().any(|(v, _, _)| *v == m.version)))
}

/// Whether every migration this binary knows is applied: what `/readyz` asks.
pub async fn is_current(pool: &Db, schema: &Schema) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let applied = applied_versions(&mut tx, schema).await?;
    tx.commit().await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.contains(&m.version)))
}

/// The versions the schema's history records as applied; none before the history exists.
async fn applied_versions(
    conn: &mut PgConnection,
    schema: &Schema,
) -> Result<BTreeSet<i64>, sqlx::Error> {
    Ok(history(conn, schema)
        .await?
        .into_iter()
        .filter(|(_, _, success)| *success)
        .map(|(version, _, _)| version)
        .collect())
}

/// The history's rows (version, checksum, success); none before it exists. Names are
/// qualified so this works on any connection, whatever its search_path.
async fn history(
    conn: &mut PgConnection,
    schema: &Schema,
) -> Result<Vec<(i64, Vec<u8>, bool)>, sqlx::Error> {
    let table = format!("{}.{HISTORY}", schema.q);
    let exists: bool = db::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    db::query_as(sql(format!(
        "SELECT version, checksum, success FROM {table} ORDER BY version"
    )))
    .fetch_all(&mut *conn)
    .await
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
