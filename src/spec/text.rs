//! Text helpers of the job definition: names, and values cut short when echoed in messages.

/// Long values are cut when echoed in messages: a 10 MB name helps nobody.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

/// `shorten` for each line of a parser's message (which quotes the offending line).
pub(super) fn shorten_lines(message: &str) -> String {
    let lines: Vec<String> = message
        .lines()
        .take(12)
        .map(|l| match l.char_indices().nth(240) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_string(),
        })
        .collect();
    lines.join("\n")
}

/// `^[a-z0-9][a-z0-9_-]{0,62}$`, written out so the error path needs no regex engine.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

pub(super) fn first_duplicate(items: &[String]) -> Option<&str> {
    items
        .iter()
        .enumerate()
        .find(|(i, item)| items[..*i].contains(item))
        .map(|(_, item)| item.as_str())
}
