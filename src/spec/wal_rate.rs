//! `max_wal_rate`: how fast the server may write WAL before a job waits, written as a rate in
//! PostgreSQL's memory units (`"16MB/s"`).

/// Units as PostgreSQL's settings spell them, each 1024 times the previous.
const UNITS: [(&str, u64); 5] = [
    ("B", 1),
    ("kB", 1 << 10),
    ("MB", 1 << 20),
    ("GB", 1 << 30),
    ("TB", 1 << 40),
];

/// A rate of WAL, in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRate {
    pub bytes_per_second: u64,
}

impl WalRate {
    /// `"<number><unit>/s"`: a whole or decimal number, then `B`, `kB`, `MB`, `GB` or `TB`.
    pub fn parse(text: &str) -> Result<WalRate, String> {
        let expected = || {
            format!(
                "{:?} is not a rate such as \"16MB/s\" (a number, then B, kB, MB, GB or TB, then /s)",
                super::shorten(text)
            )
        };
        let amount = text.trim().strip_suffix("/s").ok_or_else(expected)?;
        let split = amount
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(expected)?;
        let (number, unit) = (&amount[..split], amount[split..].trim_start());
        let number: f64 = number.parse().map_err(|_| expected())?;
        let (_, scale) = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(expected)?;
        let bytes = number * *scale as f64;
        if !(1.0..=(1u64 << 50) as f64).contains(&bytes) {
            return Err(format!(
                "{:?} must be between 1B/s and 1024TB/s",
                super::shorten(text)
            ));
        }
        Ok(WalRate {
            bytes_per_second: bytes as u64,
        })
    }
}

impl std::fmt::Display for WalRate {
    /// In the largest unit that keeps one decimal meaningful: `16.0MB/s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.bytes_per_second as f64;
        let (name, scale) = UNITS
            .iter()
            .rev()
            .find(|(_, scale)| bytes >= *scale as f64)
            .unwrap_or(&UNITS[0]);
        write!(f, "{:.1}{name}/s", bytes / *scale as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::WalRate;

    #[test]
    fn rates_in_postgres_units() {
        let rate = |t: &str| WalRate::parse(t).map(|r| r.bytes_per_second);
        assert_eq!(rate("16MB/s"), Ok(16 << 20));
        assert_eq!(rate("512 kB/s"), Ok(512 << 10));
        assert_eq!(rate("1.5GB/s"), Ok(3 << 29));
        assert_eq!(rate("800B/s"), Ok(800));
        for bad in [
            "16MB", "16mb/s", "MB/s", "-1MB/s", "0MB/s", "16 MiB/s", "1e3kB/s", "",
        ] {
            let err = rate(bad).unwrap_err();
            assert!(err.contains("/s"), "{bad}: {err}");
        }
        assert_eq!(WalRate::parse("16MB/s").unwrap().to_string(), "16.0MB/s");
    }
}
