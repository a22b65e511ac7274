//! Loading `jobs/*.toml` at start-up: a new name is submitted, a known one doing the same work
//! is left alone, and a changed definition under a known name is reported and skipped — never
//! silently replacing a job that may be running. Only regular files of at most 1 MiB are read,
//! off the async runtime, and a file that is no job definition is never echoed into the log.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::engine::fleet::{self, spans_databases, Fleet};
use crate::engine::submit::{self, SubmitError};
use crate::plumbing::config::DEFAULT_DATABASE;
use crate::plumbing::db::{self, Schema};
use crate::spec::{JobSpec, MAX_DOCUMENT_BYTES};
use crate::store::jobs;

/// What loading one file did, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Submitted(String),
    Known(String),
    Skipped { file: String, reason: String },
}

pub async fn load(fleet: &Fleet, schema: &Schema, dir: &Path, actor: &str) -> Vec<Loaded> {
    let listing = {
        let dir = dir.to_path_buf();
        // The file system is read off the async runtime: a slow or odd file never blocks it.
        tokio::task::spawn_blocking(move || list(&dir)).await
    };
    let files = match listing {
        Ok(Ok(files)) => files,
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the jobs directory; no jobs loaded from it");
            return Vec::new();
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the jobs directory failed");
            return Vec::new();
        }
    };
    let mut results = Vec::new();
    for file in files {
        let result = load_one(fleet, schema, &file, actor).await;
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

/// The `*.toml` entries of `dir`, sorted.
fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one job file: a regular file (following links) of at most `MAX_DOCUMENT_BYTES`, so a
/// FIFO cannot block start-up and a link to a device cannot exhaust memory. Errors never quote
/// the file's content.
fn read(file: &Path) -> Result<JobSpec, String> {
    let metadata = std::fs::metadata(file).map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_file() {
        return Err("not a regular file (a FIFO, a device or a directory); not read".into());
    }
    let too_large = || format!("larger than {MAX_DOCUMENT_BYTES} bytes; not read");
    if metadata.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(MAX_DOCUMENT_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(too_large());
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    JobSpec::from_toml(&text, &file.display().to_string()).map_err(|e| e.summary())
}

async fn load_one(fleet: &Fleet, schema: &Schema, file: &Path, actor: &str) -> Loaded {
    let skipped = |reason: String| Loaded::Skipped {
        file: file.display().to_string(),
        reason,
    };
    let owned = file.to_path_buf();
    let spec = match tokio::task::spawn_blocking(move || read(&owned)).await {
        Ok(Ok(spec)) => spec,
        Ok(Err(reason)) => return skipped(reason),
        Err(e) => return skipped(format!("reading it failed: {e}")),
    };
    if spans_databases(&spec) {
        return load_spanning(fleet, schema, spec, actor)
            .await
            .unwrap_or_else(skipped);
    }
    let Some(home) = fleet.get(DEFAULT_DATABASE) else {
        return skipped("the daemon has no database_url for a job without databases".into());
    };
    let pool = &home.pool;
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

/// A job over several databases: submitted to all of them when no target knows its name;
/// known when every target it names has it doing the same work. Anything else is skipped,
/// saying why (a target left without it is completed over the API with `replace`).
async fn load_spanning(
    fleet: &Fleet,
    schema: &Schema,
    spec: JobSpec,
    actor: &str,
) -> Result<Loaded, String> {
    let targets = fleet.select(&spec)?;
    let mut known = 0;
    for target in &targets {
        let found = jobs::find_by_name(&target.pool, schema, &spec.name)
            .await
            .map_err(|e| format!("database {}: {}", target.name, db::message(&e)))?;
        if let Some(job) = found {
            let stored = job.spec()?;
            if !stored.same_work(&spec) {
                return Err(format!(
                    "database {}: job {:?} exists with a different definition (fields that differ: {}). The running job keeps its definition.",
                    target.name,
                    spec.name,
                    stored.differences(&spec).join(", ")
                ));
            }
            known += 1;
        }
    }
    if known == targets.len() {
        return Ok(Loaded::Known(spec.name));
    }
    if known > 0 {
        return Err(format!(
            "job {:?} is stored on {known} of its {} databases; submit it over the API with replace to complete it",
            spec.name,
            targets.len()
        ));
    }
    fleet::submit::submit(fleet, schema, &spec, false, actor)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Loaded::Submitted(spec.name))
}
