//! Splitting a job's key range into partitions: even arithmetic splits for integer and uuid keys,
//! sampled quantiles for any other orderable key. Bounds are on the first key column, as text;
//! a partition covers keys in `(lower, upper]`, and the last one has no upper bound so rows
//! inserted above the old maximum while the job runs are processed too.

use sqlx::PgConnection;

use crate::engine::catalog::{KeyKind, ResolvedJob};
use crate::plumbing::db::{self, quote_ident, sql};

/// `(lower, upper)` per partition; `None` is unbounded.
pub type Ranges = Vec<(Option<String>, Option<String>)>;

pub struct Plan {
    pub ranges: Ranges,
    /// Rows expected to be walked: the denominator of progress.
    pub estimated_rows: i64,
}

pub async fn plan(
    conn: &mut PgConnection,
    job: &ResolvedJob,
    partitions: u32,
) -> Result<Plan, sqlx::Error> {
    let estimated_rows = estimate_rows(conn, job).await?;
    if partitions <= 1 {
        return Ok(Plan {
            ranges: vec![(None, None)],
            estimated_rows,
        });
    }
    let first = quote_ident(&job.key[0].name);
    let table = job.sql.table();
    let uppers: Vec<String> = match job.key_kind {
        KeyKind::Integer => {
            let (min, max): (Option<i64>, Option<i64>) = db::query_as(sql(format!(
                "SELECT min({first})::int8, max({first})::int8 FROM {table}"
            )))
            .fetch_one(&mut *conn)
            .await?;
            match (min, max) {
                (Some(min), Some(max)) => integer_uppers(min, max, partitions),
                _ => Vec::new(),
            }
        }
        KeyKind::Uuid => uuid_uppers(partitions),
        KeyKind::Other => sampled_uppers(conn, job, partitions, estimated_rows).await?,
    };
    Ok(Plan {
        ranges: ranges_from_uppers(uppers),
        estimated_rows,
    })
}

/// `reltuples` when the table has been analyzed; otherwise one count, taken once at planning
/// (never in the batch loop).
async fn estimate_rows(conn: &mut PgConnection, job: &ResolvedJob) -> Result<i64, sqlx::Error> {
    if job.estimated_rows > 0 {
        return Ok(job.estimated_rows);
    }
    db::query_scalar(sql(format!("SELECT count(*) FROM {}", job.sql.table())))
        .fetch_one(conn)
        .await
}

/// Inclusive upper bounds splitting `[min, max]` into `n` even ranges (fewer when the range is
/// smaller than `n`).
pub fn integer_uppers(min: i64, max: i64, n: u32) -> Vec<String> {
    let span = i128::from(max) - i128::from(min) + 1;
    let mut uppers: Vec<String> = (1..n as i128)
        .map(|i| i128::from(min) + span * i / n as i128 - 1)
        .filter(|u| *u >= i128::from(min) && *u < i128::from(max))
        .map(|u| u.to_string())
        .collect();
    uppers.dedup();
    uppers
}

/// Inclusive upper bounds splitting the 128-bit uuid space into `n` even ranges; PostgreSQL
/// orders uuids as unsigned big-endian numbers.
pub fn uuid_uppers(n: u32) -> Vec<String> {
    (1..n as u128)
        .map(|i| {
            let upper = (u128::MAX / n as u128) * i + (i - 1).min(u128::MAX % n as u128);
            uuid::Uuid::from_u128(upper).to_string()
        })
        .collect()
}

/// Quantiles of a sample of the first key column, for keys with no arithmetic.
async fn sampled_uppers(
    conn: &mut PgConnection,
    job: &ResolvedJob,
    partitions: u32,
    estimated_rows: i64,
) -> Result<Vec<String>, sqlx::Error> {
    // Sample about 100k rows: enough for even quantiles, cheap on a 50M-row table.
    let percent = if estimated_rows <= 100_000 {
        100.0
    } else {
        (100_000.0 / estimated_rows as f64 * 100.0).clamp(0.01, 100.0)
    };
    let fractions: Vec<f64> = (1..partitions)
        .map(|i| f64::from(i) / f64::from(partitions))
        .collect();
    let first = quote_ident(&job.key[0].name);
    let sampled: Option<Vec<String>> = db::query_scalar(sql(format!(
        "SELECT (percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY {first}))::text[]
           FROM {} TABLESAMPLE SYSTEM ($2)",
        job.sql.table()
    )))
    .bind(&fractions)
    .bind(percent)
    .fetch_one(conn)
    .await?;
    let mut uppers = sampled.unwrap_or_default();
    uppers.dedup();
    Ok(uppers)
}

fn ranges_from_uppers(uppers: Vec<String>) -> Ranges {
    let mut ranges = Vec::with_capacity(uppers.len() + 1);
    let mut lower = None;
    for upper in uppers {
        ranges.push((lower.clone(), Some(upper.clone())));
        lower = Some(upper);
    }
    ranges.push((lower, None));
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_split_is_even_and_covers_everything() {
        assert_eq!(integer_uppers(1, 100, 4), vec!["25", "50", "75"]);
        assert_eq!(integer_uppers(1, 2, 4), vec!["1"]);
        assert!(integer_uppers(5, 5, 4).is_empty());
        assert_eq!(integer_uppers(i64::MIN, i64::MAX, 2), vec!["-1"]);
        let ranges = ranges_from_uppers(integer_uppers(1, 100, 4));
        assert_eq!(ranges.len(), 4);
        assert_eq!(ranges[0], (None, Some("25".to_string())));
        assert_eq!(ranges[3], (Some("75".to_string()), None));
    }

    #[test]
    fn uuid_split_is_ordered() {
        let uppers = uuid_uppers(4);
        assert_eq!(uppers.len(), 3);
        assert!(uppers.windows(2).all(|w| w[0] < w[1]));
        assert!(uppers[1].starts_with("7fffffff") || uppers[1].starts_with("80000000"));
    }
}
