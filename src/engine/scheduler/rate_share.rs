//! This process's share of each job's rate limit, read from the leases of every replica (and,
//! for a job over several databases, of every target).

use std::time::Instant;

use super::Scheduler;
use crate::engine::fleet::shares;
use crate::engine::limiter::Share;
use crate::store::progress;

impl Scheduler {
    /// Gives each job's limiter this process's share of the job's rate limit: its live
    /// leases over all of the job's live leases, on every replica.
    pub(super) async fn read_shares(&mut self) -> Result<(), sqlx::Error> {
        self.shares_read = Some(Instant::now());
        let ids: Vec<i64> = self.runtimes.keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let shares = match &self.fleet {
            None => {
                progress::lease_shares(
                    &self.env.pool,
                    &self.env.schema,
                    &ids,
                    self.presence.owner(),
                )
                .await?
            }
            Some((fleet, target)) => {
                let jobs: Vec<(i64, &str)> = (self.runtimes.iter())
                    .map(|(id, (runtime, _))| (*id, runtime.name.as_str()))
                    .collect();
                let (pool, owner) = (&self.env.pool, self.presence.owner());
                shares::read(pool, &self.env.schema, owner, fleet, target, &jobs).await?
            }
        };
        for (job_id, mine, all) in shares {
            // Holding none, this process runs no batch of the job: nothing to share.
            let (Some((runtime, _)), Ok(mine @ 1..), Ok(all)) = (
                self.runtimes.get(&job_id),
                u32::try_from(mine),
                u32::try_from(all),
            ) else {
                continue;
            };
            if runtime.limiter.set_share(Share { mine, all }) {
                if let Some(rate) = runtime.limiter.local_rate() {
                    tracing::info!(
                        job = %runtime.name,
                        partitions = mine,
                        of = all,
                        rows_per_second = rate,
                        "rate share: {mine} of the job's {all} running partitions, {rate} rows/s here"
                    );
                }
            }
        }
        Ok(())
    }
}
