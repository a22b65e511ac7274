//! The "how it runs" part of `check`'s plan: every setting in force for the job, defaults
//! included, in plain words.

use std::time::Duration;

use crate::spec::JobSpec;
use crate::status::text;

/// The server's own values for what a job leaves unset.
#[derive(Debug, Clone, Default)]
pub struct ServerDefaults {
    pub lock_timeout: String,
    pub statement_timeout: String,
}

/// (label, value) lines, in the order `check` prints them.
pub fn lines(spec: &JobSpec, server: &ServerDefaults) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    out.push(("batch size", batch_size(spec)));
    out.push((
        "rate limit",
        match spec.rows_per_second {
            Some(rate) => format!(
                "{} rows/s over the whole job, whatever the number of processes",
                text::count(rate.into())
            ),
            None => "none: as fast as the database allows".into(),
        },
    ));
    out.push((
        "pause",
        match spec.pause {
            Some(pause) => format!("{} after each batch", humantime::format_duration(pause)),
            None => "none between batches".into(),
        },
    ));
    out.push(("duty cycle", duty_cycle(spec)));
    out.push((
        "partitions",
        match spec.partitions {
            1 => "1: the key range is walked in one pass from its start".into(),
            n => format!("{n} key ranges walked in parallel"),
        },
    ));
    out.push((
        "lock timeout",
        timeout(
            spec.lock_timeout,
            &server.lock_timeout,
            "waiting for a row lock",
        ),
    ));
    out.push((
        "statement timeout",
        timeout(
            spec.statement_timeout,
            &server.statement_timeout,
            "one batch statement",
        ),
    ));
    out.push((
        "retries",
        format!(
            "a batch is tried up to {} times (with backoff) before the job fails",
            spec.max_attempts
        ),
    ));
    out.push(("synchronous_commit", synchronous_commit(spec)));
    out.push((
        "window",
        match &spec.window {
            Some(window) => format!("runs only during {window}; waits outside it"),
            None => "none: runs at any hour".into(),
        },
    ));
    out.push(("throttles", throttles(spec)));
    out
}

fn duty_cycle(spec: &JobSpec) -> String {
    let Some(duty) = spec.duty_cycle.filter(|d| d.percent() < 100) else {
        return "1: no rest sized from the batches".into();
    };
    let ratio = duty.rest_after(Duration::from_secs(1)).as_secs_f64();
    let floor = if spec.pause.is_some() {
        ", or the pause if longer"
    } else {
        ""
    };
    format!(
        "{duty}: each partition spends at most {}% of its time in batches, resting {}× as long as each batch took{floor}",
        duty.percent(),
        (ratio * 100.0).round() / 100.0
    )
}

fn batch_size(spec: &JobSpec) -> String {
    match spec.target_batch_time {
        Some(target) => {
            let (min, max) = spec.batch_size_bounds();
            format!(
                "adapts toward {} per batch transaction, between {} and {} keys, starting at {}",
                humantime::format_duration(target),
                text::count(min.into()),
                text::count(max.into()),
                text::count(spec.batch_size.into())
            )
        }
        None => format!(
            "{} keys per batch (fixed; set target_batch_time to adapt it)",
            text::count(spec.batch_size.into())
        ),
    }
}

fn timeout(value: Option<Duration>, server: &str, what: &str) -> String {
    match value {
        Some(d) => format!("{} for {what}", humantime::format_duration(d)),
        None if server == "0" || server.is_empty() => {
            "none (the server's default, 0, applies)".into()
        }
        None => format!("the server's default, {server}"),
    }
}

fn synchronous_commit(spec: &JobSpec) -> String {
    let setting = spec.synchronous_commit.as_setting();
    match setting {
        "off" => "off: a batch's commit does not wait for its WAL flush; a crash loses the last batches whole, and the job redoes them from the checkpoint".into(),
        other => format!("{other}: each batch's commit waits as PostgreSQL's synchronous_commit = {other} says"),
    }
}

fn throttles(spec: &JobSpec) -> String {
    let mut waits = Vec::new();
    if let Some(lag) = spec.max_replica_lag {
        waits.push(format!(
            "while any standby replays more than {} behind",
            humantime::format_duration(lag)
        ));
    }
    if let Some(sessions) = spec.max_active_sessions {
        waits.push(format!(
            "while more than {sessions} other sessions are active in the database"
        ));
    }
    if let Some(query) = &spec.throttle_query {
        waits.push(format!(
            "while this query returns true (run read-only between batches): {}",
            one_line(query)
        ));
    }
    if waits.is_empty() {
        "none".into()
    } else {
        format!("waits {}", waits.join("; and "))
    }
}

/// An expression on one line, its whitespace collapsed.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::check::test_spec as spec;

    fn value(lines: &[(&str, String)], label: &str) -> String {
        lines
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {label}"))
    }

    #[test]
    fn defaults_are_spelled_out() {
        let server = ServerDefaults {
            lock_timeout: "0".into(),
            statement_timeout: "30s".into(),
        };
        let lines = lines(&spec(""), &server);
        assert!(value(&lines, "batch size").starts_with("1,000 keys per batch (fixed"));
        assert!(value(&lines, "rate limit").starts_with("none"));
        assert_eq!(value(&lines, "pause"), "none between batches");
        assert!(value(&lines, "duty cycle").starts_with("1: no rest"));
        assert!(value(&lines, "lock timeout").starts_with("none"));
        assert_eq!(
            value(&lines, "statement timeout"),
            "the server's default, 30s"
        );
        assert!(value(&lines, "synchronous_commit").starts_with("off:"));
        assert_eq!(value(&lines, "throttles"), "none");
        assert!(value(&lines, "window").starts_with("none"));
    }

    #[test]
    fn every_given_setting_shows() {
        let lines = lines(
            &spec(
                "rows_per_second = 20000\npause = \"50ms\"\nlock_timeout = \"1s\"\n\
                 target_batch_time = \"200ms\"\nmin_batch_size = 100\nmax_batch_size = 20000\n\
                 max_replica_lag = \"10s\"\nmax_active_sessions = 50\n\
                 throttle_query = \"SELECT false\"\nwindow = \"22:00-06:00 Europe/Berlin\"\n\
                 synchronous_commit = \"on\"\npartitions = 4\nduty_cycle = 0.25",
            ),
            &ServerDefaults::default(),
        );
        assert!(value(&lines, "rate limit").starts_with("20,000 rows/s"));
        assert_eq!(value(&lines, "pause"), "50ms after each batch");
        assert_eq!(
            value(&lines, "duty cycle"),
            "0.25: each partition spends at most 25% of its time in batches, resting 3× as long as each batch took, or the pause if longer"
        );
        assert!(value(&lines, "lock timeout").starts_with("1s"));
        let batch = value(&lines, "batch size");
        assert!(
            batch.contains("200ms") && batch.contains("100 and 20,000"),
            "{batch}"
        );
        let throttles = value(&lines, "throttles");
        for part in ["10s", "50 other sessions", "SELECT false"] {
            assert!(throttles.contains(part), "{throttles}");
        }
        assert!(value(&lines, "window").contains("22:00-06:00 Europe/Berlin"));
        assert!(value(&lines, "synchronous_commit").starts_with("on:"));
        assert!(value(&lines, "partitions").starts_with("4 key ranges"));
    }
}
