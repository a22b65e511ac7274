//! Counting the rows that still match a job's `where`: `backfilld verify`, and the end of a
//! job's last pass. A keyset walk over the whole key range in short chunks, each one statement
//! in its own snapshot, so it holds no snapshot for longer than a chunk (a long one would keep
//! vacuum from cleaning up behind the application) and reads only what the key's index gives.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::engine::statement::{BatchSql, Lower, VerifyRow};
use crate::plumbing::db;

/// Keys per chunk: a few milliseconds of reading each.
pub const CHUNK: i64 = 10_000;

/// What a walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Rows still matching `where`.
    pub pending: i64,
    /// Up to 10 of their keys.
    pub samples: Vec<String>,
    /// Keys walked.
    pub scanned: i64,
    pub elapsed: Duration,
}

/// Walks the whole key range of `sql`'s table; `None` when the job has no `where`.
pub async fn count_pending(
    conn: &mut PgConnection,
    sql: &BatchSql,
) -> Result<Option<Verified>, sqlx::Error> {
    let (Some(first), Some(next)) = (
        sql.verify_chunk(Lower::Unbounded),
        sql.verify_chunk(Lower::Cursor),
    ) else {
        return Ok(None);
    };
    let started = Instant::now();
    let mut verified = Verified::default();
    let mut cursor: Option<Vec<String>> = None;
    loop {
        // A short transaction per chunk: no snapshot outlives it, and a transaction pooler
        // keeps each chunk's statement on one server.
        let mut tx = conn.begin().await?;
        let row: VerifyRow = match &cursor {
            None => {
                db::query_as(AssertSqlSafe(first.clone()))
                    .bind(CHUNK)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Some(cursor) => {
                let mut query = db::query_as(AssertSqlSafe(next.clone()));
                for value in cursor {
                    query = query.bind(value.clone());
                }
                query.bind(CHUNK).fetch_one(&mut *tx).await?
            }
        };
        tx.commit().await?;
        verified.scanned += row.scanned;
        verified.pending += row.pending;
        let room = 10usize.saturating_sub(verified.samples.len());
        verified.samples.extend(row.samples.into_iter().take(room));
        match row.last_key {
            Some(last) if row.scanned == CHUNK => cursor = Some(last),
            _ => break,
        }
    }
    verified.elapsed = started.elapsed();
    Ok(Some(verified))
}
