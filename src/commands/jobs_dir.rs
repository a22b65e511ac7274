//! Loading `jobs/*.toml` at start-up: a new name is submitted, a known one doing the same work
//! is left alone, and a changed definition under a known name is reported and skipped — never
//! silently replacing a job that may be running.

use std::path::Path;

use sqlx::PgPool;

use crate::engine::submit::{self, SubmitError};
use crate::plumbing::db::Schema;
use crate::spec::JobSpec;

/// What loading one file did, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Submitted(String),
    Known(String),
    Skipped { file: String, reason: String },
}

pub async fn load(pool: &PgPool, schema: &Schema, dir: &Path, actor: &str) -> Vec<Loaded> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the jobs directory; no jobs loaded from it");
            return Vec::new();
        }
    };
    files.sort();
    let mut results = Vec::new();
    for file in files {
        let result = load_one(pool, schema, &file, actor).await;
        match &result {
            Loaded::Submitted(name) => {
                tracing::info!(job = %name, file = %file.display(), "submitted from the jobs directory")
            }
            Loaded::Known(name) => {
                tracing::info!(job = %name, file = %file.display(), "already known; left alone")
            }
            Loaded::Skipped { file, reason } => {
                tracing::error!(file = %file, "skipped: {reason}")
            }
        }
        results.push(result);
    }
    results
}

async fn load_one(pool: &PgPool, schema: &Schema, file: &Path, actor: &str) -> Loaded {
    let skipped = |reason: String| Loaded::Skipped {
        file: file.display().to_string(),
        reason,
    };
    let spec = match JobSpec::from_file(file) {
        Ok(spec) => spec,
        Err(e) => return skipped(e.to_string()),
    };
    let resolved = match submit::resolve(pool, &spec).await {
        Ok(resolved) => resolved,
        Err(e) => return skipped(e.to_string()),
    };
    match submit::find_or_submit(pool, schema, &spec, resolved, actor).await {
        Ok(submitted) if submitted.created => Loaded::Submitted(spec.name),
        Ok(_) => Loaded::Known(spec.name),
        Err(e @ SubmitError::Conflict { .. }) => {
            skipped(format!("{e}. The running job keeps its definition."))
        }
        Err(e) => skipped(e.to_string()),
    }
}
