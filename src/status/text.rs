//! How counts, rates, durations and cursors read for people — in the terminal, in `status`,
//! `check` and `events`, and in log lines — written once so every place agrees.

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
/// several, `-` before the first batch.
pub fn cursor(cursor: Option<&[String]>) -> String {
    match cursor {
        None => "-".into(),
        Some([single]) => single.clone(),
        Some(values) => format!("({})", values.join(", ")),
    }
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
    }
}
