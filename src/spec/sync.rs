//! Finishing an expand–contract: `passes` (sweeps after the backfill) and `[sync]` (a trigger
//! that keeps rows the application writes in step), as the job format states them.

use serde::{Deserialize, Serialize};

use super::JobSpec;

/// Passes a job with `where` makes at most, unless it says otherwise: the backfill and one
/// sweep.
pub const DEFAULT_PASSES: u32 = 2;
pub const MAX_PASSES: u32 = 100;

/// `[sync]`: while the job runs and after, a `BEFORE INSERT OR UPDATE` trigger applies the
/// job's `set` to every row the application writes that matches `where`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    /// The columns whose INSERT or UPDATE fires the trigger (`UPDATE OF`); by default every
    /// column the job does not set, so the job's own batches never fire it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
}

impl JobSpec {
    /// The passes this job makes at most: one without `where` (a sweep would apply a
    /// non-idempotent `set` twice), `passes` (default 2) with it.
    pub fn max_passes(&self) -> u32 {
        match &self.filter {
            None => 1,
            Some(_) => self.passes.unwrap_or(DEFAULT_PASSES),
        }
    }

    /// The checks of `passes` and `[sync]` that need no database.
    pub(super) fn validate_finishing(&self) -> Result<(), (&'static str, String)> {
        match self.passes {
            Some(0) => return Err(("passes", "must be at least 1".into())),
            Some(p) if p > MAX_PASSES => {
                return Err(("passes", format!("must be at most {MAX_PASSES}")))
            }
            Some(p) if p > 1 && self.filter.is_none() => {
                return Err((
                    "passes",
                    "needs `where`: without it a sweep would apply `set` to every row again".into(),
                ))
            }
            _ => {}
        }
        if let Some(sync) = &self.sync {
            if self.filter.is_none() {
                return Err((
                    "sync",
                    "needs `where`: the trigger applies `set` to written rows that match it".into(),
                ));
            }
            if let Some(on) = &sync.on {
                if on.is_empty() {
                    return Err((
                        "sync.on",
                        "is empty: leave it out to fire on every column the job does not set"
                            .into(),
                    ));
                }
                if let Some(column) = on.iter().find(|c| self.set.contains_key(*c)) {
                    return Err((
                        "sync.on",
                        format!("{column:?} is set by the job: the trigger would fire on the job's own batches"),
                    ));
                }
            }
        }
        Ok(())
    }
}
