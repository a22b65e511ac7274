//! The job format's own rules, without a database.

use super::*;

const MINIMAL: &str = r#"
    name = "products_search"
    table = "public.products"
    key = "id"
    [set]
    search = "to_tsvector(name)"
"#;
/// `MINIMAL` in two halves, to put fields before its `[set]` table.
const MINIMAL_HEAD: &str =
    "name = \"products_search\"\ntable = \"public.products\"\nkey = \"id\"\n";
const MINIMAL_SET: &str = "[set]\nsearch = \"to_tsvector(name)\"\n";

#[test]
fn minimal_spec_gets_defaults() {
    let spec = JobSpec::from_toml(MINIMAL, "t.toml").unwrap();
    assert_eq!(spec.batch_size, 1000);
    assert_eq!(spec.partitions, 1);
    assert_eq!(spec.max_attempts, 5);
    assert_eq!(spec.key.0, vec!["id"]);
    assert_eq!(spec.synchronous_commit, SynchronousCommit::Off);
}

#[test]
fn synchronous_commit_takes_postgresql_values_and_names_itself_when_wrong() {
    for value in ["off", "local", "remote_write", "on", "remote_apply"] {
        let text = format!("{MINIMAL_HEAD}synchronous_commit = \"{value}\"\n{MINIMAL_SET}");
        let spec = JobSpec::from_toml(&text, "t.toml").unwrap();
        assert_eq!(spec.synchronous_commit.as_setting(), value);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_json(&json, "api").unwrap(), spec);
    }
    let json = r#"{"name": "a", "table": "t", "key": "id", "set": {"a": "1"},
                   "synchronous_commit": "sometimes"}"#;
    let error = JobSpec::from_json(json, "api").unwrap_err().to_string();
    assert!(
        error.contains("synchronous_commit \"sometimes\" is not one of off, local"),
        "{error}"
    );
    let json = r#"{"name": "a", "table": "t", "key": "id", "set": {"a": "1"},
                   "synchronous_commit": true}"#;
    let error = JobSpec::from_json(json, "api").unwrap_err().to_string();
    assert!(
        error.contains("synchronous_commit must be a string"),
        "{error}"
    );
}

#[test]
fn composite_key_and_durations() {
    let text = r#"
        name = "c"
        table = "t"
        key = ["tenant_id", "id"]
        pause = "50ms"
        lock_timeout = "1s"
        [set]
        a = "b"
    "#;
    let spec = JobSpec::from_toml(text, "t.toml").unwrap();
    assert_eq!(spec.key.0, vec!["tenant_id", "id"]);
    assert_eq!(spec.pause, Some(Duration::from_millis(50)));
    assert_eq!(spec.lock_timeout, Some(Duration::from_secs(1)));
}

#[test]
fn json_round_trip_is_equal() {
    let spec = JobSpec::from_toml(MINIMAL, "t.toml").unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(JobSpec::from_json(&json, "api").unwrap(), spec);
}

#[test]
fn duty_cycle_is_a_fraction_with_two_decimals_at_most() {
    let with = |value: &str| MINIMAL.replace("[set]", &format!("duty_cycle = {value}\n[set]"));
    let spec = JobSpec::from_toml(&with("0.5"), "t.toml").unwrap();
    assert_eq!(spec.duty_cycle.map(|d| d.percent()), Some(50));
    assert_eq!(spec.tunables().duty_cycle, spec.duty_cycle);
    // Stored as JSON and read back, it is the same number; without it, nothing is written.
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["duty_cycle"], serde_json::json!(0.5));
    assert_eq!(JobSpec::from_json(&json.to_string(), "api").unwrap(), spec);
    let plain = serde_json::to_value(JobSpec::from_toml(MINIMAL, "t.toml").unwrap()).unwrap();
    assert!(plain.get("duty_cycle").is_none(), "{plain}");
    assert_eq!(
        JobSpec::from_toml(&with("1"), "t.toml")
            .unwrap()
            .duty_cycle
            .map(|d| d.percent()),
        Some(100)
    );
    for bad in ["0", "1.5", "-0.5", "0.333", "\"half\""] {
        let err = JobSpec::from_toml(&with(bad), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("duty_cycle"), "{bad}: {err}");
    }
    let err = JobSpec::from_toml(&with("0"), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("duty_cycle must be more than 0 and at most 1"),
        "{err}"
    );
    let body = json.to_string().replace("0.5", "0");
    let err = JobSpec::from_json(&body, "api").unwrap_err().to_string();
    assert!(
        err.contains("duty_cycle must be more than 0 and at most 1"),
        "{err}"
    );
}

#[test]
fn rejects_unknown_field_naming_it() {
    let text = format!("{MINIMAL}\nbogus = 1");
    let text = text.replace("[set]", "bogus_field = 1\n[set]");
    let err = JobSpec::from_toml(&text, "t.toml").unwrap_err().to_string();
    assert!(err.contains("bogus_field"), "{err}");
}

#[test]
fn rejects_bad_names() {
    for name in ["", "Upper", "-lead", "has space", "ünï", &"x".repeat(64)] {
        assert!(!is_valid_name(name), "{name:?}");
    }
    for name in ["a", "0abc", "products_search", "a-b_c", &"x".repeat(63)] {
        assert!(is_valid_name(name), "{name:?}");
    }
}

#[test]
fn rejects_missing_set_and_key_in_set() {
    let no_set = "name = \"a\"\ntable = \"t\"\nkey = \"id\"\n";
    let err = JobSpec::from_toml(no_set, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("set"), "{err}");
    let key_in_set = "name = \"a\"\ntable = \"t\"\nkey = \"id\"\n[set]\nid = \"id + 1\"\n";
    let err = JobSpec::from_toml(key_in_set, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("key column"), "{err}");
}

#[test]
fn rejects_out_of_range_numbers() {
    for (field, value) in [
        ("batch_size", "0"),
        ("batch_size", "-5"),
        ("partitions", "0"),
        ("partitions", "100000"),
        ("rows_per_second", "0"),
        ("max_attempts", "0"),
    ] {
        let text = MINIMAL.replace("[set]", &format!("{field} = {value}\n[set]"));
        let err = JobSpec::from_toml(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains(field), "{field}={value}: {err}");
    }
}

#[test]
fn adaptive_bounds_and_windows() {
    let with = |extra: &str| {
        JobSpec::from_toml(
            &MINIMAL.replace("[set]", &format!("{extra}\n[set]")),
            "t.toml",
        )
    };
    let err = with("target_batch_time = \"200ms\"\nmin_batch_size = 500\nmax_batch_size = 100")
        .unwrap_err()
        .to_string();
    assert!(err.contains("min_batch_size"), "{err}");
    let spec = with("target_batch_time = \"200ms\"").unwrap();
    assert_eq!(spec.batch_size_bounds(), (10, 100_000));
    for bad in [
        "22-06",
        "25:00-06:00",
        "22:00-22:00",
        "22:00-06:00 Europe/Berlin extra",
        "x",
    ] {
        let err = with(&format!("window = \"{bad}\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("window"), "{bad}: {err}");
    }
    let window = Window::parse("22:00-06:00 Europe/Berlin").unwrap();
    assert!(window.contains(23 * 60) && window.contains(0) && !window.contains(12 * 60));
    let day = Window::parse("09:00-17:30").unwrap();
    assert_eq!(day.time_zone, "UTC");
    assert!(day.contains(9 * 60) && !day.contains(17 * 60 + 30));
}

#[test]
fn nul_characters_and_huge_values_get_short_clear_messages() {
    let text = MINIMAL.replace("to_tsvector(name)", "to_tsvector(name)\\u0000");
    let err = JobSpec::from_toml(&text, "t.toml").unwrap_err().to_string();
    assert!(err.contains("set") && err.contains("NUL"), "{err}");
    let huge = MINIMAL.replace("products_search", &"X".repeat(1_000_000));
    let err = JobSpec::from_toml(&huge, "t.toml").unwrap_err().to_string();
    assert!(err.len() < 400, "{} bytes", err.len());
    assert!(err.contains("1000000 bytes"), "{err}");
}

#[test]
fn rejects_table_with_too_many_dots() {
    let text = MINIMAL.replace("public.products", "a.b.c");
    let err = JobSpec::from_toml(&text, "t.toml").unwrap_err().to_string();
    assert!(err.contains("[schema.]table"), "{err}");
}

#[test]
fn databases_default_to_none_and_refuse_repeats_and_blanks() {
    let spec = JobSpec::from_toml(MINIMAL, "t.toml").unwrap();
    assert!(spec.databases.is_empty());
    // Absent from the stored JSON, so a single-database job's definition reads as before.
    assert!(!serde_json::to_string(&spec).unwrap().contains("databases"));
    let text = format!("{MINIMAL_HEAD}databases = [\"shard-*\", \"eu\"]\n{MINIMAL_SET}");
    let spec = JobSpec::from_toml(&text, "t.toml").unwrap();
    assert_eq!(spec.databases, ["shard-*", "eu"]);
    for (list, words) in [
        ("[\"a\", \"a\"]", "listed twice"),
        ("[\" \"]", "empty name"),
    ] {
        let text = format!("{MINIMAL_HEAD}databases = {list}\n{MINIMAL_SET}");
        let err = JobSpec::from_toml(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("databases") && err.contains(words), "{err}");
    }
}
