//! The sync trigger's SQL: a `BEFORE INSERT OR UPDATE OF …` trigger that applies the job's
//! `set` to each written row matching `where`, evaluated exactly as a batch evaluates them.
//!
//! The author's expressions are not rewritten to refer to `NEW.column`: the function selects
//! them `FROM (SELECT NEW.*) AS <table>`, a one-row relation with the table's own column names,
//! so the same text means the same thing in a batch and in the trigger, qualified references
//! to the table included. All expressions are computed from the row as written, then assigned,
//! as a batch's `SET` computes them all from the row as stored.

use super::{wrap, BatchSql};
use crate::plumbing::db::quote_ident;

/// The trigger and function of one job, and the SQL that installs, checks and drops them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTrigger {
    /// The trigger's and the function's name (one name, in the table's schema).
    pub name: String,
    /// `CREATE OR REPLACE FUNCTION …`: idempotent.
    pub function: String,
    /// `CREATE OR REPLACE TRIGGER …`: idempotent.
    pub trigger: String,
    /// What `check` prepares: the trigger's evaluation over a NULL row of the table.
    pub probe: String,
    /// `DROP TRIGGER IF EXISTS …` and `DROP FUNCTION IF EXISTS …`: idempotent.
    pub drop: [String; 2],
}

/// The name a job's trigger and function take: `bf_sync_` and the job's name, cut so that, with
/// a hash of the whole name that keeps cut names apart, it fits PostgreSQL's 63-byte limit.
pub fn sync_name(job: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in job.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let cut: String = job.chars().take(40).collect();
    format!("bf_sync_{cut}_{hash:08x}")
}

impl BatchSql {
    /// The trigger for job `job`, firing on `on` (the table's columns the job does not set,
    /// when the job does not name them); `None` without `where`.
    pub fn sync_trigger(&self, job: &str, on: &[String]) -> Option<SyncTrigger> {
        let filter = self.filter.as_ref()?;
        let name = sync_name(job);
        let schema = quote_ident(&self.schema_name);
        let qualified_function = format!("{schema}.{}", quote_ident(&name));
        let alias = quote_ident(&self.table_name);
        let computed: Vec<String> = self
            .set
            .iter()
            .enumerate()
            .map(|(i, (_, expression))| format!("{} AS c{i}", wrap(expression)))
            .collect();
        let assignments: String = self
            .set
            .iter()
            .enumerate()
            .map(|(i, (column, _))| {
                format!("        NEW.{} := computed.c{i};\n", quote_ident(column))
            })
            .collect();
        // A dollar-quote tag that none of the author's text contains.
        let texts: Vec<&str> = self
            .set
            .iter()
            .map(|(_, e)| e.as_str())
            .chain([filter.as_str()])
            .collect();
        let tag = (0..)
            .map(|n| format!("$backfilld_sync_{n}$"))
            .find(|tag| texts.iter().all(|t| !t.contains(tag.as_str())))
            .expect("some tag is free");
        let evaluation = |row: &str| {
            format!(
                "SELECT {computed}\n      FROM (SELECT {row}.*) AS {alias}\n     WHERE {filter}",
                computed = computed.join(", "),
                filter = wrap(filter),
            )
        };
        let function = format!(
            "CREATE OR REPLACE FUNCTION {qualified_function}() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS {tag}
#variable_conflict use_column
DECLARE
    computed record;
BEGIN
    -- Written by backfilld for job {job:?}: its `set` for rows matching its `where`.
    {evaluation}
      INTO computed;
    IF FOUND THEN
{assignments}    END IF;
    RETURN NEW;
END
{tag}",
            evaluation = evaluation("NEW"),
        );
        let columns: Vec<String> = on.iter().map(|c| quote_ident(c)).collect();
        let trigger = format!(
            "CREATE OR REPLACE TRIGGER {name_q} BEFORE INSERT OR UPDATE OF {columns} ON {table}
    FOR EACH ROW EXECUTE FUNCTION {qualified_function}()",
            name_q = quote_ident(&name),
            columns = columns.join(", "),
            table = self.table,
        );
        Some(SyncTrigger {
            probe: evaluation(&format!("(NULL::{})", self.table)),
            drop: [
                format!(
                    "DROP TRIGGER IF EXISTS {} ON {}",
                    quote_ident(&name),
                    self.table
                ),
                format!("DROP FUNCTION IF EXISTS {qualified_function}()"),
            ],
            name,
            function,
            trigger,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::statement::KeyColumn;

    #[test]
    fn names_fit_postgresql_and_stay_apart() {
        let long_a = format!("{}a", "x".repeat(62));
        let long_b = format!("{}b", "x".repeat(62));
        for name in [
            sync_name(&long_a),
            sync_name(&long_b),
            sync_name("users_email"),
        ] {
            assert!(name.len() <= 63, "{name}");
        }
        assert_ne!(sync_name(&long_a), sync_name(&long_b));
        assert_eq!(sync_name("users_email"), sync_name("users_email"));
    }

    #[test]
    fn the_trigger_evaluates_the_authors_text_over_the_written_row() {
        let sql = BatchSql::new(
            "public",
            "users",
            vec![KeyColumn {
                name: "id".into(),
                type_sql: "bigint".into(),
            }],
            [("email".to_string(), "customer_email".to_string())],
            Some("email IS DISTINCT FROM customer_email".to_string()),
        );
        let trigger = sql
            .sync_trigger("users_email", &["customer_email".to_string()])
            .unwrap();
        assert!(
            trigger
                .function
                .contains("FROM (SELECT NEW.*) AS \"users\""),
            "{}",
            trigger.function
        );
        assert!(
            trigger.function.contains("NEW.\"email\" := computed.c0;"),
            "{}",
            trigger.function
        );
        assert!(
            trigger
                .trigger
                .contains("BEFORE INSERT OR UPDATE OF \"customer_email\" ON \"public\".\"users\""),
            "{}",
            trigger.trigger
        );
        assert!(
            trigger.probe.contains("(NULL::\"public\".\"users\").*"),
            "{}",
            trigger.probe
        );
        let none = BatchSql::new("public", "users", vec![], [], None);
        assert!(none.sync_trigger("j", &[]).is_none());
    }
}
