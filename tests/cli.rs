//! The command line as on-call meets it: `events`, `tune`, `status --watch` and `completions`
//! against a real `serve` process; client commands finding the daemon and a token through
//! flags, the environment and the config file; what a refusal says; every flag described; data
//! (cursors, pause reasons) printed with its control characters escaped.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use common::api::{self, Api, TOKENS};
use common::{eventually, hits_table, job_toml, text, Daemon, TestDb};
use serde_json::{json, Value};

/// A config file for the client commands: the daemon's address as `listen`, and the tokens.
fn client_config(db: &TestDb, daemon: &Daemon, tokens: &str) -> std::path::PathBuf {
    let listen = daemon.base.strip_prefix("http://").unwrap();
    let path = db.dir.join("client.toml");
    std::fs::write(&path, format!("listen = \"{listen}\"\n{tokens}")).unwrap();
    path
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A daemon with the three role tokens, running a slow job `slow` over 4,000 rows of `t`.
async fn daemon_with_a_running_job(db: &TestDb) -> Daemon {
    hits_table(&db.pool, "t", "bigint", "i", 4_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(db));
    let admin = Api::new(&daemon, Some(api::ADMIN));
    admin
        .submit(api::hits_job("slow", json!({"rows_per_second": 200})))
        .await;
    admin
        .wait_state("slow", "running", Duration::from_secs(30))
        .await;
    daemon
}

#[tokio::test]
async fn events_and_tune_speak_to_the_daemon_with_the_config_files_url_and_tokens() {
    let db = TestDb::new().await;
    let daemon = daemon_with_a_running_job(&db).await;
    let config = client_config(&db, &daemon, TOKENS);
    let config = config.to_str().unwrap();

    // No --url, no --token: both from the config (the operate token for `tune`).
    let output = db.cli(&[
        "tune",
        "slow",
        "--rows-per-second",
        "1500",
        "--pause",
        "5ms",
        "--duty-cycle",
        "0.5",
        "--config",
        config,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        stdout(&output).trim(),
        "slow: batch_size 100, rows_per_second 1,500, pause 5ms, duty_cycle 0.5"
    );
    let job = Api::new(&daemon, Some(api::ADMIN)).job("slow").await;
    assert_eq!(job["spec"]["rows_per_second"], json!(1500));
    assert_eq!(job["spec"]["pause"], json!("5ms"));
    assert_eq!(job["duty_cycle"], json!(0.5));

    let output = db.cli(&[
        "tune",
        "slow",
        "--rows-per-second",
        "none",
        "--duty-cycle",
        "none",
        "--config",
        config,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        stdout(&output).contains("rows_per_second none, pause 5ms, duty_cycle 1"),
        "{}",
        text(&output)
    );
    let output = db.cli(&["tune", "slow", "--batch-size", "250", "--config", config]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        stdout(&output).contains("batch_size 250"),
        "{}",
        text(&output)
    );

    // The event log: a readable table by default, the API's JSON with --json.
    let output = db.cli(&["events", "slow", "--config", config]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("AT (UTC)"), "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("admin") && l.contains("submitted")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("oncall") && l.contains("rows_per_second")),
        "{table}"
    );
    let output = db.cli(&["events", "slow", "--json", "--config", config]);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = json["events"].as_array().unwrap();
    assert_eq!(events.len(), lines.len() - 1, "{table}");

    // Bad tune input is refused before any request (exit 2, naming the flag), and no flag at
    // all is a usage error; neither changes the job.
    let before = Api::new(&daemon, Some(api::ADMIN))
        .events("slow")
        .await
        .len();
    let output = db.cli(&[
        "tune",
        "slow",
        "--rows-per-second",
        "fast",
        "--config",
        config,
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        stderr(&output).contains("--rows-per-second"),
        "{}",
        text(&output)
    );
    let output = db.cli(&["tune", "slow", "--pause", "soon", "--config", config]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(stderr(&output).contains("--pause"), "{}", text(&output));
    let output = db.cli(&["tune", "slow", "--config", config]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        stderr(&output).contains("--rows-per-second"),
        "{}",
        text(&output)
    );
    let after = Api::new(&daemon, Some(api::ADMIN))
        .events("slow")
        .await
        .len();
    assert_eq!(before, after);

    // An unknown job: the daemon's 404, exit 1.
    let output = db.cli(&["events", "nope", "--config", config]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        stderr(&output).contains("no job named"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn client_settings_follow_flags_then_environment_then_config_and_refusals_say_why() {
    let db = TestDb::new().await;
    let daemon = daemon_with_a_running_job(&db).await;
    // A config naming a dead address and a token read from the environment.
    let config = db.dir.join("elsewhere.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\n[[tokens]]\nname = \"env\"\nrole = \"read\"\ntoken_env = \"SOME_TOKEN_VAR\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = common::command(&db.url, args);
        command
            .env_remove("BACKFILLD_URL")
            .env_remove("BACKFILLD_TOKEN");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    // The config's address is dead: exit 2, saying where it tried.
    let output = run(&["status", "--config", config], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(stderr(&output).contains("127.0.0.1:1"), "{}", text(&output));
    // The environment's URL wins over the config; the config's token_env supplies the token.
    let env = [
        ("BACKFILLD_URL", daemon.base.as_str()),
        ("SOME_TOKEN_VAR", "read-token-123"),
    ];
    let output = run(&["status", "--config", config], &env);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(stdout(&output).contains("slow"), "{}", text(&output));
    // The flag wins over the environment.
    let output = run(
        &["status", "--config", config, "--url", "http://127.0.0.1:1"],
        &env,
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));

    // No token at all: the 401 says how to give one.
    let output = run(&["status", "--url", &daemon.base], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let message = stderr(&output);
    assert!(
        message.contains("401")
            && message.contains("--token")
            && message.contains("BACKFILLD_TOKEN"),
        "{message}"
    );
    // Too small a role: the 403 names the role needed. The config has only a read token
    // (from the environment), which the client sends for want of an admin one.
    let job = db.write_job(
        "j.toml",
        &job_toml("other", "t", "\"id\"", "hits = \"hits + 1\"", ""),
    );
    let output = run(&["submit", job.to_str().unwrap(), "--config", config], &env);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(stderr(&output).contains("admin role"), "{}", text(&output));
    // A URL without a scheme is refused before any request.
    let output = run(&["status", "--url", "127.0.0.1:9780"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        stderr(&output).contains("add http:// or https://"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn status_watch_prints_plain_refreshes_without_a_terminal_and_ends_cleanly_on_ctrl_c() {
    let db = TestDb::new().await;
    let daemon = daemon_with_a_running_job(&db).await;
    let mut child = common::command(
        &db.url,
        &[
            "status",
            "--watch",
            "--interval",
            "200ms",
            "--url",
            &daemon.base,
            "--token",
            "read-token-123",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut refreshes = 0;
    let mut seen = Vec::new();
    while refreshes < 3 {
        let line = lines.next().expect("watch output").unwrap();
        assert!(
            !line.contains('\x1b'),
            "no terminal control without a TTY: {line:?}"
        );
        if line.starts_with("--- ") {
            refreshes += 1;
        }
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l.starts_with("slow ")), "{seen:#?}");
    common::signal(child.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "watch did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn completions_print_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = common::cli_with_url("postgres://unused", &["completions", shell]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let script = stdout(&output);
        for word in ["backfilld", "events", "tune", "rows-per-second"] {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
        // The script is valid for its shell, where the shell is installed.
        if let Some(path) = common::on_path(shell) {
            let file = std::env::temp_dir().join(format!("backfilld-completion.{shell}"));
            std::fs::write(&file, &script).unwrap();
            let check = std::process::Command::new(path)
                .arg("-n")
                .arg(&file)
                .output()
                .unwrap();
            assert!(check.status.success(), "{shell}: {}", text(&check));
        }
    }
    let output = common::cli_with_url("postgres://unused", &["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn every_argument_is_described_and_run_check_verify_list_exit_codes_and_an_example() {
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if ["help", "version"].contains(&id) {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                missing.push(format!("{path} {} (no description)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(
        &backfilld::commands::cli::Cli::command(),
        "backfilld",
        &mut missing,
    );
    assert!(missing.is_empty(), "undescribed: {missing:#?}");
    for command in ["run", "check", "verify"] {
        let output = common::cli_with_url("postgres://unused", &[command, "--help"]);
        let help = stdout(&output);
        assert!(
            help.contains("Exit codes:") && help.contains("Example:"),
            "{command} --help:\n{help}"
        );
    }
}

/// The last progress line of a run's log (stderr without a TTY).
fn last_progress_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains(" rows/s · "))
        .unwrap_or_else(|| panic!("no progress line in\n{log}"))
        .to_string()
}

#[tokio::test]
async fn run_without_a_terminal_ends_with_a_summary_line_counting_this_runs_rows() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 6_000).await;
    let path = db.write_job(
        "hits.toml",
        &job_toml(
            "hits",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "rows_per_second = 3000\nbatch_size = 100",
        ),
    );
    let path = path.to_str().unwrap();
    // The first run is interrupted while a batch waits on a row the test holds, so it cannot
    // finish first however slow the machine is; the batch completes once the row is let go.
    let held = common::hold_row(&db, 1_550).await;
    let first = common::spawn(&db.url, &["run", path]);
    common::wait_for_a_lock_waiter(&db, "the first run's batch waiting on the held row").await;
    common::signal(first.id(), "INT");
    held.commit().await.unwrap();
    let output = first.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", text(&output));
    let line = last_progress_line(&stderr(&output));
    assert!(line.contains("interrupted after"), "{line}");
    assert!(!line.contains("ETA"), "{line}");
    let done_before = common::checkpointed(&db.pool).await;
    assert!(done_before < 6_000, "the first run finished: {line}");

    // The resumed run takes under 5 s: its only progress line is the summary.
    let started = Instant::now();
    let output = db.cli(&["run", path]);
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let line = last_progress_line(&stderr(&output));
    assert!(
        line.contains("6,000 / 6,000 rows (100%) · 6,000 updated · ")
            && line.contains("completed in"),
        "{line}"
    );
    // The rate is this run's rows over this run's time, within the limit: counting the first
    // run's rows too would put it near 6,000 / elapsed.
    let rate: f64 = line
        .split(" rows/s")
        .next()
        .and_then(|before| before.rsplit(" · ").next())
        .map(|r| r.replace(',', "").parse().unwrap())
        .unwrap_or_else(|| panic!("{line}"));
    let this_run = (6_000 - done_before) as f64;
    assert!(
        rate <= 3_000.0 * 1.2 && rate >= this_run / elapsed.as_secs_f64() * 0.8,
        "rate {rate} in {line} ({this_run} rows in {elapsed:?})"
    );
    assert!(
        stdout(&output).contains("completed — 6,000 rows scanned, 6,000 updated"),
        "{}",
        text(&output)
    );
    common::assert_each_hit_once(&db.pool, "t", 6_000).await;
}

#[tokio::test]
async fn status_and_events_show_control_characters_in_data_escaped() {
    let db = TestDb::new().await;
    // Keys (so cursors) that would retitle the terminal window and ring its bell.
    hits_table(
        &db.pool,
        "t",
        "text",
        "E'\\x1b]0;pwned\\x07' || lpad(i::text, 5, '0')",
        2_000,
    )
    .await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &api::jobs_dir(&db));
    let admin = Api::new(&daemon, Some(api::ADMIN));
    admin
        .submit(api::hits_job(
            "odd",
            json!({"rows_per_second": 50, "batch_size": 10}),
        ))
        .await;
    eventually(Duration::from_secs(30), "a cursor", || async {
        let job = admin.job("odd").await;
        job["partitions"][0]["cursor"].is_array().then_some(())
    })
    .await;
    let (status, body) = admin
        .post(
            "/api/v1/jobs/odd/pause",
            Some(json!({"reason": "\u{1b}[2J\u{1b}[Hall clear\u{9b}31m"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let config = client_config(&db, &daemon, TOKENS);
    let config = config.to_str().unwrap();
    for (args, shown) in [
        (["status", "odd"], "\\u{1b}]0;pwned\\u{7}"),
        (["events", "odd"], "\\u{1b}[2J\\u{1b}[Hall clear\\u{9b}31m"),
    ] {
        let output = db.cli(&[args[0], args[1], "--config", config]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let printed = stdout(&output);
        assert!(
            !printed.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?} printed a control character: {printed:?}"
        );
        assert!(printed.contains(shown), "{args:?}: {printed}");
    }
}
