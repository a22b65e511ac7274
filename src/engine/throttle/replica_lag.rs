//! `max_replica_lag`: wait while any standby replays further behind than this.

use std::time::Duration;

use super::{blind, Check, Signal, SEES_STATS};
use crate::plumbing::db::{self, sql, Db};
use crate::spec::JobSpec;
use crate::status::Reason;

struct ReplicaLag(Duration);

/// The field, and what it reads that only pg_monitor may see.
pub(super) const NEEDS_STATS: (&str, &str) = ("max_replica_lag", "replication lag");

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    Some(Box::new(ReplicaLag(spec.max_replica_lag?)))
}

impl Signal for ReplicaLag {
    fn reason(&self) -> Reason {
        Reason::ReplicaLag
    }

    fn check<'a>(&'a self, pool: &'a Db) -> Check<'a> {
        Box::pin(async move {
            let (lag, sees, role) = replica_lag(pool).await?;
            if !sees {
                // Revoked since the job was checked, or another replica's role: waiting is the
                // only safe reading of a lag that cannot be seen.
                let (field, what) = NEEDS_STATS;
                return Ok(Some(blind(field, what, &role)));
            }
            let max = self.0.as_secs_f64();
            Ok((lag > max)
                .then(|| format!("a standby replays {lag:.1}s behind (max_replica_lag {max}s)")))
        })
    }
}

/// Seconds the furthest standby is behind: the largest `replay_lag` among this server's
/// standbys, and, on a standby, its own replay delay while it has WAL it has not replayed;
/// with whether this role may see the standbys' lag, and the role. A standby's `replay_lag`
/// is NULL when it has replayed everything and nothing new was written, hence the coalesce,
/// which is sound only for a role that sees it.
async fn replica_lag(pool: &Db) -> Result<(f64, bool, String), sqlx::Error> {
    db::query_as(sql(format!(
        "SELECT greatest(
             (SELECT coalesce(max(extract(epoch FROM replay_lag)), 0) FROM pg_stat_replication),
             CASE WHEN pg_is_in_recovery()
                       AND pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
                  THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
                  ELSE 0 END)::float8,
           {SEES_STATS}, current_user::text"
    )))
    .fetch_one(pool)
    .await
}
