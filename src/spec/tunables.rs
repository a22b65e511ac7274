//! The tunables: the part of a job an operator may change while it runs.

use std::time::Duration;

use crate::spec::{DutyCycle, JobSpec};

/// `batch_size`, `rows_per_second`, `pause` and `duty_cycle`. A PATCH (or a foreground run's
/// file) changes them in the jobs table; every batch reads them back under its fence, which is
/// the one way they reach a worker, so a change takes effect within one batch on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    pub batch_size: u32,
    pub rows_per_second: Option<u32>,
    pub pause: Option<Duration>,
    /// `None` is 1: no rest sized from the batches.
    pub duty_cycle: Option<DutyCycle>,
}

impl JobSpec {
    pub fn tunables(&self) -> Tunables {
        Tunables {
            batch_size: self.batch_size,
            rows_per_second: self.rows_per_second,
            pause: self.pause,
            duty_cycle: self.duty_cycle,
        }
    }

    /// This definition with `tunables` in place of its own.
    pub fn with_tunables(&self, tunables: Tunables) -> JobSpec {
        JobSpec {
            batch_size: tunables.batch_size,
            rows_per_second: tunables.rows_per_second,
            pause: tunables.pause,
            duty_cycle: tunables.duty_cycle,
            ..self.clone()
        }
    }

    /// Whether two definitions do the same work: equal but for their tunables.
    pub fn same_work(&self, other: &JobSpec) -> bool {
        self.with_tunables(other.tunables()) == *other
    }
}
