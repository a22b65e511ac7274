//! `max_wal_rate`: wait while the server writes WAL faster than this — every session's WAL, the
//! job's own included, which is what a standby must replay and an archive must store.
//!
//! The rate is the WAL insert position's advance over about the last second, from samples the
//! checks themselves take (each worker checks before each batch, so there are many while the
//! job runs, and one a second while it waits). When there is no sample from the last two
//! seconds (the first check, or after a long pause) the check samples twice, [`MIN_SPAN`] apart.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::{Check, Signal};
use crate::plumbing::db::{self, Db};
use crate::spec::{JobSpec, WalRate};
use crate::status::Reason;

/// The span the rate is measured over, when the samples reach back that far.
const WINDOW: Duration = Duration::from_secs(1);
/// The shortest span a rate is computed from: WAL comes in bursts (a commit, a checkpoint's
/// full-page images), and a rate over a few milliseconds says more about the burst than the load.
const MIN_SPAN: Duration = Duration::from_millis(200);

/// The insert position, not `pg_current_wal_lsn()` (the write position), which trails it by
/// whatever sits in WAL buffers: the rate of WAL generated, as soon as it is generated.
const POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";

struct WalRateLimit {
    max: WalRate,
    /// (when, insert position in bytes), oldest first, shared by the job's workers.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    let max = WalRate::parse(spec.max_wal_rate.as_deref()?).ok()?;
    Some(Box::new(WalRateLimit {
        max,
        samples: Mutex::new(VecDeque::new()),
    }))
}

/// At check and submit: `Some(why)` when this session cannot read the WAL position (a standby
/// in recovery, or EXECUTE on the function revoked), so `max_wal_rate` could never be checked.
pub(super) async fn refuse_unreadable(
    conn: &mut PgConnection,
    spec: &JobSpec,
) -> Result<Option<String>, sqlx::Error> {
    if spec.max_wal_rate.is_none() {
        return Ok(None);
    }
    match db::query_scalar::<i64>(POSITION).fetch_one(conn).await {
        Ok(_) => Ok(None),
        Err(sqlx::Error::Database(e)) => Ok(Some(format!(
            "max_wal_rate: the WAL position cannot be read here, so the rate cannot be checked: {}",
            e.message()
        ))),
        Err(other) => Err(other),
    }
}

impl WalRateLimit {
    /// The oldest sample to measure from, after recording `now`: the newest one at least
    /// [`WINDOW`] old, else the oldest; none younger than [`MIN_SPAN`] or older than 2 × WINDOW.
    fn record(&self, now: (Instant, u64)) -> Option<(Instant, u64)> {
        let mut samples = self.samples.lock().expect("WAL samples lock poisoned");
        samples.push_back(now);
        while samples.len() > 1
            && (now.0.duration_since(samples[1].0) >= WINDOW
                || now.0.duration_since(samples[0].0) > 2 * WINDOW)
        {
            samples.pop_front();
        }
        let oldest = samples[0];
        (now.0.duration_since(oldest.0) >= MIN_SPAN).then_some(oldest)
    }
}

async fn position(pool: &Db) -> Result<(Instant, u64), sqlx::Error> {
    let bytes = db::query_scalar::<i64>(POSITION).fetch_one(pool).await?;
    Ok((Instant::now(), bytes.max(0) as u64))
}

impl Signal for WalRateLimit {
    fn reason(&self) -> Reason {
        Reason::WalRate
    }

    fn check<'a>(&'a self, pool: &'a Db) -> Check<'a> {
        Box::pin(async move {
            let mut now = position(pool).await?;
            let from = match self.record(now) {
                Some(from) => from,
                None => {
                    tokio::time::sleep(MIN_SPAN).await;
                    now = position(pool).await?;
                    self.record(now).unwrap_or(now)
                }
            };
            let span = now.0.duration_since(from.0).as_secs_f64();
            if span <= 0.0 {
                return Ok(None);
            }
            let rate = WalRate {
                bytes_per_second: (now.1.saturating_sub(from.1) as f64 / span) as u64,
            };
            Ok(
                (rate.bytes_per_second > self.max.bytes_per_second).then(|| {
                    format!(
                        "the server wrote WAL at {rate} over the last {span:.1}s (max_wal_rate {})",
                        self.max
                    )
                }),
            )
        })
    }
}
