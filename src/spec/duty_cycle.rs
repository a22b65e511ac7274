//! `duty_cycle`: the most of its wall time each partition's worker spends in batches. After a
//! batch that took `t` the worker rests `t × (1 − d) / d`, so the rest follows the server: when
//! batches slow down, the rests grow with them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duty cycle in hundredths, 1 to 100 (0.01 to 1). Whole hundredths keep `JobSpec` `Eq` and
/// the jobs table's column an integer; the job format writes it as a number (`0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DutyCycle(u8);

const OUT_OF_RANGE: &str = "duty_cycle must be more than 0 and at most 1";
const TOO_PRECISE: &str = "duty_cycle must have at most two decimals, such as 0.5 or 0.33";

impl DutyCycle {
    /// From whole hundredths (as the jobs table stores it): `None` outside 1..=100.
    pub fn from_percent(percent: i64) -> Option<DutyCycle> {
        u8::try_from(percent)
            .ok()
            .filter(|p| (1..=100).contains(p))
            .map(DutyCycle)
    }

    /// From the number an author wrote; the error names the field.
    pub fn from_fraction(value: f64) -> Result<DutyCycle, String> {
        if !value.is_finite() || value <= 0.0 || value > 1.0 {
            return Err(OUT_OF_RANGE.into());
        }
        let hundredths = (value * 100.0).round();
        if (value * 100.0 - hundredths).abs() > 1e-6 {
            return Err(TOO_PRECISE.into());
        }
        DutyCycle::from_percent(hundredths as i64).ok_or_else(|| OUT_OF_RANGE.to_string())
    }

    pub fn percent(self) -> u8 {
        self.0
    }

    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// How long to rest after a batch that took `busy`: `busy × (1 − d) / d` (nothing at 1).
    pub fn rest_after(self, busy: Duration) -> Duration {
        let percent = u32::from(self.0);
        busy * (100 - percent) / percent
    }
}

impl fmt::Display for DutyCycle {
    /// `0.5`, `0.25`, `1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fraction())
    }
}

impl FromStr for DutyCycle {
    type Err = String;

    fn from_str(s: &str) -> Result<DutyCycle, String> {
        let value: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("duty_cycle must be a number such as 0.5, not {s:?}"))?;
        DutyCycle::from_fraction(value)
    }
}

impl Serialize for DutyCycle {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.fraction())
    }
}

impl<'de> Deserialize<'de> for DutyCycle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DutyCycle, D::Error> {
        struct Fraction;

        impl de::Visitor<'_> for Fraction {
            type Value = DutyCycle;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("duty_cycle as a number more than 0 and at most 1, such as 0.5")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DutyCycle, E> {
                DutyCycle::from_fraction(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DutyCycle, E> {
                self.visit_f64(v as f64)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DutyCycle, E> {
                self.visit_f64(v as f64)
            }
        }

        deserializer.deserialize_f64(Fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_hundredths_in_zero_to_one_only() {
        assert_eq!(DutyCycle::from_fraction(0.5).unwrap().percent(), 50);
        assert_eq!(DutyCycle::from_fraction(0.07).unwrap().percent(), 7);
        assert_eq!(DutyCycle::from_fraction(1.0).unwrap().percent(), 100);
        for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(DutyCycle::from_fraction(bad).unwrap_err(), OUT_OF_RANGE);
        }
        assert_eq!(DutyCycle::from_fraction(0.333).unwrap_err(), TOO_PRECISE);
        assert_eq!(DutyCycle::from_fraction(0.005).unwrap_err(), TOO_PRECISE);
        assert_eq!("0.25".parse::<DutyCycle>().unwrap().to_string(), "0.25");
        assert!("half"
            .parse::<DutyCycle>()
            .unwrap_err()
            .contains("duty_cycle"));
        assert_eq!(DutyCycle::from_percent(0), None);
        assert_eq!(DutyCycle::from_percent(101), None);
    }

    #[test]
    fn the_rest_is_the_batch_time_times_one_minus_d_over_d() {
        let t = Duration::from_millis(100);
        let d = |p| DutyCycle::from_percent(p).unwrap();
        assert_eq!(d(50).rest_after(t), t);
        assert_eq!(d(25).rest_after(t), 3 * t);
        assert_eq!(d(100).rest_after(t), Duration::ZERO);
        assert_eq!(d(75).rest_after(Duration::from_millis(300)), t);
    }
}
