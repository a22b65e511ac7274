//! `backfilld check JOB.toml`: everything `run` would refuse, found without writing anything —
//! catalog checks, every prepared batch statement, the key walk's plan, the estimated rows.

use std::path::Path;

use crate::commands::error::CliError;
use crate::engine::catalog;
use crate::plumbing::config::Settings;
use crate::plumbing::db::Schema;
use crate::spec::JobSpec;
use crate::store::jobs;

pub async fn execute(settings: &Settings, path: &Path) -> Result<i32, CliError> {
    let spec = JobSpec::from_file(path).map_err(CliError::invalid)?;
    let pool = super::connect(settings, 2).await?;
    let mut conn = pool.pinned().await.map_err(CliError::invalid)?;
    let resolved = catalog::admit(&mut conn, &spec)
        .await
        .map_err(CliError::invalid)?;
    let (uses_index, plan) = catalog::explain_walk(&mut conn, &resolved, spec.batch_size).await?;
    conn.rollback().await?;

    let key: Vec<String> = resolved
        .key
        .iter()
        .map(|k| format!("{} ({})", k.name, k.type_sql))
        .collect();
    println!("job {}: OK", spec.name);
    println!(
        "  table       {}.{} (about {} rows{})",
        resolved.schema,
        resolved.table,
        resolved.estimated_rows.max(0),
        if resolved.estimated_rows < 0 {
            ", never analyzed: the count is taken when the job is submitted"
        } else {
            ""
        }
    );
    println!(
        "  key         {} — unique via {}",
        key.join(", "),
        resolved.key_index
    );
    for (column, expression) in &spec.set {
        println!("  set         {column} = {}", one_line(expression));
    }
    match &spec.filter {
        Some(filter) => println!("  where       {}", one_line(filter)),
        None => println!("  where       (none: every row is updated)"),
    }
    match spec.max_passes() {
        1 => println!("  passes      1"),
        n => println!(
            "  passes      up to {n}: after the backfill, sweeps the key range for rows still matching `where` until one updates nothing"
        ),
    }
    match &resolved.sync {
        Some(trigger) => {
            println!(
                "  sync        trigger {} (installed before the first batch):",
                trigger.name
            );
            for line in trigger.function.lines().chain(trigger.trigger.lines()) {
                println!("              {line}");
            }
        }
        None => println!("  sync        none"),
    }
    println!(
        "  batches     {} keys each, {} partition(s), rate {}",
        spec.batch_size,
        spec.partitions,
        spec.rows_per_second
            .map(|r| format!("{r} rows/s"))
            .unwrap_or_else(|| "unlimited".into())
    );
    println!("  statement   prepared: all 6 batch statement variants compile");
    println!(
        "  key walk    {}",
        if uses_index {
            "uses an index"
        } else {
            "does NOT use an index on this table (fine for a small table; on a large one, check the key's index)"
        }
    );
    for line in plan {
        println!("              {line}");
    }
    // Whether this name is known already; read-only, and silent if backfilld never ran here.
    let schema = Schema::new(&settings.schema);
    if let Ok(Some(existing)) = jobs::find_by_name(&pool, &schema, &spec.name).await {
        match existing.spec() {
            Ok(stored) if stored.same_work(&spec) => println!(
                "  submitted   yes, state {} (same definition)",
                existing.state
            ),
            Ok(stored) => {
                println!(
                    "  submitted   yes, state {}, with a DIFFERENT definition (fields: {}); `run` would refuse this file",
                    existing.state,
                    stored.differences(&spec).join(", ")
                );
                return Ok(2);
            }
            Err(message) => println!("  submitted   yes, but {message}"),
        }
    }
    Ok(0)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
