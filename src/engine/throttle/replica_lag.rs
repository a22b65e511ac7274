//! `max_replica_lag`: wait while any standby replays further behind than this.

use std::time::Duration;

use sqlx::PgPool;

use super::{Check, Signal};
use crate::spec::JobSpec;
use crate::status::Reason;

struct ReplicaLag(Duration);

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    Some(Box::new(ReplicaLag(spec.max_replica_lag?)))
}

impl Signal for ReplicaLag {
    fn reason(&self) -> Reason {
        Reason::ReplicaLag
    }

    fn check<'a>(&'a self, pool: &'a PgPool) -> Check<'a> {
        Box::pin(async move {
            let lag = replica_lag(pool).await?;
            let max = self.0.as_secs_f64();
            Ok((lag > max)
                .then(|| format!("a standby replays {lag:.1}s behind (max_replica_lag {max}s)")))
        })
    }
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
