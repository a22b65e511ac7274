//! Submitting one definition to every target it names: checked against each target's catalog
//! first, so a table missing on one shard (or a shard that does not answer) refuses the whole
//! submission and nothing is stored anywhere; then stored on each, through the same
//! `engine::submit` a single database uses.

use crate::engine::fleet::{Fleet, Target};
use crate::engine::submit::{self, Replaced, SubmitError};
use crate::plumbing::db::Schema;
use crate::spec::JobSpec;
use crate::store::jobs::{self, JobRow};

/// Why a submission over several databases was refused or stopped, naming the database.
#[derive(Debug, thiserror::Error)]
pub enum FleetSubmitError {
    /// A `databases` pattern selects no configured database.
    #[error("{0}")]
    Databases(String),
    /// Refused on `database` before anything was stored anywhere (or, with `submitted`
    /// non-empty, after it was stored on those: see the message).
    #[error("{}", on_database(.database, .error, .submitted))]
    On {
        database: String,
        error: SubmitError,
        /// Where the job was stored before the failure (empty: nowhere).
        submitted: Vec<String>,
    },
}

fn on_database(database: &str, error: &SubmitError, submitted: &[String]) -> String {
    if submitted.is_empty() {
        format!("database {database}: {error}; nothing was submitted")
    } else {
        format!(
            "database {database}: {error}; the job was stored on {} already: submit the same definition again with replace to complete it there",
            submitted.join(", ")
        )
    }
}

/// What a submission did on each target.
pub struct FleetSubmitted {
    /// `true` when at least one target stored it anew (`false`: it was there everywhere).
    pub created: bool,
    /// The job's row on each target, in the configured order.
    pub jobs: Vec<(String, JobRow)>,
}

/// Checks `spec` on every target it names, then stores it on each: as a new job (a name that
/// exists on any target is refused), or with `replace`, as `submit::replace` does on each (a
/// target that lacks it gets it; one that has it takes the new definition).
pub async fn submit(
    fleet: &Fleet,
    schema: &Schema,
    spec: &JobSpec,
    replace: bool,
    actor: &str,
) -> Result<FleetSubmitted, FleetSubmitError> {
    let targets = fleet.select(spec).map_err(FleetSubmitError::Databases)?;
    let refuse = |target: &Target, error: SubmitError| FleetSubmitError::On {
        database: target.name.clone(),
        error,
        submitted: Vec::new(),
    };
    // Every check first, on every target: nothing is stored unless all of them pass. An
    // unreachable target refuses the submission too (its error says so): the job would
    // otherwise run on the others while one target waits with no definition at all.
    let mut resolved = Vec::with_capacity(targets.len());
    for target in &targets {
        let checked = submit::resolve(&target.api_pool, spec)
            .await
            .map_err(|e| refuse(target, e))?;
        resolved.push(checked);
    }
    if !replace {
        // A name is one job over the fleet: taken on any target (even one this definition
        // does not name) it is taken.
        for target in fleet.targets() {
            let found = jobs::find_by_name(&target.api_pool, schema, &spec.name).await;
            match found {
                Ok(Some(_)) => {
                    return Err(refuse(target, SubmitError::NameTaken(spec.name.clone())))
                }
                Ok(None) => {}
                Err(e) if targets.iter().any(|t| t.name == target.name) => {
                    return Err(refuse(target, e.into()))
                }
                // A target the job does not run on may be away; it cannot hold the name
                // then, and it refuses it when it comes back (a submission there checks).
                Err(_) => {}
            }
        }
    }
    let mut stored = Vec::with_capacity(targets.len());
    let mut created = false;
    for (target, checked) in targets.iter().zip(&resolved) {
        let outcome = if replace {
            submit::replace(&target.api_pool, schema, spec, checked, actor)
                .await
                .map(|r| match r {
                    Replaced::Created(job) => (true, job),
                    Replaced::Replaced(job) | Replaced::Unchanged(job) => (false, job),
                })
        } else {
            submit::submit_new(&target.api_pool, schema, spec, checked, actor)
                .await
                .map(|job| (true, job))
        };
        match outcome {
            Ok((new, job)) => {
                created |= new;
                stored.push((target.name.clone(), job));
            }
            Err(error) => {
                return Err(FleetSubmitError::On {
                    database: target.name.clone(),
                    error,
                    submitted: stored.into_iter().map(|(name, _)| name).collect(),
                })
            }
        }
    }
    Ok(FleetSubmitted {
        created,
        jobs: stored,
    })
}
