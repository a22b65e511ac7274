//! The workloads: what each backfills, how its table is built fresh for every run, and what the
//! application does to that table meanwhile (`--traffic`'s pgbench scripts).
//!
//! - W1: products' `search_tsvector`, the demo's table and job (`jobs/products_search.toml`).
//! - W1g: the same with the GIN index on `search_tsvector` built (CREATE INDEX CONCURRENTLY)
//!   before the backfill, as a production table searched by that column has it: every row the
//!   backfill writes also goes into the index.
//! - W2: users' `email = customer_email` (`jobs/users_email.toml`, its sync trigger left out).
//! - W3: a uuid-keyed orders table (random keys, as `gen_random_uuid()` makes them), filling
//!   `total` from `total_cents`.

use anyhow::Result;
use backfilld::commands::demo;
use backfilld::plumbing::db::sql;
use backfilld::spec::JobSpec;
use clap::ValueEnum;
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    W1,
    W1g,
    W2,
    W3,
}

/// W3's job: there is no example job for it in `jobs/`.
const ORDERS_JOB: &str = r#"
name = "orders_total"
table = "public.orders"
key = "id"
where = "total IS NULL"
batch_size = 1000
lock_timeout = "1s"
statement_timeout = "30s"

[set]
total = "total_cents / 100.0"
"#;

const CREATE_ORDERS: &str = "
CREATE TABLE public.orders (
    id          uuid PRIMARY KEY,
    customer_id int8 NOT NULL,
    total_cents int8 NOT NULL,
    total       numeric(12, 2),
    created_at  timestamptz NOT NULL DEFAULT now()
)";

/// Keys from md5 of the row number: as random as `gen_random_uuid()`'s, and the application's
/// script can name an existing row by its number.
const FILL_ORDERS: &str = "
INSERT INTO public.orders (id, customer_id, total_cents)
SELECT md5(i::text)::uuid, i % 10000, (i * 7919) % 100000
  FROM generate_series(1, $1::int8) AS i";

/// W1's `set` expression over literal name, brand and description: what the new application
/// code writes for the rows it inserts, so they are never pending.
const NEW_PRODUCT: &str = "INSERT INTO public.products (name, brand, description, price, search_tsvector)
SELECT n, b, d, 9.99,
       setweight(to_tsvector('english', n), 'A') || setweight(to_tsvector('english', b), 'B')
       || setweight(to_tsvector('english', d), 'C')
  FROM (VALUES ('Ultra Portable Speaker ' || :id, 'Acme', 'Added by the application.')) AS v (n, b, d);";

impl Workload {
    /// The job this workload runs, read from `jobs/` where there is one, so the benchmark
    /// cannot drift from what users run.
    pub fn job(self) -> Result<JobSpec> {
        let (file, text) = match self {
            Workload::W1 | Workload::W1g => (
                "products_search.toml",
                include_str!("../../jobs/products_search.toml"),
            ),
            Workload::W2 => (
                "users_email.toml",
                include_str!("../../jobs/users_email.toml"),
            ),
            Workload::W3 => ("orders_total (benchmark)", ORDERS_JOB),
        };
        Ok(JobSpec::from_toml(text, file)?)
    }

    pub fn table(self) -> &'static str {
        match self {
            Workload::W1 | Workload::W1g => "public.products",
            Workload::W2 => "public.users",
            Workload::W3 => "public.orders",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::W1 => "W1 products.search_tsvector",
            Workload::W1g => "W1g same, GIN index on it",
            Workload::W2 => "W2 users.email",
            Workload::W3 => "W3 orders.total, uuid key",
        }
    }

    /// The key's type and the PL/pgSQL loop's starting cursor, below every key.
    pub fn key_type(self) -> (&'static str, &'static str) {
        match self {
            Workload::W3 => ("uuid", "'00000000-0000-0000-0000-000000000000'"),
            _ => ("int8", "0"),
        }
    }

    /// Drop, create and fill the table (and W1g's index), then VACUUM ANALYZE and CHECKPOINT
    /// so every variant starts from the same state: hint bits set, statistics fresh, no dirty
    /// buffers. Autovacuum is off on the table, so that no variant is vacuumed halfway and the
    /// dead tuples each leaves can be compared.
    pub async fn fresh_table(self, pool: &PgPool, rows: i64) -> Result<()> {
        let (create, fill) = match self {
            Workload::W1 | Workload::W1g => (demo::CREATE_PRODUCTS, demo::FILL_PRODUCTS),
            Workload::W2 => (demo::CREATE_USERS, demo::FILL_USERS),
            Workload::W3 => (CREATE_ORDERS, FILL_ORDERS),
        };
        let table = self.table();
        sqlx::raw_sql(sql(format!("DROP TABLE IF EXISTS {table}")))
            .execute(pool)
            .await?;
        sqlx::raw_sql(create).execute(pool).await?;
        sqlx::query(fill).bind(rows).execute(pool).await?;
        sqlx::raw_sql(sql(format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = off)"
        )))
        .execute(pool)
        .await?;
        if self == Workload::W1g {
            sqlx::raw_sql(
                "CREATE INDEX CONCURRENTLY products_search_idx ON public.products USING gin (search_tsvector)",
            )
            .execute(pool)
            .await?;
        }
        if self == Workload::W2 {
            // Ids for the rows the application inserts.
            sqlx::raw_sql(sql(format!(
                "DROP SEQUENCE IF EXISTS public.app_user_ids;
                 CREATE SEQUENCE public.app_user_ids START {}",
                rows + 1
            )))
            .execute(pool)
            .await?;
        }
        // The whole scratch database: the bench table and backfilld's own, bloated by the
        // previous runs' checkpoints.
        sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
        sqlx::raw_sql("CHECKPOINT").execute(pool).await?;
        Ok(())
    }

    /// What the application does to the table, as pgbench scripts with their weights: point
    /// reads, updates by key and inserts, each its own transaction, on the table's first
    /// `rows` rows. The application runs the new code: what it writes is never pending.
    pub fn app_scripts(self, rows: i64) -> [(&'static str, String, u32); 3] {
        let products = format!("\\set id random(1, {rows})\n");
        match self {
            Workload::W1 | Workload::W1g => [
                (
                    "read",
                    format!("{products}SELECT id, name, price, search_tsvector FROM public.products WHERE id = :id;\n"),
                    6,
                ),
                (
                    "update",
                    format!("{products}UPDATE public.products SET price = price + 0.01 WHERE id = :id;\n"),
                    3,
                ),
                ("insert", format!("{products}{NEW_PRODUCT}\n"), 1),
            ],
            Workload::W2 => [
                (
                    "read",
                    format!("{products}SELECT * FROM public.users WHERE id = :id;\n"),
                    6,
                ),
                (
                    "update",
                    format!("{products}UPDATE public.users SET customer_email = 'app' || :id || '@example.com', email = 'app' || :id || '@example.com' WHERE id = :id;\n"),
                    3,
                ),
                (
                    "insert",
                    format!("{products}INSERT INTO public.users (id, full_name, customer_email, email, created_at) VALUES (nextval('public.app_user_ids'), 'App User', 'new' || :id || '@example.com', 'new' || :id || '@example.com', now());\n"),
                    1,
                ),
            ],
            Workload::W3 => [
                (
                    "read",
                    format!("{products}SELECT * FROM public.orders WHERE id = md5(:id::text)::uuid;\n"),
                    6,
                ),
                (
                    "update",
                    format!("{products}UPDATE public.orders SET total_cents = total_cents + 1, total = (total_cents + 1) / 100.0 WHERE id = md5(:id::text)::uuid;\n"),
                    3,
                ),
                (
                    "insert",
                    format!("{products}INSERT INTO public.orders (id, customer_id, total_cents, total) VALUES (gen_random_uuid(), :id % 10000, 100, 1.00);\n"),
                    1,
                ),
            ],
        }
    }
}
