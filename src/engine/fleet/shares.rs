//! One rate limit over several databases: each process takes, on each target, the share of a
//! job's `rows_per_second` that its live leases there are of the job's live leases on every
//! target, so all processes together, on all targets, stay within the one limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::plumbing::db::{Db, Schema};
use crate::store::progress;

/// The live leases of each job on each target, as this process last read them. Every
/// target's scheduler replaces its own part every few seconds; a job's total is the sum.
#[derive(Clone, Default)]
pub struct FleetShares {
    /// Target name → (job name → live leases of any process there).
    live: Arc<Mutex<HashMap<String, HashMap<String, u32>>>>,
}

impl FleetShares {
    /// Records what `target` holds now (jobs absent have none there).
    pub fn replace(&self, target: &str, live: HashMap<String, u32>) {
        self.live
            .lock()
            .expect("fleet shares lock poisoned")
            .insert(target.to_string(), live);
    }

    /// The job's live leases over every target.
    pub fn total(&self, job: &str) -> u32 {
        self.live
            .lock()
            .expect("fleet shares lock poisoned")
            .values()
            .filter_map(|jobs| jobs.get(job))
            .sum()
    }
}

/// Reads this target's live leases of every running job and records them for the other
/// targets' schedulers; returns, for each of `jobs` (this process's runtimes here, by id and
/// name) that it holds leases of here, `(id, its leases here, the job's leases everywhere)`.
pub async fn read(
    pool: &Db,
    schema: &Schema,
    owner: &str,
    shares: &FleetShares,
    target: &str,
    jobs: &[(i64, &str)],
) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    let here = progress::lease_shares_by_name(pool, schema, owner).await?;
    shares.replace(
        target,
        (here.iter())
            .map(|(name, _, all)| (name.clone(), u32::try_from(*all).unwrap_or(u32::MAX)))
            .collect(),
    );
    Ok(jobs
        .iter()
        .filter_map(|(id, job)| {
            let (_, mine, _) = here.iter().find(|(name, ..)| name == job)?;
            Some((*id, *mine, i64::from(shares.total(job))))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_every_target_and_forget_what_a_target_no_longer_holds() {
        let shares = FleetShares::default();
        shares.replace(
            "a",
            HashMap::from([("j".to_string(), 2), ("k".to_string(), 1)]),
        );
        shares.replace("b", HashMap::from([("j".to_string(), 3)]));
        assert_eq!(shares.total("j"), 5);
        shares.replace("a", HashMap::from([("k".to_string(), 1)]));
        assert_eq!(shares.total("j"), 3);
        assert_eq!(shares.total("none"), 0);
    }
}
