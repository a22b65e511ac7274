//! The "how much and how long" part of `check`'s plan: the rows the job walks and the rows
//! still matching `where` (counted exactly on a small table, the planner's estimate on a large
//! one), and a duration from the rate limit or from a timed read-only sample of the key walk.
//! Everything here runs in READ ONLY transactions with a short statement timeout.

use std::time::{Duration, Instant};

use sqlx::{Postgres, Transaction};

use crate::engine::catalog::ResolvedJob;
use crate::engine::worker::rest_after;
use crate::plumbing::db::{self, sql, Db};
use crate::spec::JobSpec;
use crate::status::text;

/// Below this many rows (by the planner's estimate) a table is counted exactly: a count over
/// it takes well under a second.
pub const EXACT_BELOW: i64 = 100_000;

/// Batches' worth of keys the timed sample walks.
const SAMPLE_BATCHES: u64 = 3;

/// How long a count or the sample may take before `check` falls back to the estimate.
const READ_TIMEOUT: &str = "10s";

/// A number of rows, and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    Exact(i64),
    Estimated(i64),
}

impl Rows {
    pub fn value(self) -> i64 {
        match self {
            Rows::Exact(n) | Rows::Estimated(n) => n,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Rows::Exact(n) => format!("{} (counted)", text::signed_count(n)),
            Rows::Estimated(n) => format!(
                "about {} (the planner's estimate; tables of {} rows or more are not counted)",
                text::signed_count(n),
                text::count(EXACT_BELOW as u64)
            ),
        }
    }
}

/// The rows the job walks (every key) and those that still match `where`.
pub struct Sizes {
    pub table: Rows,
    pub pending: Rows,
}

/// A timed walk of the first few batches' keys, `where` and `set` evaluated, nothing written.
pub struct Sample {
    pub keys: u64,
    pub elapsed: Duration,
}

async fn read_only(pool: &Db) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    db::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    db::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(READ_TIMEOUT)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The planner's row estimate for `query` (never run: EXPLAIN only plans it).
async fn planned_rows(tx: &mut Transaction<'_, Postgres>, query: &str) -> Result<i64, sqlx::Error> {
    let plan: serde_json::Value = db::query_scalar(sql(format!("EXPLAIN (FORMAT JSON) {query}")))
        .fetch_one(&mut **tx)
        .await?;
    Ok(plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64)
}

async fn count(tx: &mut Transaction<'_, Postgres>, query: &str) -> Result<i64, sqlx::Error> {
    db::query_scalar(sql(format!("SELECT count(*) FROM ({query}) AS rows")))
        .fetch_one(&mut **tx)
        .await
}

pub async fn sizes(pool: &Db, resolved: &ResolvedJob) -> Result<Sizes, sqlx::Error> {
    let every_row = format!("SELECT 1 FROM {}", resolved.sql.table());
    let matching = resolved.sql.matching_rows();
    let mut tx = read_only(pool).await?;
    // The planner's estimate holds even for a table never analyzed (it reads the page count).
    let planned = planned_rows(&mut tx, &every_row)
        .await?
        .max(resolved.estimated_rows);
    if planned < EXACT_BELOW {
        let exact = async {
            let table = count(&mut tx, &every_row).await?;
            let pending = count(&mut tx, &matching).await?;
            Ok::<_, sqlx::Error>((table, pending))
        }
        .await;
        match exact {
            Ok((table, pending)) => {
                return Ok(Sizes {
                    table: Rows::Exact(table),
                    pending: Rows::Exact(pending),
                })
            }
            // Bigger than the statistics said (or `where` is slow): estimate instead.
            Err(e) => tracing::debug!(error = %db::message(&e), "exact count abandoned"),
        }
        tx = read_only(pool).await?;
    }
    let pending = planned_rows(&mut tx, &matching).await?;
    Ok(Sizes {
        table: Rows::Estimated(planned),
        pending: Rows::Estimated(pending.min(planned)),
    })
}

/// Times one read-only walk of the first few batches' keys; an error (a `set` expression that
/// would write, say) is returned as the reason there is no sample.
pub async fn sample(pool: &Db, resolved: &ResolvedJob, spec: &JobSpec) -> Result<Sample, String> {
    let keys = u64::from(spec.batch_size) * SAMPLE_BATCHES;
    let run = async {
        let mut tx = read_only(pool).await?;
        let started = Instant::now();
        let walked: i64 = db::query_scalar(sql(resolved.sql.sample_walk(keys)))
            .fetch_one(&mut *tx)
            .await?;
        Ok::<_, sqlx::Error>(Sample {
            keys: walked.max(0) as u64,
            elapsed: started.elapsed(),
        })
    };
    run.await.map_err(|e| db::message(&e))
}

/// The estimated duration of the job's first pass over `keys` keys, in words.
pub fn duration(spec: &JobSpec, keys: i64, sample: &Result<Sample, String>) -> String {
    let keys = keys.max(0) as f64;
    let batches = (keys / f64::from(spec.batch_size.max(1))).ceil();
    // The rest after a batch that took `busy` seconds, as the worker takes it.
    let rest = |busy: f64| {
        rest_after(Duration::from_secs_f64(busy), &spec.tunables()).map_or(0.0, |d| d.as_secs_f64())
    };
    let sampled = match sample {
        Ok(s) if s.keys > 0 => {
            let work = keys * s.elapsed.as_secs_f64() / s.keys as f64;
            Some(work + batches * rest(work / batches.max(1.0)))
        }
        _ => None,
    };
    let limited = spec.rows_per_second.map(|r| keys / f64::from(r));
    let secs = |s: f64| text::duration(Duration::from_secs_f64(s.max(0.0)));
    let sample_words = match sample {
        Ok(s) => format!(
            "a read-only sample walked {} keys with `where` and `set` evaluated in {}",
            text::count(s.keys),
            text::duration(s.elapsed)
        ),
        Err(reason) => format!("no read-only sample could be taken ({reason})"),
    };
    match (limited, sampled) {
        (Some(limit), Some(fast)) if limit >= fast => format!(
            "about {} for the first pass, set by the rate limit of {} rows/s ({sample_words}, so without the limit it would take about {})",
            secs(limit),
            text::count(u64::from(spec.rows_per_second.unwrap_or(0))),
            secs(fast)
        ),
        (_, Some(fast)) => format!(
            "at least {} for the first pass ({sample_words}; writing the rows, throttling and the window add to it)",
            secs(fast)
        ),
        (Some(limit), None) => format!(
            "about {} for the first pass, set by the rate limit ({sample_words})",
            secs(limit)
        ),
        (None, None) => format!("unknown: no rate limit, and {sample_words}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::check::test_spec as spec;

    fn sampled(keys: u64, millis: u64) -> Result<Sample, String> {
        Ok(Sample {
            keys,
            elapsed: Duration::from_millis(millis),
        })
    }

    #[test]
    fn the_rate_limit_bounds_the_duration_when_it_is_slower() {
        let text = duration(&spec("rows_per_second = 1000"), 60_000, &sampled(3_000, 30));
        assert!(
            text.starts_with("about 1m for the first pass, set by the rate limit of 1,000 rows/s"),
            "{text}"
        );
        assert!(text.contains("it would take about 600ms"), "{text}");
    }

    #[test]
    fn without_a_limit_the_sample_and_pauses_give_a_lower_bound() {
        // 10 batches of 1,000 keys at 1 ms per 100 keys (100 ms), plus 10 pauses of 1 s.
        let text = duration(&spec("pause = \"1s\""), 10_000, &sampled(3_000, 30));
        assert!(
            text.starts_with("at least 10s for the first pass"),
            "{text}"
        );
        // At a duty cycle of 0.25 each 1 s of batches (10 of 100 ms) rests 3 s more; a
        // longer pause wins over the duty cycle's rest.
        let text = duration(&spec("duty_cycle = 0.25"), 100_000, &sampled(3_000, 30));
        assert!(text.starts_with("at least 4s for the first pass"), "{text}");
        let both = spec("duty_cycle = 0.25\npause = \"1s\"");
        let text = duration(&both, 10_000, &sampled(3_000, 30));
        assert!(
            text.starts_with("at least 10s for the first pass"),
            "{text}"
        );
        let unknown = duration(&spec(""), 10, &Err("permission denied".into()));
        assert!(
            unknown.contains("unknown") && unknown.contains("permission denied"),
            "{unknown}"
        );
    }

    #[test]
    fn rows_say_how_they_were_obtained() {
        assert_eq!(Rows::Exact(1234).describe(), "1,234 (counted)");
        assert!(Rows::Estimated(2_000_000)
            .describe()
            .starts_with("about 2,000,000 (the planner's estimate"));
    }
}
