//! The batch statement, whole: the SQL generated from a job spec (every identifier comes from
//! the catalog and is quoted; the author's expressions are wrapped in parentheses on lines of
//! their own so a trailing `--` comment cannot swallow the rest of the statement), the daemon's
//! fence and checkpoint around it (`fence`), and the one row it returns ([`BatchRow`]).
//! Nothing outside this module knows the statement's parts or its column names.

mod fence;
mod sync;
#[cfg(test)]
mod tests;
mod verify;

pub use sync::{sync_name, SyncTrigger};
pub use verify::VerifyRow;

use crate::plumbing::db::{quote_ident, Schema};
use crate::spec::Tunables;
use crate::store::jobs::LiveTunables;
use crate::store::JobState;

/// A key column as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    /// `format_type()` of the column: used to cast bound text back to the key's type.
    pub type_sql: String,
}

/// How a batch's walk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lower {
    /// From the first key of the table.
    Unbounded,
    /// After the partition's lower bound on the first key column (nothing processed yet).
    Partition,
    /// After the cursor: a row-value comparison over the whole key.
    Cursor,
}

/// Builds the batch statement and its helpers for one resolved job.
#[derive(Debug, Clone)]
pub struct BatchSql {
    /// The table's schema and name as the catalog has them (unquoted).
    schema_name: String,
    table_name: String,
    table: String,
    key: Vec<KeyColumn>,
    set: Vec<(String, String)>,
    filter: Option<String>,
    /// `filter` calls no volatile function (the catalog found out), so the walk and the update
    /// judge each row alike and a walk that matched nothing may skip the update's scan.
    filter_is_stable: bool,
}

/// Names of the batch statement's parts. The checkpoint may read `LAST` (one row: the last
/// walked key as `key text[]`, `n`, how many were walked, and `u`, how many matched), through
/// `SCANNED` and `UPDATED_COUNT`; `BATCH` is the walk itself.
const BATCH: &str = "\"__backfilld_batch\"";
const LAST: &str = "\"__backfilld_last\"";
const UPDATED: &str = "\"__backfilld_updated\"";
const MATCHES: &str = "\"__backfilld_matches\"";
/// Keys the batch walked, counted once (in the last-key CTE).
const SCANNED: &str = "coalesce((SELECT n FROM \"__backfilld_last\"), 0)";
/// Rows the batch updated, counted once: the checkpoint and the result both read it.
const UPDATED_COUNT: &str = "coalesce((SELECT u FROM \"__backfilld_last\"), 0)";

/// The one row a batch statement returns. Without the fence (as `check` prepares it) the
/// fence's columns are NULL and `checkpointed` is 1.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BatchRow {
    /// Keys walked.
    pub scanned: i64,
    /// Walked rows that matched `where` (all of them without one), and so were updated.
    pub updated: i64,
    /// The last key walked, one text per key column; NULL when nothing was walked.
    pub last_key: Option<Vec<String>>,
    /// 1 when the checkpoint moved.
    pub checkpointed: i64,
    /// The job's state under the fence; NULL when the lease token is not ours any more.
    pub job_state: Option<JobState>,
    /// The cursor the fence found.
    pub stored_cursor: Option<Vec<String>>,
    /// The live tunables the fence read, for the next batch.
    pub batch_size: Option<i32>,
    pub rows_per_second: Option<i32>,
    pub pause_us: Option<i64>,
    pub duty_cycle_percent: Option<i16>,
}

impl BatchRow {
    /// Its columns in order: `catalog` checks every prepared variant against this list, so an
    /// expression that escaped its parentheses (and changed the result's shape) is refused.
    pub const COLUMNS: [&'static str; 10] = [
        "scanned",
        "updated",
        "last_key",
        "checkpointed",
        "job_state",
        "stored_cursor",
        "batch_size",
        "rows_per_second",
        "pause_us",
        "duty_cycle_percent",
    ];

    /// The live tunables the fence read (none without the fence).
    pub fn tunables(&self) -> Option<Tunables> {
        let batch_size = self.batch_size?;
        Some(Tunables::from(LiveTunables {
            batch_size,
            rows_per_second: self.rows_per_second,
            pause_us: self.pause_us,
            duty_cycle_percent: self.duty_cycle_percent,
        }))
    }
}

pub(super) fn batch_key(i: usize) -> String {
    format!("\"__backfilld_k{i}\"")
}

/// Integer types, whose `max()` lets the walk's last key come from a streaming aggregate.
fn is_integer(type_sql: &str) -> bool {
    matches!(type_sql, "smallint" | "integer" | "bigint")
}

/// An author's expression, isolated on its own lines inside parentheses.
pub(super) fn wrap(expression: &str) -> String {
    format!("(\n{expression}\n)")
}

impl BatchSql {
    /// `schema` and `table` are the catalog's names (unquoted); `set` maps column → expression.
    pub fn new(
        schema: &str,
        table: &str,
        key: Vec<KeyColumn>,
        set: impl IntoIterator<Item = (String, String)>,
        filter: Option<String>,
    ) -> BatchSql {
        BatchSql {
            schema_name: schema.to_string(),
            table_name: table.to_string(),
            table: format!("{}.{}", quote_ident(schema), quote_ident(table)),
            key,
            set: set.into_iter().collect(),
            filter,
            filter_is_stable: false,
        }
    }

    /// Marks `where` as calling no volatile function: the batch may then skip the update's
    /// scan when its walk matched nothing.
    pub fn with_stable_filter(mut self, stable: bool) -> BatchSql {
        self.filter_is_stable = stable;
        self
    }

    /// The quoted, schema-qualified table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Where a walk starts (`None` from the table's first key), numbering its parameters with
    /// `next`.
    fn lower_condition(
        &self,
        lower: Lower,
        next: &mut dyn FnMut() -> (usize, String),
    ) -> Option<String> {
        let first = &self.key[0];
        let first_name = quote_ident(&first.name);
        match lower {
            Lower::Unbounded => None,
            Lower::Partition => Some(format!(
                "{first_name} > {}::text::{}",
                next().1,
                first.type_sql
            )),
            Lower::Cursor => {
                let values: Vec<String> = self
                    .key
                    .iter()
                    .map(|k| format!("{}::text::{}", next().1, k.type_sql))
                    .collect();
                Some(if self.key.len() == 1 {
                    format!("{first_name} > {}", values[0])
                } else {
                    format!("({}) > ({})", self.key_list(), values.join(", "))
                })
            }
        }
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|k| quote_ident(&k.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The one statement a batch runs, returning one [`BatchRow`]. Parameters, in order: the
    /// lower bound (one text per key column for `Cursor`, one for `Partition`, none for
    /// `Unbounded`), the upper bound on the first key column if `upper`, the batch size (int8),
    /// then, with `fence` (the daemon's schema), the fence's: job id, partition index, lease
    /// token, lease TTL in ms, and the cursor the worker expects (see the `fence` module).
    ///
    /// The walk takes the next keys in key order from the key's index; the UPDATE then covers
    /// the same keys as one index range, `(cursor, last key]`, which keeps the plan a bounded
    /// index scan whatever the batch size (a join against the walked keys lets the planner pick
    /// a merge join that reads the index from its first entry, a cost that grows with progress).
    /// Both read one snapshot, so the range holds exactly the walked keys.
    pub fn batch(&self, lower: Lower, upper: bool, fence: Option<&Schema>) -> String {
        let mut param = 0;
        let mut next = || {
            param += 1;
            (param, format!("${param}"))
        };
        let first = &self.key[0];
        let first_name = quote_ident(&first.name);
        let lower_condition = self.lower_condition(lower, &mut next);
        let mut walk_conditions: Vec<String> = lower_condition.iter().cloned().collect();
        if upper {
            walk_conditions.push(format!(
                "{first_name} <= {}::text::{}",
                next().1,
                first.type_sql
            ));
        }
        let (limit_number, limit) = next();
        let mut select_keys: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS {}", quote_ident(&k.name), batch_key(i)))
            .collect();
        // Which walked rows need the update, read in the walk: counting them there costs less
        // than RETURNING a row per update to count afterwards.
        if let Some(filter) = &self.filter {
            select_keys.push(format!("{} AS {MATCHES}", wrap(filter)));
        }
        let matched = |over: &str| match &self.filter {
            Some(_) => format!("count(*) FILTER (WHERE {MATCHES}){over}"),
            None => format!("count(*){over}"),
        };
        let assignments: Vec<String> = self
            .set
            .iter()
            .map(|(column, expression)| format!("{} = {}", quote_ident(column), wrap(expression)))
            .collect();
        let last_of = |i: usize| format!("(SELECT {} FROM {LAST})", batch_key(i));
        let upto_last = if self.key.len() == 1 {
            format!("{first_name} <= {}", last_of(0))
        } else {
            let lasts: Vec<String> = (0..self.key.len()).map(last_of).collect();
            format!("({}) <= ({})", self.key_list(), lasts.join(", "))
        };
        let range: Vec<String> = lower_condition.into_iter().chain([upto_last]).collect();
        let mut update_conditions = Vec::new();
        if self.filter.is_some() && self.filter_is_stable {
            // A walk that found no row matching `where` skips the update's own scan of its range
            // (a one-time filter on an init plan): under the statement's one snapshot that scan
            // would find none either. A sweep is mostly such walks, and the scan would double
            // their cost. Not with a volatile `where` (random(), a function that reads with
            // its own snapshot): the update could judge a row the walk passed over.
            update_conditions.push(format!("(SELECT u FROM {LAST}) > 0"));
        }
        update_conditions.extend(range.iter().cloned());
        if let Some(filter) = &self.filter {
            // The key range stands on both sides of the author's text. The text is checked to
            // balance its own parentheses before it gets here (`spec`); were one to slip
            // through, `(range AND (a) OR (b) AND range)` still bounds both branches by the
            // range, because AND binds tighter than OR.
            update_conditions.push(wrap(filter));
            update_conditions.extend(range);
        }
        let last_key: Vec<String> = (0..self.key.len())
            .map(|i| format!("{}::text", batch_key(i)))
            .collect();
        let batch_keys: Vec<String> = (0..self.key.len()).map(batch_key).collect();
        let descending: Vec<String> = batch_keys.iter().map(|k| format!("{k} DESC")).collect();
        // The daemon's parts: the fence gates the walk (no lease, job not running, or a moved
        // cursor: nothing is walked, so nothing is updated), and the checkpoint follows it.
        let parts = fence.map(|schema| fence::Parts::new(schema, limit_number + 1, limit_number));
        if parts.is_some() {
            walk_conditions.push(fence::GO.to_string());
        }
        let where_walk = if walk_conditions.is_empty() {
            String::new()
        } else {
            format!("\n    WHERE {}", walk_conditions.join(" AND "))
        };
        let (fence_cte, checkpoint_cte, fence_columns) = match &parts {
            Some(parts) => (
                format!("{}, ", parts.fence),
                format!(", {}", parts.checkpoint),
                fence::COLUMNS.to_string(),
            ),
            None => (String::new(), String::new(), fence::ABSENT.to_string()),
        };
        // The walked keys' count and last key. For a single integer key, one streaming
        // aggregate over the walk; otherwise the walk is materialized and its last row taken.
        let walk_and_last = if self.key.len() == 1 && is_integer(&first.type_sql) {
            let k = batch_key(0);
            format!(
                "{LAST} AS (\n    SELECT CASE WHEN count(*) > 0 THEN ARRAY[max({k})::text] END AS key, max({k}) AS {k}, count(*) AS n, {matched} AS u\n      FROM (SELECT {select} FROM {table}{where_walk}\n            ORDER BY {order}\n            LIMIT {limit}) AS {BATCH}\n)",
                matched = matched(""),
                select = select_keys.join(", "),
                table = self.table,
                order = self.key_list(),
            )
        } else {
            format!(
                "{BATCH} AS MATERIALIZED (\n    SELECT {select} FROM {table}{where_walk}\n    ORDER BY {order}\n    LIMIT {limit}\n), {LAST} AS (\n    SELECT ARRAY[{last_key}] AS key, {batch_keys}, count(*) OVER () AS n, {matched} AS u FROM {BATCH}\n    ORDER BY {descending} LIMIT 1\n)",
                matched = matched(" OVER ()"),
                select = select_keys.join(", "),
                table = self.table,
                order = self.key_list(),
                batch_keys = batch_keys.join(", "),
                last_key = last_key.join(", "),
                descending = descending.join(", "),
            )
        };
        format!(
            "WITH {fence_cte}{walk_and_last}, {UPDATED} AS (\n    UPDATE {table} SET {assignments}\n    WHERE {update_conditions}\n){checkpoint_cte}\nSELECT {SCANNED}::int8 AS scanned,\n       {UPDATED_COUNT}::int8 AS updated,\n       (SELECT key FROM {LAST}) AS last_key,\n       {fence_columns}",
            table = self.table,
            assignments = assignments.join(",\n        "),
            update_conditions = update_conditions.join("\n      AND "),
        )
    }

    /// Every variant the engine can run, so a check prepares them all.
    pub fn all_variants(&self) -> Vec<String> {
        let mut all = Vec::new();
        for lower in [Lower::Unbounded, Lower::Partition, Lower::Cursor] {
            for upper in [false, true] {
                all.push(self.batch(lower, upper, None));
            }
        }
        all
    }

    /// One expression evaluated over the table, to check it alone and name it in errors.
    pub fn probe_expression(&self, expression: &str) -> String {
        format!(
            "SELECT {} AS value FROM {} LIMIT 0",
            wrap(expression),
            self.table
        )
    }

    /// The rows matching `where` (every row without it), for `check` to estimate or count.
    pub fn matching_rows(&self) -> String {
        match &self.filter {
            Some(filter) => format!("SELECT 1 FROM {} WHERE {}", self.table, wrap(filter)),
            None => format!("SELECT 1 FROM {}", self.table),
        }
    }

    /// The first `keys` keys in walk order with `where` and every `set` expression evaluated,
    /// as the batches would, but updating nothing: `check` times it (in a read-only
    /// transaction) to estimate the job's speed.
    pub fn sample_walk(&self, keys: u64) -> String {
        let mut values = vec![self.key_list()];
        let expressions = self.filter.iter().chain(self.set.iter().map(|(_, e)| e));
        values.extend(
            expressions
                .enumerate()
                .map(|(i, e)| format!("{} AS \"v{i}\"", wrap(e))),
        );
        // `count(sample)` takes the whole row, so the planner cannot drop the expressions as
        // unused outputs of the subquery: they are evaluated as a batch would evaluate them.
        format!(
            "SELECT count(sample) FROM (SELECT {} FROM {} ORDER BY {} LIMIT {keys}) AS sample",
            values.join(", "),
            self.table,
            self.key_list()
        )
    }

    /// The first batch's key walk without the update, for `check` to EXPLAIN.
    pub fn key_walk(&self, batch_size: u32) -> String {
        format!(
            "SELECT {keys} FROM {table} ORDER BY {keys} LIMIT {batch_size}",
            keys = self.key_list(),
            table = self.table
        )
    }
}
