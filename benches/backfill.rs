//! The benchmark harness (issue 5): times the example backfills done four ways — one plain
//! `UPDATE`, a PL/pgSQL keyset loop with a COMMIT per batch, and backfilld in-process with one
//! and with two partitions — on a fresh table each time, in a scratch database it creates and
//! drops, and prints rows/s, batch-time percentiles, the longest row-lock hold, the WAL written
//! per row, the dead tuples left and the daemon's own CPU share, then checks the issue's targets.
//!
//! `--traffic` (issue 17) runs each variant beside the application (pgbench at a fixed rate on
//! the same table, `app.rs`) and reports what it saw, against the application alone, with the
//! frontier of gentler settings (`traffic.rs`). Every figure is a ratio to baselines run in the
//! same process run, so a machine busy with other work slows both sides alike.
//!
//! ```sh
//! cargo bench --bench backfill                        # W1 200k rows, W2 1M rows
//! cargo bench --bench backfill -- --w2-rows 50000 --only w2
//! cargo bench --bench backfill -- --target-batch-time 200ms
//! cargo bench --bench backfill -- --traffic           # W1g 500k, W3 1M rows beside the app
//! cargo bench --bench backfill -- --scale             # W2, loop and 1 partition, 1M vs 5M rows
//! cargo bench --bench backfill -- --scale --scale-factor 10   # 1M vs 10M rows
//! cargo bench --bench backfill -- --synchronous-commit on   # batches wait for their flush
//! ```

#[path = "backfill/app.rs"]
mod app;
#[path = "backfill/finishing.rs"]
mod finishing;
#[path = "backfill/traffic.rs"]
mod traffic;
#[path = "backfill/workload.rs"]
mod workload;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use backfilld::engine::runtime::JobRuntime;
use backfilld::engine::scheduler::{Scheduler, SchedulerExit};
use backfilld::engine::submit;
use backfilld::plumbing::db::{self, quote_ident, sql, Db, PoolMode, Schema};
use backfilld::spec::{DutyCycle, JobSpec, SynchronousCommit};
use backfilld::store::{jobs, JobState};
use clap::Parser;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use workload::Workload;

const ACTOR: &str = "bench";
const LEASE_TTL: Duration = Duration::from_secs(30);
const BATCH_SIZE: u32 = 1000;

#[derive(Parser, Debug)]
#[command(about = "backfilld benchmark: plain UPDATE vs PL/pgSQL loop vs backfilld")]
struct Args {
    /// Server to create the scratch database on.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Rows of W1 (products, tsvector): 200k; with --traffic, of W1g: 500k.
    #[arg(long)]
    w1_rows: Option<i64>,
    /// Rows of W2 (users, email copy); with --scale, the small size.
    #[arg(long, default_value_t = 1_000_000)]
    w2_rows: i64,
    /// Rows of W3 (orders, uuid key), with --traffic.
    #[arg(long, default_value_t = 1_000_000)]
    w3_rows: i64,
    /// Run one workload only.
    #[arg(long, value_enum)]
    only: Option<Workload>,
    /// Instead of the comparison: W2 by backfilld with 1 partition on --w2-rows and
    /// --scale-factor times as many rows, to show that the per-batch cost does not grow with
    /// the table.
    #[arg(long)]
    scale: bool,
    #[arg(long, default_value_t = 5)]
    scale_factor: i64,
    /// Instead of the comparison: every variant beside the application's traffic (pgbench at
    /// --app-rate transactions per second on the same table), on W1g and W3, with the frontier
    /// of gentler settings.
    #[arg(long)]
    traffic: bool,
    /// The application's transactions per second, with --traffic.
    #[arg(long, default_value_t = 200)]
    app_rate: u32,
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

impl Args {
    fn w1_rows(&self) -> i64 {
        let default = if self.traffic { 500_000 } else { 200_000 };
        self.w1_rows.unwrap_or(default)
    }
}

/// One way of doing the backfill (or, with `--traffic`, none: the application alone, or beside
/// `Busy(n)`: n threads of this process spinning, no database work, the cost of n busy cores).
#[derive(Debug, Clone, PartialEq)]
enum Variant {
    Idle,
    Busy(u32),
    Update,
    Loop,
    Backfilld(Settings),
}

/// backfilld's settings in a run: full speed is `Settings::plain(partitions)`.
#[derive(Debug, Clone, PartialEq, Default)]
struct Settings {
    partitions: u32,
    target: Option<Duration>,
    pause: Option<Duration>,
    /// `duty_cycle`, in hundredths.
    duty_percent: Option<i64>,
    /// `max_wal_rate`, bytes per second.
    max_wal_rate: Option<u64>,
}

impl Settings {
    fn plain(partitions: u32) -> Settings {
        Settings {
            partitions,
            ..Settings::default()
        }
    }

    fn is_plain(&self, partitions: u32) -> bool {
        *self == Settings::plain(partitions)
    }
}

impl Variant {
    fn label(&self) -> String {
        match self {
            Variant::Idle => "(0) the application alone".into(),
            Variant::Busy(n) => format!(
                "(h) {n} busy CPU loop{}, no database work",
                if *n == 1 { "" } else { "s" }
            ),
            Variant::Update => "(a) single UPDATE".into(),
            Variant::Loop => format!("(b) PL/pgSQL loop, {BATCH_SIZE}/COMMIT"),
            Variant::Backfilld(s) => {
                let plain =
                    s.pause.is_none() && s.duty_percent.is_none() && s.max_wal_rate.is_none();
                let letter = match (plain, s.partitions) {
                    (true, 1) => 'c',
                    (true, _) => 'd',
                    (false, _) => 'e',
                };
                let mut label = format!(
                    "({letter}) backfilld, {} partition{}",
                    s.partitions,
                    if s.partitions == 1 { "" } else { "s" }
                );
                if let Some(t) = s.target {
                    let _ = write!(label, ", target {}", humantime::format_duration(t));
                }
                if let Some(p) = s.pause {
                    let _ = write!(label, ", pause {}", humantime::format_duration(p));
                }
                if let Some(d) = s.duty_percent {
                    let _ = write!(label, ", duty {}", d as f64 / 100.0);
                }
                if let Some(rate) = s.max_wal_rate {
                    let _ = write!(label, ", WAL ≤ {:.1}MB/s", rate as f64 / MB);
                }
                label
            }
        }
    }
}

const MB: f64 = 1024.0 * 1024.0;

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
    /// This process's largest resident set while backfilld ran.
    peak_rss: Option<u64>,
    /// WAL the server wrote from the start to the end of the run (every session's).
    wal_bytes: u64,
    /// Dead tuples in the table after the run (pgstattuple; None without the extension).
    dead_tuples: Option<i64>,
    /// What the application saw, with `--traffic`.
    app: Option<app::Latency>,
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
        args.w1_rows() > 0 && args.w2_rows > 0 && args.w3_rows > 0,
        "--w1-rows, --w2-rows and --w3-rows must be positive"
    );
    ensure!(args.scale_factor > 1, "--scale-factor must be at least 2");
    ensure!(args.app_rate > 0, "--app-rate must be positive");
    let scratch = Scratch::create(&args.database_url).await?;
    let outcome = tokio::select! {
        outcome = bench(&args, &scratch) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop_database().await?;
    outcome
}

/// What every measurement needs: where, how, and (with `--traffic`) the application beside it.
struct Bench<'a> {
    scratch: &'a Scratch,
    pool: PgPool,
    ticks: f64,
    synchronous_commit: Option<SynchronousCommit>,
    app: Option<app::App>,
}

async fn bench(args: &Args, scratch: &Scratch) -> Result<()> {
    let pool = raw_pool(&scratch.url, 2).await?;
    backfilld::store::migrate::run(
        &Db::from_pool(pool.clone(), PoolMode::Session),
        &Schema::new("backfilld"),
    )
    .await?;
    // Dead tuples are counted exactly by pgstattuple (the statistics views lag behind).
    let _ = sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .execute(&pool)
        .await;
    let ticks = clock_ticks();
    println!(
        "backfilld benchmark in scratch database {} ({} cores); batch size {BATCH_SIZE}",
        scratch.name,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut bench = Bench {
        scratch,
        pool: pool.clone(),
        ticks,
        synchronous_commit: args.synchronous_commit,
        app: None,
    };
    if args.scale {
        return scale(args, &bench).await;
    }
    if args.finishing {
        return finishing::finishing(scratch, &pool, [args.w1_rows(), args.w2_rows], ticks).await;
    }
    if args.traffic {
        bench.app = Some(app::App::new(args.app_rate)?);
        return traffic::traffic(args, &bench).await;
    }
    let mut variants = vec![
        Variant::Update,
        Variant::Loop,
        Variant::Backfilld(Settings::plain(1)),
        Variant::Backfilld(Settings::plain(2)),
    ];
    if let Some(target) = args.target_batch_time {
        for partitions in [1, 2] {
            variants.push(Variant::Backfilld(Settings {
                target: Some(target),
                ..Settings::plain(partitions)
            }));
        }
    }
    let mut results = Vec::new();
    for (workload, rows) in [(Workload::W1, args.w1_rows()), (Workload::W2, args.w2_rows)] {
        if args.only.is_some_and(|only| only != workload) {
            continue;
        }
        for variant in &variants {
            results.push(bench.measure(workload, variant.clone(), rows).await?);
        }
    }
    print!("{}", table(&results));
    print!("{}", targets(&results, args.target_batch_time));
    Ok(())
}

/// W2 with 1 partition on N and N × --scale-factor rows: rows/s should not depend on the
/// table's size, nor the daemon's memory. The PL/pgSQL loop runs on the same tables too: what
/// the server itself pays for a larger job (WAL segments created beyond those it recycles,
/// checkpoints, a table outgrowing shared_buffers) slows it as much, so backfilld's rate
/// relative to the loop isolates backfilld's own per-batch cost.
async fn scale(args: &Args, bench: &Bench<'_>) -> Result<()> {
    let backfilld = Variant::Backfilld(Settings::plain(1));
    let mut results = Vec::new();
    for rows in [args.w2_rows, args.w2_rows * args.scale_factor] {
        for variant in [Variant::Loop, backfilld.clone()] {
            results.push(bench.measure(Workload::W2, variant, rows).await?);
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
    if let (Some(small), Some(large)) = (results[1].peak_rss, results[3].peak_rss) {
        let growth = change(small as f64, large as f64);
        println!(
            "       memory: this process's peak resident set while backfilld ran {:.1} MB → {:.1} MB ({growth:+.1}%; {} target: flat, < 10%)",
            small as f64 / MB,
            large as f64 / MB,
            verdict(growth < 10.0)
        );
    }
    Ok(())
}

impl Bench<'_> {
    /// Fresh table, then the variant (beside the application, with `--traffic`), then a check
    /// in the database that nothing is left pending.
    async fn measure(
        &self,
        workload: Workload,
        variant: Variant,
        rows: i64,
    ) -> Result<Measurement> {
        eprintln!("… {} {} on {rows} rows", workload.label(), variant.label());
        let pool = &self.pool;
        let mut job = workload.job()?;
        if let Some(commit) = self.synchronous_commit {
            job.synchronous_commit = commit;
        }
        workload.fresh_table(pool, rows).await?;
        let app = match &self.app {
            Some(app) => Some(app.start(&self.scratch.url, workload, rows).await?),
            None => None,
        };
        let wal_before = wal_position(pool).await?;
        let window_start = app::now();
        let run = match &variant {
            Variant::Idle => {
                tokio::time::sleep(traffic::IDLE).await;
                Run::sql(traffic::IDLE, vec![], 0)
            }
            Variant::Busy(threads) => {
                traffic::busy(*threads, traffic::IDLE).await;
                Run::sql(traffic::IDLE, vec![], 0)
            }
            Variant::Update => {
                let started = Instant::now();
                let done = sqlx::query(sql(plain_update(&job))).execute(pool).await?;
                let wall = started.elapsed();
                Run::sql(wall, vec![wall], done.rows_affected() as i64)
            }
            Variant::Loop => keyset_loop(pool, &job, workload).await?,
            Variant::Backfilld(settings) => {
                let spec = JobSpec {
                    // Unique within the scratch database: one job per run.
                    name: format!("bench-{}", uuid::Uuid::new_v4().simple()),
                    batch_size: BATCH_SIZE,
                    rows_per_second: None,
                    pause: settings.pause,
                    duty_cycle: settings
                        .duty_percent
                        .map(|d| DutyCycle::from_percent(d).context("a duty cycle in 1..=100"))
                        .transpose()?,
                    partitions: settings.partitions,
                    target_batch_time: settings.target,
                    max_wal_rate: settings.max_wal_rate.map(|b| format!("{b}B/s")),
                    // One pass, as the other variants make: `--finishing` measures the sweep.
                    passes: Some(1),
                    sync: None,
                    ..job.clone()
                };
                spec.validate("benchmark")?;
                run_backfilld(self.scratch, &spec, self.ticks).await?
            }
        };
        let wal_bytes = wal_position(pool).await?.saturating_sub(wal_before);
        let app = match app {
            Some(app) => Some(
                app.stop(window_start, window_start + run.wall.as_secs_f64())
                    .await?,
            ),
            None => None,
        };
        // Before the check below: a reader prunes the dead tuples of the pages it finds full.
        let dead_tuples = sqlx::query_scalar::<_, i64>(sql(format!(
            "SELECT dead_tuple_count FROM pgstattuple('{}')",
            workload.table()
        )))
        .fetch_one(pool)
        .await
        .ok();
        if !matches!(variant, Variant::Idle | Variant::Busy(_)) {
            let pending: i64 = sqlx::query_scalar(sql(format!(
                "SELECT count(*) FROM {} WHERE {}",
                workload.table(),
                pending(&job)
            )))
            .fetch_one(pool)
            .await?;
            // The application's updates write the new column too (W2, W3), so a backfill
            // beside it may find fewer rows to update; none may be left.
            let updated_all = run.updated == rows || (app.is_some() && run.updated <= rows);
            ensure!(
                pending == 0 && updated_all,
                "{} {}: {pending} rows still pending, {} of {rows} updated: the result is wrong",
                workload.label(),
                variant.label(),
                run.updated
            );
        }
        let m = Measurement {
            workload,
            variant,
            rows: if run.updated == 0 && app.is_some() {
                0
            } else {
                rows
            },
            wall: run.wall,
            batches: run.batches,
            cpu: run.cpu,
            peak_rss: run.peak_rss,
            wal_bytes,
            dead_tuples,
            app,
        };
        eprintln!(
            "  {:.0} rows/s in {:.2}s{}",
            m.rows_per_second(),
            m.wall.as_secs_f64(),
            m.app.as_ref().map_or(String::new(), |a| format!(
                "; application p99 {:.1} ms, max {:.1} ms",
                a.p99.as_secs_f64() * 1000.0,
                a.max.as_secs_f64() * 1000.0
            ))
        );
        Ok(m)
    }
}

/// What running one variant returned.
struct Run {
    wall: Duration,
    batches: Vec<Duration>,
    cpu: Option<Duration>,
    peak_rss: Option<u64>,
    updated: i64,
}

impl Run {
    fn sql(wall: Duration, batches: Vec<Duration>, updated: i64) -> Run {
        Run {
            wall,
            batches,
            cpu: None,
            peak_rss: None,
            updated,
        }
    }
}

/// The server's WAL insert position, in bytes.
async fn wal_position(pool: &PgPool) -> Result<u64> {
    let bytes: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
            .fetch_one(pool)
            .await?;
    Ok(bytes as u64)
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
async fn keyset_loop(pool: &PgPool, job: &JobSpec, workload: Workload) -> Result<Run> {
    let table = &job.table;
    let (key_type, key_start) = workload.key_type();
    // max() has no uuid version: the last key of the walk another way, for W3 only (W1 and
    // W2 keep the loop their earlier figures were measured with).
    let last_key = match key_type {
        "int8" => "max(id)",
        _ => "(array_agg(id ORDER BY id DESC))[1]",
    };
    sqlx::raw_sql(sql(format!(
        "CREATE OR REPLACE PROCEDURE bench_keyset_loop(
             batch_size int, INOUT timings text DEFAULT NULL, INOUT updated int8 DEFAULT NULL)
         LANGUAGE plpgsql AS $proc$
         DECLARE
             last_id {key_type} := {key_start};
             next_id {key_type};
             started timestamptz;
             n int8;
             durations float8[] := '{{}}';
         BEGIN
             updated := 0;
             LOOP
                 started := clock_timestamp();
                 SELECT {last_key} INTO next_id
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
    Ok(Run::sql(wall, batches, updated))
}

/// (c)/(d): submit, mark running and run the job through the library's scheduler, as `run`
/// does, timing wall and this process's CPU from the submission to the job's completion.
async fn run_backfilld(scratch: &Scratch, spec: &JobSpec, ticks: f64) -> Result<Run> {
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
    let sampling = CancellationToken::new();
    let peak_rss = tokio::spawn(peak_resident_set(sampling.clone()));
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
    sampling.cancel();
    let peak_rss = peak_rss.await?;
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
    Ok(Run {
        wall,
        batches,
        cpu: Some(cpu),
        peak_rss,
        updated,
    })
}

/// The largest resident set of this process (the daemon's engine, in-process), sampled every
/// 100 ms until `done`.
async fn peak_resident_set(done: CancellationToken) -> Option<u64> {
    let resident = || -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    let mut peak = resident();
    loop {
        tokio::select! {
            _ = done.cancelled() => return peak.max(resident()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => peak = peak.max(resident()),
        }
    }
}

fn table(results: &[Measurement]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<28} {:<44} {:>9} {:>8} {:>9} {:>6} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}",
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
        "CPU %",
        "WAL B/row",
        "dead tup"
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
            "{:<28} {:<44} {:>9} {:>8.2} {:>9.0} {:>6} {:>7} {:>9.0} {:>8} {:>8} {:>9} {:>8} {:>9.0} {:>9}",
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
            m.wal_bytes as f64 / m.rows as f64,
            m.dead_tuples.map_or("—".into(), |d| d.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "max lock = the longest batch transaction (for (a), the whole UPDATE); CPU % = this process's user+system CPU over wall time while backfilld ran; WAL B/row = the server's WAL over the run / rows; dead tup = pgstattuple's dead tuples right after it, those no reader pruned (it prunes full pages as it reads them, as every reader does), so fewer than VACUUM will find (autovacuum off on the table)"
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
    let plain = |p: u32| move |v: &Variant| matches!(v, Variant::Backfilld(s) if s.is_plain(p));
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
        .filter(|m| matches!(m.variant, Variant::Backfilld(_)))
        .collect();
    // The 0.5 s bound is for batches of BATCH_SIZE keys; adaptive runs answer to their target.
    if let Some(longest) = daemon
        .iter()
        .filter(|m| matches!(&m.variant, Variant::Backfilld(s) if s.target.is_none()))
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
        for m in daemon
            .iter()
            .filter(|m| matches!(&m.variant, Variant::Backfilld(s) if s.target.is_some()))
        {
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
