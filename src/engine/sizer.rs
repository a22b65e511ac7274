//! Adaptive batch sizes: after each batch, size the next so its transaction takes about
//! `target_batch_time`, from a weighted average of recent rows per second (the rule
//! pt-online-schema-change uses for `--chunk-time`); a batch that hit a lock or statement
//! timeout is retried at half the size. Sweep passes without a target grow their walks while
//! nothing is pending ([`SweepWalk`]).

use std::time::Duration;

use crate::spec::MAX_BATCH_SIZE;

/// Weight of the newest batch in the average: recent enough to follow load changes, smooth
/// enough that one slow batch does not collapse the size.
const WEIGHT: f64 = 0.5;
/// At most this growth per batch, so a burst of fast batches cannot overshoot the target.
const MAX_GROWTH: f64 = 2.0;

#[derive(Debug, Clone)]
pub struct Sizer {
    target: Duration,
    min: u32,
    max: u32,
    current: u32,
    /// Weighted average of rows scanned per second of transaction time.
    rate: Option<f64>,
    /// The batch_size of the spec last seen: a PATCH restarts from the new value.
    base: u32,
    reason: String,
}

impl Sizer {
    pub fn new(target: Duration, min: u32, max: u32, start: u32) -> Sizer {
        Sizer {
            target,
            min,
            max,
            current: start.clamp(min, max),
            rate: None,
            base: start,
            reason: format!("starting at batch_size {start}"),
        }
    }

    /// The size for the next batch. `spec_batch_size` is the live value of the spec; when an
    /// operator changes it, adaptation restarts from there.
    pub fn next(&mut self, spec_batch_size: u32) -> u32 {
        if spec_batch_size != self.base {
            self.base = spec_batch_size;
            self.current = spec_batch_size.clamp(self.min, self.max);
            self.rate = None;
            self.reason = format!("batch_size changed to {spec_batch_size}");
        }
        self.current
    }

    /// Learns from a committed batch of `scanned` keys that took `elapsed`. A short final batch
    /// says little about the rate, so only full batches count.
    pub fn observe(&mut self, scanned: u64, limit: u32, elapsed: Duration) {
        if scanned < u64::from(limit) || elapsed.is_zero() {
            return;
        }
        let rate = scanned as f64 / elapsed.as_secs_f64();
        let average = match self.rate {
            Some(previous) => WEIGHT * rate + (1.0 - WEIGHT) * previous,
            None => rate,
        };
        self.rate = Some(average);
        let wanted = (average * self.target.as_secs_f64())
            .min(f64::from(self.current) * MAX_GROWTH)
            .round();
        let next = (wanted as u32).clamp(self.min, self.max);
        if next != self.current {
            self.reason = format!(
                "{} → {next}: {:.0} rows/s toward {} ms per batch",
                self.current,
                average,
                self.target.as_millis()
            );
            self.current = next;
        }
    }

    /// After a lock or statement timeout: retry at half the size.
    pub fn halve(&mut self, cause: &str) {
        let next = (self.current / 2).max(self.min);
        self.reason = format!("{} → {next}: halved after {cause}", self.current);
        self.current = next;
        // The average included the batches that just proved too large.
        self.rate = None;
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn current(&self) -> u32 {
        self.current
    }
}

/// How far a sweep walk may grow, in `batch_size`s: enough that the per-batch round trip,
/// commit and checkpoint stop dominating a walk that only reads (16 × 1000 keys walk in a few
/// milliseconds), and a bound on what one batch writes if it meets a run of pending rows.
pub const SWEEP_GROWTH: u32 = 16;

/// Walk sizes for a sweep pass (2..) of a job without `target_batch_time`. A sweep walks keys
/// the backfill already did, so most batches find nothing to write, and such a batch costs its
/// round trip, commit and checkpoint whatever it walks: a batch that updated no row doubles the
/// next walk, up to [`SWEEP_GROWTH`] × `batch_size`; one that updated rows, or hit a lock or
/// statement timeout, walks `batch_size` again, so a region with rows pending is swept as the
/// backfill went. A walk only reads: the rows a batch locks are the ones it updates, so the
/// one grown walk that meets a run of pending rows writes up to 16 × `batch_size` of them.
#[derive(Debug, Clone)]
pub struct SweepWalk {
    current: u32,
    base: u32,
    reason: String,
}

impl SweepWalk {
    pub fn new(batch_size: u32) -> SweepWalk {
        SweepWalk {
            current: batch_size,
            base: batch_size,
            reason: format!("sweep: starting at batch_size {batch_size}"),
        }
    }

    /// The longest walk: `max_batch_size` needs `target_batch_time`, under which sweeps adapt
    /// by time instead, so only the largest batch there is bounds it.
    fn longest(&self) -> u32 {
        self.base.saturating_mul(SWEEP_GROWTH).min(MAX_BATCH_SIZE)
    }

    /// The walk for the next batch; a changed `batch_size` (a PATCH) starts over from it.
    pub fn next(&mut self, spec_batch_size: u32) -> u32 {
        if spec_batch_size != self.base {
            *self = SweepWalk::new(spec_batch_size);
            self.reason = format!("sweep: batch_size changed to {spec_batch_size}");
        }
        self.current
    }

    /// Learns from a committed batch that walked `scanned` of `limit` keys and updated
    /// `updated` rows.
    pub fn observe(&mut self, scanned: u64, updated: u64, limit: u32) {
        let next = if updated > 0 {
            self.base
        } else if scanned >= u64::from(limit) {
            self.current.saturating_mul(2).min(self.longest())
        } else {
            // The partition's last, short walk: nothing to learn.
            self.current
        };
        if next != self.current {
            self.reason = if updated > 0 {
                format!(
                    "sweep: {} → {next}: the last walk updated {updated} rows",
                    self.current
                )
            } else {
                format!(
                    "sweep: {} → {next}: nothing pending in the last {scanned} keys",
                    self.current
                )
            };
            self.current = next;
        }
    }

    /// After a lock or statement timeout: walk `batch_size` again (a grown walk that met a run
    /// of pending rows writes them all in one batch, which the timeouts were not set for).
    pub fn restart(&mut self, cause: &str) {
        self.reason = format!("sweep: {} → {}: after {cause}", self.current, self.base);
        self.current = self.base;
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn current(&self) -> u32 {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_toward_the_target_time() {
        let mut sizer = Sizer::new(Duration::from_millis(200), 10, 100_000, 1000);
        // The database does 20,000 rows/s: 200 ms means 4,000 rows.
        for _ in 0..10 {
            let size = sizer.next(1000);
            sizer.observe(
                u64::from(size),
                size,
                Duration::from_secs_f64(f64::from(size) / 20_000.0),
            );
        }
        assert_eq!(sizer.current(), 4000);
        // Load doubles the time per row: the size follows down.
        for _ in 0..10 {
            let size = sizer.next(1000);
            sizer.observe(
                u64::from(size),
                size,
                Duration::from_secs_f64(f64::from(size) / 10_000.0),
            );
        }
        assert!(
            (1990..=2010).contains(&sizer.current()),
            "{}",
            sizer.current()
        );
    }

    #[test]
    fn growth_is_bounded_and_sizes_stay_within_limits() {
        let mut sizer = Sizer::new(Duration::from_millis(200), 50, 3000, 100);
        sizer.observe(100, 100, Duration::from_millis(1));
        assert_eq!(sizer.current(), 200, "at most doubling per batch");
        for _ in 0..20 {
            let size = sizer.next(100);
            sizer.observe(u64::from(size), size, Duration::from_millis(1));
        }
        assert_eq!(sizer.current(), 3000);
        sizer.halve("lock_timeout");
        assert_eq!(sizer.current(), 1500);
        assert!(sizer.reason().contains("halved after lock_timeout"));
        for _ in 0..10 {
            sizer.halve("statement_timeout");
        }
        assert_eq!(sizer.current(), 50);
    }

    #[test]
    fn partial_batches_do_not_count_and_a_patch_restarts() {
        let mut sizer = Sizer::new(Duration::from_millis(200), 10, 100_000, 1000);
        sizer.observe(3, 1000, Duration::from_millis(100));
        assert_eq!(sizer.current(), 1000);
        assert_eq!(sizer.next(500), 500);
        assert!(sizer.reason().contains("batch_size changed"));
    }

    #[test]
    fn a_sweep_walk_doubles_while_nothing_is_pending_and_drops_back_when_rows_are() {
        let mut walk = SweepWalk::new(1000);
        let mut sizes = Vec::new();
        for _ in 0..8 {
            let size = walk.next(1000);
            sizes.push(size);
            walk.observe(u64::from(size), 0, size);
        }
        assert_eq!(
            sizes,
            [1000, 2000, 4000, 8000, 16_000, 16_000, 16_000, 16_000],
            "doubling up to {SWEEP_GROWTH} × batch_size"
        );
        walk.observe(16_000, 3, 16_000);
        assert_eq!(walk.current(), 1000, "rows pending: back to batch_size");
        assert!(
            walk.reason().contains("updated 3 rows"),
            "{}",
            walk.reason()
        );
        walk.observe(1000, 0, 1000);
        walk.observe(2000, 0, 2000);
        assert_eq!(walk.current(), 4000);
        walk.restart("statement_timeout");
        assert_eq!(walk.current(), 1000, "a timeout: back to batch_size");
        assert!(walk.reason().contains("after statement_timeout"));
        walk.observe(400, 0, 1000);
        assert_eq!(walk.current(), 1000, "a short last walk teaches nothing");
        // The largest batch there is bounds it, and a PATCH of batch_size starts over.
        let mut walk = SweepWalk::new(300_000);
        walk.observe(300_000, 0, 300_000);
        walk.observe(600_000, 0, 600_000);
        assert_eq!(walk.current(), MAX_BATCH_SIZE);
        assert_eq!(walk.next(500), 500);
        assert!(walk.reason().contains("batch_size changed"));
    }
}
