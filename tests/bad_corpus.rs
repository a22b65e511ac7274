//! The bad-input corpus (tests/corpus/bad_jobs, see its README) fed to `check`, `run` and
//! `POST /api/v1/jobs`: every document is refused with a message saying what is wrong, nothing
//! in the database changes, and nothing panics.

mod common;

use std::path::{Path, PathBuf};

use common::api::{assert_no_panic, jobs_dir, ADMIN, TOKENS};
use common::{text, Daemon, TestDb};

const SETUP: &str = "
    CREATE TABLE users (id bigint PRIMARY KEY, customer_email text, email text, note text, score int,
                        total int GENERATED ALWAYS AS (id * 2) STORED,
                        created_at timestamptz NOT NULL DEFAULT '2020-01-01', UNIQUE (id, created_at));
    INSERT INTO users (id, customer_email) SELECT i, 'u' || i || '@example.com' FROM generate_series(1, 50) i;";

const HEAD: &str = "table = \"public.users\"\nkey = \"id\"\n";

struct Case {
    name: String,
    path: PathBuf,
    expect: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad_jobs")
}

/// The committed cases, then three 10 MB documents written into `dir`.
fn cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let head = String::from_utf8_lossy(&bytes);
        let mut lines = head.lines();
        let what = lines.next().unwrap_or_default();
        assert!(what.starts_with("# "), "{}: no description", path.display());
        let expect = lines
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", path.display()))
            .to_string();
        cases.push(Case {
            name: path.file_stem().unwrap().to_string_lossy().into(),
            path,
            expect,
        });
    }
    let ten_mb = 10 * 1024 * 1024;
    let generated = [
        (
            "huge_name",
            format!(
                "name = \"{}\"\n{HEAD}[set]\nemail = \"customer_email\"\n",
                "a".repeat(ten_mb)
            ),
            "not a valid job name",
        ),
        (
            "huge_expression",
            format!(
                "name = \"huge\"\n{HEAD}[set]\nemail = \"customer_email{}\"\n",
                " || 'x'".repeat(ten_mb / 7 + 1)
            ),
            "set.email",
        ),
        (
            "huge_comment_then_unknown_field",
            format!(
                "name = \"huge\"\n{HEAD}{}colour = \"blue\"\n[set]\nemail = \"customer_email\"\n",
                format!("# {}\n", "z".repeat(97)).repeat(ten_mb / 100 + 1)
            ),
            "colour",
        ),
    ];
    for (name, body, expect) in generated {
        assert!(body.len() >= ten_mb, "{name} is only {} bytes", body.len());
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, body).unwrap();
        cases.push(Case {
            name: name.into(),
            path,
            expect: expect.into(),
        });
    }
    cases
}

#[tokio::test]
async fn every_corpus_document_is_refused_by_check_run_and_the_api_and_changes_nothing() {
    let db = TestDb::new().await;
    db.exec(SETUP).await;
    let cases = cases(&db.dir);
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let before = db.fingerprint().await;
    let mut failures = Vec::new();

    for case in &cases {
        for command in ["check", "run"] {
            let output = db.cli(&[command, case.path.to_str().unwrap()]);
            // The file's name must not be what satisfies the expectation.
            let stderr = String::from_utf8_lossy(&output.stderr)
                .replace(case.path.to_str().unwrap(), "<file>");
            if output.status.code() != Some(2)
                || !stderr.contains(&case.expect)
                || stderr.contains("panicked")
            {
                let mut report = text(&output);
                report.truncate(2_000);
                failures.push(format!(
                    "{} ({command}): wanted exit 2 and {:?}\n{report}",
                    case.name, case.expect
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(
        db.fingerprint().await,
        before,
        "the CLI changed the database"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'backfilld'")
            .await,
        0,
        "bad input must not even create backfilld's schema"
    );

    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let before = db.fingerprint().await;
    for case in &cases {
        let body = std::fs::read(&case.path).unwrap();
        let big = body.len() > backfilld::api::MAX_BODY_BYTES;
        let (status, answer) = post_toml(&daemon.base, body);
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        let error = answer["error"].as_str().unwrap_or_default();
        let (wanted_status, wanted_words) = if big {
            (413, "too large")
        } else {
            (400, case.expect.as_str())
        };
        if status != wanted_status || !error.contains(wanted_words) {
            failures.push(format!(
                "{} (POST): wanted {wanted_status} and {wanted_words:?}, got {status} {}",
                case.name,
                &error[..error.len().min(2_000)]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(
        db.fingerprint().await,
        before,
        "the API changed the database"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM backfilld.jobs").await,
        0
    );
    assert_no_panic(&daemon.log());
    assert_eq!(common::http_status(&daemon.base, "/healthz"), Some(200));
}

/// POSTs `body` as TOML over a raw connection, reading the answer while the body is still being
/// written, as curl does: for a body over the limit the daemon answers 413 and closes without
/// reading the rest, which a client that only reads after writing sees as a broken pipe.
fn post_toml(base: &str, body: Vec<u8>) -> (u16, String) {
    use std::io::{Read, Write};
    let address = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/toml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(&body));
    });
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    sending.join().unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
