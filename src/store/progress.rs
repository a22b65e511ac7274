//! The `progress` table: each job partition's key range, cursor, counters and lease. The cursor
//! is written only by the batch statement's checkpoint (`engine::statement`), inside the
//! batch's own transaction, fenced by the lease.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::plumbing::db::{self, sql, Schema};

/// A partition's stored state, as the API and the planner see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PartitionRow {
    pub job_id: i64,
    pub partition_index: i32,
    pub lower_bound: Option<String>,
    pub upper_bound: Option<String>,
    pub cursor: Option<Vec<String>>,
    pub state: String,
    pub rows_scanned: i64,
    pub rows_updated: i64,
    pub batches: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// A partition this process holds a lease on, and where its worker stands: `cursor` moves
/// with each committed batch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claim {
    pub job_id: i64,
    pub partition_index: i32,
    pub lease_token: Uuid,
    pub lower_bound: Option<String>,
    pub upper_bound: Option<String>,
    pub cursor: Option<Vec<String>>,
    /// The job's pass when the lease was taken: 1 is the backfill, 2.. are sweeps (a pass
    /// ends only when every partition is done, so it cannot change under a lease).
    pub pass: i32,
}

/// Who is asking for leases: the process's name and its presence session, whose disappearance
/// frees its leases at once (a crashed process's TCP connection closes; a stalled one's does not,
/// so for that case the lease expiry applies).
#[derive(Debug, Clone)]
pub struct Holder {
    pub owner: String,
    /// The presence session's backend, whose end frees the holder's leases at once; `None`
    /// through a transaction pooler (no session is ours there): the leases then expire.
    pub backend_pid: Option<i32>,
    pub backend_start: Option<DateTime<Utc>>,
}

pub async fn insert_partitions(
    conn: &mut PgConnection,
    schema: &Schema,
    job_id: i64,
    ranges: &[(Option<String>, Option<String>)],
) -> Result<(), sqlx::Error> {
    for (index, (lower, upper)) in ranges.iter().enumerate() {
        db::query(sql(format!(
            "INSERT INTO {}.progress (job_id, partition_index, lower_bound, upper_bound)
             VALUES ($1, $2, $3, $4)",
            schema.q
        )))
        .bind(job_id)
        .bind(index as i32)
        .bind(lower)
        .bind(upper)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub async fn list<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    job_id: i64,
) -> Result<Vec<PartitionRow>, sqlx::Error> {
    db::query_as(sql(format!(
        "SELECT job_id, partition_index, lower_bound, upper_bound, cursor, state, rows_scanned,
                rows_updated, batches, lease_owner, lease_expires_at
           FROM {}.progress WHERE job_id = $1 ORDER BY partition_index",
        schema.q
    )))
    .bind(job_id)
    .fetch_all(executor)
    .await
}

/// A lease (of progress row `p`) that no one holds any more: none, expired, or its holder's
/// presence session is gone. Claims take such partitions; the others are live.
/// A holder without a presence session (through a transaction pooler) is live until its
/// lease expires.
const LEASE_IS_FREE: &str = "(p.lease_token IS NULL
                     OR p.lease_expires_at < now()
                     OR (p.lease_backend_pid IS NOT NULL
                         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                          WHERE a.pid = p.lease_backend_pid
                                            AND a.backend_start = p.lease_backend_start)))";

/// Leases up to `limit` pending partitions of running jobs (only of `job_id` when given) whose
/// lease is free, expired, or held by a session that no longer exists.
pub async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    holder: &Holder,
    ttl: Duration,
    job_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Claim>, sqlx::Error> {
    let s = &schema.q;
    db::query_as(sql(format!(
        "WITH candidate AS (
             SELECT p.job_id, p.partition_index, j.pass
               FROM {s}.progress p JOIN {s}.jobs j ON j.id = p.job_id
              WHERE j.state = 'running' AND p.state = 'pending'
                AND ($1::int8 IS NULL OR p.job_id = $1)
                AND {LEASE_IS_FREE}
              ORDER BY p.job_id, p.partition_index
              LIMIT $2
              FOR UPDATE OF p SKIP LOCKED
         )
         UPDATE {s}.progress p
            SET lease_token = gen_random_uuid(), lease_owner = $3,
                lease_expires_at = now() + $4 * interval '1 millisecond',
                lease_backend_pid = $5, lease_backend_start = $6,
                started_at = coalesce(p.started_at, now()), updated_at = now()
           FROM candidate c
          WHERE p.job_id = c.job_id AND p.partition_index = c.partition_index
         RETURNING p.job_id, p.partition_index, p.lease_token, p.lower_bound, p.upper_bound, p.cursor, c.pass"
    )))
    .bind(job_id)
    .bind(limit)
    .bind(&holder.owner)
    .bind(ttl.as_millis() as i64)
    .bind(holder.backend_pid)
    .bind(holder.backend_start)
    .fetch_all(executor)
    .await
}

/// Extends every lease this holder still has, and returns how many of `tokens` are still its
/// own. A partition whose row an in-flight batch has locked is skipped, not waited for (that
/// batch's checkpoint extends it): waiting could let the other leases lapse behind a batch
/// stuck on an application lock. Leases taken over by others are untouched: the worker that
/// lost one finds out at its next batch.
pub async fn renew<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    holder: &Holder,
    tokens: &[Uuid],
    ttl: Duration,
) -> Result<i64, sqlx::Error> {
    let s = &schema.q;
    db::query_scalar(sql(format!(
        "WITH free AS (
             SELECT job_id, partition_index FROM {s}.progress
              WHERE lease_token = ANY ($1)
                FOR UPDATE SKIP LOCKED
         ), renewed AS (
             UPDATE {s}.progress p
                SET lease_expires_at = now() + $2 * interval '1 millisecond',
                    lease_backend_pid = $3, lease_backend_start = $4
               FROM free f
              WHERE p.job_id = f.job_id AND p.partition_index = f.partition_index
             RETURNING 1
         )
         -- A data-modifying WITH runs whether or not it is read.
         SELECT count(*) FROM {s}.progress WHERE lease_token = ANY ($1)"
    )))
    .bind(tokens)
    .bind(ttl.as_millis() as i64)
    .bind(holder.backend_pid)
    .bind(holder.backend_start)
    .fetch_one(executor)
    .await
}

/// What a released or revoked lease leaves in its progress row.
const NO_LEASE: &str = "lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                lease_backend_pid = NULL, lease_backend_start = NULL, updated_at = now()";

pub async fn release<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    token: Uuid,
) -> Result<(), sqlx::Error> {
    db::query(sql(format!(
        "UPDATE {}.progress SET {NO_LEASE} WHERE lease_token = $1",
        schema.q
    )))
    .bind(token)
    .execute(executor)
    .await?;
    Ok(())
}

/// Clears every lease of job `id` (a replacement's): a worker still holding one finds it
/// gone at its next batch (`LeaseLost`) and writes nothing.
pub async fn revoke_leases<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    job_id: i64,
) -> Result<(), sqlx::Error> {
    db::query(sql(format!(
        "UPDATE {}.progress SET {NO_LEASE} WHERE job_id = $1 AND lease_token IS NOT NULL",
        schema.q
    )))
    .bind(job_id)
    .execute(executor)
    .await?;
    Ok(())
}

/// Whether every partition of the job is done (read in the caller's transaction).
pub async fn all_done<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    job_id: i64,
) -> Result<bool, sqlx::Error> {
    db::query_scalar(sql(format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {}.progress WHERE job_id = $1 AND state <> 'done')",
        schema.q
    )))
    .bind(job_id)
    .fetch_one(executor)
    .await
}

/// Keys scanned so far by each running job, over all its partitions: what the rate sampler
/// reads every second.
pub async fn scanned_by_running_job<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let s = &schema.q;
    db::query_as(sql(format!(
        "SELECT p.job_id, sum(p.rows_scanned)::int8
           FROM {s}.progress p JOIN {s}.jobs j ON j.id = p.job_id
          WHERE j.state = 'running'
          GROUP BY p.job_id"
    )))
    .fetch_all(executor)
    .await
}

/// For each of `job_ids` with live leases: how many of its pending partitions `owner` holds,
/// and how many any process holds. A process takes that share of the job's rate limit.
pub async fn lease_shares<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    job_ids: &[i64],
    owner: &str,
) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    db::query_as(sql(format!(
        "SELECT p.job_id, count(*) FILTER (WHERE p.lease_owner = $2)::int8, count(*)::int8
           FROM {}.progress p
          WHERE p.job_id = ANY ($1) AND p.state = 'pending' AND NOT {LEASE_IS_FREE}
          GROUP BY p.job_id",
        schema.q
    )))
    .bind(job_ids)
    .bind(owner)
    .fetch_all(executor)
    .await
}

/// For every job with live leases on this database, by name: how many of its pending
/// partitions `owner` holds, and how many any process holds. Over several target databases a
/// process adds up the job's leases on each to take its share of the job's one rate limit.
pub async fn lease_shares_by_name<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    owner: &str,
) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    db::query_as(sql(format!(
        "SELECT j.name, count(*) FILTER (WHERE p.lease_owner = $1)::int8, count(*)::int8
           FROM {s}.progress p JOIN {s}.jobs j ON j.id = p.job_id
          WHERE j.state = 'running' AND p.state = 'pending' AND NOT {LEASE_IS_FREE}
          GROUP BY j.name",
        s = schema.q
    )))
    .bind(owner)
    .fetch_all(executor)
    .await
}
