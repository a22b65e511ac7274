//! What is known about a job, computed once: [`view`] builds the status the API serializes,
//! the metrics export and the terminal shows, from the database's rows and what this process
//! knows first-hand (a [`RuntimeSnapshot`]); [`metrics`] defines the Prometheus series.
//!
//! This layer sits below the engine: the engine fills a [`RuntimeSnapshot`] and counts its
//! batches in [`metrics`], and nothing here reaches back into it.

pub mod fleet;
pub mod metrics;
pub mod text;
pub mod view;

/// Why a job is held back. The first is the rate limiter's; the others are the throttle
/// signals checked between batches (the engine's `throttle` module lists them). Its text is the
/// `reason` label of `backfill_throttled` and the job view's `throttled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    RateLimit,
    ReplicaLag,
    ThrottleQuery,
    ActiveSessions,
    WalRate,
    Window,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::RateLimit,
        Reason::ReplicaLag,
        Reason::ThrottleQuery,
        Reason::ActiveSessions,
        Reason::WalRate,
        Reason::Window,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimit => "rate_limit",
            Reason::ReplicaLag => "replica_lag",
            Reason::ThrottleQuery => "throttle_query",
            Reason::ActiveSessions => "active_sessions",
            Reason::WalRate => "wal_rate",
            Reason::Window => "window",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job waits right now, and what the signal said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub reason: Reason,
    pub detail: String,
}

/// What this process knows about a job it runs that the database does not: a plain copy,
/// taken at once, so readers never hold the workers' locks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeSnapshot {
    /// Keys walked and rows updated by this process's batches since it started the job.
    pub rows_scanned: u64,
    pub rows_updated: u64,
    pub batches_retried: u64,
    /// The batch size the workers use now (adapted toward `target_batch_time`, grown by a
    /// sweep while nothing is pending, or the live `batch_size`).
    pub batch_size: u32,
    /// Why the batch size last changed (adaptive batches, sweeps).
    pub batch_size_reason: Option<String>,
    /// The throttle signal holding the job, if one does.
    pub throttle: Option<Throttle>,
    /// A worker of this job waits on the rate limiter right now.
    pub rate_limited: bool,
}
