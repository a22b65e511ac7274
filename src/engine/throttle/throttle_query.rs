//! `throttle_query`: the operator's own query, returning one boolean; true means wait, and so
//! does no answer at all (NULL or no row). It runs in a READ ONLY transaction with a short
//! statement timeout, rolled back: it can observe, never change data (a function that writes
//! fails, and the failure throttles), and never hold the job up for long.

use std::time::Duration;

use super::{Check, Signal};
use crate::plumbing::db::{self, sql, Db};
use crate::spec::JobSpec;
use crate::status::Reason;

struct ThrottleQuery(String);

/// How long the query may take: a health check that hangs says nothing good either.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    Some(Box::new(ThrottleQuery(spec.throttle_query.clone()?)))
}

impl Signal for ThrottleQuery {
    fn reason(&self) -> Reason {
        Reason::ThrottleQuery
    }

    fn check<'a>(&'a self, pool: &'a Db) -> Check<'a> {
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            db::query("SET TRANSACTION READ ONLY")
                .execute(&mut *tx)
                .await?;
            db::query("SELECT set_config('statement_timeout', $1, true)")
                .bind(format!("{}ms", TIMEOUT.as_millis()))
                .execute(&mut *tx)
                .await?;
            let answer = db::query_scalar::<Option<bool>>(sql(self.0.clone()))
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            Ok(match answer {
                Some(Some(false)) => None,
                Some(Some(true)) => Some("throttle_query returned true".into()),
                Some(None) | None => Some(
                    "throttle_query returned no boolean (NULL or no row); waiting to be safe"
                        .into(),
                ),
            })
        })
    }
}
