//! The job definition: what a TOML file (or an API body) says a backfill is, parsed and checked
//! for everything that can be known without a database.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod commit;
mod duty_cycle;
pub(crate) mod expression;
mod key;
mod sync;
mod table;
mod text;
mod tunables;
mod wal_rate;
mod window;

pub use commit::SynchronousCommit;
pub use duty_cycle::DutyCycle;
use key::key_schema;
pub use key::KeyColumns;
pub use sync::SyncSpec;
pub use table::TableName;
use text::{first_duplicate, shorten_lines};
pub use text::{is_valid_name, shorten};
pub use tunables::Tunables;
pub use wal_rate::WalRate;
pub use window::Window;

/// Why a job definition was refused before anything touched the database.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        /// The field, as the author wrote it (`set.email` for one expression of `set`).
        field: String,
        message: String,
    },
}

/// The largest job document read from the jobs directory or the API: a job definition is a
/// few hundred bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub const DEFAULT_BATCH_SIZE: u32 = 1000;
pub const MAX_BATCH_SIZE: u32 = 1_000_000;
/// The longest rest after a batch: `pause` at most, and what `duty_cycle` sizes.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);
pub const MAX_PARTITIONS: u32 = 256;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A backfill job as its author wrote it. Field names are the public job format (README, "A job file").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    /// `[schema.]table` in PostgreSQL's syntax ([`TableName`]), found in the catalog, never spliced.
    pub table: String,
    /// One column or several, in key order.
    #[schema(schema_with = key_schema)]
    pub key: KeyColumns,
    /// A predicate selecting rows that still need the update.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default = "default_batch_size")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub batch_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub rows_per_second: Option<u32>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "50ms")]
    pub pause: Option<Duration>,
    /// The most of its wall time each partition spends in batches, in (0, 1] with at most two
    /// decimals: after a batch that took t it rests t × (1 − d) / d (`pause` is a floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>, minimum = 0.01, maximum = 1, example = 0.5)]
    pub duty_cycle: Option<DutyCycle>,
    #[serde(default = "default_partitions")]
    #[schema(minimum = 1, maximum = 256)]
    pub partitions: u32,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "1s")]
    pub lock_timeout: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "30s")]
    pub statement_timeout: Option<Duration>,
    #[serde(default = "default_max_attempts")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: u32,
    /// Adaptive batches: size each batch so its transaction takes about this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "200ms")]
    pub target_batch_time: Option<Duration>,
    /// Bounds for adaptive batches (defaults: 10 and 100 × batch_size, at most 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub min_batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_batch_size: Option<u32>,
    /// Health throttling: wait while any standby replays more than this far behind.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "10s")]
    pub max_replica_lag: Option<Duration>,
    /// Health throttling: a query returning one boolean; true = wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_query: Option<String>,
    /// Health throttling: wait while more backends than this are active in the database
    /// (backfilld's own sessions not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_active_sessions: Option<u32>,
    /// Health throttling: wait while the server writes WAL faster than this (`"16MB/s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "16MB/s")]
    pub max_wal_rate: Option<String>,
    /// Hours in which the job may run, `HH:MM-HH:MM` with an optional time zone
    /// (`"22:00-06:00 Europe/Berlin"`; UTC when absent). Outside them it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "22:00-06:00 Europe/Berlin")]
    pub window: Option<String>,
    /// PostgreSQL's `synchronous_commit` for the batch sessions (default `off`; see
    /// [`SynchronousCommit`]).
    #[serde(default, deserialize_with = "SynchronousCommit::deserialize_named")]
    pub synchronous_commit: SynchronousCommit,
    /// Jobs with `where`: how many passes at most (the backfill, then sweeps over the whole key
    /// range for rows that still match). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub passes: Option<u32>,
    /// Jobs with `where`: keep rows the application writes in step with a trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncSpec>,
    /// The target databases: names of the daemon's `[[databases]]`, or globs over them
    /// (`"shard-*"`). Empty: the daemon's own `database_url`. The job runs on each with its own
    /// partitions, checkpoints and passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["shard-*"]))]
    pub databases: Vec<String>,
    /// Column = SQL expression over the row's own columns. Ordered so that generated SQL and
    /// stored specs compare equal however the author ordered the table.
    pub set: BTreeMap<String, String>,
}

fn default_batch_size() -> u32 {
    DEFAULT_BATCH_SIZE
}
fn default_partitions() -> u32 {
    1
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl SpecError {
    /// The error without any quoted text of the document (a TOML parse error quotes the line
    /// it stopped at): for logs, where a file that is not a job definition at all — a key, a
    /// password file — must not be echoed.
    pub fn summary(&self) -> String {
        match self {
            SpecError::Parse { origin, message } => {
                let mut lines = message.lines();
                let first = lines.next().unwrap_or_default();
                match lines.last().filter(|l| !l.trim_start().starts_with('|')) {
                    Some(last) if last != first => format!("{origin}: {first}: {last}"),
                    _ => format!("{origin}: {first}"),
                }
            }
            other => other.to_string(),
        }
    }
}

impl JobSpec {
    /// Reads and validates a job file; errors name the file.
    pub fn from_file(path: &Path) -> Result<JobSpec, SpecError> {
        let origin = path.display().to_string();
        let read = |source| SpecError::Read {
            path: origin.clone(),
            source,
        };
        // A FIFO would block the read forever and a device (a link to /dev/zero) never end.
        if !std::fs::metadata(path).map_err(read)?.is_file() {
            return Err(read(std::io::Error::other(
                "not a regular file (a FIFO, a device or a directory)",
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        JobSpec::from_toml(&text, &origin)
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            origin: origin.to_string(),
            message: shorten_lines(e.to_string().trim_end()),
        })?;
        spec.validate(origin)?;
        Ok(spec)
    }

    pub fn from_json(text: &str, origin: &str) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = serde_json::from_str(text).map_err(|e| SpecError::Parse {
            origin: origin.to_string(),
            message: shorten_lines(&e.to_string()),
        })?;
        spec.validate(origin)?;
        Ok(spec)
    }

    /// Everything that can be checked without a database.
    pub fn validate(&self, origin: &str) -> Result<(), SpecError> {
        let invalid = |field: &str, message: String| SpecError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            message,
        };
        if let Some(field) = self.field_with_nul() {
            return Err(invalid(
                field,
                "contains a NUL character, which PostgreSQL text cannot hold".into(),
            ));
        }
        if !is_valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} is not a valid job name: use 1 to 63 characters from a-z, 0-9, '_' and '-', starting with a letter or digit",
                    shorten(&self.name)
                ),
            ));
        }
        if let Err(reason) = TableName::parse(&self.table) {
            let table = shorten(&self.table);
            let message = format!("{table:?} is not of the form [schema.]table: {reason}");
            return Err(invalid("table", message));
        }
        if self.key.0.is_empty() {
            return Err(invalid("key", "at least one key column is required".into()));
        }
        if let Some(dup) = first_duplicate(&self.key.0) {
            return Err(invalid("key", format!("column {dup:?} is listed twice")));
        }
        if self.key.0.iter().any(|c| c.is_empty()) {
            return Err(invalid("key", "a key column name is empty".into()));
        }
        if self.set.is_empty() {
            return Err(invalid(
                "set",
                "at least one column = expression is required".into(),
            ));
        }
        for (column, expression) in &self.set {
            if column.is_empty() {
                return Err(invalid("set", "a column name is empty".into()));
            }
            if expression.trim().is_empty() {
                return Err(invalid(
                    "set",
                    format!("the expression for {column:?} is empty"),
                ));
            }
            if self.key.0.contains(column) {
                return Err(invalid(
                    "set",
                    format!(
                        "{column:?} is a key column: a backfill cannot change the key it walks"
                    ),
                ));
            }
        }
        if let Some(filter) = &self.filter {
            if filter.trim().is_empty() {
                return Err(invalid(
                    "where",
                    "is empty: leave it out to update every row".into(),
                ));
            }
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(invalid(
                "batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            ));
        }
        if self.rows_per_second == Some(0) {
            return Err(invalid(
                "rows_per_second",
                "must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(invalid(
                "partitions",
                format!("must be between 1 and {MAX_PARTITIONS}"),
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err(invalid("max_attempts", "must be between 1 and 100".into()));
        }
        for (field, value) in [
            ("lock_timeout", self.lock_timeout),
            ("statement_timeout", self.statement_timeout),
        ] {
            if let Some(d) = value {
                if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                    return Err(invalid(field, "must be between 1ms and 24h".into()));
                }
                if d.subsec_nanos() % 1_000_000 != 0 {
                    return Err(invalid(
                        field,
                        "must be a whole number of milliseconds".into(),
                    ));
                }
            }
        }
        if matches!(self.pause, Some(d) if d > MAX_PAUSE) {
            return Err(invalid("pause", "must be at most 1h".into()));
        }
        if let Some(target) = self.target_batch_time {
            if target < Duration::from_millis(10) || target > Duration::from_secs(60) {
                return Err(invalid(
                    "target_batch_time",
                    "must be between 10ms and 60s".into(),
                ));
            }
        }
        let (min, max) = self.batch_size_bounds();
        for (field, value) in [
            ("min_batch_size", self.min_batch_size),
            ("max_batch_size", self.max_batch_size),
        ] {
            if matches!(value, Some(v) if v == 0 || v > MAX_BATCH_SIZE) {
                return Err(invalid(
                    field,
                    format!("must be between 1 and {MAX_BATCH_SIZE}"),
                ));
            }
        }
        if min > max {
            return Err(invalid(
                "min_batch_size",
                format!("{min} is larger than max_batch_size {max}"),
            ));
        }
        if (self.min_batch_size.is_some() || self.max_batch_size.is_some())
            && self.target_batch_time.is_none()
        {
            return Err(invalid(
                "min_batch_size",
                "min_batch_size and max_batch_size bound adaptive batches: set target_batch_time too".into(),
            ));
        }
        if matches!(self.max_replica_lag, Some(d) if d.is_zero()) {
            return Err(invalid("max_replica_lag", "must be more than 0s".into()));
        }
        if matches!(&self.throttle_query, Some(q) if q.trim().is_empty()) {
            return Err(invalid("throttle_query", "is empty".into()));
        }
        if self.max_active_sessions == Some(0) {
            return Err(invalid("max_active_sessions", "must be at least 1".into()));
        }
        if let Some(window) = &self.window {
            Window::parse(window).map_err(|message| invalid("window", message))?;
        }
        if let Some(rate) = &self.max_wal_rate {
            WalRate::parse(rate).map_err(|message| invalid("max_wal_rate", message))?;
        }
        self.validate_finishing()
            .map_err(|(field, message)| invalid(field, message))?;
        if self.databases.iter().any(|d| d.trim().is_empty()) {
            return Err(invalid("databases", "holds an empty name".into()));
        }
        if let Some(twice) = first_duplicate(&self.databases) {
            return Err(invalid(
                "databases",
                format!("{:?} is listed twice", shorten(twice)),
            ));
        }
        Ok(())
    }

    /// The first field holding a NUL character: it cannot reach PostgreSQL as text.
    fn field_with_nul(&self) -> Option<&'static str> {
        let has = |s: &str| s.contains('\0');
        if has(&self.name) {
            Some("name")
        } else if has(&self.table) {
            Some("table")
        } else if self.key.0.iter().any(|k| has(k)) {
            Some("key")
        } else if self.set.iter().any(|(c, e)| has(c) || has(e)) {
            Some("set")
        } else if self.filter.as_deref().is_some_and(has) {
            Some("where")
        } else if self.throttle_query.as_deref().is_some_and(has) {
            Some("throttle_query")
        } else if self.window.as_deref().is_some_and(has) {
            Some("window")
        } else if self.databases.iter().any(|d| has(d)) {
            Some("databases")
        } else {
            None
        }
    }

    /// The bounds adaptive batches stay within.
    pub fn batch_size_bounds(&self) -> (u32, u32) {
        let min = self.min_batch_size.unwrap_or(10.min(self.batch_size));
        let max = self
            .max_batch_size
            .unwrap_or_else(|| self.batch_size.saturating_mul(100).min(MAX_BATCH_SIZE));
        (min, max)
    }

    pub fn key_columns(&self) -> &[String] {
        &self.key.0
    }

    /// Names of the top-level fields where `self` and `other` differ, for messages.
    pub fn differences(&self, other: &JobSpec) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(other))
        else {
            return Vec::new();
        };
        let mut fields: Vec<String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect();
        fields.sort();
        fields.dedup();
        fields
    }
}

#[cfg(test)]
mod tests;
