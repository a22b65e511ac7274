//! Checks a job spec against the live catalog: the table, key and `set` columns exist, the key
//! is unique and NOT NULL, and every statement the job will run prepares. Writes nothing.

use sqlx::postgres::PgRow;
use sqlx::{Column, Executor, PgConnection, Row, Statement, TypeInfo};

use crate::engine::statement::{BatchRow, BatchSql, KeyColumn, SyncTrigger};
use crate::plumbing::db::{self, sql};
use crate::spec::{JobSpec, SyncSpec, TableName};

/// Why the database refused a job. Every variant names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("table: {0:?} does not exist (or is not a table){hint}", hint = if *.1 { FOLDED } else { "" })]
    TableNotFound(String, bool),
    #[error("{field}: column {column:?} does not exist in {table}")]
    ColumnNotFound {
        field: &'static str,
        column: String,
        table: String,
    },
    #[error("key: ({columns}) is not unique in {table}: it needs a primary key or a unique index (not partial) on exactly these columns")]
    KeyNotUnique { columns: String, table: String },
    #[error("key: ({key}) has no index in this order; the {index} is on ({columns}): use key = {suggestion}")]
    KeyOrder {
        key: String,
        index: String,
        columns: String,
        suggestion: String,
    },
    #[error("key: ({columns}) is unique only through {index}, which cannot serve the key walk's ascending order (a DESC or NULLS FIRST column, or a non-default operator class or collation): add a unique index on ({columns}) in ascending order")]
    KeyNotAscending { columns: String, index: String },
    #[error("key: column {column:?} is nullable; the key must be NOT NULL")]
    KeyNullable { column: String },
    #[error("set: column {column:?} is a generated column and cannot be set")]
    Generated { column: String },
    #[error("{field}: {message}")]
    Sql { field: String, message: String },
    #[error("{field}: must be a single expression, but it yields {columns} values")]
    NotSingleExpression { field: String, columns: usize },
    #[error("where: must be a boolean expression, but it is of type {found}")]
    WhereNotBoolean { found: String },
    #[error("throttle_query: must return one boolean column (true = throttle), but it returns ({found})")]
    ThrottleQueryShape { found: String },
    /// A health limit this role could not read truthfully (it lacks pg_monitor).
    #[error("{0}")]
    SignalHidden(String),
    #[error("checking against the database: {}", db::message(.0))]
    Database(#[from] sqlx::Error),
}

/// Said of a missing table whose unquoted name had capitals: before names were read as
/// PostgreSQL reads them, `Users` found a table created as "Users".
const FOLDED: &str = "; unquoted names fold to lower case, as in PostgreSQL: put a name with capitals in double quotes (table = '\"Users\"')";

/// How the first key column can be split into ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Integer,
    Uuid,
    /// Any other orderable type: split at sampled quantiles.
    Other,
}

/// A job spec bound to the catalog: what the engine needs to run it.
#[derive(Debug, Clone)]
pub struct ResolvedJob {
    pub schema: String,
    pub table: String,
    pub key: Vec<KeyColumn>,
    pub key_kind: KeyKind,
    /// The unique index (or primary key) the key walk rides on.
    pub key_index: String,
    /// The planner's row estimate (`pg_class.reltuples`); -1 when never analyzed.
    pub estimated_rows: i64,
    pub sql: BatchSql,
    /// The sync trigger, for a job with `[sync]`.
    pub sync: Option<SyncTrigger>,
}

struct ColumnInfo {
    name: String,
    type_sql: String,
    type_name: String,
    not_null: bool,
    generated: bool,
}

/// [`resolve`] for a job being checked or submitted: it also refuses a health limit this role
/// could not read truthfully. A job already admitted is only resolved when a process first
/// claims it: there a missing grant (revoked since, or another replica's role) makes the signal
/// hold the job, saying why, rather than failing it.
pub async fn admit(conn: &mut PgConnection, spec: &JobSpec) -> Result<ResolvedJob, CheckError> {
    let resolved = resolve(&mut *conn, spec).await?;
    if let Some(why) = crate::engine::throttle::refuse_blind(conn, spec).await? {
        return Err(CheckError::SignalHidden(why));
    }
    Ok(resolved)
}

/// Resolves and checks `spec`. Runs only catalog reads and PREPAREs.
pub async fn resolve(conn: &mut PgConnection, spec: &JobSpec) -> Result<ResolvedJob, CheckError> {
    // A stored job written before names were read this way may not parse.
    let name = TableName::parse(&spec.table).map_err(|message| CheckError::Sql {
        field: "table".into(),
        message,
    })?;
    // Unqualified names resolve through search_path, as PostgreSQL itself would.
    let found: Option<(sqlx::postgres::types::Oid, String, String, f32)> = db::query_as(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.reltuples
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relname = $2 AND c.relkind IN ('r', 'p')
            AND CASE WHEN $1::text IS NULL THEN n.nspname = ANY (current_schemas(false))
                     ELSE n.nspname = $1 END
          ORDER BY array_position(current_schemas(false), n.nspname::name)
          LIMIT 1",
    )
    .bind(&name.schema)
    .bind(&name.table)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((oid, schema, table, reltuples)) = found else {
        return Err(CheckError::TableNotFound(spec.table.clone(), name.folded));
    };
    let display_table = format!("{schema}.{table}");

    let columns: Vec<ColumnInfo> = db::query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text,
                a.attnotnull, a.attgenerated <> ''
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(oid)
    .map(|row: PgRow| ColumnInfo {
        name: row.get(0),
        type_sql: row.get(1),
        type_name: row.get(2),
        not_null: row.get(3),
        generated: row.get(4),
    })
    .fetch_all(&mut *conn)
    .await?;
    let column = |field: &'static str, name: &str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| CheckError::ColumnNotFound {
                field,
                column: name.to_string(),
                table: display_table.clone(),
            })
    };

    let mut key = Vec::new();
    for name in spec.key_columns() {
        let info = column("key", name)?;
        if !info.not_null {
            return Err(CheckError::KeyNullable {
                column: name.clone(),
            });
        }
        key.push(KeyColumn {
            name: info.name.clone(),
            type_sql: info.type_sql.clone(),
        });
    }
    for name in spec.set.keys() {
        if column("set", name)?.generated {
            return Err(CheckError::Generated {
                column: name.clone(),
            });
        }
    }

    let key_index = key_index(&mut *conn, oid, spec.key_columns(), &display_table).await?;

    let key_kind = match column("key", &spec.key_columns()[0])?.type_name.as_str() {
        "int2" | "int4" | "int8" => KeyKind::Integer,
        "uuid" => KeyKind::Uuid,
        _ => KeyKind::Other,
    };

    let stable = match &spec.filter {
        Some(filter) => !calls_volatile(conn, filter).await?,
        None => false,
    };
    let batch_sql = BatchSql::new(
        &schema,
        &table,
        key.clone(),
        spec.set.clone(),
        spec.filter.clone(),
    )
    .with_stable_filter(stable);
    check_statements(conn, spec, &batch_sql).await?;
    let sync = match &spec.sync {
        Some(sync) => {
            Some(sync_trigger(conn, spec, sync, &batch_sql, &columns, &display_table).await?)
        }
        None => None,
    };

    Ok(ResolvedJob {
        schema,
        table,
        key,
        key_kind,
        key_index,
        estimated_rows: reltuples as i64,
        sql: batch_sql,
        sync,
    })
}

/// The job's sync trigger: `on` names real, non-generated columns (by default every such column
/// the job does not set), and its evaluation of `set` and `where` over a written row prepares.
async fn sync_trigger(
    conn: &mut PgConnection,
    spec: &JobSpec,
    sync: &SyncSpec,
    batch_sql: &BatchSql,
    columns: &[ColumnInfo],
    table: &str,
) -> Result<SyncTrigger, CheckError> {
    let on: Vec<String> = match &sync.on {
        Some(on) => {
            for name in on {
                let column = columns.iter().find(|c| &c.name == name).ok_or_else(|| {
                    CheckError::ColumnNotFound {
                        field: "sync.on",
                        column: name.clone(),
                        table: table.to_string(),
                    }
                })?;
                if column.generated {
                    return Err(CheckError::Sql {
                        field: "sync.on".into(),
                        message: format!("{name:?} is a generated column: no write sets it"),
                    });
                }
            }
            on.clone()
        }
        None => columns
            .iter()
            .filter(|c| !c.generated && !spec.set.contains_key(&c.name))
            .map(|c| c.name.clone())
            .collect(),
    };
    let trigger = batch_sql
        .sync_trigger(&spec.name, &on)
        .ok_or_else(|| CheckError::Sql {
            field: "sync".into(),
            message: "needs `where`".into(),
        })?;
    prepare(conn, trigger.probe.clone(), "sync").await?;
    Ok(trigger)
}

/// The index the key walk rides on: a valid, non-partial unique btree index whose key columns
/// are exactly `key`, in the key's order, ascending, with their default operator classes and
/// the columns' own collations (the primary key first). Only such an index serves the walk's
/// `ORDER BY key` and its `key > cursor` as one index range; an index on the same columns in
/// another order still proves the key unique, but every batch would scan and sort the table.
async fn key_index(
    conn: &mut PgConnection,
    table: sqlx::postgres::types::Oid,
    key: &[String],
    display_table: &str,
) -> Result<String, CheckError> {
    let mut indexes: Vec<(String, bool, Vec<String>, bool)> = db::query_as(
        "SELECT i.indexrelid::regclass::text, i.indisprimary,
                ARRAY(SELECT a.attname::text
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       WHERE k.ord <= i.indnkeyatts
                       ORDER BY k.ord),
                am.amname = 'btree'
                AND NOT EXISTS (
                    SELECT 1
                      FROM unnest(i.indkey::int2[], i.indoption::int2[], i.indclass::oid[],
                                  i.indcollation::oid[]) WITH ORDINALITY
                           AS k(attnum, opt, opclass, coll, ord)
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      JOIN pg_opclass c ON c.oid = k.opclass
                     WHERE k.ord <= i.indnkeyatts
                       AND (k.opt <> 0 OR NOT c.opcdefault OR k.coll <> a.attcollation))
           FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_am am ON am.oid = ic.relam
          WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
            AND i.indexprs IS NULL
          ORDER BY i.indisprimary DESC, 1",
    )
    .bind(table)
    .fetch_all(conn)
    .await?;
    let mut wanted: Vec<&String> = key.iter().collect();
    wanted.sort();
    indexes.retain(|(_, _, columns, _)| {
        let mut have: Vec<&String> = columns.iter().collect();
        have.sort();
        have == wanted
    });
    if let Some((name, ..)) = indexes
        .iter()
        .find(|(_, _, columns, ascending)| *ascending && columns.as_slice() == key)
    {
        return Ok(name.clone());
    }
    if let Some((name, primary, columns, _)) = indexes.iter().find(|(.., ascending)| *ascending) {
        return Err(CheckError::KeyOrder {
            key: key.join(", "),
            index: format!(
                "{} {name}",
                if *primary {
                    "primary key"
                } else {
                    "unique index"
                }
            ),
            columns: columns.join(", "),
            // Debug quotes and escapes each name as a TOML basic string would.
            suggestion: format!("{columns:?}"),
        });
    }
    match indexes.first() {
        Some((name, ..)) => Err(CheckError::KeyNotAscending {
            columns: key.join(", "),
            index: name.clone(),
        }),
        None => Err(CheckError::KeyNotUnique {
            columns: key.join(", "),
            table: display_table.to_string(),
        }),
    }
}

/// Prepares each expression alone (so an error names its field), then every batch variant.
async fn check_statements(
    conn: &mut PgConnection,
    spec: &JobSpec,
    batch_sql: &BatchSql,
) -> Result<(), CheckError> {
    for (column, expression) in &spec.set {
        let field = format!("set.{column}");
        let columns = prepare(conn, batch_sql.probe_expression(expression), &field).await?;
        if columns.len() != 1 {
            return Err(CheckError::NotSingleExpression {
                field,
                columns: columns.len(),
            });
        }
        stands_alone(&field, expression)?;
    }
    if let Some(filter) = &spec.filter {
        let columns = prepare(conn, batch_sql.probe_expression(filter), "where").await?;
        if columns.len() != 1 {
            return Err(CheckError::NotSingleExpression {
                field: "where".into(),
                columns: columns.len(),
            });
        }
        if columns[0] != "BOOL" {
            return Err(CheckError::WhereNotBoolean {
                found: columns[0].to_lowercase(),
            });
        }
        stands_alone("where", filter)?;
    }
    if let Some(query) = &spec.throttle_query {
        crate::spec::expression::check_read_only(query).map_err(|message| CheckError::Sql {
            field: "throttle_query".into(),
            message,
        })?;
        let columns = prepare(conn, query.clone(), "throttle_query").await?;
        if columns.len() != 1 || columns[0] != "BOOL" {
            return Err(CheckError::ThrottleQueryShape {
                found: columns.join(", ").to_lowercase(),
            });
        }
    }
    if let Some(window) = &spec.window {
        let window = crate::spec::Window::parse(window).map_err(|message| CheckError::Sql {
            field: "window".into(),
            message,
        })?;
        let known: bool =
            db::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
                .bind(&window.time_zone)
                .fetch_one(&mut *conn)
                .await?;
        if !known {
            return Err(CheckError::Sql {
                field: "window".into(),
                message: format!("{:?} is not a time zone PostgreSQL knows", window.time_zone),
            });
        }
    }
    for statement in batch_sql.all_variants() {
        let columns: Vec<String> = prepare_columns(conn, statement, "batch statement")
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        // The batch statement always yields the same columns, `BatchRow`'s: anything else
        // means an expression broke out of its parentheses.
        if columns != BatchRow::COLUMNS {
            return Err(CheckError::NotSingleExpression {
                field: "set".into(),
                columns: columns.len(),
            });
        }
    }
    Ok(())
}

/// Refuses an expression that does not balance its own parentheses. Preparing it alone cannot
/// tell: `v >= 0) OR (true` prepares as a fine boolean inside the probe's parentheses, and would
/// OR the batch's key range away inside the batch statement's. It runs after the probe, so plain
/// syntax errors keep the database's own message.
fn stands_alone(field: &str, expression: &str) -> Result<(), CheckError> {
    crate::spec::expression::check(expression).map_err(|message| CheckError::Sql {
        field: field.to_string(),
        message,
    })
}

/// Prepares `text` and returns its result columns' type names; a database error becomes a
/// `CheckError::Sql` carrying the database's own message.
async fn prepare(
    conn: &mut PgConnection,
    text: String,
    field: &str,
) -> Result<Vec<String>, CheckError> {
    Ok(prepare_columns(conn, text, field)
        .await?
        .into_iter()
        .map(|(_, type_name)| type_name)
        .collect())
}

/// Prepares `text` and returns its result columns' names and type names.
async fn prepare_columns(
    conn: &mut PgConnection,
    text: String,
    field: &str,
) -> Result<Vec<(String, String)>, CheckError> {
    match conn.prepare(sql(text)).await {
        Ok(statement) => Ok(statement
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
            .collect()),
        Err(error @ sqlx::Error::Database(_)) => Err(CheckError::Sql {
            field: field.to_string(),
            message: db::message(&error),
        }),
        Err(other) => Err(CheckError::Database(other)),
    }
}

/// What `check` reports about the key walk: the plan's first line and whether it rides an index.
pub async fn explain_walk(
    conn: &mut PgConnection,
    resolved: &ResolvedJob,
    batch_size: u32,
) -> Result<(bool, Vec<String>), sqlx::Error> {
    let lines: Vec<String> = db::query_scalar(sql(format!(
        "EXPLAIN {}",
        resolved.sql.key_walk(batch_size)
    )))
    .fetch_all(conn)
    .await?;
    let uses_index = lines.iter().any(|l| l.contains("Index"));
    Ok((uses_index, lines))
}

/// Whether `expression` calls a function that some overload of its name marks volatile (or
/// cannot be read): judged by name, so an overload it does not call can only make it
/// cautious. Operators are not looked at (none built in is volatile).
async fn calls_volatile(conn: &mut PgConnection, expression: &str) -> Result<bool, sqlx::Error> {
    let Some(names) = crate::spec::expression::functions_called(expression) else {
        return Ok(true);
    };
    db::query_scalar(
        "SELECT coalesce(bool_or(provolatile = 'v'), false) FROM pg_catalog.pg_proc WHERE proname = ANY ($1)",
    )
    .bind(names)
    .fetch_one(conn)
    .await
}
