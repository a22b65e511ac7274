//! The client commands: `submit`, `status`, `pause`, `resume`, `cancel`, `delete`, speaking HTTP to a
//! running daemon. Exit codes: 0 done, 1 the daemon refused (its message is printed), 2 the
//! daemon could not be reached (its certificate did not verify, say) or the job file is
//! invalid.

use std::path::Path;

use crate::commands::api_client::{Client, ClientError};
use crate::commands::error::CliError;
use crate::spec::JobSpec;
use crate::status::view::JobView;

fn failed(error: ClientError) -> Result<i32, CliError> {
    match error {
        ClientError::Unreachable { .. } | ClientError::Tls { .. } | ClientError::Config(_) => {
            Err(CliError::invalid(error))
        }
        other => {
            eprintln!("error: {other}");
            Ok(1)
        }
    }
}

pub async fn submit(client: &Client, path: &Path, replace: bool) -> Result<i32, CliError> {
    // Parse locally first so a typo is reported with the file name, before any request.
    JobSpec::from_file(path).map_err(CliError::invalid)?;
    let toml = std::fs::read_to_string(path)
        .map_err(|e| CliError::invalid(format!("cannot read {}: {e}", path.display())))?;
    match client.submit_toml(toml, replace).await {
        Ok(job) if replace => {
            println!(
                "{}: {} with the new definition, from its checkpoint ({} rows scanned); follow it with `backfilld status {}`",
                job.name,
                job.state.as_str(),
                job.rows_scanned,
                job.name
            );
            Ok(0)
        }
        Ok(job) => {
            println!(
                "submitted {} ({} partition(s)); follow it with `backfilld status {}`",
                job.name,
                job.partitions.len(),
                job.name
            );
            Ok(0)
        }
        Err(e) => failed(e),
    }
}

pub async fn status(client: &Client, name: Option<&str>, json: bool) -> Result<i32, CliError> {
    let jobs = match name {
        Some(name) => client.job(name).await.map(|j| vec![j]),
        None => client.jobs().await.map(|l| l.jobs),
    };
    let jobs = match jobs {
        Ok(jobs) => jobs,
        Err(e) => return failed(e),
    };
    if json {
        let text = match name {
            Some(_) => serde_json::to_string_pretty(&jobs[0]),
            None => serde_json::to_string_pretty(&serde_json::json!({ "jobs": jobs })),
        }
        .map_err(|e| CliError::Other(e.into()))?;
        println!("{text}");
        return Ok(0);
    }
    print!("{}", table(&jobs));
    if let (Some(_), Some(job)) = (name, jobs.first()) {
        print!("{}", partitions(job));
    }
    Ok(0)
}

pub async fn act(client: &Client, name: &str, action: &str) -> Result<i32, CliError> {
    match client.act(name, action).await {
        Ok(job) => {
            println!("{}: {}", job.name, job.state.as_str());
            Ok(0)
        }
        Err(e) => failed(e),
    }
}

pub async fn delete(client: &Client, name: &str) -> Result<i32, CliError> {
    match client.delete(name).await {
        Ok(()) => {
            println!("{name}: deleted; the name is free");
            Ok(0)
        }
        Err(e) => failed(e),
    }
}

/// The `status` table: one line per job.
pub fn table(jobs: &[JobView]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<28} {:>12} {:>12} {:>10} {:>8} {:<10} {}\n",
        "NAME",
        "STATE",
        "PROGRESS",
        "SCANNED",
        "UPDATED",
        "RATE/s",
        "ETA",
        "THROTTLE",
        "LAST ERROR"
    );
    for job in jobs {
        out.push_str(&format!(
            "{:<24} {:<10} {:<28} {:>12} {:>12} {:>10} {:>8} {:<10} {}\n",
            job.name,
            job.state.as_str(),
            bar(job.progress),
            job.rows_scanned,
            job.rows_updated,
            format!("{:.0}", job.rate_rows_per_second),
            job.eta_seconds
                .map(
                    |s| humantime::format_duration(
                        std::time::Duration::from_secs(s.round() as u64)
                    )
                    .to_string()
                )
                .unwrap_or_else(|| "-".into()),
            job.throttled.as_deref().unwrap_or("-"),
            job.last_error.as_deref().unwrap_or("-"),
        ));
    }
    out
}

fn partitions(job: &JobView) -> String {
    let mut out = format!(
        "\n  {:<5} {:<8} {:>12} {:>12}  {:<24} OWNER\n",
        "PART", "STATE", "SCANNED", "UPDATED", "CURSOR"
    );
    for p in &job.partitions {
        out.push_str(&format!(
            "  {:<5} {:<8} {:>12} {:>12}  {:<24} {}\n",
            p.index,
            p.state,
            p.rows_scanned,
            p.rows_updated,
            p.cursor
                .as_ref()
                .map(|c| c.join(","))
                .unwrap_or_else(|| "-".into()),
            p.owner.as_deref().unwrap_or("-"),
        ));
    }
    out
}

fn bar(progress: f64) -> String {
    let filled = (progress.clamp(0.0, 1.0) * 20.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(20 - filled),
        progress * 100.0
    )
}
