//! Applies the daemon's own migrations (`migrations/*.sql`) inside its schema, keeping the
//! history there too, so the application's own migration tool never sees them.

use sqlx::{Connection, PgPool};

use crate::plumbing::db::{sql, Schema};

/// Every migration, in order. Files are embedded so the binary carries its schema.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        3,
        "live_tunables",
        include_str!("../../migrations/0003_live_tunables.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) was changed after it was applied; refusing to continue")]
    Changed { version: i64, name: &'static str },
    #[error("applying migrations: {0}")]
    Database(#[from] sqlx::Error),
}

/// Applies what is missing; concurrent callers (replicas starting together) serialize on an
/// advisory lock so each migration runs once. Returns how many were applied.
pub async fn run(pool: &PgPool, schema: &Schema) -> Result<usize, MigrateError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backfilld.migrate:' || $1))")
        .bind(&schema.name)
        .execute(&mut *tx)
        .await?;
    let s = &schema.q;
    sqlx::raw_sql(sql(format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
             version    bigint PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    )))
    .execute(&mut *tx)
    .await?;
    let applied: Vec<(i64, String)> = sqlx::query_as(sql(format!(
        "SELECT version, checksum FROM {s}.schema_migrations"
    )))
    .fetch_all(&mut *tx)
    .await?;
    let mut count = 0;
    for &(version, name, text) in MIGRATIONS {
        let checksum = checksum(text);
        match applied.iter().find(|(v, _)| *v == version) {
            Some((_, stored)) if *stored == checksum => continue,
            Some(_) => return Err(MigrateError::Changed { version, name }),
            None => {}
        }
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(s)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(sql(text.to_string()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(format!(
            "INSERT INTO {s}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
        )))
        .bind(version)
        .bind(name)
        .bind(&checksum)
        .execute(&mut *tx)
        .await?;
        tracing::info!(version, name, schema = %schema.name, "applied migration");
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}

/// Whether every migration this binary knows is applied: what `/readyz` asks.
pub async fn is_current(pool: &PgPool, schema: &Schema) -> Result<bool, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{}.schema_migrations", schema.q))
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(false);
    }
    let latest: Option<i64> = sqlx::query_scalar(sql(format!(
        "SELECT max(version) FROM {}.schema_migrations",
        schema.q
    )))
    .fetch_one(pool)
    .await?;
    Ok(latest == MIGRATIONS.last().map(|m| m.0))
}

/// FNV-1a: enough to notice an edited migration file, with no extra dependency.
fn checksum(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
