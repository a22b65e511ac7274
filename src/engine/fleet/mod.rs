//! Several target databases (README, "Several databases"): each target keeps its own
//! `backfilld` schema beside its data, so a checkpoint commits with the rows it covers, and a
//! job that names several targets is stored and run on each of them independently (its own
//! partitions, leases and passes there). This module owns the list of targets this process
//! reaches ([`Fleet`]), how one definition is submitted to all of them ([`submit`]) and how
//! the job's one rate limit is shared over all of them ([`shares`]).

pub mod shares;
pub mod submit;

use std::sync::Arc;

use crate::engine::rates::Rates;
use crate::engine::runtime::LocalJobs;
use crate::plumbing::config::{self, DEFAULT_DATABASE};
use crate::plumbing::db::Db;
use crate::spec::JobSpec;

/// One target database as this process reaches it.
#[derive(Clone)]
pub struct Target {
    /// `default` (the daemon's own `database_url`) or a `[[databases]]` name.
    pub name: String,
    /// The engine's pool (claims, renewals, completion).
    pub pool: Db,
    /// The API's pool, apart from the engine's (`plumbing::pool::Budget`).
    pub api_pool: Db,
    /// The runtimes this process runs on this target, by job id (ids are per database).
    pub local: LocalJobs,
    /// The measured rates of this target's jobs, by job id.
    pub rates: Rates,
}

/// Every target this process reaches, in the configured order (`default` first).
#[derive(Clone)]
pub struct Fleet {
    targets: Arc<Vec<Target>>,
}

impl Fleet {
    pub fn new(targets: Vec<Target>) -> Fleet {
        Fleet {
            targets: Arc::new(targets),
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn get(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// More than the daemon's own database is configured.
    pub fn is_several(&self) -> bool {
        self.targets.len() > 1
            || self
                .targets
                .first()
                .is_some_and(|t| t.name != DEFAULT_DATABASE)
    }

    /// The targets `spec` runs on, in the configured order; an error names a `databases`
    /// pattern that selects nothing.
    pub fn select(&self, spec: &JobSpec) -> Result<Vec<&Target>, String> {
        let known: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        let names = config::select(&spec.databases, &known)
            .map_err(|message| format!("databases: {message}"))?;
        Ok(self
            .targets
            .iter()
            .filter(|t| names.contains(&t.name))
            .collect())
    }
}

/// A job that names its databases is stored on each of them and shown as one job over all;
/// without `databases` it is the single-database job it always was.
pub fn spans_databases(spec: &JobSpec) -> bool {
    !spec.databases.is_empty()
}
