//! The daemon's own tables, one module per table; each function takes an executor so callers
//! choose the transaction.

pub mod deliveries;
pub mod events;
pub mod jobs;
pub mod migrate;
pub mod passes;
pub mod progress;

use serde::{Deserialize, Serialize};

/// A job's life cycle (README, "Operating the daemon"). Stored as text; a value this binary
/// does not know is a decoding error, never mistaken for another state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Paused,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether an operator (or the daemon) may move a job from `self` to `to`.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Running, Completed)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Failed)
                | (Failed, Running)
                | (Queued | Running | Paused | Failed, Cancelled)
        )
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::*;

    #[test]
    fn transitions_follow_the_design() {
        assert!(Running.can_become(Paused));
        assert!(Paused.can_become(Running));
        assert!(Failed.can_become(Running));
        assert!(Failed.can_become(Cancelled));
        assert!(!Completed.can_become(Running));
        assert!(!Cancelled.can_become(Running));
        assert!(!Paused.can_become(Completed));
        assert!(!Completed.can_become(Cancelled));
    }
}
