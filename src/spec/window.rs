//! The `window` a job may run in: daily hours in a named time zone.

/// A daily window in which a job may run: `HH:MM-HH:MM`, wrapping past midnight when the end
/// is before the start, in a named time zone (checked against PostgreSQL's list on submit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight.
    pub start: u32,
    pub end: u32,
    pub time_zone: String,
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let mut parts = text.split_whitespace();
        let range = parts.next().unwrap_or("");
        let time_zone = parts.next().unwrap_or("UTC").to_string();
        if parts.next().is_some() {
            return Err(format!(
                "{text:?}: expected HH:MM-HH:MM and an optional time zone"
            ));
        }
        let (start, end) = range.split_once('-').ok_or_else(|| {
            format!("{text:?}: expected HH:MM-HH:MM, such as \"22:00-06:00 Europe/Berlin\"")
        })?;
        let minutes = |hhmm: &str| -> Result<u32, String> {
            let (h, m) = hhmm
                .split_once(':')
                .ok_or_else(|| format!("{hhmm:?} is not HH:MM"))?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| format!("{hhmm:?} is not HH:MM"))?,
                m.parse().map_err(|_| format!("{hhmm:?} is not HH:MM"))?,
            );
            if h > 24 || m > 59 || (h == 24 && m != 0) || h.to_string().len() > 2 {
                return Err(format!("{hhmm:?} is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let (start, end) = (minutes(start)?, minutes(end)?);
        if start == end {
            return Err(format!("{text:?}: the window is empty"));
        }
        if time_zone.is_empty()
            || !time_zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
        {
            return Err(format!("{time_zone:?} is not a time zone name"));
        }
        Ok(Window {
            start,
            end,
            time_zone,
        })
    }

    /// Whether `minute` (after midnight, local to the window's zone) is inside.
    pub fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}
