//! Throttle signals: what the database says about whether a job should wait, checked between
//! batches — a time window, replica lag, active sessions, an operator's own query. A check that
//! cannot be evaluated throttles (fail safe) and says why, rather than running blind.
//!
//! [`Signals::of`] is the one list of signals. A new signal is a module here implementing
//! [`Signal`], a field in the job spec that turns it on, a [`Reason`] for its label, and a line
//! in that list.

mod active_sessions;
mod replica_lag;
mod throttle_query;
mod window;

use std::future::Future;
use std::pin::Pin;

use sqlx::PgPool;

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
    fn check<'a>(&'a self, pool: &'a PgPool) -> Check<'a>;
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
        ]
        .into_iter()
        .flatten()
        .collect();
        (!signals.is_empty()).then_some(Signals(signals))
    }

    /// The first signal that says wait, or `None` when every check passes.
    pub async fn check(&self, pool: &PgPool) -> Option<Throttle> {
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
