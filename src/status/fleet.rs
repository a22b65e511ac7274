//! A job over several target databases seen as one: each database's part
//! ([`DatabaseView`]) and the totals over them ([`JobView::combine`]).

use crate::status::view::{DatabaseView, JobView};
use crate::store::JobState;
use chrono::Utc;

/// Which state the whole job shows, most urgent first: a failure anywhere needs a person;
/// work still going on anywhere means the job is not done.
const PRECEDENCE: [JobState; 6] = [
    JobState::Failed,
    JobState::Running,
    JobState::Queued,
    JobState::Paused,
    JobState::Cancelled,
    JobState::Completed,
];

impl JobView {
    /// The job over all its databases (`members`: each database's own view, or why it cannot
    /// be read), with their parts in `databases`. `None` when no database could be read.
    pub fn combine(members: Vec<(String, Result<JobView, String>)>) -> Option<JobView> {
        let read: Vec<(&String, &JobView)> = (members.iter())
            .filter_map(|(name, view)| view.as_ref().ok().map(|v| (name, v)))
            .collect();
        let mut total = read.first()?.1.clone();
        let state = (PRECEDENCE.iter())
            .find(|s| read.iter().any(|(_, v)| v.state == **s))
            .copied()
            .unwrap_or(total.state);
        let sum = |f: fn(&JobView) -> i64| read.iter().map(|(_, v)| f(v)).sum::<i64>();
        let (done, expected) = (sum(|v| v.pass_rows.0), sum(|v| v.pass_rows.1).max(1));
        let rate: f64 = read.iter().map(|(_, v)| v.rate_rows_per_second).sum();
        total.state = state;
        total.rows_scanned = sum(|v| v.rows_scanned);
        total.rows_updated = sum(|v| v.rows_updated);
        let all_completed =
            read.len() == members.len() && read.iter().all(|(_, v)| v.state == JobState::Completed);
        total.progress = if all_completed {
            1.0
        } else {
            (done as f64 / expected as f64).clamp(0.0, 1.0)
        };
        total.pass = read.iter().map(|(_, v)| v.pass).max().unwrap_or(1);
        total.pending_rows = (read.iter())
            .map(|(_, v)| v.pending_rows)
            .sum::<Option<i64>>();
        total.rate_rows_per_second = (rate * 10.0).round() / 10.0;
        total.eta_seconds = match state {
            _ if all_completed => Some(0.0),
            JobState::Running if rate > 0.0 => Some((expected - done).max(0) as f64 / rate),
            _ => None,
        };
        total.throttled = read.iter().find_map(|(_, v)| v.throttled.clone());
        total.throttle_detail = read.iter().find_map(|(_, v)| v.throttle_detail.clone());
        total.last_error = (members.iter()).find_map(|(name, view)| match view {
            Err(error) => Some(format!("database {name}: {error}")),
            Ok(v) => v
                .last_error
                .as_ref()
                .map(|e| format!("database {name}: {e}")),
        });
        total.created_at = read
            .iter()
            .map(|(_, v)| v.created_at)
            .min()
            .unwrap_or_else(Utc::now);
        total.started_at = read.iter().filter_map(|(_, v)| v.started_at).min();
        total.finished_at = if all_completed {
            read.iter().filter_map(|(_, v)| v.finished_at).max()
        } else {
            None
        };
        total.pass_rows = (done, expected);
        total.partitions = (read.iter())
            .flat_map(|(name, v)| {
                v.partitions.iter().map(|p| {
                    let mut p = p.clone();
                    p.database = Some(name.to_string());
                    p
                })
            })
            .collect();
        total.databases = Some(members.iter().map(database_view).collect());
        Some(total)
    }
}

fn database_view((name, view): &(String, Result<JobView, String>)) -> DatabaseView {
    match view {
        Ok(v) => DatabaseView {
            database: name.clone(),
            state: Some(v.state),
            rows_scanned: v.rows_scanned,
            rows_updated: v.rows_updated,
            progress: v.progress,
            pass: v.pass,
            pending_rows: v.pending_rows,
            eta_seconds: v.eta_seconds,
            rate_rows_per_second: v.rate_rows_per_second,
            throttled: v.throttled.clone(),
            last_error: v.last_error.clone(),
            error: None,
        },
        Err(error) => DatabaseView {
            database: name.clone(),
            state: None,
            rows_scanned: 0,
            rows_updated: 0,
            progress: 0.0,
            pass: 0,
            pending_rows: None,
            eta_seconds: None,
            rate_rows_per_second: 0.0,
            throttled: None,
            last_error: None,
            error: Some(error.clone()),
        },
    }
}
