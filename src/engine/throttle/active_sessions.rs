//! `max_active_sessions`: wait while more backends than this are active in the database,
//! backfilld's own sessions not counted.

use sqlx::PgPool;

use super::{Check, Signal};
use crate::spec::JobSpec;
use crate::status::Reason;

struct ActiveSessions(u32);

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    Some(Box::new(ActiveSessions(spec.max_active_sessions?)))
}

impl Signal for ActiveSessions {
    fn reason(&self) -> Reason {
        Reason::ActiveSessions
    }

    fn check<'a>(&'a self, pool: &'a PgPool) -> Check<'a> {
        Box::pin(async move {
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE state = 'active' AND datname = current_database()
                    AND pid <> pg_backend_pid() AND application_name <> 'backfilld'",
            )
            .fetch_one(pool)
            .await?;
            let max = self.0;
            Ok((active > i64::from(max))
                .then(|| format!("{active} active sessions (max_active_sessions {max})")))
        })
    }
}
