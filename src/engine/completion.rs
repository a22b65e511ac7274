//! The end of a pass, from the engine's side: the store decides whether the job completes or
//! sweeps again (`store::passes`); when its last pass updated rows, the engine counts what
//! still matches `where` and completes the job with that count, a warning and an event.

use sqlx::PgConnection;

use crate::engine::statement::BatchSql;
use crate::engine::verify;
use crate::plumbing::db::Schema;
use crate::store::passes::{self, Finish};

/// Ends the job's current pass if every partition is done. True when the job is now completed.
pub async fn finish(
    conn: &mut PgConnection,
    schema: &Schema,
    sql: &BatchSql,
    job: (i64, &str),
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let (job_id, name) = job;
    match passes::finish_pass(conn, schema, job_id, actor).await? {
        Finish::NotYet => Ok(false),
        Finish::Completed => Ok(true),
        Finish::NextPass(pass) => {
            tracing::info!(job = %name, pass, "sweeping the key range again for rows that still match `where`");
            Ok(false)
        }
        Finish::CountPending { pass } => {
            let pending = verify::count_pending(conn, sql)
                .await?
                .map_or(0, |v| v.pending);
            let completed =
                passes::complete_with_pending(conn, schema, job_id, pass, pending, actor).await?;
            if completed && pending > 0 {
                tracing::warn!(
                    job = %name,
                    passes = pass,
                    pending_rows = pending,
                    "completed with rows still matching `where`: run `backfilld verify`, or the job again with more passes"
                );
            }
            Ok(completed)
        }
    }
}
