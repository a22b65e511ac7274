//! The daemon's own tables, one module per table; each function takes an executor so callers
//! choose the transaction.

pub mod definition;
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

    /// Whether an operator (or the daemon) may move a job from `self` to `to`. A paused job
    /// that was paused while `queued` returns to `queued` on resume; a `failed` or `cancelled`
    /// job whose definition is replaced is `queued` again (it keeps its checkpoint).
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Running, Completed)
                | (Queued | Running, Paused)
                | (Paused, Running | Queued)
                | (Running, Failed)
                | (Failed, Running)
                | (Failed | Cancelled, Queued)
                | (Queued | Running | Paused | Failed, Cancelled)
        )
    }

    /// Whether the job may be deleted (its name freed): it has ended.
    pub fn can_be_deleted(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Failed
        )
    }

    /// Whether the job may take a new definition (`--replace`): it is stopped, not done.
    pub fn can_be_replaced(self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Paused | JobState::Cancelled
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
        assert!(Queued.can_become(Paused));
        assert!(Paused.can_become(Queued));
        assert!(!Completed.can_become(Queued));
        assert!(!Running.can_become(Queued));
        assert!(Failed.can_be_deleted() && !Running.can_be_deleted() && !Paused.can_be_deleted());
        assert!(
            Paused.can_be_replaced() && !Completed.can_be_replaced() && !Queued.can_be_replaced()
        );
    }
}
