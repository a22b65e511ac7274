//! Measured rates, from the database's own counters: every process samples the total rows
//! scanned of each running job once a second, so the rate (and the ETA built on it) is the
//! job's rate across all replicas, not just this process's share.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::plumbing::db::{self, Db, Schema};
use crate::store::progress;

/// How far back a rate looks.
const WINDOW: Duration = Duration::from_secs(15);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// (when, total rows scanned), oldest first, within the window.
type Series = VecDeque<(Instant, i64)>;

#[derive(Clone, Default)]
pub struct Rates {
    /// Per job id.
    samples: Arc<Mutex<HashMap<i64, Series>>>,
}

impl Rates {
    pub fn record(&self, job_id: i64, at: Instant, scanned: i64) {
        let mut samples = self.samples.lock().expect("rates lock poisoned");
        let series = samples.entry(job_id).or_default();
        series.push_back((at, scanned));
        while series
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > WINDOW)
        {
            series.pop_front();
        }
    }

    /// Rows scanned per second over the window; 0 without two samples.
    pub fn rows_per_second(&self, job_id: i64) -> f64 {
        let samples = self.samples.lock().expect("rates lock poisoned");
        let Some(series) = samples.get(&job_id) else {
            return 0.0;
        };
        match (series.front(), series.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => {
                (r1 - r0).max(0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Forgets jobs that are no longer running.
    fn retain(&self, running: &[i64]) {
        self.samples
            .lock()
            .expect("rates lock poisoned")
            .retain(|id, _| running.contains(id));
    }

    /// Samples until `stop`; database errors are skipped (the next sample retries).
    pub async fn sample(self, pool: Db, schema: Schema, stop: CancellationToken) {
        loop {
            match progress::scanned_by_running_job(&pool, &schema).await {
                Ok(totals) => {
                    let now = Instant::now();
                    let running: Vec<i64> = totals.iter().map(|(id, _)| *id).collect();
                    self.retain(&running);
                    for (id, scanned) in totals {
                        self.record(id, now, scanned);
                    }
                }
                Err(e) => tracing::debug!(error = %db::message(&e), "rate sample skipped"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_slope_over_the_window() {
        let rates = Rates::default();
        let t0 = Instant::now();
        rates.record(1, t0, 0);
        assert_eq!(rates.rows_per_second(1), 0.0);
        rates.record(1, t0 + Duration::from_secs(2), 1000);
        assert!((rates.rows_per_second(1) - 500.0).abs() < 1e-9);
        // Samples older than the window drop out.
        rates.record(1, t0 + Duration::from_secs(20), 1000);
        assert_eq!(rates.rows_per_second(1), 0.0);
    }
}
