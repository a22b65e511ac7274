//! The daemon's parts of the batch statement: the fence before the walk and the checkpoint
//! after the update, so one autocommit statement checks the lease, writes the rows and moves
//! the cursor. There is no window in which a process that lost its lease could still commit,
//! and no extra round trip.

use super::{LAST, SCANNED, UPDATED_COUNT};
use crate::plumbing::db::Schema;

/// The fence: the partition's progress row, locked only while the lease token is still the
/// worker's, with the job's state, the stored cursor, the live tunables, and `go` (the job is
/// running and the cursor is where the worker expects it).
const FENCE: &str = "\"__backfilld_fence\"";
const CHECKPOINT: &str = "\"__backfilld_checkpoint\"";

/// The walk's condition: without a fence that says go, nothing is walked, so nothing is
/// updated.
pub(super) const GO: &str = "EXISTS (SELECT 1 FROM \"__backfilld_fence\" WHERE go)";

/// The result columns after `scanned, updated, last_key` (see `BatchRow`).
pub(super) const COLUMNS: &str =
    "(SELECT count(*) FROM \"__backfilld_checkpoint\")::int8 AS checkpointed,
       (SELECT job_state FROM \"__backfilld_fence\") AS job_state,
       (SELECT cursor FROM \"__backfilld_fence\") AS stored_cursor,
       (SELECT batch_size FROM \"__backfilld_fence\") AS batch_size,
       (SELECT rows_per_second FROM \"__backfilld_fence\") AS rows_per_second,
       (SELECT pause_us FROM \"__backfilld_fence\") AS pause_us,
       (SELECT duty_cycle_percent FROM \"__backfilld_fence\") AS duty_cycle_percent";

/// The same columns for a statement without the fence (what `check` prepares).
pub(super) const ABSENT: &str =
    "1::int8 AS checkpointed, NULL::text AS job_state, NULL::text[] AS stored_cursor,
       NULL::int4 AS batch_size, NULL::int4 AS rows_per_second, NULL::int8 AS pause_us,
       NULL::int2 AS duty_cycle_percent";

/// The two CTEs, for one statement variant.
pub(super) struct Parts {
    /// `"__backfilld_fence" AS MATERIALIZED (...)`, first in the WITH list.
    pub fence: String,
    /// `"__backfilld_checkpoint" AS (...)`, after the update.
    pub checkpoint: String,
}

impl Parts {
    /// `first` is the number of the first fence parameter (job id, partition index, lease
    /// token, lease TTL in ms, expected cursor) and `limit` the batch size's.
    pub fn new(schema: &Schema, first: usize, limit: usize) -> Parts {
        let (job, partition, token, ttl, cursor) =
            (first, first + 1, first + 2, first + 3, first + 4);
        let s = &schema.q;
        Parts {
            // Locks the partition's row only while the token is ours; the job's state and
            // the live tunables come along for the worker's next batch.
            fence: format!(
                "{FENCE} AS MATERIALIZED (
    SELECT p.cursor, j.state AS job_state, j.batch_size, j.rows_per_second, j.pause_us,
           j.duty_cycle_percent,
           (j.state = 'running' AND p.cursor IS NOT DISTINCT FROM ${cursor}::text[]) AS go
      FROM {s}.progress p JOIN {s}.jobs j ON j.id = p.job_id
     WHERE p.job_id = ${job} AND p.partition_index = ${partition} AND p.lease_token = ${token}
       FOR UPDATE OF p
)"
            ),
            checkpoint: format!(
                "{CHECKPOINT} AS (
    UPDATE {s}.progress
       SET cursor = coalesce((SELECT key FROM {LAST}), cursor),
           rows_scanned = rows_scanned + {SCANNED},
           rows_updated = rows_updated + {UPDATED_COUNT},
           batches = batches + 1,
           state = CASE WHEN {SCANNED} < ${limit} THEN 'done' ELSE state END,
           finished_at = CASE WHEN {SCANNED} < ${limit} THEN now() ELSE finished_at END,
           lease_expires_at = now() + ${ttl} * interval '1 millisecond',
           updated_at = now()
     WHERE job_id = ${job} AND partition_index = ${partition} AND lease_token = ${token}
       AND {GO}
    RETURNING 1
)"
            ),
        }
    }
}
