//! A bounded fuzz pass over the job parser (proptest, 256 cases per property, seconds in
//! `cargo test`): arbitrary text, truncations and structured mutations of a valid job, as TOML
//! and as JSON, never panic; and whatever is accepted satisfies the validation invariants and
//! survives a round trip through both formats unchanged.

use std::time::Duration;

use backfilld::spec::{is_valid_name, JobSpec, TableName, MAX_BATCH_SIZE, MAX_PARTITIONS};
use proptest::prelude::*;

const VALID: &[(&str, &str)] = &[
    ("name", "\"products_search\""),
    ("table", "\"public.products\""),
    ("key", "[\"tenant_id\", \"id\"]"),
    ("where", "\"search IS NULL\""),
    ("batch_size", "500"),
    ("rows_per_second", "2000"),
    ("pause", "\"50ms\""),
    ("partitions", "4"),
    ("lock_timeout", "\"1s\""),
    ("statement_timeout", "\"30s\""),
    ("max_attempts", "5"),
];

/// Fields a mutation may add: the documented ones, newer tunables, and nonsense.
const EXTRA_FIELDS: &[&str] = &[
    "target_batch_time",
    "min_batch_size",
    "max_batch_size",
    "max_replica_lag",
    "throttle_query",
    "max_active_sessions",
    "window",
    "max_wal_rate",
    "colour",
    "set",
    "name",
    "",
    "\"where\"",
];

fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_string()),
        Just("id".to_string()),
        Just("a.b".to_string()),
        Just("a.b.c".to_string()),
        Just(".".to_string()),
        Just("-1s".to_string()),
        Just("0ms".to_string()),
        Just("1ns".to_string()),
        Just("25h".to_string()),
        Just("18446744073709551615s".to_string()),
        Just("9999999999999999999999 years".to_string()),
        Just("02:00-04:00".to_string()),
        Just("25:61-99:99 Mars/Olympus".to_string()),
        Just("23:59-00:00 UTC".to_string()),
        Just("日本:語-時:間".to_string()),
        Just("job\u{202e}eman".to_string()),
        Just("\u{0458}\u{043e}b".to_string()),
        Just("a\u{200b}b".to_string()),
        Just("x; DROP TABLE t".to_string()),
        Just("\0".to_string()),
        "\\PC{0,40}",
        any::<String>(),
    ]
}

/// A TOML value, valid or not for the field it lands on.
fn toml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(256),
            Just(257),
            Just(1_000_001)
        ]
        .prop_map(|n| n.to_string()),
        Just("4294967296".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("-0".to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("inf".to_string()),
        Just("nan".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        tricky_string().prop_map(|s| toml::Value::String(s).to_string()),
    ];
    scalar.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(inner, 0..3).prop_map(|v| {
                let fields: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("f{i} = {x}"))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Keep,
    Drop,
    Replace(String),
    Duplicate,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        // Rare enough that a fair share of documents is still accepted (and so checked).
        40 => Just(Mutation::Keep),
        1 => Just(Mutation::Drop),
        2 => toml_value().prop_map(Mutation::Replace),
        1 => Just(Mutation::Duplicate),
    ]
}

/// A valid job with each top-level line mutated, extra fields, a mutated `[set]`, and maybe
/// truncated at some byte.
fn mutated_toml() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(mutation(), VALID.len()),
        prop::collection::vec((prop::sample::select(EXTRA_FIELDS), toml_value()), 0..2),
        prop::collection::vec((tricky_string(), toml_value()), 0..2),
        prop::bool::weighted(0.9),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(mutations, extras, set, keep_set, cut, truncate)| {
            let mut text = String::new();
            for ((field, value), mutation) in VALID.iter().zip(mutations) {
                match mutation {
                    Mutation::Keep => text += &format!("{field} = {value}\n"),
                    Mutation::Drop => {}
                    Mutation::Replace(v) => text += &format!("{field} = {v}\n"),
                    Mutation::Duplicate => {
                        text += &format!("{field} = {value}\n{field} = {value}\n")
                    }
                }
            }
            for (field, value) in extras {
                text += &format!("{field} = {value}\n");
            }
            text += "[set]\n";
            if keep_set {
                text += "search = \"to_tsvector(name)\"\n";
            }
            for (column, value) in set {
                text += &format!("{} = {value}\n", toml::Value::String(column));
            }
            if truncate {
                let mut at = cut.index(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
            text
        })
}

/// What every accepted spec must satisfy, whichever way it came in.
fn check_invariants(spec: &JobSpec) -> Result<(), TestCaseError> {
    prop_assert!(is_valid_name(&spec.name), "name {:?}", spec.name);
    let table = TableName::parse(&spec.table);
    prop_assert!(
        table.as_ref().is_ok_and(|t| !t.table.is_empty()),
        "table {:?}: {table:?}",
        spec.table
    );
    let key = spec.key_columns();
    prop_assert!(!key.is_empty() && key.iter().all(|c| !c.is_empty()));
    for (i, column) in key.iter().enumerate() {
        prop_assert!(!key[..i].contains(column), "duplicate key {column:?}");
    }
    prop_assert!(!spec.set.is_empty());
    for (column, expression) in &spec.set {
        prop_assert!(!column.is_empty() && !expression.trim().is_empty());
        prop_assert!(!key.contains(column), "key column {column:?} in set");
    }
    if let Some(filter) = &spec.filter {
        prop_assert!(!filter.trim().is_empty());
    }
    prop_assert!((1..=MAX_BATCH_SIZE).contains(&spec.batch_size));
    prop_assert!((1..=MAX_PARTITIONS).contains(&spec.partitions));
    prop_assert!((1..=100).contains(&spec.max_attempts));
    prop_assert!(spec.rows_per_second != Some(0));
    for timeout in [spec.lock_timeout, spec.statement_timeout]
        .into_iter()
        .flatten()
    {
        prop_assert!(timeout >= Duration::from_millis(1) && timeout <= Duration::from_secs(86_400));
        prop_assert_eq!(timeout.subsec_nanos() % 1_000_000, 0);
    }
    prop_assert!(spec.pause.is_none_or(|p| p <= Duration::from_secs(3_600)));
    prop_assert!(spec.validate("again").is_ok());
    // What the daemon stores (JSON) and what an author writes (TOML) read back the same.
    let json = serde_json::to_string(spec).unwrap();
    prop_assert_eq!(&JobSpec::from_json(&json, "json").unwrap(), spec);
    let toml_text = toml::to_string(spec).unwrap();
    let again = JobSpec::from_toml(&toml_text, "toml");
    prop_assert!(again.is_ok(), "{toml_text}\n{again:?}");
    prop_assert_eq!(&again.unwrap(), spec);
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(text in prop_oneof![any::<String>(), "\\PC{0,300}"]) {
        if let Ok(spec) = JobSpec::from_toml(&text, "fuzz") {
            check_invariants(&spec)?;
        }
        if let Ok(spec) = JobSpec::from_json(&text, "fuzz") {
            check_invariants(&spec)?;
        }
    }

    #[test]
    fn mutated_jobs_never_panic_and_accepted_ones_are_valid(text in mutated_toml()) {
        if let Ok(spec) = JobSpec::from_toml(&text, "fuzz") {
            check_invariants(&spec)?;
            // The same document as JSON (what the API takes) is accepted the same.
            let json = serde_json::to_string(&spec).unwrap();
            prop_assert_eq!(JobSpec::from_json(&json, "fuzz").unwrap(), spec);
        }
    }

    #[test]
    fn mutated_jobs_as_json_never_panic(text in mutated_toml()) {
        // TOML that parses as a document but maybe not as a job, re-encoded as JSON: the
        // API's path sees the same shapes with JSON's types.
        if let Ok(document) = toml::from_str::<toml::Table>(&text) {
            let json = serde_json::to_string(&document).unwrap();
            if let Ok(spec) = JobSpec::from_json(&json, "fuzz") {
                check_invariants(&spec)?;
            }
        }
    }
}

/// A valid job with its numbers and durations drawn around their bounds.
fn bounded_fields() -> impl Strategy<Value = (u64, u64, u64, u64, String, String)> {
    let around = |limit: u64| {
        prop_oneof![
            0..=3u64,
            (limit - 2)..=(limit + 2),
            any::<u32>().prop_map(u64::from)
        ]
    };
    let duration = prop_oneof![
        Just("0s".to_string()),
        Just("1ms".to_string()),
        Just("1500us".to_string()),
        Just("24h".to_string()),
        Just("24h 1ms".to_string()),
        Just("1h".to_string()),
        Just("61min".to_string()),
        (0u64..100_000).prop_map(|ms| format!("{ms}ms")),
    ];
    (
        around(u64::from(MAX_BATCH_SIZE)),
        around(u64::from(MAX_PARTITIONS)),
        around(100),
        around(u64::from(u32::MAX)),
        duration.clone(),
        duration,
    )
}

fn in_range(value: u64, low: u64, high: u64) -> bool {
    (low..=high).contains(&value)
}

proptest! {
    #![proptest_config(config())]

    /// Acceptance matches the documented bounds exactly, no more and no less.
    #[test]
    fn numbers_and_durations_are_accepted_exactly_within_their_bounds(
        (batch, partitions, attempts, rate, timeout, pause) in bounded_fields()
    ) {
        let text = format!(
            "name = \"b\"\ntable = \"t\"\nkey = \"id\"\nbatch_size = {batch}\npartitions = {partitions}\n\
             max_attempts = {attempts}\nrows_per_second = {rate}\nlock_timeout = \"{timeout}\"\n\
             pause = \"{pause}\"\n[set]\na = \"1\"\n"
        );
        let timeout_ok = humantime::parse_duration(&timeout).is_ok_and(|d| {
            d >= Duration::from_millis(1)
                && d <= Duration::from_secs(86_400)
                && d.subsec_nanos() % 1_000_000 == 0
        });
        let pause_ok = humantime::parse_duration(&pause).is_ok_and(|d| d <= Duration::from_secs(3_600));
        let expected = in_range(batch, 1, u64::from(MAX_BATCH_SIZE))
            && in_range(partitions, 1, u64::from(MAX_PARTITIONS))
            && in_range(attempts, 1, 100)
            && in_range(rate, 1, u64::from(u32::MAX))
            && timeout_ok
            && pause_ok;
        let parsed = JobSpec::from_toml(&text, "fuzz");
        prop_assert_eq!(parsed.is_ok(), expected, "{}\n{:?}", text, parsed);
        if let Ok(spec) = parsed {
            check_invariants(&spec)?;
        }
    }
}

#[test]
fn the_unmutated_document_is_accepted() {
    // The fuzzer starts from a valid job: if this ever fails, the properties above test
    // nothing but rejections.
    let mut text: String = VALID.iter().map(|(f, v)| format!("{f} = {v}\n")).collect();
    text += "[set]\nsearch = \"to_tsvector(name)\"\n";
    let spec = JobSpec::from_toml(&text, "fuzz").unwrap();
    assert_eq!(spec.partitions, 4);
}
