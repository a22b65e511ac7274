//! `--traffic`: what a backfill costs the application beside it. On W1g (the demo's products
//! with the GIN index on the column being filled) and W3 (a uuid-keyed table), the application
//! (`app.rs`: point reads, updates by key and inserts at a fixed rate) runs alone for a
//! baseline, then beside each variant: (a) the single UPDATE, (b) the PL/pgSQL loop, (c)/(d)
//! backfilld at full speed on 1 and 2 partitions, and (e) gentler settings — adaptive batches of
//! `target_batch_time` 100 ms with a `duty_cycle` resting each worker in proportion to them, and
//! a `max_wal_rate` — whose rows/s against the application's p99 is the frontier a user chooses
//! from.
//!
//! WAL per row is the server's WAL over the run less what the application alone writes in as
//! long (its rate in the baseline run), over the rows backfilled.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;

use super::{verdict, Args, Bench, Measurement, Settings, Variant, Workload, MB};

/// How long the application runs alone for the baseline.
pub const IDLE: Duration = Duration::from_secs(20);
/// The gentle mode's batch target.
const GENTLE_TARGET: Duration = Duration::from_millis(100);
/// The frontier: `duty_cycle`s (hundredths) with 100 ms batches on 1 partition, where 100 is
/// the target alone; on 2 partitions, 50 keeps about one backend busy on average and 33 two
/// thirds of one. W3 runs 50 on each.
const ONE_PARTITION: [i64; 4] = [100, 67, 50, 33];
const TWO_PARTITIONS: [i64; 2] = [50, 33];

fn gentle(partitions: u32, duty_percent: i64) -> Variant {
    Variant::Backfilld(Settings {
        partitions,
        target: Some(GENTLE_TARGET),
        duty_percent: (duty_percent < 100).then_some(duty_percent),
        ..Settings::default()
    })
}

pub async fn traffic(args: &Args, bench: &Bench<'_>) -> Result<()> {
    let rate = bench.app.as_ref().map_or(0, |a| a.rate);
    println!(
        "the application: pgbench, {rate} transactions/s over 4 connections (60% point reads, 30% updates by key, 10% inserts), on the table being backfilled"
    );
    let mut results = Vec::new();
    for (workload, rows) in [
        (Workload::W1g, args.w1_rows()),
        (Workload::W3, args.w3_rows),
    ] {
        if args.only.is_some_and(|only| only != workload) {
            continue;
        }
        let frontier = workload == Workload::W1g;
        let mut variants = vec![
            Variant::Idle,
            // What any process keeping one or two of the cores busy costs the application: the
            // floor for a backfill running 1 or 2 backends at once.
            Variant::Busy(1),
            Variant::Busy(2),
            Variant::Update,
            Variant::Loop,
            Variant::Backfilld(Settings::plain(1)),
            Variant::Backfilld(Settings::plain(2)),
        ];
        if frontier {
            variants.extend(ONE_PARTITION.map(|duty| gentle(1, duty)));
            variants.extend(TWO_PARTITIONS.map(|duty| gentle(2, duty)));
        } else {
            variants.extend([gentle(1, 50), gentle(2, 50)]);
        }
        for variant in variants {
            results.push(bench.measure(workload, variant, rows).await?);
        }
        // The application alone once more: how far two identical runs differ on this machine
        // (the ratios are to the first).
        results.push(bench.measure(workload, Variant::Idle, rows).await?);
        if frontier {
            // A WAL budget of half what (c) wrote per second: the signal holds the job to it.
            let full = find(
                &results,
                workload,
                |v| matches!(v, Variant::Backfilld(s) if s.is_plain(1)),
            );
            if let Some(full) = full {
                let budget = (full.wal_bytes as f64 / full.wall.as_secs_f64() / 2.0) as u64;
                let variant = Variant::Backfilld(Settings {
                    target: Some(GENTLE_TARGET),
                    max_wal_rate: Some(budget),
                    ..Settings::plain(1)
                });
                results.push(bench.measure(workload, variant, rows).await?);
            }
        }
    }
    print!("{}", table(&results));
    print!("{}", targets(&results));
    Ok(())
}

/// Keeps `threads` threads spinning for `window`: busy cores and nothing else.
pub async fn busy(threads: u32, window: Duration) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
}

fn find(
    results: &[Measurement],
    workload: Workload,
    pick: impl Fn(&Variant) -> bool,
) -> Option<&Measurement> {
    results
        .iter()
        .find(|m| m.workload == workload && pick(&m.variant))
}

/// The first run of the application alone (its WAL rate is the application's own).
fn idle(results: &[Measurement], workload: Workload) -> Option<&Measurement> {
    find(results, workload, |v| *v == Variant::Idle)
}

/// The application's p99 alone: the mean of its runs alone, first and last, which differ on a
/// machine busy with other work; every p99 ratio is to this.
fn idle_p99(results: &[Measurement], workload: Workload) -> Option<Duration> {
    let runs: Vec<Duration> = results
        .iter()
        .filter(|m| m.workload == workload && m.variant == Variant::Idle)
        .filter_map(|m| m.app.as_ref().map(|a| a.p99))
        .collect();
    (!runs.is_empty()).then(|| runs.iter().sum::<Duration>() / runs.len() as u32)
}

/// WAL per backfilled row, less the application's own at its idle rate.
fn wal_per_row(results: &[Measurement], m: &Measurement) -> Option<f64> {
    let idle = idle(results, m.workload)?;
    let app_rate = idle.wal_bytes as f64 / idle.wall.as_secs_f64();
    (m.rows > 0)
        .then(|| (m.wal_bytes as f64 - app_rate * m.wall.as_secs_f64()).max(0.0) / m.rows as f64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn table(results: &[Measurement]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<26} {:<52} {:>8} {:>6} {:>8} {:>9} {:>8} {:>7} {:>7} {:>8} {:>9} {:>7} {:>6}",
        "workload",
        "variant",
        "rows/s",
        "×(b)",
        "bat p99",
        "WAL B/row",
        "dead tup",
        "app tps",
        "app p50",
        "app p99",
        "app max",
        "p99×(0)",
        "failed"
    );
    let _ = writeln!(out, "\n{header}\n{}", "-".repeat(header.chars().count()));
    for m in results {
        let looped = find(results, m.workload, |v| *v == Variant::Loop);
        let baseline = idle_p99(results, m.workload);
        let app = m.app.as_ref();
        let cell = |value: Option<String>| value.unwrap_or_else(|| "—".into());
        let _ = writeln!(
            out,
            "{:<26} {:<52} {:>8} {:>6} {:>8} {:>9} {:>8} {:>7} {:>7} {:>8} {:>9} {:>7} {:>6}",
            m.workload.label(),
            m.variant.label(),
            cell((m.rows > 0).then(|| format!("{:.0}", m.rows_per_second()))),
            cell(
                looped
                    .filter(|_| m.rows > 0)
                    .map(|b| format!("{:.2}", m.rows_per_second() / b.rows_per_second()))
            ),
            cell(
                (!m.batches.is_empty() && m.variant != Variant::Update)
                    .then(|| format!("{:.1}", ms(m.percentile(0.99))))
            ),
            cell(wal_per_row(results, m).map(|w| format!("{w:.0}"))),
            cell(m.dead_tuples.map(|d| d.to_string())),
            cell(app.map(|a| format!("{:.0}", a.per_second))),
            cell(app.map(|a| format!("{:.1}", ms(a.p50)))),
            cell(app.map(|a| format!("{:.1}", ms(a.p99)))),
            cell(app.map(|a| format!("{:.1}", ms(a.max)))),
            cell(
                app.zip(baseline)
                    .map(|(a, b)| format!("{:.2}", a.p99.as_secs_f64() / b.as_secs_f64()))
            ),
            cell(app.map(|a| a.failed.to_string())),
        );
    }
    let _ = writeln!(
        out,
        "app = the application's transactions scheduled while the backfill ran, latency from their scheduled start (ms); p99×(0) = app p99 over the mean of the application's p99 alone (both (0) runs); bat p99 = backfill batch transaction p99 (ms); WAL B/row = the server's WAL over the run less the application's own at its idle rate, per row; dead tup = pgstattuple's dead tuples right after the run, those no reader pruned (it prunes full pages as it reads them, as every reader does), so fewer than VACUUM will find (autovacuum off on the table); failed = failed transactions and aborted clients"
    );
    out
}

fn targets(results: &[Measurement]) -> String {
    let mut out = String::from("\ntargets:\n");
    let workloads: Vec<Workload> = results.iter().fold(Vec::new(), |mut seen, m| {
        if !seen.contains(&m.workload) {
            seen.push(m.workload);
        }
        seen
    });
    for workload in workloads {
        let get = |pick: &dyn Fn(&Variant) -> bool| find(results, workload, pick);
        let (Some(idle), Some(update), Some(looped), Some(two)) = (
            idle(results, workload),
            get(&|v| *v == Variant::Update),
            get(&|v| *v == Variant::Loop),
            get(&|v| matches!(v, Variant::Backfilld(s) if s.is_plain(2))),
        ) else {
            continue;
        };
        let p99 = |m: &Measurement| m.app.as_ref().map_or(Duration::ZERO, |a| a.p99);
        let max = |m: &Measurement| m.app.as_ref().map_or(Duration::ZERO, |a| a.max);
        let label = workload.label();
        let _ = writeln!(
            out,
            "  {} {label}: app p99 beside backfilld on 2 partitions {:.1} ms ≤ beside the PL/pgSQL loop {:.1} ms",
            verdict(p99(two) <= p99(looped)),
            ms(p99(two)),
            ms(p99(looped))
        );
        let _ = writeln!(
            out,
            "  {} {label}: beside the single UPDATE app p99 {:.1} ms, max {:.1} ms: {:.1}× backfilld's p99 (≥ 3×)",
            verdict(p99(update) >= p99(two) * 3),
            ms(p99(update)),
            ms(max(update)),
            p99(update).as_secs_f64() / p99(two).as_secs_f64().max(1e-6)
        );
        let alone = idle_p99(results, workload).unwrap_or(p99(idle));
        // The floor: what busy cores alone cost the application, next to backfilld at full
        // speed on as many partitions.
        for cores in [1, 2] {
            let full = get(&|v| matches!(v, Variant::Backfilld(s) if s.is_plain(cores)));
            if let (Some(busy), Some(full)) = (get(&|v| *v == Variant::Busy(cores)), full) {
                let _ = writeln!(
                    out,
                    "  floor  {label}: app p99 beside {cores} busy CPU loop(s) and no database work {:.1} ms = {:.2}× alone; beside backfilld on {cores} partition(s) {:.1} ms",
                    ms(p99(busy)),
                    p99(busy).as_secs_f64() / alone.as_secs_f64(),
                    ms(p99(full)),
                );
            }
        }
        // The gentle mode: 100 ms batches and a rest the engine sizes from them.
        for gentle in results.iter().filter(|m| {
            m.workload == workload
                && matches!(&m.variant, Variant::Backfilld(s) if s.duty_percent.is_some())
        }) {
            let within = p99(gentle).as_secs_f64() / alone.as_secs_f64();
            let speed = gentle.rows_per_second() / looped.rows_per_second();
            let _ = writeln!(
                out,
                "  {} {label}: {}: app p99 {:.1} ms = {within:.2}× the application alone (≤ 1.5×) at {speed:.2}× the loop's rows/s (≥ 0.5×)",
                verdict(within <= 1.5 && speed >= 0.5),
                gentle.variant.label(),
                ms(p99(gentle)),
            );
        }
        let meeting: Vec<String> = results
            .iter()
            .filter(|m| {
                m.workload == workload
                    && matches!(&m.variant, Variant::Backfilld(s) if s.target == Some(GENTLE_TARGET))
                    && p99(m).as_secs_f64() <= alone.as_secs_f64() * 1.5
                    && m.rows_per_second() >= looped.rows_per_second() * 0.5
            })
            .map(|m| m.variant.label())
            .collect();
        let _ = writeln!(
            out,
            "         settings with target 100ms meeting both (p99 ≤ 1.5× alone, ≥ 0.5× the loop): {}",
            if meeting.is_empty() { "none".to_string() } else { meeting.join("; ") }
        );
        if let Some(loop_wal) = wal_per_row(results, looped) {
            for m in results.iter().filter(|m| {
                m.workload == workload
                    && matches!(&m.variant, Variant::Backfilld(s) if s.is_plain(1) || s.is_plain(2))
            }) {
                if let Some(wal) = wal_per_row(results, m) {
                    let _ = writeln!(
                        out,
                        "  {} {label}: {} WAL {wal:.0} B/row ≤ the loop's {loop_wal:.0} + 10%",
                        verdict(wal <= loop_wal * 1.1),
                        m.variant.label()
                    );
                }
            }
        }
        let frontier: Vec<String> = results
            .iter()
            .filter(|m| m.workload == workload && m.rows > 0)
            .map(|m| {
                format!(
                    "{:.0} rows/s at p99 {:.1} ms ({})",
                    m.rows_per_second(),
                    ms(p99(m)),
                    m.variant.label()
                )
            })
            .collect();
        let again: Vec<String> = results
            .iter()
            .filter(|m| m.workload == workload && m.variant == Variant::Idle)
            .skip(1)
            .map(|m| format!("{:.1} ms", ms(p99(m))))
            .collect();
        let _ = writeln!(
            out,
            "  frontier, {label} (the application alone: p99 {:.1} ms, and {} when run again last; mean {:.1} ms):\n    {}",
            ms(p99(idle)),
            again.join(", "),
            ms(alone),
            frontier.join("\n    ")
        );
    }
    let _ = writeln!(
        out,
        "(WAL budgets in MB/s: {})",
        results
            .iter()
            .filter_map(|m| match &m.variant {
                Variant::Backfilld(s) => s.max_wal_rate.map(|r| format!("{:.1}", r as f64 / MB)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}
