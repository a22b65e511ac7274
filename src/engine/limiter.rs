//! The job's rate limit: one `governor` limiter shared by all of the job's partitions in this
//! process, counting rows, re-tunable while the job runs.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

/// The limiter a job's workers share. `None` inside means unlimited.
#[derive(Default)]
pub struct Limiter {
    /// Rebuilt when the rate or batch size changes; workers clone the `Arc` per acquisition so
    /// a change never blocks a waiting worker.
    current: Mutex<Option<Configured>>,
}

#[derive(Clone)]
struct Configured {
    rate: u32,
    batch_size: u32,
    burst: u32,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl Limiter {
    pub fn new(rows_per_second: Option<u32>, batch_size: u32) -> Limiter {
        let limiter = Limiter::default();
        limiter.configure(rows_per_second, batch_size);
        limiter
    }

    /// Sets the rate. The burst is one batch, not a second's worth of rows, so the rate holds
    /// from the very first batch instead of allowing a second's worth at once.
    pub fn configure(&self, rows_per_second: Option<u32>, batch_size: u32) {
        let mut current = self.current.lock().expect("limiter lock poisoned");
        let Some(rate) = rows_per_second.and_then(NonZeroU32::new) else {
            *current = None;
            return;
        };
        if matches!(&*current, Some(c) if c.rate == rate.get() && c.batch_size == batch_size) {
            return;
        }
        let burst = NonZeroU32::new(batch_size.clamp(1, rate.get())).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        *current = Some(Configured {
            rate: rate.get(),
            batch_size,
            burst: burst.get(),
            limiter: Arc::new(DefaultDirectRateLimiter::direct(quota)),
        });
    }

    /// Waits until `rows` may be processed, holding `throttled` true while it waits.
    /// Returns false if cancelled first.
    pub async fn acquire(
        &self,
        rows: u32,
        cancel: &CancellationToken,
        throttled: &AtomicBool,
    ) -> bool {
        let Some(Configured { burst, limiter, .. }) =
            self.current.lock().expect("limiter lock poisoned").clone()
        else {
            return !cancel.is_cancelled();
        };
        let mut remaining = rows;
        while remaining > 0 {
            // A batch larger than the burst is taken in burst-sized pieces.
            let take = remaining.min(burst);
            let Some(n) = NonZeroU32::new(take) else {
                break;
            };
            if !matches!(limiter.check_n(n), Ok(Ok(()))) {
                throttled.store(true, Ordering::Relaxed);
                let waited = tokio::select! {
                    _ = cancel.cancelled() => None,
                    result = limiter.until_n_ready(n) => Some(result),
                };
                throttled.store(false, Ordering::Relaxed);
                match waited {
                    None => return false,
                    // Cannot happen: `take` never exceeds the burst.
                    Some(Err(_)) => break,
                    Some(Ok(())) => {}
                }
            }
            remaining -= take;
        }
        true
    }
}
