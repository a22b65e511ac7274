//! Whether trying again can help, decided once for every database error (by SQLSTATE, or by
//! the kind of failure when there is none), and the one backoff policy every retry loop uses:
//! the workers' batches, the daemon's start-up migrations, and the API's error mapping all
//! read the same [`ErrorKind`].

use std::time::Duration;

use rand::Rng;

/// What a failed database call means for whoever would try it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Contention or a timeout (lock or statement timeout, deadlock, serialization failure):
    /// the same work can succeed a moment later. A batch spends one of its attempts.
    Retryable,
    /// The database is unreachable, restarting or full: not the work's fault, so wait for it
    /// with backoff on a new connection, spending no attempts.
    Reconnect,
    /// Retrying cannot help (bad data for an expression, a dropped column, a bug).
    Fatal,
}

impl ErrorKind {
    pub fn of(error: &sqlx::Error) -> ErrorKind {
        match error {
            sqlx::Error::Database(db) => db
                .code()
                .map_or(ErrorKind::Fatal, |c| Self::of_sqlstate(&c)),
            // Lost connections, pool time-outs and I/O errors: a transaction in flight rolled
            // back with its connection, and the next attempt gets a new one.
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => ErrorKind::Reconnect,
            _ => ErrorKind::Fatal,
        }
    }

    pub fn of_sqlstate(code: &str) -> ErrorKind {
        match code {
            "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "55P03" // lock_not_available (lock_timeout)
            | "57014" // query_canceled (statement_timeout)
            | "25P03" // idle_in_transaction_session_timeout
            => ErrorKind::Retryable,
            "57P01" // admin_shutdown
            | "57P02" // crash_shutdown
            | "57P03" // cannot_connect_now
            | "57P05" // idle_session_timeout
            | "53300" // too_many_connections
            => ErrorKind::Reconnect,
            _ if code.starts_with("08") => ErrorKind::Reconnect, // connection exceptions
            // The server refused the login (a password rotated, a role not yet allowed): not
            // the work's fault, and fixed outside the daemon.
            _ if code.starts_with("28") => ErrorKind::Reconnect,
            _ => ErrorKind::Fatal,
        }
    }
}

/// The wait before try number `attempt` (1 for the first retry): exponential from 100 ms,
/// capped at 10 s, with up to 50% jitter so workers that failed together do not retry
/// together.
pub fn backoff(attempt: u32) -> Duration {
    backoff_up_to(attempt, Duration::from_secs(10))
}

/// [`backoff`] with another cap, for retries that may go on for hours (a notification to a
/// receiver that is down) and should not knock every few seconds meanwhile.
pub fn backoff_up_to(attempt: u32, cap: Duration) -> Duration {
    let cap = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(40))
        .min(cap);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_once() {
        assert_eq!(ErrorKind::of_sqlstate("55P03"), ErrorKind::Retryable);
        assert_eq!(ErrorKind::of_sqlstate("40P01"), ErrorKind::Retryable);
        assert_eq!(ErrorKind::of_sqlstate("57P01"), ErrorKind::Reconnect);
        assert_eq!(ErrorKind::of_sqlstate("08006"), ErrorKind::Reconnect);
        assert_eq!(ErrorKind::of_sqlstate("28P01"), ErrorKind::Reconnect);
        assert_eq!(ErrorKind::of_sqlstate("22012"), ErrorKind::Fatal);
        assert_eq!(
            ErrorKind::of(&sqlx::Error::PoolTimedOut),
            ErrorKind::Reconnect
        );
        assert_eq!(ErrorKind::of(&sqlx::Error::RowNotFound), ErrorKind::Fatal);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) >= Duration::from_millis(100) && backoff(1) <= Duration::from_millis(150)
        );
        assert!(backoff(4) >= Duration::from_millis(800));
        assert!(backoff(30) <= Duration::from_millis(15_000));
        let long = Duration::from_secs(300);
        assert!(backoff_up_to(12, long) >= Duration::from_secs(200));
        assert!(backoff_up_to(u32::MAX, long) <= Duration::from_secs(450));
        assert!(backoff_up_to(u32::MAX, long) >= long);
    }
}
