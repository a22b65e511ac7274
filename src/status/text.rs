//! How counts, rates, durations and cursors read for people — in the terminal, in `status`,
//! `check` and `events`, and in log lines — written once so every place agrees. Text that
//! comes from data (cursors, errors, event details) goes through [`printable`] before it
//! reaches a terminal.

use std::time::Duration;

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A signed count (the API's counters are `i64`); negatives never occur but read sensibly.
pub fn signed_count(n: i64) -> String {
    match u64::try_from(n) {
        Ok(n) => count(n),
        Err(_) => format!("-{}", count(n.unsigned_abs())),
    }
}

/// A rate in rows per second: whole numbers with separators, one decimal under 10 (where the
/// decimal still says something), `0` for nothing.
pub fn rate(per_second: f64) -> String {
    if !per_second.is_finite() || per_second <= 0.0 {
        return "0".into();
    }
    if per_second < 9.95 {
        return format!("{per_second:.1}");
    }
    count(per_second.round() as u64)
}

/// A duration rounded to whole seconds (`1h 2m 3s`), or milliseconds under one second.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs_f64().round() as u64)).to_string()
}

/// A partition's cursor as its key values: `146000` for one key column, `(2024-01-01, 17)` for
/// several, `-` before the first batch. The values are the application's data, so they are
/// made [`printable`].
pub fn cursor(cursor: Option<&[String]>) -> String {
    match cursor {
        None => "-".into(),
        Some([single]) => printable(single),
        Some(values) => {
            let values: Vec<String> = values.iter().map(|v| printable(v)).collect();
            format!("({})", values.join(", "))
        }
    }
}

/// `text` safe to print on a terminal: every control character (C0 including newline and tab,
/// DEL, C1, and so ESC and the 8-bit CSI) and every bidirectional override is shown escaped
/// (`\u{1b}`, `\n`) instead of being obeyed. A cursor value, a database error or a pause
/// reason is anyone's text, and must not move the cursor, retitle the window or hide a line.
pub fn printable(text: &str) -> String {
    if !text.chars().any(obeyed) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if obeyed(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a terminal would act on `c` rather than show it.
fn obeyed(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(100_000), "100,000");
        assert_eq!(signed_count(-1234), "-1,234");
        assert_eq!(signed_count(12_345), "12,345");
    }

    #[test]
    fn rates_are_whole_or_one_decimal_under_ten() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(f64::NAN), "0");
        assert_eq!(rate(0.25), "0.2");
        assert_eq!(rate(9.94), "9.9");
        assert_eq!(rate(9.96), "10");
        assert_eq!(rate(19_999.678_9), "20,000");
        assert_eq!(rate(28_091.123_4), "28,091");
    }

    #[test]
    fn durations_round_to_seconds() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_millis(1_600)), "2s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h 2m 3s");
    }

    #[test]
    fn cursors_are_plain_values() {
        assert_eq!(cursor(None), "-");
        assert_eq!(cursor(Some(&["146000".to_string()])), "146000");
        assert_eq!(
            cursor(Some(&["2024-01-01".to_string(), "17".to_string()])),
            "(2024-01-01, 17)"
        );
        assert_eq!(
            cursor(Some(&["a\x1b]0;pwned\x07".to_string(), "b\nc".to_string()])),
            "(a\\u{1b}]0;pwned\\u{7}, b\\nc)"
        );
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(printable("\x1b[2J\x1b[Hgone"), "\\u{1b}[2J\\u{1b}[Hgone");
        assert_eq!(printable("a\tb\r\nc\0"), "a\\tb\\r\\nc\\u{0}");
        // C1: the 8-bit CSI and OSC, and DEL.
        assert_eq!(
            printable("\u{9b}31m\u{9d}x\u{7f}"),
            "\\u{9b}31m\\u{9d}x\\u{7f}"
        );
        assert_eq!(printable("abc\u{202e}def"), "abc\\u{202e}def");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let shown = printable(&format!("x{c}y"));
            assert!(!shown.chars().any(|c| c.is_control()), "{c:?} → {shown:?}");
        }
    }
}
