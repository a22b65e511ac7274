//! Health throttling: signals from the database that a job should wait, checked between
//! batches — replica lag, an operator's own query, active sessions, and a time window. A check
//! that cannot be evaluated throttles (fail safe) and says why, rather than running blind.

use std::time::Duration;

use sqlx::PgPool;

use crate::plumbing::db::sql;
use crate::spec::{JobSpec, Window};

/// Why a job waits right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// One of [`REASONS`]: the label of `backfill_throttled{reason}`.
    pub reason: &'static str,
    pub detail: String,
}

/// Every reason a job can be throttled for, the rate limiter's included.
pub const REASONS: &[&str] = &[
    "rate_limit",
    "replica_lag",
    "throttle_query",
    "active_sessions",
    "window",
];

#[derive(Debug, Clone)]
pub struct HealthChecks {
    max_replica_lag: Option<Duration>,
    throttle_query: Option<String>,
    max_active_sessions: Option<u32>,
    window: Option<Window>,
}

impl HealthChecks {
    /// The checks a spec asks for; `None` when it asks for none (no query between batches).
    pub fn of(spec: &JobSpec) -> Option<HealthChecks> {
        spec.has_health_checks().then(|| HealthChecks {
            max_replica_lag: spec.max_replica_lag,
            throttle_query: spec.throttle_query.clone(),
            max_active_sessions: spec.max_active_sessions,
            window: spec.window.as_deref().and_then(|w| Window::parse(w).ok()),
        })
    }

    /// The first signal that says wait, or `None` when every check passes.
    pub async fn check(&self, pool: &PgPool) -> Option<Throttle> {
        if let Some(window) = &self.window {
            match minute_of_day(pool, &window.time_zone).await {
                Ok(minute) if window.contains(minute) => {}
                Ok(minute) => {
                    return Some(Throttle {
                        reason: "window",
                        detail: format!(
                            "outside the window (now {:02}:{:02} {})",
                            minute / 60,
                            minute % 60,
                            window.time_zone
                        ),
                    })
                }
                Err(e) => return Some(failed("window", e)),
            }
        }
        if let Some(max) = self.max_replica_lag {
            match replica_lag(pool).await {
                Ok(lag) if lag <= max.as_secs_f64() => {}
                Ok(lag) => {
                    return Some(Throttle {
                        reason: "replica_lag",
                        detail: format!(
                            "a standby replays {lag:.1}s behind (max_replica_lag {}s)",
                            max.as_secs_f64()
                        ),
                    })
                }
                Err(e) => return Some(failed("replica_lag", e)),
            }
        }
        if let Some(max) = self.max_active_sessions {
            match active_sessions(pool).await {
                Ok(active) if active <= i64::from(max) => {}
                Ok(active) => {
                    return Some(Throttle {
                        reason: "active_sessions",
                        detail: format!("{active} active sessions (max_active_sessions {max})"),
                    })
                }
                Err(e) => return Some(failed("active_sessions", e)),
            }
        }
        if let Some(query) = &self.throttle_query {
            match sqlx::query_scalar::<_, Option<bool>>(sql(query.clone()))
                .fetch_optional(pool)
                .await
            {
                Ok(Some(Some(false))) => {}
                Ok(Some(Some(true))) => {
                    return Some(Throttle {
                        reason: "throttle_query",
                        detail: "throttle_query returned true".into(),
                    })
                }
                Ok(Some(None)) | Ok(None) => return Some(Throttle {
                    reason: "throttle_query",
                    detail:
                        "throttle_query returned no boolean (NULL or no row); waiting to be safe"
                            .into(),
                }),
                Err(e) => return Some(failed("throttle_query", e)),
            }
        }
        None
    }
}

fn failed(reason: &'static str, error: sqlx::Error) -> Throttle {
    Throttle {
        reason,
        detail: format!("the {reason} check failed, waiting to be safe: {error}"),
    }
}

async fn minute_of_day(pool: &PgPool, time_zone: &str) -> Result<u32, sqlx::Error> {
    let minute: i32 = sqlx::query_scalar(
        "SELECT (extract(hour FROM now() AT TIME ZONE $1) * 60
                 + extract(minute FROM now() AT TIME ZONE $1))::int4",
    )
    .bind(time_zone)
    .fetch_one(pool)
    .await?;
    Ok(minute.max(0) as u32)
}

/// Seconds the furthest standby is behind: the largest `replay_lag` among this server's
/// standbys, and, on a standby, its own replay delay while it has WAL it has not replayed.
async fn replica_lag(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT greatest(
             (SELECT coalesce(max(extract(epoch FROM replay_lag)), 0) FROM pg_stat_replication),
             CASE WHEN pg_is_in_recovery()
                       AND pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
                  THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
                  ELSE 0 END)::float8",
    )
    .fetch_one(pool)
    .await
}

/// Active backends in this database, backfilld's own sessions not counted.
async fn active_sessions(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE state = 'active' AND datname = current_database()
            AND pid <> pg_backend_pid() AND application_name <> 'backfilld'",
    )
    .fetch_one(pool)
    .await
}
