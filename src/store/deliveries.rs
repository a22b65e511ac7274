//! The `notify_endpoints` and `deliveries` tables: the notifications owed to each `[[notify]]`
//! endpoint, one row per (event, endpoint). The event row is the unit: the primary key keeps
//! two replicas from queueing it twice, and a claim (`FOR UPDATE SKIP LOCKED`, then a claim
//! token that expires) keeps them from sending it twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::plumbing::db::{self, sql, Db, Schema};

/// Makes `endpoint` known with the event `kinds` it asks for, in one transaction. A new
/// endpoint, and a kind new to a known one, starts after the newest event: it is told of what
/// happens from now on, not of the history. A known kind keeps its start. A kind no longer asked
/// for is forgotten, and its undelivered deliveries to `endpoint` are dropped: the endpoint
/// said it no longer wants them. Returns how many deliveries were dropped.
pub async fn register(
    pool: &Db,
    schema: &Schema,
    endpoint: &str,
    kinds: &[String],
) -> Result<u64, sqlx::Error> {
    let s = &schema.q;
    let mut tx = pool.begin().await?;
    db::query(sql(format!(
        "INSERT INTO {s}.notify_endpoints (endpoint, since_event_id)
         VALUES ($1, (SELECT coalesce(max(id), 0) FROM {s}.events))
         ON CONFLICT (endpoint) DO NOTHING"
    )))
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    db::query(sql(format!(
        "INSERT INTO {s}.notify_kinds (endpoint, kind, since_event_id)
         SELECT $1, k, (SELECT coalesce(max(id), 0) FROM {s}.events) FROM unnest($2::text[]) k
         ON CONFLICT (endpoint, kind) DO NOTHING"
    )))
    .bind(endpoint)
    .bind(kinds)
    .execute(&mut *tx)
    .await?;
    db::query(sql(format!(
        "DELETE FROM {s}.notify_kinds WHERE endpoint = $1 AND NOT (kind = ANY ($2))"
    )))
    .bind(endpoint)
    .bind(kinds)
    .execute(&mut *tx)
    .await?;
    let dropped = db::query(sql(format!(
        "DELETE FROM {s}.deliveries d USING {s}.events e
          WHERE d.endpoint = $1 AND d.delivered_at IS NULL AND e.id = d.event_id
            AND NOT (e.kind = ANY ($2))"
    )))
    .bind(endpoint)
    .bind(kinds)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(dropped.rows_affected())
}

/// Queues a delivery to `endpoint` for each event of `kinds` (each from where that kind started)
/// that has none yet, oldest first,
/// while fewer than `backlog` of its deliveries are undelivered: the rest wait in the event log
/// and are queued as the backlog drains, so a receiver that is down for days costs a bounded
/// queue and loses nothing. Finding the events by "no delivery yet" rather than by a cursor
/// also catches an event whose id was taken before, but committed after, a later one's.
/// Returns how many were queued.
pub async fn enqueue<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    endpoint: &str,
    kinds: &[String],
    backlog: i64,
) -> Result<u64, sqlx::Error> {
    let s = &schema.q;
    let done = db::query(sql(format!(
        "INSERT INTO {s}.deliveries (event_id, endpoint)
         SELECT e.id, n.endpoint
           FROM {s}.notify_kinds n
           JOIN {s}.events e ON e.kind = n.kind AND e.id > n.since_event_id
          WHERE n.endpoint = $1 AND n.kind = ANY ($2)
            AND NOT EXISTS (SELECT 1 FROM {s}.deliveries d
                             WHERE d.event_id = e.id AND d.endpoint = n.endpoint)
          ORDER BY e.id
          LIMIT greatest(0, $3 - (SELECT count(*) FROM {s}.deliveries
                                   WHERE endpoint = $1 AND delivered_at IS NULL))
         ON CONFLICT DO NOTHING"
    )))
    .bind(endpoint)
    .bind(kinds)
    .bind(backlog)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// A delivery this process holds the claim on, with what the notification says.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub event_id: i64,
    pub endpoint: String,
    /// Including this one.
    pub attempts: i32,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub kind: String,
    pub to_state: Option<String>,
    pub detail: Option<String>,
    pub job: String,
    /// The job's state now (an event's `to_state` says what it became then).
    pub job_state: String,
    pub started_at: Option<DateTime<Utc>>,
    pub rows_scanned: i64,
    pub rows_updated: i64,
}

/// Claims up to `limit` due deliveries to `endpoint` for `ttl` under `token`, oldest event
/// first: each endpoint claims its own, so one that is down never takes another's turn. Rows another replica is claiming are skipped, not waited for; a claim that expired
/// (its holder died mid-send) is due again.
pub async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    endpoint: &str,
    token: Uuid,
    ttl: Duration,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let s = &schema.q;
    db::query_as(sql(format!(
        "WITH due AS (
             SELECT event_id, endpoint FROM {s}.deliveries
              WHERE endpoint = $1 AND delivered_at IS NULL AND next_attempt_at <= now()
                AND (claimed_until IS NULL OR claimed_until < now())
              ORDER BY event_id
              LIMIT $4
                FOR UPDATE SKIP LOCKED),
         claimed AS (
             UPDATE {s}.deliveries d
                SET claimed_until = now() + make_interval(secs => $3), claim_token = $2,
                    attempts = d.attempts + 1
               FROM due
              WHERE d.event_id = due.event_id AND d.endpoint = due.endpoint
          RETURNING d.event_id, d.endpoint, d.attempts)
         SELECT c.event_id, c.endpoint, c.attempts, e.at, e.actor, e.kind, e.to_state, e.detail,
                j.name AS job, j.state AS job_state, j.started_at,
                coalesce(p.scanned, 0)::int8 AS rows_scanned,
                coalesce(p.updated, 0)::int8 AS rows_updated
           FROM claimed c
           JOIN {s}.events e ON e.id = c.event_id
           JOIN {s}.jobs j ON j.id = e.job_id
           LEFT JOIN LATERAL (SELECT sum(rows_scanned) AS scanned, sum(rows_updated) AS updated
                                FROM {s}.progress WHERE job_id = j.id) p ON true
          ORDER BY c.event_id"
    )))
    .bind(endpoint)
    .bind(token)
    .bind(ttl.as_secs_f64())
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Marks a claimed delivery sent. False if the claim was lost meanwhile (it expired and another
/// replica took it): then that replica's outcome counts.
pub async fn delivered<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    event_id: i64,
    endpoint: &str,
    token: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = db::query(sql(format!(
        "UPDATE {}.deliveries
            SET delivered_at = now(), claimed_until = NULL, last_error = NULL
          WHERE event_id = $1 AND endpoint = $2 AND claim_token = $3 AND delivered_at IS NULL",
        schema.q
    )))
    .bind(event_id)
    .bind(endpoint)
    .bind(token)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives a claimed delivery back, due again after `delay`, with why it failed.
pub async fn retry_later<'e>(
    executor: impl PgExecutor<'e>,
    schema: &Schema,
    event_id: i64,
    endpoint: &str,
    token: Uuid,
    delay: Duration,
    error: &str,
) -> Result<(), sqlx::Error> {
    db::query(sql(format!(
        "UPDATE {}.deliveries
            SET claimed_until = NULL, next_attempt_at = now() + make_interval(secs => $4),
                last_error = $5
          WHERE event_id = $1 AND endpoint = $2 AND claim_token = $3 AND delivered_at IS NULL",
        schema.q
    )))
    .bind(event_id)
    .bind(endpoint)
    .bind(token)
    .bind(delay.as_secs_f64())
    .bind(error)
    .execute(executor)
    .await?;
    Ok(())
}
