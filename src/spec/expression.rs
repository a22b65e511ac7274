//! The author's SQL (`set`, `where`, `throttle_query`), read with PostgreSQL's own lexer and
//! parser (libpg_query) before it runs.
//!
//! `set` and `where` are scanned. An expression is placed inside parentheses in
//! the batch statement, so it must balance its own parentheses outside string literals, quoted
//! identifiers, comments and dollar quotes: text such as `v >= 0) OR (true` would otherwise
//! close the statement's parenthesis and escape the batch's key range. The real scanner, not a
//! hand-written lexer, decides what is a literal or a comment (nested `/* */`, `$tag$` quotes,
//! `E''` escapes), so it judges the text exactly as the server will.

use pg_query::protobuf::Token;
use pg_query::NodeRef;

/// Whether `text` stands on its own as one parenthesized expression. The error says what is
/// wrong, in the author's terms.
pub fn check(text: &str) -> Result<(), String> {
    let scanned = pg_query::scan(text)
        .map_err(|e| format!("is not valid SQL text: {}", e.to_string().trim()))?;
    let mut depth = 0usize;
    for token in &scanned.tokens {
        match token.token() {
            Token::Ascii40 => depth += 1,
            Token::Ascii41 if depth == 0 => {
                return Err(format!(
                    "closes a parenthesis it did not open (at character {}): it must be a single expression, balancing its own parentheses",
                    char_position(text, token.start)
                ));
            }
            Token::Ascii41 => depth -= 1,
            Token::Ascii59 => {
                return Err(format!(
                    "contains `;` (at character {}): it must be a single expression, not statements",
                    char_position(text, token.start)
                ));
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(format!(
            "leaves {depth} parenthesis(es) open: it must be a single expression, balancing its own parentheses (a `--` comment runs to the end of its line)"
        ));
    }
    Ok(())
}

/// Whether `query` only reads: one plain `SELECT`, with no data-modifying `WITH`, no
/// `SELECT … INTO`, no row locks (`FOR UPDATE`), and no call into `dblink` (which would act on
/// another connection, outside the read-only transaction the query runs in). Functions that
/// write are stopped by that transaction at run time, which throttles.
pub fn check_read_only(query: &str) -> Result<(), String> {
    let parsed = pg_query::parse(query, 0)
        .map_err(|e| format!("is not valid SQL: {}", e.to_string().trim()))?;
    let select = match parsed.protobuf.stmts.as_slice() {
        [one] => match one.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(pg_query::NodeEnum::SelectStmt(select)) => select,
            _ => {
                None.ok_or("must be one SELECT statement: it only observes, never changes data")?
            }
        },
        _ => {
            return Err("must be one SELECT statement: it only observes, never changes data".into())
        }
    };
    if select.into_clause.is_some() {
        return Err(
            "creates a table (SELECT … INTO): it must only observe, never change data".into(),
        );
    }
    for (node, ..) in parsed.protobuf.nodes() {
        let refusal = match node {
            NodeRef::InsertStmt(_)
            | NodeRef::UpdateStmt(_)
            | NodeRef::DeleteStmt(_)
            | NodeRef::MergeStmt(_) => Some("writes data (a data-modifying WITH)"),
            NodeRef::IntoClause(_) => Some("creates a table (SELECT … INTO)"),
            NodeRef::LockingClause(_) => Some("locks rows (FOR UPDATE/SHARE)"),
            NodeRef::SelectStmt(select) if !select.locking_clause.is_empty() => {
                Some("locks rows (FOR UPDATE/SHARE)")
            }
            _ => None,
        };
        if let Some(what) = refusal {
            return Err(format!("{what}: it must only observe, never change data"));
        }
    }
    if let Some(function) = parsed.functions().into_iter().find(|f| {
        f.rsplit('.')
            .next()
            .is_some_and(|name| name.starts_with("dblink"))
    }) {
        return Err(format!(
            "calls {function}, which acts on another connection: it must only observe this database"
        ));
    }
    Ok(())
}

/// The names (without schema) of the functions `expression` calls, for the catalog to look up
/// how volatile they are; `None` when it does not parse as an expression.
pub fn functions_called(expression: &str) -> Option<Vec<String>> {
    let parsed = pg_query::parse(&format!("SELECT ({expression})"), 0).ok()?;
    Some(
        parsed
            .functions()
            .into_iter()
            .map(|name| name.rsplit('.').next().unwrap_or(&name).to_string())
            .collect(),
    )
}

/// 1-based character position of a byte offset, for messages.
fn char_position(text: &str, byte: i32) -> usize {
    let byte = usize::try_from(byte).unwrap_or(0).min(text.len());
    text.char_indices().take_while(|(i, _)| *i < byte).count() + 1
}

#[cfg(test)]
mod tests {
    use super::{check, functions_called};

    #[test]
    fn the_functions_an_expression_calls_are_named_without_their_schema() {
        let mut called = functions_called(
            "v IS NULL AND pg_catalog.clock_timestamp() > now() AND id IN (SELECT f(x) FROM t)",
        )
        .unwrap();
        called.sort();
        assert_eq!(called, ["clock_timestamp", "f", "now"]);
        assert_eq!(functions_called("v IS NULL"), Some(vec![]));
        assert_eq!(functions_called("v IS"), None);
    }

    #[test]
    fn balanced_expressions_pass_whatever_their_literals_and_comments_hold() {
        for ok in [
            "v + 1",
            "coalesce(name, '')",
            "'it''s )' = x",
            "$$ ) $$ || (x)",
            "$tag$ ( $tag$ = x",
            "a /* ) /* nested ) */ */ + (b)",
            "\"odd)name\" IS NULL",
            "E'\\')' = x",
            "(v) -- trailing (\n",
            "setweight(to_tsvector('english', coalesce(name, '')), 'A')",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn text_that_would_escape_its_parentheses_is_refused() {
        for (bad, says) in [
            (
                "v >= 0) OR (true",
                "closes a parenthesis it did not open (at character 7)",
            ),
            ("v >= 0) AND (true", "closes a parenthesis"),
            ("(v >= 0 -- )", "leaves 1 parenthesis(es) open"),
            ("v >= 0 /* ) */ ) OR (true", "closes a parenthesis"),
            ("$$x$$ ) OR ( $$y$$", "closes a parenthesis"),
            ("true; DELETE FROM t", "contains `;`"),
            ("true /* unterminated", "is not valid SQL text"),
            ("'unterminated", "is not valid SQL text"),
        ] {
            let error = check(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_throttle_query_may_only_read() {
        use super::check_read_only;
        for ok in [
            "SELECT count(*) > 10 FROM pg_locks WHERE NOT granted",
            "WITH w AS (SELECT 1 AS n) SELECT n > 0 FROM w",
            "SELECT my_schema.is_busy()",
        ] {
            assert_eq!(check_read_only(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("DELETE FROM t RETURNING false", "one SELECT"),
            (
                "UPDATE backfilld.jobs SET state = 'failed' RETURNING false",
                "one SELECT",
            ),
            (
                "WITH d AS (DELETE FROM t RETURNING 1) SELECT false FROM d",
                "writes data",
            ),
            ("SELECT false INTO copy FROM t", "creates a table"),
            ("SELECT false FROM t FOR UPDATE", "locks rows"),
            ("SELECT false; SELECT true", "one SELECT"),
            ("COPY t TO PROGRAM 'id'", "one SELECT"),
            (
                "SELECT dblink_exec('dbname=x', 'DROP TABLE t') IS NULL",
                "dblink_exec",
            ),
            ("SELECT public.dblink('x', 'SELECT 1') IS NULL", "dblink"),
        ] {
            let error = check_read_only(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
