//! The benchmark harness (issue 5): times the two example backfills done four ways — one plain
//! `UPDATE`, a PL/pgSQL keyset loop with a COMMIT per batch, and backfilld in-process with one
//! and with two partitions — on a fresh table each time, in a scratch database it creates and
//! drops, and prints rows/s, batch-time percentiles, the longest row-lock hold and the daemon's
//! own CPU share, then checks the issue's targets.
//!
//! ```sh
//! cargo bench --bench backfill                        # W1 200k rows, W2 1M rows
//! cargo bench --bench backfill -- --w2-rows 50000 --only w2
//! cargo bench --bench backfill -- --target-batch-time 200ms
//! cargo bench --bench backfill -- --scale             # W2, loop and 1 partition, 1M vs 5M rows
//! cargo bench --bench backfill -- --synchronous-commit on   # batches wait for their flush
//! ```

#[path = "backfill/finishing.rs"]
mod finishing;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use backfilld::commands::demo;
use backfilld::engine::runtime::JobRuntime;
use backfilld::engine::scheduler::{Scheduler, SchedulerExit};
use backfilld::engine::submit;
use backfilld::plumbing::db::{self, quote_ident, sql, Db, PoolMode, Schema};
use backfilld::spec::{JobSpec, SynchronousCommit};
use backfilld::store::{jobs, JobState};
use clap::{Parser, ValueEnum};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

const ACTOR: &str = "bench";
const LEASE_TTL: Duration = Duration::from_secs(30);
const BATCH_SIZE: u32 = 1000;

#[derive(Parser, Debug)]
#[command(about = "backfilld benchmark: plain UPDATE vs PL/pgSQL loop vs backfilld")]
struct Args {
    /// Server to create the scratch database on.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Rows of W1 (products, tsvector).
    #[arg(long, default_value_t = 200_000)]
    w1_rows: i64,
    /// Rows of W2 (users, email copy); with --scale, the small size (the large is 5×).
    #[arg(long, default_value_t = 1_000_000)]
    w2_rows: i64,
    /// Run one workload only.
    #[arg(long, value_enum)]
    only: Option<Workload>,
    /// Instead of the comparison: W2 by backfilld with 1 partition on --w2-rows and 5× as
    /// many rows, to show that the per-batch cost does not grow with the table.
    #[arg(long)]
    scale: bool,
    /// Also run (c) and (d) again with this `target_batch_time` (adaptive batch size).
    #[arg(long, value_parser = humantime::parse_duration)]
    target_batch_time: Option<Duration>,
    /// The jobs' `synchronous_commit` for (c) and (d) (default: the job's own, `off`).
    #[arg(long, value_parser = str::parse::<SynchronousCommit>)]
    synchronous_commit: Option<SynchronousCommit>,
    /// Instead of the comparison: the cost of a sweep pass, of `verify`, and of the sync
    /// trigger on the application's writes.
    #[arg(long)]
    finishing: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    W1,
    W2,
}

impl Workload {
    /// The example job this workload runs, read from `jobs/` so the benchmark cannot drift
    /// from what users run.
    fn job(self) -> Result<JobSpec> {
        let (file, text) = match self {
            Workload::W1 => (
                "products_search.toml",
                include_str!("../jobs/products_search.toml"),
            ),
            Workload::W2 => ("users_email.toml", include_str!("../jobs/users_email.toml")),
        };
        Ok(JobSpec::from_toml(text, file)?)
    }

    fn table(self) -> &'static str {
        match self {
            Workload::W1 => "public.products",
            Workload::W2 => "public.users",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::W1 => "W1 products.search_tsvector",
            Workload::W2 => "W2 users.email",
        }
    }
}

/// One way of doing the backfill.
#[derive(Debug, Clone)]
enum Variant {
    Update,
    Loop,
    Backfilld {
        partitions: u32,
        target: Option<Duration>,
    },
}

impl Variant {
    fn label(&self) -> String {
        match self {
            Variant::Update => "(a) single UPDATE".into(),
            Variant::Loop => format!("(b) PL/pgSQL loop, {BATCH_SIZE}/COMMIT"),
            Variant::Backfilld { partitions, target } => {
                let letter = if *partitions == 1 { 'c' } else { 'd' };
                let target = target
                    .map(|t| format!(", target {}", humantime::format_duration(t)))
                    .unwrap_or_default();
                let plural = if *partitions == 1 { "" } else { "s" };
                format!("({letter}) backfilld, {partitions} partition{plural}{target}")
            }
        }
    }
}

/// What one run measured; `batches` are the batch transaction times (one entry, the whole
/// statement, for the single UPDATE).
struct Measurement {
    workload: Workload,
    variant: Variant,
    rows: i64,
    wall: Duration,
    batches: Vec<Duration>,
    /// This process's CPU time while backfilld ran (None for the SQL-only variants).
    cpu: Option<Duration>,
}

impl Measurement {
    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.wall.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.batches.clone();
        sorted.sort();
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
    fn longest_lock(&self) -> Duration {
        self.batches.iter().copied().max().unwrap_or(self.wall)
    }
    fn cpu_share(&self) -> Option<f64> {
        self.cpu.map(|c| c.as_secs_f64() / self.wall.as_secs_f64())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sqlx::query=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    ensure!(
        args.w1_rows > 0 && args.w2_rows > 0,
        "--w1-rows and --w2-rows must be positive"
    );
    let scratch = Scratch::create(&args.database_url).await?;
    let outcome = tokio::select! {
        outcome = bench(&args, &scratch) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop_database().await?;
    outcome
}

async fn bench(args: &Args, scratch: &Scratch) -> Result<()> {
    let pool = raw_pool(&scratch.url, 2).await?;
    backfilld::store::migrate::run(
        &Db::from_pool(pool.clone(), PoolMode::Session),
        &Schema::new("backfilld"),
    )
    .await?;
    let ticks = clock_ticks();
    println!(
        "backfilld benchmark in scratch database {} ({} cores); batch size {BATCH_SIZE}",
        scratch.name,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if args.scale {
        return scale(args, scratch, &pool, ticks).await;
    }
    if args.finishing {
        return finishing::finishing(scratch, &pool, [args.w1_rows, args.w2_rows], ticks).await;
    }
    let mut variants = vec![
        Variant::Update,
        Variant::Loop,
        Variant::Backfilld {
            partitions: 1,
            target: None,
        },
        Variant::Backfilld {
            partitions: 2,
            target: None,
        },
    ];
    let mut notes = Vec::new();
    if let Some(target) = args.target_batch_time {
        match adaptive_spec(&Workload::W1.job()?, target) {
            Ok(_) => {
                for partitions in [1, 2] {
                    variants.push(Variant::Backfilld {
                        partitions,
                        target: Some(target),
                    });
                }
            }
            Err(e) => notes.push(format!(
                "adaptive runs skipped: this build's JobSpec refuses target_batch_time ({e})"
            )),
        }
    }
    let mut results = Vec::new();
    for (workload, rows) in [(Workload::W1, args.w1_rows), (Workload::W2, args.w2_rows)] {
        if args.only.is_some_and(|only| only != workload) {
            continue;
        }
        for variant in &variants {
            eprintln!("… {} {} on {rows} rows", workload.label(), variant.label());
            let m = measure(
                scratch,
                &pool,
                workload,
                variant.clone(),
                rows,
                ticks,
                args.synchronous_commit,
            )
            .await?;
            eprintln!(
                "  {:.0} rows/s in {:.2}s",
                m.rows_per_second(),
                m.wall.as_secs_f64()
            );
            results.push(m);
        }
    }
    print!("{}", table(&results));
    print!("{}", targets(&results, args.target_batch_time));
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}

/// W2 with 1 partition on N and 5N rows: rows/s should not depend on the table's size. The
/// PL/pgSQL loop runs on the same tables too: what the server itself pays for a larger job (WAL
/// segments created beyond those it recycles, checkpoints, a table outgrowing shared_buffers)
/// slows it as much, so backfilld's rate relative to the loop isolates backfilld's own per-batch
/// cost.
async fn scale(args: &Args, scratch: &Scratch, pool: &PgPool, ticks: f64) -> Result<()> {
    let backfilld = Variant::Backfilld {
        partitions: 1,
        target: None,
    };
    let mut results = Vec::new();
    for rows in [args.w2_rows, args.w2_rows * 5] {
        for variant in [Variant::Loop, backfilld.clone()] {
            eprintln!(
                "… {} {} on {rows} rows",
                Workload::W2.label(),
                variant.label()
            );
            results.push(
                measure(
                    scratch,
                    pool,
                    Workload::W2,
                    variant,
                    rows,
                    ticks,
                    args.synchronous_commit,
                )
                .await?,
            );
        }
    }
    print!("{}", table(&results));
    let rate = |i: usize| results[i].rows_per_second();
    let change = |from: f64, to: f64| (to - from) / from * 100.0;
    let (small, large) = (rate(1), rate(3));
    let difference = change(small, large);
    println!(
        "\nscale: {} rows {small:.0} rows/s, {} rows {large:.0} rows/s: {difference:+.1}% ({} target |difference| < 10%)",
        results[1].rows,
        results[3].rows,
        verdict(difference.abs() < 10.0)
    );
    let (loop_small, loop_large) = (rate(0), rate(2));
    let (relative_small, relative_large) = (small / loop_small, large / loop_large);
    println!(
        "       the PL/pgSQL loop on the same tables: {loop_small:.0} → {loop_large:.0} rows/s ({:+.1}%); backfilld relative to it: {relative_small:.2}× → {relative_large:.2}× ({:+.1}%)",
        change(loop_small, loop_large),
        change(relative_small, relative_large)
    );
    Ok(())
}

/// Fresh table, then the variant, then a check in the database that nothing is left pending.
async fn measure(
    scratch: &Scratch,
    pool: &PgPool,
    workload: Workload,
    variant: Variant,
    rows: i64,
    ticks: f64,
    synchronous_commit: Option<SynchronousCommit>,
) -> Result<Measurement> {
    let mut job = workload.job()?;
    if let Some(commit) = synchronous_commit {
        job.synchronous_commit = commit;
    }
    fresh_table(pool, workload, rows).await?;
    let (wall, batches, cpu, updated) = match &variant {
        Variant::Update => {
            let started = Instant::now();
            let done = sqlx::query(sql(plain_update(&job))).execute(pool).await?;
            let wall = started.elapsed();
            (wall, vec![wall], None, done.rows_affected() as i64)
        }
        Variant::Loop => keyset_loop(pool, &job).await?,
        Variant::Backfilld { partitions, target } => {
            let mut spec = JobSpec {
                // Unique within the scratch database: one job per run.
                name: format!(
                    "bench-{}-{rows}-{partitions}p{}",
                    format!("{workload:?}").to_lowercase(),
                    if target.is_some() { "-adaptive" } else { "" }
                ),
                batch_size: BATCH_SIZE,
                rows_per_second: None,
                pause: None,
                partitions: *partitions,
                // One pass, as the other variants make: `--finishing` measures the sweep.
                passes: Some(1),
                sync: None,
                ..job.clone()
            };
            if let Some(target) = target {
                spec = adaptive_spec(&spec, *target)?;
            }
            run_backfilld(scratch, &spec, ticks).await?
        }
    };
    let pending: i64 = sqlx::query_scalar(sql(format!(
        "SELECT count(*) FROM {} WHERE {}",
        workload.table(),
        pending(&job)
    )))
    .fetch_one(pool)
    .await?;
    ensure!(
        pending == 0 && updated == rows,
        "{} {}: {pending} rows still pending, {updated} of {rows} updated: the result is wrong",
        workload.label(),
        variant.label()
    );
    Ok(Measurement {
        workload,
        variant,
        rows,
        wall,
        batches,
        cpu,
    })
}

/// Drop, create and fill the workload's table, then VACUUM ANALYZE and CHECKPOINT so every
/// variant starts from the same state: hint bits set, statistics fresh, no dirty buffers.
async fn fresh_table(pool: &PgPool, workload: Workload, rows: i64) -> Result<()> {
    let (create, fill) = match workload {
        Workload::W1 => (demo::CREATE_PRODUCTS, demo::FILL_PRODUCTS),
        Workload::W2 => (demo::CREATE_USERS, demo::FILL_USERS),
    };
    sqlx::raw_sql(sql(format!("DROP TABLE IF EXISTS {}", workload.table())))
        .execute(pool)
        .await?;
    sqlx::raw_sql(create).execute(pool).await?;
    sqlx::query(fill).bind(rows).execute(pool).await?;
    // The whole scratch database: the bench table and backfilld's own, bloated by the
    // previous runs' checkpoints.
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    sqlx::raw_sql("CHECKPOINT").execute(pool).await?;
    Ok(())
}

/// The job's `where`, parenthesized (every example job has one: it is how each variant knows
/// which rows are still pending).
fn pending(job: &JobSpec) -> String {
    format!(
        "({})",
        job.filter
            .as_deref()
            .expect("the example jobs select pending rows with `where`")
    )
}

fn assignments(job: &JobSpec) -> String {
    job.set
        .iter()
        .map(|(column, expression)| format!("{} = ({expression})", quote_ident(column)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plain_update(job: &JobSpec) -> String {
    format!(
        "UPDATE {} SET {} WHERE {}",
        job.table,
        assignments(job),
        pending(job)
    )
}

/// (b): the loop a DBA writes by hand. Each iteration is one transaction, timed server-side
/// from the previous COMMIT to its own; the times come back through an INOUT parameter, so
/// nothing else is written while it runs.
async fn keyset_loop(
    pool: &PgPool,
    job: &JobSpec,
) -> Result<(Duration, Vec<Duration>, Option<Duration>, i64)> {
    let table = &job.table;
    sqlx::raw_sql(sql(format!(
        "CREATE OR REPLACE PROCEDURE bench_keyset_loop(
             batch_size int, INOUT timings text DEFAULT NULL, INOUT updated int8 DEFAULT NULL)
         LANGUAGE plpgsql AS $proc$
         DECLARE
             last_id int8 := 0;
             next_id int8;
             started timestamptz;
             n int8;
             durations float8[] := '{{}}';
         BEGIN
             updated := 0;
             LOOP
                 started := clock_timestamp();
                 SELECT max(id) INTO next_id
                   FROM (SELECT id FROM {table} WHERE id > last_id ORDER BY id
                          LIMIT batch_size) AS walk;
                 EXIT WHEN next_id IS NULL;
                 UPDATE {table} SET {set} WHERE id > last_id AND id <= next_id AND {pending};
                 GET DIAGNOSTICS n = ROW_COUNT;
                 updated := updated + n;
                 last_id := next_id;
                 COMMIT;
                 durations := durations
                     || extract(epoch FROM clock_timestamp() - started)::float8;
             END LOOP;
             timings := array_to_string(durations, ',');
         END
         $proc$",
        set = assignments(job),
        pending = pending(job),
    )))
    .execute(pool)
    .await?;
    let started = Instant::now();
    // The simple protocol: a procedure may COMMIT only when CALL is its own top-level statement.
    let row = sqlx::raw_sql(sql(format!("CALL bench_keyset_loop({BATCH_SIZE})")))
        .fetch_one(pool)
        .await?;
    let wall = started.elapsed();
    let timings: String = row.try_get("timings")?;
    let updated: i64 = row.try_get("updated")?;
    let batches = timings
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<f64>().map(Duration::from_secs_f64))
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the loop's batch times")?;
    Ok((wall, batches, None, updated))
}

/// (c)/(d): submit, mark running and run the job through the library's scheduler, as `run`
/// does, timing wall and this process's CPU from the submission to the job's completion.
async fn run_backfilld(
    scratch: &Scratch,
    spec: &JobSpec,
    ticks: f64,
) -> Result<(Duration, Vec<Duration>, Option<Duration>, i64)> {
    let pool = db::connect(&scratch.url, spec.partitions + 3, PoolMode::Session).await?;
    let schema = Schema::new("backfilld");
    let cpu_before = cpu_time(ticks)?;
    let started = Instant::now();
    let resolved = submit::resolve(&pool, spec).await?;
    let submitted = submit::find_or_submit(&pool, &schema, spec, resolved, ACTOR).await?;
    ensure!(
        submitted.created,
        "job {} existed before this run",
        spec.name
    );
    let id = submitted.job.id;
    let mut tx = pool.begin().await?;
    jobs::transition(&mut tx, &schema, id, JobState::Running, ACTOR, None).await?;
    tx.commit().await?;
    // The benchmark keeps every batch's transaction time for its percentiles.
    let durations = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = durations.clone();
    let runtime = Arc::new(
        JobRuntime::new(id, spec, &submitted.resolved, LEASE_TTL, "default").with_batch_observer(
            Box::new(move |elapsed| {
                recorder
                    .lock()
                    .expect("durations lock poisoned")
                    .push((Instant::now(), elapsed))
            }),
        ),
    );
    let exit = Scheduler::new(
        pool.clone(),
        schema,
        LEASE_TTL,
        spec.partitions as usize,
        ACTOR,
    )
    .only(runtime.clone())
    .run(CancellationToken::new())
    .await?;
    let cpu = cpu_time(ticks)?.saturating_sub(cpu_before);
    // The backfill ends with its last batch's commit, as the other variants' do; what the job
    // does after it (counting rows left pending with `passes = 1`) is `--finishing`'s to measure.
    let observed = durations.lock().expect("durations lock poisoned").clone();
    let wall = observed
        .last()
        .map_or_else(|| started.elapsed(), |(at, _)| at.duration_since(started));
    pool.close().await;
    if exit != SchedulerExit::JobEnded(JobState::Completed) {
        bail!("job {} ended with {exit:?}, not completed", spec.name);
    }
    let batches = observed.iter().map(|(_, d)| *d).collect();
    let updated = runtime.snapshot().rows_updated as i64;
    Ok((wall, batches, Some(cpu), updated))
}

/// `spec` with `target_batch_time` set, built through JSON so that this compiles whether or
/// not this build's JobSpec knows the field: one that does not refuses it here, at run time.
fn adaptive_spec(spec: &JobSpec, target: Duration) -> Result<JobSpec> {
    let mut value = serde_json::to_value(spec)?;
    value["target_batch_time"] = format!("{}ms", target.as_millis()).into();
    Ok(JobSpec::from_json(&value.to_string(), "benchmark")?)
}

fn table(results: &[Measurement]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<28} {:<44} {:>9} {:>8} {:>9} {:>6} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8}",
        "workload",
        "variant",
        "rows",
        "wall s",
        "rows/s",
        "×(a)",
        "batches",
        "rows/bat",
        "p50 ms",
        "p99 ms",
        "max lock",
        "CPU %"
    );
    let _ = writeln!(out, "\n{header}\n{}", "-".repeat(header.chars().count()));
    for m in results {
        let base = results
            .iter()
            .find(|b| b.workload == m.workload && matches!(b.variant, Variant::Update));
        let ratio = base.map_or("—".into(), |b| {
            format!("{:.2}", m.rows_per_second() / b.rows_per_second())
        });
        let per_batch = |d: Duration| match m.variant {
            Variant::Update => "—".to_string(),
            _ => format!("{:.1}", d.as_secs_f64() * 1000.0),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<44} {:>9} {:>8.2} {:>9.0} {:>6} {:>7} {:>9.0} {:>8} {:>8} {:>9} {:>8}",
            m.workload.label(),
            m.variant.label(),
            m.rows,
            m.wall.as_secs_f64(),
            m.rows_per_second(),
            ratio,
            m.batches.len(),
            m.rows as f64 / m.batches.len().max(1) as f64,
            per_batch(m.percentile(0.50)),
            per_batch(m.percentile(0.99)),
            format!("{:.3}s", m.longest_lock().as_secs_f64()),
            m.cpu_share()
                .map_or("—".into(), |s| format!("{:.1}", s * 100.0)),
        );
    }
    let _ = writeln!(
        out,
        "max lock = the longest batch transaction (for (a), the whole UPDATE); CPU % = this process's user+system CPU over wall time while backfilld ran"
    );
    out
}

/// The issue's targets, judged on what was measured (a target whose runs were not done is
/// left out).
fn targets(results: &[Measurement], target_batch_time: Option<Duration>) -> String {
    let find = |workload: Workload, pick: &dyn Fn(&Variant) -> bool| {
        results
            .iter()
            .find(|m| m.workload == workload && pick(&m.variant))
    };
    let plain = |p: u32| move |v: &Variant| matches!(v, Variant::Backfilld { partitions, target: None } if *partitions == p);
    let mut out = String::from("\ntargets:\n");
    let mut ratio = |name: &str, a: Option<&Measurement>, b: Option<&Measurement>, min: f64| {
        if let (Some(a), Some(b)) = (a, b) {
            let r = a.rows_per_second() / b.rows_per_second();
            let _ = writeln!(out, "  {} {name}: {r:.2}× (≥ {min}×)", verdict(r >= min));
        }
    };
    let update = |v: &Variant| matches!(v, Variant::Update);
    let looped = |v: &Variant| matches!(v, Variant::Loop);
    ratio(
        "W1 2 partitions vs single UPDATE",
        find(Workload::W1, &plain(2)),
        find(Workload::W1, &update),
        1.8,
    );
    ratio(
        "W2 2 partitions vs single UPDATE",
        find(Workload::W2, &plain(2)),
        find(Workload::W2, &update),
        1.3,
    );
    ratio(
        "W2 1 partition vs PL/pgSQL loop",
        find(Workload::W2, &plain(1)),
        find(Workload::W2, &looped),
        1.0,
    );
    let daemon: Vec<&Measurement> = results
        .iter()
        .filter(|m| matches!(m.variant, Variant::Backfilld { .. }))
        .collect();
    // The 0.5 s bound is for batches of BATCH_SIZE keys; adaptive runs answer to their target.
    if let Some(longest) = daemon
        .iter()
        .filter(|m| matches!(m.variant, Variant::Backfilld { target: None, .. }))
        .map(|m| m.longest_lock())
        .max()
    {
        let _ = writeln!(
            out,
            "  {} longest backfilld batch transaction at batch size {BATCH_SIZE}: {:.0} ms (≤ 500 ms)",
            verdict(longest <= Duration::from_millis(500)),
            longest.as_secs_f64() * 1000.0
        );
    }
    if let Some(cpu) = daemon
        .iter()
        .filter_map(|m| m.cpu_share())
        .max_by(f64::total_cmp)
    {
        let _ = writeln!(
            out,
            "  {} highest daemon CPU share: {:.1}% of wall time (< 5%)",
            verdict(cpu < 0.05),
            cpu * 100.0
        );
    }
    if let Some(target) = target_batch_time {
        for m in daemon.iter().filter(|m| {
            matches!(
                m.variant,
                Variant::Backfilld {
                    target: Some(_),
                    ..
                }
            )
        }) {
            let p99 = m.percentile(0.99);
            let _ = writeln!(
                out,
                "  {} {} {}: p99 {:.0} ms (≤ 2 × {} ms)",
                verdict(p99 <= target * 2),
                m.workload.label(),
                m.variant.label(),
                p99.as_secs_f64() * 1000.0,
                target.as_millis()
            );
        }
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET   "
    } else {
        "MISSED"
    }
}

/// A database of its own on the server, dropped at the end (also after a failure or Ctrl-C).
struct Scratch {
    server: String,
    name: String,
    url: String,
}

/// A plain sqlx pool (named, cached statements; no transaction around each): what the
/// baselines run on, and what maintenance (VACUUM, CREATE DATABASE) needs.
async fn raw_pool(url: &str, size: u32) -> Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .connect_with(db::connect_options(url)?)
        .await?)
}

impl Scratch {
    async fn create(server: &str) -> Result<Scratch> {
        let name = format!("backfilld_bench_{}", std::process::id());
        let admin = raw_pool(server, 1)
            .await
            .context("connecting to --database-url")?;
        sqlx::raw_sql(sql(format!(
            "DROP DATABASE IF EXISTS {}",
            quote_ident(&name)
        )))
        .execute(&admin)
        .await?;
        sqlx::raw_sql(sql(format!("CREATE DATABASE {}", quote_ident(&name))))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(Scratch {
            server: server.to_string(),
            url: with_database(server, &name),
            name,
        })
    }

    async fn drop_database(&self) -> Result<()> {
        let admin = raw_pool(&self.server, 1).await?;
        sqlx::raw_sql(sql(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.name)
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(())
    }
}

/// `server` with its database path replaced by `name`, query parameters kept.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| i + authority);
    format!("{}/{name}{query}", &base[..path])
}

/// This process's user + system CPU time (all threads), from /proc/self/stat.
fn cpu_time(ticks_per_second: f64) -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the parenthesized command name, which may itself contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("unexpected /proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line; the slice starts at field 3.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(Duration::from_secs_f64(ticks / ticks_per_second))
}

/// USER_HZ, the unit of /proc/self/stat's CPU times (100 on every usual Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
