//! The read-only walk that counts rows still matching `where` (`backfilld verify`, and the end
//! of a job's last pass): one short statement per chunk of keys, so no snapshot is held
//! longer than a chunk and nothing like `count(*)` runs over the whole table.

use super::{batch_key, wrap, BatchSql, Lower, MATCHES};
use crate::plumbing::db::quote_ident;

/// What one chunk found.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VerifyRow {
    /// Keys walked.
    pub scanned: i64,
    /// Of those, rows that still match `where`.
    pub pending: i64,
    /// Up to 10 of their keys, as text (`(a, b)` for a composite key).
    pub samples: Vec<String>,
    /// The last key walked; NULL when the chunk was empty (the walk is over).
    pub last_key: Option<Vec<String>>,
}

impl BatchSql {
    /// The chunk statement, `None` without `where`. Parameters: the cursor (one text per key
    /// column) for `Lower::Cursor`, none for `Lower::Unbounded`; then the chunk size (int8).
    pub fn verify_chunk(&self, lower: Lower) -> Option<String> {
        let filter = self.filter.as_ref()?;
        let mut param = 0;
        let mut next = || {
            param += 1;
            (param, format!("${param}"))
        };
        let condition = self
            .lower_condition(lower, &mut next)
            .map(|c| format!("\n     WHERE {c}"))
            .unwrap_or_default();
        let limit = next().1;
        let keys: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS {}", quote_ident(&k.name), batch_key(i)))
            .collect();
        let walked: Vec<String> = (0..self.key.len()).map(batch_key).collect();
        let as_text: Vec<String> = walked.iter().map(|k| format!("{k}::text")).collect();
        let sample = if walked.len() == 1 {
            as_text[0].clone()
        } else {
            format!("'(' || concat_ws(', ', {}) || ')'", as_text.join(", "))
        };
        let descending: Vec<String> = walked.iter().map(|k| format!("{k} DESC")).collect();
        Some(format!(
            "WITH walk AS MATERIALIZED (
    SELECT {keys}, {filter} AS {MATCHES}
      FROM {table}{condition}
     ORDER BY {order}
     LIMIT {limit}
)
SELECT (SELECT count(*) FROM walk)::int8 AS scanned,
       (SELECT count(*) FROM walk WHERE {MATCHES})::int8 AS pending,
       ARRAY(SELECT {sample} FROM walk WHERE {MATCHES} ORDER BY {walked} LIMIT 10) AS samples,
       (SELECT ARRAY[{as_text}] FROM walk ORDER BY {descending} LIMIT 1) AS last_key",
            keys = keys.join(", "),
            filter = wrap(filter),
            table = self.table,
            order = self.key_list(),
            walked = walked.join(", "),
            as_text = as_text.join(", "),
            descending = descending.join(", "),
        ))
    }
}
