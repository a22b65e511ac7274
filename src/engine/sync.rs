//! Installing a job's sync trigger before its first batch: idempotent DDL (`CREATE OR
//! REPLACE`), under the job's `lock_timeout` (creating a trigger takes a lock that queues the
//! application's writes behind it, so it must give up quickly and try again), retried like a
//! batch, recorded once as an event. It stays after the job completes, until `backfilld sync
//! remove` drops it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::AssertSqlSafe;

use crate::engine::runtime::JobRuntime;
use crate::engine::statement::SyncTrigger;
use crate::plumbing::db::{self, Db, Schema};
use crate::plumbing::retry::{backoff, ErrorKind};
use crate::store::passes;

/// The lock timeout for the trigger's DDL when the job sets none.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Installs the runtime's trigger unless this process already has; `Err` with the reason
/// when it could not (the caller fails the job).
pub async fn ensure_installed(
    pool: &Db,
    schema: &Schema,
    runtime: &JobRuntime,
    actor: &str,
) -> Result<(), String> {
    let Some(trigger) = &runtime.sync else {
        return Ok(());
    };
    if runtime.sync_installed.load(Ordering::Acquire) {
        return Ok(());
    }
    let lock_timeout = runtime.session.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT);
    let attempts = runtime.max_attempts.max(5);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match install(pool, trigger, lock_timeout).await {
            Ok(()) => break,
            Err(error) => error,
        };
        if ErrorKind::of(&error) == ErrorKind::Fatal || attempt >= attempts {
            return Err(format!(
                "could not install the sync trigger {} after {attempt} attempt(s): {error}",
                trigger.name
            ));
        }
        let delay = backoff(attempt);
        tracing::warn!(job = %runtime.name, attempt, error = %error, retry_in = ?delay, "installing the sync trigger failed; retrying");
        tokio::time::sleep(delay).await;
    }
    let mut conn = pool.begin().await.map_err(|e| e.to_string())?;
    let detail = format!(
        "trigger and function {} keep written rows in step",
        trigger.name
    );
    if passes::mark_sync_installed(&mut conn, schema, runtime.id, actor, &detail)
        .await
        .map_err(|e| e.to_string())?
    {
        tracing::info!(job = %runtime.name, trigger = %trigger.name, "sync trigger installed");
    }
    conn.commit().await.map_err(|e| e.to_string())?;
    runtime.sync_installed.store(true, Ordering::Release);
    Ok(())
}

async fn install(
    pool: &Db,
    trigger: &SyncTrigger,
    lock_timeout: Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    db::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", lock_timeout.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(trigger.function.clone()))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(trigger.trigger.clone()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The job's sync trigger as "NAME on TABLE", if one is installed in this database (found by
/// name, like `remove`).
pub async fn installed(pool: &Db, job: &str) -> Result<Option<String>, sqlx::Error> {
    db::query_scalar(
        "SELECT format('%I on %s', t.tgname, t.tgrelid::regclass)
           FROM pg_trigger t WHERE t.tgname = $1 AND NOT t.tgisinternal LIMIT 1",
    )
    .bind(crate::engine::statement::sync_name(job))
    .fetch_optional(pool)
    .await
}

/// What `sync remove` dropped: the `DROP` statements it ran (none when nothing was installed).
pub async fn remove(
    pool: &Db,
    job: &str,
    lock_timeout: Option<Duration>,
) -> Result<Vec<String>, sqlx::Error> {
    let name = crate::engine::statement::sync_name(job);
    // Found by name, wherever they are: the table or a column the job used may be gone by
    // the time the contract step runs.
    let drops: Vec<String> = db::query_scalar(
        "SELECT format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.tgrelid::regclass)
           FROM pg_trigger t WHERE t.tgname = $1 AND NOT t.tgisinternal
         UNION ALL
         SELECT format('DROP FUNCTION IF EXISTS %s', p.oid::regprocedure)
           FROM pg_proc p WHERE p.proname = $1 AND p.prorettype = 'trigger'::regtype",
    )
    .bind(&name)
    .fetch_all(pool)
    .await?;
    if drops.is_empty() {
        return Ok(drops);
    }
    let lock_timeout = lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut tx = pool.begin().await?;
            db::query("SELECT set_config('lock_timeout', $1, true)")
                .bind(format!("{}ms", lock_timeout.as_millis().max(1)))
                .execute(&mut *tx)
                .await?;
            for drop in &drops {
                sqlx::raw_sql(AssertSqlSafe(drop.clone()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => return Ok(drops),
            Err(e) if ErrorKind::of(&e) != ErrorKind::Fatal && attempt < 10 => {
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
