//! `throttle_query`: the operator's own query, returning one boolean; true means wait, and so
//! does no answer at all (NULL or no row).

use sqlx::PgPool;

use super::{Check, Signal};
use crate::plumbing::db::sql;
use crate::spec::JobSpec;
use crate::status::Reason;

struct ThrottleQuery(String);

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    Some(Box::new(ThrottleQuery(spec.throttle_query.clone()?)))
}

impl Signal for ThrottleQuery {
    fn reason(&self) -> Reason {
        Reason::ThrottleQuery
    }

    fn check<'a>(&'a self, pool: &'a PgPool) -> Check<'a> {
        Box::pin(async move {
            let answer = sqlx::query_scalar::<_, Option<bool>>(sql(self.0.clone()))
                .fetch_optional(pool)
                .await?;
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
