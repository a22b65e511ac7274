//! `max_active_sessions`: wait while more backends than this are active in the database,
//! backfilld's own sessions not counted.

use super::{blind, Check, Signal, SEES_STATS};
use crate::plumbing::db::{self, sql, Db};
use crate::spec::JobSpec;
use crate::status::Reason;

struct ActiveSessions(u32);

/// The field, and what it reads that only pg_monitor may see.
pub(super) const NEEDS_STATS: (&str, &str) = ("max_active_sessions", "activity");

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    Some(Box::new(ActiveSessions(spec.max_active_sessions?)))
}

impl Signal for ActiveSessions {
    fn reason(&self) -> Reason {
        Reason::ActiveSessions
    }

    fn check<'a>(&'a self, pool: &'a Db) -> Check<'a> {
        Box::pin(async move {
            // Other roles' sessions have a NULL state for a role that may not see them: they
            // would all count as idle.
            let (active, sees, role): (i64, bool, String) = db::query_as(sql(format!(
                "SELECT (SELECT count(*) FROM pg_stat_activity
                          WHERE state = 'active' AND datname = current_database()
                            AND pid <> pg_backend_pid() AND application_name <> 'backfilld'),
                        {SEES_STATS}, current_user::text"
            )))
            .fetch_one(pool)
            .await?;
            if !sees {
                let (field, what) = NEEDS_STATS;
                return Ok(Some(blind(field, what, &role)));
            }
            let max = self.0;
            Ok((active > i64::from(max))
                .then(|| format!("{active} active sessions (max_active_sessions {max})")))
        })
    }
}
