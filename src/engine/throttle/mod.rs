//! Throttle signals: what the database says about whether a job should wait, checked between
//! batches — a time window, replica lag, active sessions, an operator's own query, the server's
//! WAL rate. A check that cannot be evaluated throttles (fail safe) and says why, rather than
//! running blind.
//!
//! [`Signals::of`] is the one list of signals. A new signal is a module here implementing
//! [`Signal`], a field in the job spec that turns it on, a [`Reason`] for its label, and a line
//! in that list.

mod active_sessions;
mod replica_lag;
mod throttle_query;
mod wal_rate;
mod window;

use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;

use crate::plumbing::db::{self, quote_ident, Db};
use crate::spec::JobSpec;
use crate::status::{Reason, Throttle};

/// A future a signal's check returns (boxed, so signals can sit in one list).
pub type Check<'a> = Pin<Box<dyn Future<Output = Result<Option<String>, sqlx::Error>> + Send + 'a>>;

/// One health signal.
pub trait Signal: Send + Sync {
    /// The reason reported while this signal holds the job.
    fn reason(&self) -> Reason;
    /// `Some(detail)` when the job should wait now, saying what the signal saw; an error when
    /// it could not be evaluated (which throttles too).
    fn check<'a>(&'a self, pool: &'a Db) -> Check<'a>;
}

/// The signals a job asked for, checked in order; the first that says wait is reported.
pub struct Signals(Vec<Box<dyn Signal>>);

impl Signals {
    /// The signals `spec` turns on; `None` when it turns on none (no query between batches).
    pub fn of(spec: &JobSpec) -> Option<Signals> {
        let signals: Vec<Box<dyn Signal>> = [
            window::of(spec),
            replica_lag::of(spec),
            active_sessions::of(spec),
            throttle_query::of(spec),
            wal_rate::of(spec),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!signals.is_empty()).then_some(Signals(signals))
    }

    /// The first signal that says wait, or `None` when every check passes.
    pub async fn check(&self, pool: &Db) -> Option<Throttle> {
        for signal in &self.0 {
            let reason = signal.reason();
            match signal.check(pool).await {
                Ok(None) => {}
                Ok(Some(detail)) => return Some(Throttle { reason, detail }),
                Err(error) => {
                    return Some(Throttle {
                        reason,
                        detail: format!(
                            "the {reason} check failed, waiting to be safe: {}",
                            crate::plumbing::db::message(&error)
                        ),
                    })
                }
            }
        }
        None
    }
}

/// What a signal that reads other sessions' statistics needs: PostgreSQL shows other roles'
/// `pg_stat_replication` lag and `pg_stat_activity` state only to superusers and to roles with
/// the privileges of pg_read_all_stats (pg_monitor includes it), and NULL to anyone else. NULL
/// lag would read as no lag and hidden sessions as idle ones: such a limit would never hold a
/// job. USAGE, not MEMBER: a NOINHERIT member does not have the privileges PostgreSQL checks.
const SEES_STATS: &str = "pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')";

/// Why `field` cannot be checked by `role`, which cannot see other sessions' `what`.
fn blind(field: &str, what: &str, role: &str) -> String {
    format!(
        "{field}: the role {role:?} is not a member of pg_monitor (nor of pg_read_all_stats), \
         so PostgreSQL hides other sessions' {what} from it and {field} cannot be checked; \
         GRANT pg_monitor TO {}",
        quote_ident(role)
    )
}

/// At check and submit: `Some(why)` when `spec` asks for a signal this session's role could not
/// read truthfully, naming the field and the membership it lacks (or, for `max_wal_rate`, why
/// the WAL position cannot be read).
pub(crate) async fn refuse_blind(
    conn: &mut PgConnection,
    spec: &JobSpec,
) -> Result<Option<String>, sqlx::Error> {
    if let Some(why) = wal_rate::refuse_unreadable(&mut *conn, spec).await? {
        return Ok(Some(why));
    }
    let Some((field, what)) = [
        spec.max_replica_lag.map(|_| replica_lag::NEEDS_STATS),
        spec.max_active_sessions
            .map(|_| active_sessions::NEEDS_STATS),
    ]
    .into_iter()
    .flatten()
    .next() else {
        return Ok(None);
    };
    let (sees, role): (bool, String) = db::query_as(crate::plumbing::db::sql(format!(
        "SELECT {SEES_STATS}, current_user::text"
    )))
    .fetch_one(conn)
    .await?;
    Ok((!sees).then(|| blind(field, what, &role)))
}
