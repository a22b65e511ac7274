//! `backfilld demo`: creates two demo tables with realistic rows, runs the example jobs from
//! `jobs/` with visible progress, and verifies the result against what a plain UPDATE gives.
//!
//! It only ever drops tables it created itself (marked with a table comment), so pointing it at
//! a database that has its own `products` or `users` fails with a clear message instead.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::commands::error::CliError;
use crate::engine::{catalog, sync, verify};
use crate::plumbing::config::Settings;
use crate::plumbing::db::{self, sql, Db, Schema};
use crate::plumbing::shutdown::Shutdown;
use crate::spec::JobSpec;
use crate::store::jobs;

/// Marks a table as the demo's own, safe for the demo to drop and recreate.
const DEMO_MARK: &str = "backfilld demo table";

const PRODUCTS_JOB: (&str, &str) = (
    "products_search.toml",
    include_str!("../../jobs/products_search.toml"),
);
const USERS_JOB: (&str, &str) = (
    "users_email.toml",
    include_str!("../../jobs/users_email.toml"),
);

pub const CREATE_PRODUCTS: &str = "
CREATE TABLE public.products (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    brand           text,
    description     text,
    price           numeric(10, 2) NOT NULL,
    search_tsvector tsvector
)";

/// Deterministic but varied rows: words picked by different strides of the row number.
/// Public so the benchmark (`benches/backfill.rs`) measures the same data as the demo.
pub const FILL_PRODUCTS: &str = "
INSERT INTO public.products (name, brand, description, price)
SELECT (ARRAY['Ultra','Pro','Classic','Eco','Smart','Compact','Deluxe','Mini','Max','Air'])[1 + i % 10]
       || ' ' || (ARRAY['Wireless','Stainless','Organic','Portable','Ergonomic','Waterproof','Vintage','Modular'])[1 + (i / 10) % 8]
       || ' ' || (ARRAY['Headphones','Kettle','Backpack','Desk Lamp','Running Shoes','Coffee Grinder','Blender','Camera','Notebook','Office Chair','Speaker','Rain Jacket'])[1 + (i * 7) % 12],
       (ARRAY['Acme','Globex','Initech','Umbrella','Stark Industries','Wayne Enterprises','Hooli','Soylent','Vandelay','Wonka'])[1 + (i * 13) % 10],
       'A ' || (ARRAY['lightweight','durable','handcrafted','award-winning','energy-efficient','best-selling'])[1 + (i * 3) % 6]
       || ' ' || lower((ARRAY['Headphones','Kettle','Backpack','Desk Lamp','Running Shoes','Coffee Grinder','Blender','Camera','Notebook','Office Chair','Speaker','Rain Jacket'])[1 + (i * 7) % 12])
       || ' made of ' || (ARRAY['recycled aluminium','organic cotton','bamboo','stainless steel','vegan leather','oak'])[1 + (i * 5) % 6]
       || '. ' || (ARRAY['Ships in two days.','Two-year warranty included.','Loved by outdoor enthusiasts.','Fits in any carry-on.','Dishwasher safe.','Designed in Copenhagen.'])[1 + (i * 11) % 6]
       || ' Model ' || upper(to_hex(i * 2654435761 % 4294967296)) || '.',
       round((4.99 + (i * 37) % 995)::numeric, 2)
  FROM generate_series(1, $1::int8) AS i";

pub const CREATE_USERS: &str = "
CREATE TABLE public.users (
    id             bigint PRIMARY KEY,
    full_name      text NOT NULL,
    customer_email text NOT NULL,
    email          text,
    created_at     timestamptz NOT NULL
)";

pub const FILL_USERS: &str = "
INSERT INTO public.users (id, full_name, customer_email, created_at)
SELECT i,
       (ARRAY['Ada','Grace','Linus','Margaret','Ken','Barbara','Donald','Frances','Edsger','Radia'])[1 + i % 10]
       || ' ' || (ARRAY['Lovelace','Hopper','Torvalds','Hamilton','Thompson','Liskov','Knuth','Allen','Dijkstra','Perlman'])[1 + (i / 10) % 10],
       lower((ARRAY['ada','grace','linus','margaret','ken','barbara','donald','frances','edsger','radia'])[1 + i % 10])
       || '.' || i || '@' || (ARRAY['example.com','example.org','mail.example.net'])[1 + i % 3],
       now() - (i % 1000) * interval '1 day'
  FROM generate_series(1, $1::int8) AS i";

pub async fn execute(settings: &Settings, rows: u64, setup_only: bool) -> Result<i32, CliError> {
    if rows == 0 || rows > 100_000_000 {
        return Err(CliError::invalid("--rows must be between 1 and 100000000"));
    }
    let pool = super::connect(settings, 6).await?;
    let schema = super::migrate(settings, &pool).await?;
    let jobs = [
        load_job(&settings.jobs_dir, PRODUCTS_JOB)?,
        load_job(&settings.jobs_dir, USERS_JOB)?,
    ];
    println!("backfilld demo: creating public.products and public.users with {rows} rows each");
    let started = Instant::now();
    create_tables(&pool, &schema, &jobs, rows).await?;
    if setup_only {
        println!(
            "tables ready in {:.1}s; submit jobs/products_search.toml and jobs/users_email.toml to run them",
            started.elapsed().as_secs_f64()
        );
        return Ok(0);
    }
    println!(
        "tables ready in {:.1}s; running the example jobs\n",
        started.elapsed().as_secs_f64()
    );

    let shutdown = Shutdown::install().map_err(|e| CliError::Other(e.into()))?;
    let [products, users] = &jobs;
    println!("▶ {} — {}", products.name, products.table);
    let code = super::run::run_job(settings, products, &shutdown, Default::default()).await?;
    if code != 0 {
        return Ok(code);
    }
    let code = expand_contract(settings, &pool, users, &shutdown).await?;
    if code != 0 {
        return Ok(code);
    }
    verify(&pool).await?;
    println!(
        "\nboth demo jobs completed in {:.1}s. See them with: psql -c 'SELECT name, state FROM {}.jobs'",
        started.elapsed().as_secs_f64(),
        settings.schema
    );
    Ok(0)
}

/// The rename `customer_email` → `email` as it happens in production: the old code keeps
/// writing `customer_email` while the job runs (and after), the sync trigger keeps those rows
/// in step, `verify` says it is safe to contract, and the trigger is removed.
async fn expand_contract(
    settings: &Settings,
    pool: &Db,
    spec: &JobSpec,
    shutdown: &Shutdown,
) -> Result<i32, CliError> {
    println!(
        "▶ {} — {}: the expand–contract rename, with the old code still writing customer_email",
        spec.name, spec.table
    );
    let stop = CancellationToken::new();
    let old_code = tokio::spawn(write_the_old_way(pool.clone(), stop.clone()));
    let code = super::run::run_job(settings, spec, shutdown, Default::default()).await?;
    // The old code goes on a little after the backfill, as it does until the next deploy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let writes = old_code.await.map_err(|e| CliError::Other(e.into()))?;
    if code != 0 {
        return Ok(code);
    }
    let resolved = {
        let mut pinned = pool.pinned().await.map_err(|e| CliError::Other(e.into()))?;
        let resolved = catalog::resolve(&mut pinned, spec).await;
        pinned
            .rollback()
            .await
            .map_err(|e| CliError::Other(e.into()))?;
        resolved.map_err(CliError::invalid)?
    };
    let mut conn = pool
        .acquire_for_own_transactions()
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    let pending = verify::count_pending(&mut conn, &resolved.sql)
        .await
        .map_err(|e| CliError::Other(e.into()))?
        .map_or(0, |v| v.pending);
    println!(
        "  the old code rewrote customer_email {writes} times during and after the backfill; verify: {pending} rows pending{}",
        if pending == 0 { " — safe to contract" } else { "" }
    );
    if spec.sync.is_some() {
        sync::remove(pool, &spec.name, spec.lock_timeout)
            .await
            .map_err(|e| CliError::Other(e.into()))?;
        println!("  sync trigger removed (backfilld sync remove): the next deploy drops customer_email\n");
    }
    Ok(0)
}

/// The old code: rewrites a few users' `customer_email` every few milliseconds; returns how
/// many rows it wrote.
async fn write_the_old_way(pool: Db, stop: CancellationToken) -> u64 {
    let mut written = 0;
    let mut round = 0u64;
    while !stop.is_cancelled() {
        round += 1;
        let result = db::query(
            "UPDATE public.users SET customer_email = 'moved' || $1 || '.' || id || '@example.com'
              WHERE id IN (SELECT (random() * (SELECT max(id) - 1 FROM public.users))::int8 + 1
                             FROM generate_series(1, 5))",
        )
        .bind(round as i64)
        .execute(&pool)
        .await;
        written += result.map_or(0, |r| r.rows_affected());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    written
}

/// The job file from the jobs directory when present (so edits show), else the built-in copy.
fn load_job(dir: &Path, (file, builtin): (&str, &str)) -> Result<JobSpec, CliError> {
    let path = dir.join(file);
    if path.exists() {
        JobSpec::from_file(&path).map_err(CliError::invalid)
    } else {
        JobSpec::from_toml(builtin, &format!("built-in {file}")).map_err(CliError::invalid)
    }
}

async fn create_tables(
    pool: &Db,
    schema: &Schema,
    jobs: &[JobSpec],
    rows: u64,
) -> Result<(), CliError> {
    let other = CliError::from;
    for table in ["products", "users"] {
        let comment: Option<Option<String>> = db::query_scalar(
            "SELECT obj_description(to_regclass($1), 'pg_class')
              WHERE to_regclass($1) IS NOT NULL",
        )
        .bind(format!("public.{table}"))
        .fetch_optional(pool)
        .await
        .map_err(other)?;
        match comment {
            None => {}
            Some(Some(mark)) if mark == DEMO_MARK => {}
            Some(_) => {
                return Err(CliError::invalid(format!(
                    "public.{table} already exists and was not created by the demo; run the demo against a scratch database"
                )))
            }
        }
    }
    let mut tx = pool.begin().await.map_err(other)?;
    // Earlier demo runs' jobs go with their tables, so the demo starts from zero every time.
    for spec in jobs {
        jobs::delete_named_on_table(&mut tx, schema, &spec.name, &spec.table)
            .await
            .map_err(other)?;
    }
    sqlx::raw_sql("DROP TABLE IF EXISTS public.products, public.users")
        .execute(&mut *tx)
        .await
        .map_err(other)?;
    for (create, fill, table) in [
        (CREATE_PRODUCTS, FILL_PRODUCTS, "products"),
        (CREATE_USERS, FILL_USERS, "users"),
    ] {
        sqlx::raw_sql(create)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        db::query(sql(format!(
            "COMMENT ON TABLE public.{table} IS '{DEMO_MARK}'"
        )))
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        db::query(fill)
            .bind(rows as i64)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
    }
    tx.commit().await.map_err(other)?;
    sqlx::raw_sql("ANALYZE public.products; ANALYZE public.users")
        .execute(pool)
        .await
        .map_err(other)?;
    Ok(())
}

/// Checks the demo's promise in the database itself, not in the engine's own counters.
async fn verify(pool: &Db) -> Result<(), CliError> {
    let other = CliError::from;
    let (missing_search,): (i64,) =
        db::query_as("SELECT count(*) FROM public.products WHERE search_tsvector IS NULL")
            .fetch_one(pool)
            .await
            .map_err(other)?;
    let (wrong_email,): (i64,) = db::query_as(
        "SELECT count(*) FROM public.users WHERE email IS DISTINCT FROM customer_email",
    )
    .fetch_one(pool)
    .await
    .map_err(other)?;
    let (sample,): (String,) = db::query_as(
        "SELECT name || ' → ' || left(search_tsvector::text, 60) FROM public.products ORDER BY id LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .map_err(other)?;
    println!("\nverified in the database:");
    println!("  products without search_tsvector: {missing_search}");
    println!("  users whose email differs from customer_email: {wrong_email}");
    println!("  e.g. {sample}…");
    if missing_search != 0 || wrong_email != 0 {
        return Err(CliError::Other(anyhow::anyhow!(
            "demo verification failed: rows were left unprocessed"
        )));
    }
    Ok(())
}
