//! The author's SQL expressions (`set` and `where`), scanned with PostgreSQL's own lexer
//! (libpg_query) before anything else sees them. An expression is placed inside parentheses in
//! the batch statement, so it must balance its own parentheses outside string literals, quoted
//! identifiers, comments and dollar quotes: text such as `v >= 0) OR (true` would otherwise
//! close the statement's parenthesis and escape the batch's key range. The real scanner, not a
//! hand-written lexer, decides what is a literal or a comment (nested `/* */`, `$tag$` quotes,
//! `E''` escapes), so it judges the text exactly as the server will.

use pg_query::protobuf::Token;

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

/// 1-based character position of a byte offset, for messages.
fn char_position(text: &str, byte: i32) -> usize {
    let byte = usize::try_from(byte).unwrap_or(0).min(text.len());
    text.char_indices().take_while(|(i, _)| *i < byte).count() + 1
}

#[cfg(test)]
mod tests {
    use super::check;

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
}
