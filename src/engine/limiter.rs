//! The job's rate limit: one `governor` limiter shared by all of the job's partitions in this
//! process, counting rows, re-tunable while the job runs. The job's `rows_per_second` holds
//! over every replica: this process runs at the share of it that its leased partitions are of
//! all the job's live leases (`set_share`, read from the database every few seconds).

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
    /// The job's limit and batch size as last configured, and this process's share.
    settings: Mutex<Settings>,
}

#[derive(Clone, Copy)]
struct Settings {
    limit: Option<u32>,
    batch_size: u32,
    share: Share,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            limit: None,
            batch_size: 1,
            share: Share { mine: 1, all: 1 },
        }
    }
}

/// This process's part of a job: `mine` of the job's `all` live leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub mine: u32,
    pub all: u32,
}

impl Share {
    /// The part of `limit` this share may use: at least one row a second, so a process
    /// always makes progress.
    pub fn of(self, limit: u32) -> u32 {
        if self.all == 0 || self.mine >= self.all {
            return limit;
        }
        let part = u64::from(limit) * u64::from(self.mine) / u64::from(self.all);
        u32::try_from(part).unwrap_or(limit).max(1)
    }
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

    /// Sets the job's rate (over every replica) and batch size.
    pub fn configure(&self, rows_per_second: Option<u32>, batch_size: u32) {
        let settings = {
            let mut settings = self.settings.lock().expect("limiter lock poisoned");
            settings.limit = rows_per_second;
            settings.batch_size = batch_size;
            *settings
        };
        self.rebuild(settings);
    }

    /// Sets this process's share of the job's limit; true when it changed.
    pub fn set_share(&self, share: Share) -> bool {
        let settings = {
            let mut settings = self.settings.lock().expect("limiter lock poisoned");
            if settings.share == share {
                return false;
            }
            settings.share = share;
            *settings
        };
        self.rebuild(settings);
        true
    }

    /// This process's rate right now: its share of the job's limit; `None` when unlimited.
    pub fn local_rate(&self) -> Option<u32> {
        let settings = *self.settings.lock().expect("limiter lock poisoned");
        settings.limit.map(|limit| settings.share.of(limit))
    }

    /// Builds the governor limiter for the share. The burst is one batch, not a second's worth
    /// of rows, so the rate holds from the very first batch instead of allowing a second's
    /// worth at once.
    fn rebuild(&self, settings: Settings) {
        let batch_size = settings.batch_size;
        let rows_per_second = settings.limit.map(|limit| settings.share.of(limit));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_takes_its_part_of_the_limit() {
        assert_eq!(Share { mine: 2, all: 6 }.of(600), 200);
        assert_eq!(Share { mine: 2, all: 4 }.of(600), 300);
        assert_eq!(Share { mine: 3, all: 3 }.of(600), 600);
        // No live lease seen (a read before the claim): the whole limit, as a lone process.
        assert_eq!(Share { mine: 0, all: 0 }.of(600), 600);
        assert_eq!(Share { mine: 1, all: 5000 }.of(600), 1);
        let limiter = Limiter::new(Some(600), 50);
        assert_eq!(limiter.local_rate(), Some(600));
        assert!(limiter.set_share(Share { mine: 1, all: 3 }));
        assert!(!limiter.set_share(Share { mine: 1, all: 3 }));
        assert_eq!(limiter.local_rate(), Some(200));
        limiter.configure(Some(900), 50);
        assert_eq!(limiter.local_rate(), Some(300));
        limiter.configure(None, 50);
        assert_eq!(limiter.local_rate(), None);
    }
}
