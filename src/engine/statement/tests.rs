//! The batch statement's text, checked part by part.

use super::*;

fn sql(key: &[(&str, &str)], filter: Option<&str>) -> BatchSql {
    BatchSql::new(
        "public",
        "my \"table\"",
        key.iter()
            .map(|(n, t)| KeyColumn {
                name: n.to_string(),
                type_sql: t.to_string(),
            })
            .collect(),
        [("hits".to_string(), "hits + 1".to_string())],
        filter.map(str::to_string),
    )
}

#[test]
fn quotes_identifiers_and_numbers_parameters() {
    let s = sql(&[("id", "bigint")], Some("hits < 10 -- comment")).batch(Lower::Cursor, true, None);
    assert!(s.contains("\"public\".\"my \"\"table\"\"\""), "{s}");
    assert!(
        s.contains("\"id\" > $1::text::bigint AND \"id\" <= $2::text::bigint"),
        "{s}"
    );
    assert!(s.contains("LIMIT $3"), "{s}");
    // The author's comment ends at its own line and cannot hide the rest.
    assert!(s.contains("hits < 10 -- comment\n)"), "{s}");
}

#[test]
fn updated_rows_are_counted_in_the_walk_not_returned_by_the_update() {
    for key in [
        &[("id", "bigint")][..],
        &[("tenant_id", "integer"), ("id", "uuid")],
    ] {
        let s = sql(key, Some("hits < 10")).batch(Lower::Cursor, false, None);
        assert!(s.contains(&format!("(\nhits < 10\n) AS {MATCHES}")), "{s}");
        assert!(
            s.contains(&format!("count(*) FILTER (WHERE {MATCHES})")),
            "{s}"
        );
        assert!(!s.contains("RETURNING"), "{s}");
        // Without `where`, every walked row is updated.
        let s = sql(key, None).batch(Lower::Cursor, false, None);
        assert!(!s.contains(MATCHES), "{s}");
    }
}

#[test]
fn composite_keys_use_row_comparison() {
    let s =
        sql(&[("tenant_id", "integer"), ("id", "uuid")], None).batch(Lower::Cursor, false, None);
    assert!(
        s.contains("(\"tenant_id\", \"id\") > ($1::text::integer, $2::text::uuid)"),
        "{s}"
    );
    assert!(s.contains("LIMIT $3"), "{s}");
    let s =
        sql(&[("tenant_id", "integer"), ("id", "uuid")], None).batch(Lower::Partition, true, None);
    assert!(
        s.contains("\"tenant_id\" > $1::text::integer AND \"tenant_id\" <= $2::text::integer"),
        "{s}"
    );
}

#[test]
fn unbounded_has_only_the_limit() {
    let s = sql(&[("id", "bigint")], None).batch(Lower::Unbounded, false, None);
    assert!(s.contains("LIMIT $1"), "{s}");
    assert!(!s.contains("$2"), "{s}");
}
