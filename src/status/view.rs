//! The job view: what the API returns for a job (README, "HTTP API"), what the metrics export
//! and what `status` prints, built in one place from the database (shared by every replica)
//! plus what this process knows first-hand (whether it is waiting on the rate limit).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::spec::JobSpec;
use crate::status::{Reason, RuntimeSnapshot};
use crate::store::events::Event;
use crate::store::jobs::JobRow;
use crate::store::progress::PartitionRow;
use crate::store::JobState;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub name: String,
    #[schema(value_type = String, example = "running")]
    pub state: JobState,
    /// The definition as submitted, with live tunables.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Keys walked and rows updated, over every pass.
    pub rows_scanned: i64,
    pub rows_updated: i64,
    /// 0..1 through the current pass: keys walked in it over the rows the table had when the
    /// job was planned (1 once completed).
    pub progress: f64,
    /// The pass the job is in: 1 is the backfill, 2.. are sweeps for rows still matching
    /// `where`.
    pub pass: i32,
    /// The most passes the job makes (1 without `where`).
    pub passes: u32,
    /// Rows still matching `where` at the last completed pass or `verify`; null before.
    pub pending_rows: Option<i64>,
    /// When that count was taken.
    pub verified_at: Option<DateTime<Utc>>,
    pub eta_seconds: Option<f64>,
    /// The current batch size: adapted toward `target_batch_time` when the job sets one, and
    /// grown by a sweep pass while it finds nothing pending.
    pub batch_size: u32,
    /// The adaptive target, e.g. "200ms"; null for fixed batches.
    pub target_batch_time: Option<String>,
    /// Why the batch size last changed (adaptive batches or a sweep, as this process saw it).
    pub batch_size_reason: Option<String>,
    /// The most of its time each partition spends in batches (`duty_cycle`, e.g. 0.5): after
    /// a batch it rests as long as that batch took × (1 − d) / d. Null when not set (1).
    pub duty_cycle: Option<f64>,
    /// Measured over the last 15 seconds, across every replica.
    pub rate_rows_per_second: f64,
    /// The configured limit; null when unlimited.
    pub rate_limit_rows_per_second: Option<u32>,
    /// Why the job is held back right now (`rate_limit`, `replica_lag`, `throttle_query`,
    /// `active_sessions`, `wal_rate`, `window`), or null.
    pub throttled: Option<String>,
    /// What the throttling signal said, e.g. the replica lag or a failing throttle query.
    pub throttle_detail: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub partitions: Vec<PartitionView>,
    /// A job over several databases: each one's part (the fields above are the totals);
    /// absent for a job on the daemon's own database alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<Vec<DatabaseView>>,
    /// Keys walked in the current pass and the rows expected in it, for progress over
    /// several databases.
    #[serde(skip)]
    pub pass_rows: (i64, i64),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionView {
    pub index: i32,
    /// `pending`, `running` (leased by a live process) or `done`.
    pub state: String,
    /// The last key processed (one text value per key column); null before the first batch.
    pub cursor: Option<Vec<String>>,
    pub rows_scanned: i64,
    pub rows_updated: i64,
    /// The process holding the partition, if any.
    pub owner: Option<String>,
    /// Keys in (lower_bound, upper_bound] of the first key column; null is unbounded.
    pub lower_bound: Option<String>,
    pub upper_bound: Option<String>,
    /// The target database of the partition (jobs over several databases only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// One target database's part of a job over several databases.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseView {
    /// `default` (the daemon's own database) or a `[[databases]]` name.
    pub database: String,
    /// The job's state there; null while the database cannot be read.
    #[schema(value_type = Option<String>, example = "running")]
    pub state: Option<JobState>,
    pub rows_scanned: i64,
    pub rows_updated: i64,
    pub progress: f64,
    pub pass: i32,
    pub pending_rows: Option<i64>,
    pub eta_seconds: Option<f64>,
    pub rate_rows_per_second: f64,
    pub throttled: Option<String>,
    /// The job's last error there.
    pub last_error: Option<String>,
    /// Why the database cannot be read now (unreachable, or the job is missing there); it is
    /// retried with backoff meanwhile and the other databases go on.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
}

impl JobView {
    /// The job as the database knows it (`job`, `partitions`), with the rate measured over
    /// every replica and, when this process runs the job, what it knows first-hand.
    pub fn build(
        job: &JobRow,
        partitions: &[PartitionRow],
        rate: f64,
        local: Option<&RuntimeSnapshot>,
    ) -> JobView {
        let state = job.state;
        let spec = job.spec().ok();
        let rows_scanned: i64 = partitions.iter().map(|p| p.rows_scanned).sum();
        let rows_updated: i64 = partitions.iter().map(|p| p.rows_updated).sum();
        // Progress and ETA are the current pass's: a sweep walks the whole key range again.
        let pass_scanned = (rows_scanned - job.scanned_before_pass).max(0);
        let expected = job.estimated_rows.max(pass_scanned).max(1);
        let progress = if state == JobState::Completed {
            1.0
        } else {
            (pass_scanned as f64 / expected as f64).clamp(0.0, 1.0)
        };
        let rate = if state == JobState::Running {
            rate
        } else {
            0.0
        };
        let eta_seconds = match state {
            JobState::Completed => Some(0.0),
            JobState::Running if rate > 0.0 => Some((expected - pass_scanned).max(0) as f64 / rate),
            _ => None,
        };
        let limit = spec.as_ref().and_then(|s| s.rows_per_second);
        let health = local.and_then(|l| l.throttle.clone());
        let locally_limited = local.is_some_and(|l| l.rate_limited);
        // Another replica may be the one waiting: running at the limit means it is the
        // constraint.
        let at_limit = limit.is_some_and(|l| rate >= 0.95 * f64::from(l));
        let (throttled, throttle_detail) = match (state, health) {
            (JobState::Running, Some(t)) => (Some(t.reason.to_string()), Some(t.detail)),
            (JobState::Running, None) if locally_limited || at_limit => (
                Some(Reason::RateLimit.to_string()),
                limit.map(|l| format!("held to rows_per_second = {l}")),
            ),
            _ => (None, None),
        };
        let adaptive = spec.as_ref().and_then(|s| s.target_batch_time);
        let batch_size = match (local, adaptive) {
            (Some(local), Some(_)) => local.batch_size,
            _ => spec.as_ref().map_or(0, |s: &JobSpec| s.batch_size),
        };
        let now = Utc::now();
        JobView {
            name: job.name.clone(),
            state,
            spec: job.spec.0.clone(),
            rows_scanned,
            rows_updated,
            progress,
            pass: job.pass,
            passes: spec.as_ref().map_or(1, JobSpec::max_passes),
            pending_rows: job.pending_rows,
            verified_at: job.verified_at,
            eta_seconds,
            batch_size,
            target_batch_time: adaptive.map(|d| humantime::format_duration(d).to_string()),
            batch_size_reason: local.and_then(|l| l.batch_size_reason.clone()),
            duty_cycle: spec
                .as_ref()
                .and_then(|s| s.duty_cycle)
                .map(|d| d.fraction()),
            rate_rows_per_second: (rate * 10.0).round() / 10.0,
            rate_limit_rows_per_second: limit,
            throttled,
            throttle_detail,
            last_error: job.last_error.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            partitions: partitions
                .iter()
                .map(|p| PartitionView {
                    index: p.partition_index,
                    state: partition_state(p, now).to_string(),
                    cursor: p.cursor.clone(),
                    rows_scanned: p.rows_scanned,
                    rows_updated: p.rows_updated,
                    owner: p.lease_owner.clone(),
                    lower_bound: p.lower_bound.clone(),
                    upper_bound: p.upper_bound.clone(),
                    database: None,
                })
                .collect(),
            databases: None,
            pass_rows: (pass_scanned, expected),
        }
    }
}

fn partition_state(p: &PartitionRow, now: DateTime<Utc>) -> &'static str {
    if p.state == "done" {
        "done"
    } else if p.lease_expires_at.is_some_and(|at| at > now) {
        "running"
    } else {
        "pending"
    }
}
