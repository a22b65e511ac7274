//! `--finishing`: what finishing an expand–contract costs. For W1 and W2, the sweep pass's
//! rows/s against the backfill pass's (one job with `passes = 2`, timed from its events), and
//! `verify` against the backfill on the same table; for W2, the sync trigger's cost to the
//! application: pgbench's single-row `UPDATE` of `customer_email`, with and without it.

use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use backfilld::engine::{catalog, verify};
use backfilld::plumbing::db::sql;
use sqlx::PgPool;

use super::{run_backfilld, Scratch, Workload, BATCH_SIZE};

pub async fn finishing(scratch: &Scratch, pool: &PgPool, rows: [i64; 2], ticks: f64) -> Result<()> {
    for (workload, rows) in [(Workload::W1, rows[0]), (Workload::W2, rows[1])] {
        workload.fresh_table(pool, rows).await?;
        let spec = backfilld::spec::JobSpec {
            name: format!("finishing-{}", format!("{workload:?}").to_lowercase()),
            batch_size: BATCH_SIZE,
            rows_per_second: None,
            pause: None,
            partitions: 1,
            passes: Some(2),
            sync: None,
            ..workload.job()?
        };
        let wall = run_backfilld(scratch, &spec, ticks).await?.wall;
        // Pass boundaries from the job's own events.
        let (pass1, pass2): (f64, f64) = sqlx::query_as(sql(format!(
            "SELECT extract(epoch FROM p.at - s.at)::float8, extract(epoch FROM c.at - p.at)::float8
               FROM backfilld.jobs j
               JOIN backfilld.events s ON s.job_id = j.id AND s.kind = 'running'
               JOIN backfilld.events p ON p.job_id = j.id AND p.kind = 'pass'
               JOIN backfilld.events c ON c.job_id = j.id AND c.kind = 'completed'
              WHERE j.name = '{}'",
            spec.name
        )))
        .fetch_one(pool)
        .await
        .context("the job should have swept once")?;
        let mut conn = pool.acquire().await?;
        let resolved = catalog::resolve(&mut conn, &spec).await?;
        let started = Instant::now();
        let verified = verify::count_pending(&mut conn, &resolved.sql)
            .await?
            .context("the job has `where`")?;
        let verify_time = started.elapsed().as_secs_f64();
        ensure!(verified.pending == 0, "rows left pending after the sweep");
        let rate = |seconds: f64| rows as f64 / seconds;
        println!(
            "{}: backfill pass {:.0} rows/s, sweep pass {:.0} rows/s ({:.2}× the backfill; {} target ≥ 3×); verify {:.0} rows/s ({:.1}× the backfill pass; backfill wall {:.1}s)",
            workload.label(),
            rate(pass1),
            rate(pass2),
            pass1 / pass2,
            super::verdict(pass1 / pass2 >= 3.0),
            rate(verify_time),
            pass1 / verify_time,
            wall.as_secs_f64()
        );
    }
    trigger_cost(scratch, pool, rows[1]).await
}

/// pgbench, one client, single-row UPDATEs of the column the old code writes, for 5 s without
/// and with W2's sync trigger.
async fn trigger_cost(scratch: &Scratch, pool: &PgPool, rows: i64) -> Result<()> {
    Workload::W2.fresh_table(pool, rows).await?;
    let script = std::env::temp_dir().join(format!("backfilld-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {rows})\nUPDATE public.users SET customer_email = 'w' || :id || '@example.com' WHERE id = :id;\n"
        ),
    )?;
    let spec = backfilld::spec::JobSpec {
        name: "finishing-sync".into(),
        ..Workload::W2.job()?
    };
    ensure!(
        spec.sync.is_some(),
        "jobs/users_email.toml should have [sync]"
    );
    let mut conn = pool.acquire().await?;
    let trigger = catalog::resolve(&mut conn, &spec)
        .await?
        .sync
        .context("the resolved job has its trigger")?;
    let without = pgbench(&scratch.url, &script)?;
    sqlx::raw_sql(sql(trigger.function.clone()))
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(sql(trigger.trigger.clone()))
        .execute(&mut *conn)
        .await?;
    let with = pgbench(&scratch.url, &script)?;
    for drop in &trigger.drop {
        sqlx::raw_sql(sql(drop.clone())).execute(&mut *conn).await?;
    }
    let _ = std::fs::remove_file(&script);
    println!(
        "sync trigger on a single-row UPDATE (pgbench, 1 client, 5 s): {:.0} tps, {:.3} ms without; {:.0} tps, {:.3} ms with ({:+.1}% latency)",
        without.0,
        without.1,
        with.0,
        with.1,
        (with.1 - without.1) / without.1 * 100.0
    );
    Ok(())
}

/// (tps, average latency in ms).
fn pgbench(url: &str, script: &std::path::Path) -> Result<(f64, f64)> {
    let output = Command::new(super::app::pgbench()?)
        .args(["-n", "-c", "1", "-T", "5", "-f"])
        .arg(script)
        .arg(url)
        .output()
        .context("running pgbench (Debian's postgresql-contrib / postgresql-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let number = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| {
                rest.trim_start_matches([' ', '='])
                    .split_whitespace()
                    .next()
            })
            .and_then(|n| n.parse().ok())
    };
    Ok((
        number("tps").context("no tps in pgbench's output")?,
        number("latency average").context("no latency in pgbench's output")?,
    ))
}
