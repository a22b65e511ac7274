//! `table` read as PostgreSQL reads `[schema.]table`, so a name pasted from psql or a migration
//! means what it meant there: an unquoted name folds to lower case; a double-quoted one keeps
//! its case, spaces and dots, with `""` for a quote inside it.

/// A table's name as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// `None`: the table is found through `search_path`.
    pub schema: Option<String>,
    pub table: String,
    /// Folding to lower case changed an unquoted part (worth saying when no table matches).
    pub folded: bool,
}

/// PostgreSQL keeps the first 63 bytes of a longer name (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

impl TableName {
    /// Reads `text`; an error says what is wrong with it. An unquoted part is read up to the
    /// next dot, whatever it holds: a name that cannot exist is left to the catalog to refuse
    /// as missing, like any other missing table.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let mut parts = Vec::new();
        let mut folded = false;
        let mut rest = text;
        loop {
            rest = rest.trim_start_matches(is_space);
            let (part, after) = match rest.strip_prefix('"') {
                Some(quoted) => read_quoted(quoted)?,
                None => {
                    let end = rest.find(['.', '"']).unwrap_or(rest.len());
                    if rest[end..].starts_with('"') {
                        return Err(QUOTE_MID_NAME.into());
                    }
                    let written = rest[..end].trim_end_matches(is_space);
                    // PostgreSQL folds ASCII letters only (in UTF-8 databases).
                    let lower = written.to_ascii_lowercase();
                    folded |= lower != written;
                    (lower, &rest[end..])
                }
            };
            if part.is_empty() {
                return Err("a name is empty".into());
            }
            parts.push(truncated(part));
            let after = after.trim_start_matches(is_space);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return Err(QUOTE_MID_NAME.into()),
            }
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(table), None, _) => Ok(TableName {
                schema: None,
                table,
                folded,
            }),
            (Some(schema), Some(table), None) => Ok(TableName {
                schema: Some(schema),
                table,
                folded,
            }),
            _ => Err("more than two names (a database cannot be named)".into()),
        }
    }
}

const QUOTE_MID_NAME: &str =
    "double quotes must enclose a whole name, as in '\"Sales Data\".\"Users\"'";

/// Whitespace PostgreSQL's scanner skips between tokens.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// The name after an opening quote, up to its closing quote (`""` is a quote inside it), and
/// the text after that.
fn read_quoted(text: &str) -> Result<(String, &str), String> {
    let mut name = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '"' {
            name.push(c);
        } else if text[at + 1..].starts_with('"') {
            name.push('"');
            chars.next();
        } else {
            return Ok((name, &text[at + 1..]));
        }
    }
    Err("a double-quoted name is not closed".into())
}

/// `name` cut to what PostgreSQL keeps of it, on a character boundary.
fn truncated(mut name: String) -> String {
    if name.len() > MAX_NAME_BYTES {
        let mut cut = MAX_NAME_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Option<String>, String) {
        let name = TableName::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        (name.schema, name.table)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn reads_names_as_postgresql_does() {
        assert_eq!(parsed("users"), (None, "users".into()));
        assert_eq!(parsed("public.users"), (some("public"), "users".into()));
        assert_eq!(parsed("Public.Users"), (some("public"), "users".into()));
        assert_eq!(parsed(" public . users "), (some("public"), "users".into()));
        assert_eq!(
            parsed("\"Sales Data\".\"Users\""),
            (some("Sales Data"), "Users".into())
        );
        assert_eq!(parsed("\"a.b\""), (None, "a.b".into()));
        assert_eq!(
            parsed("s.\"say \"\"hi\"\".\""),
            (some("s"), "say \"hi\".".into())
        );
        assert_eq!(parsed("\"\"\"\""), (None, "\"".into()));
        assert_eq!(parsed("ÄBC"), (None, "Äbc".into()));
        // Unquoted text up to the dot is a name the catalog will not find.
        assert_eq!(
            parsed("users; DROP TABLE users"),
            (None, "users; drop table users".into())
        );
        assert!(TableName::parse("Users").unwrap().folded);
        assert!(!TableName::parse("\"Users\"").unwrap().folded);
        let long = "x".repeat(70);
        assert_eq!(parsed(&long).1.len(), 63);
        let wide = "é".repeat(40);
        assert_eq!(parsed(&format!("\"{wide}\"")).1, "é".repeat(31));
    }

    #[test]
    fn refuses_what_postgresql_would_not_read() {
        for (text, reason) in [
            ("", "empty"),
            ("  ", "empty"),
            ("a.", "empty"),
            (".a", "empty"),
            ("\"\"", "empty"),
            ("a.b.c", "more than two"),
            ("\"a\".\"b\".\"c\"", "more than two"),
            ("\"a", "not closed"),
            ("\"a\"\"", "not closed"),
            ("users\"x\"", "whole name"),
            ("public.users\"; DROP TABLE users; --", "whole name"),
            ("\"a\"b", "whole name"),
            ("\"a\" \"b\"", "whole name"),
        ] {
            let error = TableName::parse(text).expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }
}
