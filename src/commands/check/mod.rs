//! `backfilld check JOB.toml`: everything `run` would refuse, found without writing anything,
//! and the job's plan in plain words — what it changes, every setting in force, whether the key
//! walk rides an index, the rows pending and how long it should take. `--sql` adds the batch
//! statement.

mod estimate;
mod settings;

use std::path::Path;

use crate::commands::error::CliError;
use crate::engine::catalog;
use crate::engine::statement::Lower;
use crate::plumbing::config::Settings;
use crate::plumbing::db::{self, Schema};
use crate::spec::JobSpec;
use crate::status::text;
use crate::store::jobs;
use settings::{one_line, ServerDefaults};

/// Exit codes (README, "Checking a job"): 0 the job is valid, 2 it is not (or the database
/// cannot be reached), or its name is taken by a different definition.
/// A job with `databases` is checked on every database it names, each one's result in turn;
/// the exit code is the worst of them.
pub async fn execute(settings: &Settings, path: &Path, show_sql: bool) -> Result<i32, CliError> {
    let spec = JobSpec::from_file(path).map_err(CliError::invalid)?;
    if spec.databases.is_empty() {
        let pool = super::connect(settings, 2).await?;
        return check_on(settings, &pool, &spec, path, show_sql).await;
    }
    let mut worst = 0;
    let mut failed = Vec::new();
    for (name, pool) in super::connect_targets(settings, &spec, 2).await? {
        println!("== database {name} ==");
        let checked = match pool {
            Ok(pool) => check_on(settings, &pool, &spec, path, show_sql).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(code) => worst = worst.max(code),
            Err(e) => {
                println!("job {}: NOT OK on database {name}: {e}", spec.name);
                failed.push(name);
            }
        }
        println!();
    }
    if !failed.is_empty() {
        return Err(CliError::invalid(format!(
            "job {} is not valid on database(s) {}",
            spec.name,
            failed.join(", ")
        )));
    }
    Ok(worst)
}

/// Checks `spec` on one database and prints its plan there.
async fn check_on(
    settings: &Settings,
    pool: &db::Db,
    spec: &JobSpec,
    path: &Path,
    show_sql: bool,
) -> Result<i32, CliError> {
    let mut conn = pool.pinned().await.map_err(CliError::invalid)?;
    let resolved = catalog::admit(&mut conn, spec)
        .await
        .map_err(|e| CliError::job(e).in_file(path))?;
    let (uses_index, plan) = catalog::explain_walk(&mut conn, &resolved, spec.batch_size).await?;
    let (lock_timeout, statement_timeout): (String, String) = db::query_as(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')",
    )
    .fetch_one(&mut *conn)
    .await?;
    conn.rollback().await?;
    let server = ServerDefaults {
        lock_timeout,
        statement_timeout,
    };
    let sizes = estimate::sizes(pool, &resolved).await?;
    let sample = estimate::sample(pool, &resolved, spec).await;

    let line = |label: &str, value: &str| println!("  {label:<19}{value}");
    println!("job {}: OK ({})", spec.name, path.display());
    println!("\nWhat it changes");
    line("table", &format!("{}.{}", resolved.schema, resolved.table));
    let key: Vec<String> = resolved
        .key
        .iter()
        .map(|k| format!("{} ({})", k.name, k.type_sql))
        .collect();
    line("key", &key.join(", "));
    for (column, expression) in &spec.set {
        line("set", &format!("{column} = {}", one_line(expression)));
    }
    match &spec.filter {
        Some(filter) => line("where", &one_line(filter)),
        None => line("where", "none: every row is updated"),
    }
    line("rows in the table", &sizes.table.describe());
    if spec.filter.is_some() {
        line("rows pending", &sizes.pending.describe());
    }

    println!("\nHow it runs");
    for (label, value) in settings::lines(spec, &server) {
        line(label, &value);
    }
    match spec.max_passes() {
        1 => line(
            "passes",
            "1: every key once (without `where`, a second pass would apply `set` twice)",
        ),
        n => line(
            "passes",
            &format!(
                "up to {n}: after the backfill, it walks the key range again for rows still matching `where` (rows written meanwhile) until a pass updates nothing"
            ),
        ),
    }
    match &resolved.sync {
        Some(trigger) => {
            line(
                "sync trigger",
                &format!(
                    "{} on {}.{}, installed before the first batch and kept until `backfilld sync remove`; its DDL:",
                    trigger.name, resolved.schema, resolved.table
                ),
            );
            for ddl in trigger.function.lines().chain(trigger.trigger.lines()) {
                println!("      {ddl}");
            }
        }
        None => line("sync trigger", "none"),
    }

    println!("\nChecks");
    line(
        "statements",
        "the batch statement and every expression prepare on this database",
    );
    let index_words = if uses_index {
        format!(
            "uses the index {} (an index range scan per batch)",
            resolved.key_index
        )
    } else {
        format!(
            "does NOT use the index {} on this table: the planner prefers a scan here (fine for a small table; on a large one, ANALYZE it and check again)",
            resolved.key_index
        )
    };
    line("key walk", &index_words);
    for plan_line in plan {
        println!("      {plan_line}");
    }

    println!("\nEstimate");
    line(
        "duration",
        &estimate::duration(spec, sizes.table.value(), &sample),
    );
    if spec.max_passes() > 1 {
        println!(
            "      (a sweep after it walks the key range again, {} keys)",
            text::signed_count(sizes.table.value())
        );
    }

    if show_sql {
        let schema = Schema::new(&settings.schema);
        let statement = resolved
            .sql
            .batch(Lower::Cursor, spec.partitions > 1, Some(&schema));
        println!(
            "\nThe batch statement (one per batch transaction; $1.. are the cursor, {}the batch size and the checkpoint's fence):",
            if spec.partitions > 1 {
                "the partition's upper bound, "
            } else {
                ""
            }
        );
        println!("{statement}");
    }

    // Whether this name is known already; read-only, and silent if backfilld never ran here.
    let schema = Schema::new(&settings.schema);
    if let Ok(Some(existing)) = jobs::find_by_name(pool, &schema, &spec.name).await {
        println!();
        match existing.spec() {
            Ok(stored) if stored.same_work(spec) => line(
                "submitted",
                &format!("yes, state {} (same definition)", existing.state),
            ),
            Ok(stored) => {
                line(
                    "submitted",
                    &format!(
                        "yes, state {}, with a DIFFERENT definition (fields: {}); `run` would refuse this file",
                        existing.state,
                        stored.differences(spec).join(", ")
                    ),
                );
                return Ok(2);
            }
            Err(message) => line("submitted", &format!("yes, but {message}")),
        }
    }
    Ok(0)
}

/// A job over `t` setting `v` with `extra` lines, for the plan's unit tests.
#[cfg(test)]
fn test_spec(extra: &str) -> JobSpec {
    JobSpec::from_toml(
        &format!("name = \"j\"\ntable = \"t\"\nkey = \"id\"\n{extra}\n[set]\nv = \"1\"\n"),
        "test",
    )
    .unwrap()
}
