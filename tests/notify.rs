//! `[[notify]]`: a real HTTP receiver in the test gets exactly one JSON POST per event while two
//! `serve` replicas share the database, and a receiver that is down still gets each event once
//! it listens, with the failures counted and logged without the URL's secret. A receiver that
//! never answers holds up no other, and editing an endpoint's `events` keeps its backlog.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use common::api::{hits_job, jobs_dir, Api, ADMIN, TOKENS};
use common::{eventually, free_port, hits_table, Daemon, TestDb};

/// The secret parts of the webhook URL, as Slack's carry one in the path; none may be logged.
const SECRET_PATH: &str = "/services/T000/B000/XyZsEcReT";
const SECRET_QUERY: &str = "token=qUeRySeCrEt";

/// What the receiver got.
type Received = Arc<Mutex<Vec<Value>>>;

/// An HTTP receiver on `port` that records every JSON body POSTed to the webhook's path.
async fn receiver(port: u16) -> (Received, tokio::task::JoinHandle<()>) {
    let received = Received::default();
    let app = Router::new()
        .route(
            SECRET_PATH,
            post(
                |State(received): State<Received>, Json(body): Json<Value>| async move {
                    received.lock().unwrap().push(body);
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (received, server)
}

/// A receiver on `port` that accepts every connection and never answers (a hung server, or a
/// firewall that lets the handshake through); returns how many connections it holds.
async fn silent(port: u16) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    connections
}

/// One `[[notify]]` entry for the receiver on `port`.
fn endpoint(port: u16, events: &str) -> String {
    format!(
        "\n[[notify]]\nurl = \"http://127.0.0.1:{port}{SECRET_PATH}?{SECRET_QUERY}\"\nevents = {events}\n"
    )
}

fn config(port: u16, events: &str) -> String {
    format!("{TOKENS}{}", endpoint(port, events))
}

/// A job that fails at its first batch, with markup in its error.
fn broken(name: &str) -> Value {
    hits_job(
        name,
        json!({"set": {"hits": "(CASE WHEN id > 0 THEN '<b>boom</b>' ELSE '1' END)::int"}}),
    )
}

/// A job slow enough to pause and cancel while it runs.
async fn running_slowly(api: &Api, name: &str) {
    api.submit(hits_job(
        name,
        json!({"rows_per_second": 50, "batch_size": 10}),
    ))
    .await;
    api.wait_state(name, "running", Duration::from_secs(10))
        .await;
}

async fn change(api: &Api, name: &str, verb: &str) {
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{name}/{verb}"), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{verb} {name}: {body}");
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(e, j)| (e.to_string(), j.to_string()))
        .collect()
}

/// (event, job) of each body received, sorted, and each body's event id.
fn summary(received: &Received) -> (Vec<(String, String)>, Vec<i64>) {
    let bodies = received.lock().unwrap().clone();
    let mut pairs: Vec<(String, String)> = bodies
        .iter()
        .map(|b| {
            (
                b["event"].as_str().unwrap().to_string(),
                b["job"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pairs.sort();
    let ids = bodies
        .iter()
        .map(|b| b["event_id"].as_i64().unwrap())
        .collect();
    (pairs, ids)
}

fn assert_no_secret(log: &str) {
    assert!(
        !log.contains("XyZsEcReT") && !log.contains("qUeRySeCrEt"),
        "a webhook secret reached the log:\n{log}"
    );
}

#[tokio::test]
async fn two_replicas_send_each_event_exactly_once() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 3000).await;
    let port = free_port();
    let (received, _server) = receiver(port).await;
    let config = config(
        port,
        r#"["completed", "failed", "paused", "cancelled", "throttled"]"#,
    );
    let jobs = jobs_dir(&db);
    let first = Daemon::start(&db.url, &db.dir, &config, &jobs);
    let second = Daemon::start(&db.url, &db.dir, &config, &jobs);
    let api = Api::new(&first, Some(ADMIN));

    // Four partitions, so both replicas work on it and either may complete it.
    api.submit(hits_job("done", json!({"partitions": 4}))).await;
    api.submit(broken("broken")).await;
    api.submit(hits_job(
        "held",
        json!({"throttle_query": "SELECT true", "partitions": 2}),
    ))
    .await;
    api.submit(hits_job(
        "stopped",
        json!({"rows_per_second": 50, "batch_size": 10}),
    ))
    .await;
    api.wait_state("stopped", "running", Duration::from_secs(10))
        .await;
    let (status, body) = api
        .post(
            "/api/v1/jobs/stopped/pause",
            Some(json!({"reason": "checking"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.post("/api/v1/jobs/stopped/cancel", None).await;
    assert_eq!(status, 200, "{body}");
    api.wait_state("done", "completed", Duration::from_secs(30))
        .await;
    api.wait_state("broken", "failed", Duration::from_secs(30))
        .await;

    let expected: Vec<(String, String)> = [
        ("cancelled", "stopped"),
        ("completed", "done"),
        ("failed", "broken"),
        ("paused", "stopped"),
        ("throttled", "held"),
    ]
    .iter()
    .map(|(e, j)| (e.to_string(), j.to_string()))
    .collect();
    eventually(Duration::from_secs(20), "five notifications", || async {
        (received.lock().unwrap().len() >= expected.len()).then_some(())
    })
    .await;
    // A few more rounds of both replicas: nothing is sent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pairs, mut ids) = summary(&received);
    assert_eq!(pairs, expected, "{:#?}", received.lock().unwrap());
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected.len(), "an event was sent twice");

    let bodies = received.lock().unwrap().clone();
    let completed = bodies.iter().find(|b| b["event"] == "completed").unwrap();
    assert_eq!(completed["state"], "completed");
    assert_eq!(completed["rows_scanned"], 3000);
    assert_eq!(completed["rows_updated"], 3000);
    assert_eq!(completed["actor"], "daemon");
    assert!(completed["duration_seconds"].as_f64().unwrap() >= 0.0);
    let text = completed["text"].as_str().unwrap();
    assert!(
        text.contains("`done` completed") && text.contains("3000"),
        "{text}"
    );
    let paused = bodies.iter().find(|b| b["event"] == "paused").unwrap();
    assert_eq!(
        (&paused["actor"], &paused["detail"]),
        (&json!("admin"), &json!("checking"))
    );
    let failed = bodies.iter().find(|b| b["event"] == "failed").unwrap();
    let error = failed["detail"].as_str().unwrap();
    assert!(error.contains("<b>boom</b>"), "{error}");
    let text = failed["text"].as_str().unwrap();
    assert!(
        text.contains("&lt;b&gt;boom") && !text.contains("<b>"),
        "{text}"
    );

    let undelivered = db
        .scalar_i64("SELECT count(*) FROM backfilld.deliveries WHERE delivered_at IS NULL")
        .await;
    assert_eq!(undelivered, 0);
    for daemon in [&first, &second] {
        assert_no_secret(&daemon.log());
    }
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_each_event_once_it_listens() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 500).await;
    let port = free_port();
    let daemon = Daemon::start(
        &db.url,
        &db.dir,
        &config(port, r#"["completed"]"#),
        &jobs_dir(&db),
    );
    let api = Api::new(&daemon, Some(ADMIN));
    api.submit(hits_job("first", json!({}))).await;
    api.submit(hits_job("second", json!({}))).await;
    api.wait_state("first", "completed", Duration::from_secs(30))
        .await;
    api.wait_state("second", "completed", Duration::from_secs(30))
        .await;

    // Nothing listens: the attempts fail, are counted, and are retried with backoff.
    let label = format!("endpoint=\"http://127.0.0.1:{port}\"");
    eventually(Duration::from_secs(10), "failed attempts", || async {
        let failed = api
            .metric("backfill_notifications_failed_total", &label)
            .await;
        (failed >= 4.0).then_some(())
    })
    .await;
    let down_since = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down_since.elapsed())).await;
    let attempts = db
        .scalar_i64("SELECT max(attempts)::int8 FROM backfilld.deliveries")
        .await;
    assert!(attempts >= 3, "{attempts} attempts in 5 s");

    let (received, _server) = receiver(port).await;
    eventually(Duration::from_secs(20), "both notifications", || async {
        (received.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pairs, _) = summary(&received);
    assert_eq!(
        pairs,
        [
            ("completed".to_string(), "first".to_string()),
            ("completed".to_string(), "second".to_string())
        ]
    );
    assert!(
        api.metric("backfill_notifications_sent_total", &label)
            .await
            >= 2.0,
        "{}",
        api.metrics().await
    );
    let log = daemon.log();
    assert_no_secret(&log);
    // Many failures, one line: at most once per endpoint per minute.
    assert_eq!(
        log.matches("notification not delivered").count(),
        1,
        "{log}"
    );
    assert!(log.contains(&format!("http://127.0.0.1:{port}")), "{log}");
}

#[tokio::test]
async fn an_endpoint_that_never_answers_holds_up_no_other() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 500).await;
    let (silent_port, live_port) = (free_port(), free_port());
    let connections = silent(silent_port).await;
    let (received, _server) = receiver(live_port).await;
    let kinds = r#"["paused", "cancelled"]"#;
    let config = format!(
        "{TOKENS}{}{}",
        endpoint(silent_port, kinds),
        endpoint(live_port, kinds)
    );
    let daemon = Daemon::start(&db.url, &db.dir, &config, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    running_slowly(&api, "slow").await;

    change(&api, "slow", "pause").await;
    eventually(Duration::from_secs(5), "the pause, live", || async {
        (!received.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    // The silent endpoint was sent the pause too, and holds that send unanswered (for up to the
    // 10 s send timeout).
    eventually(
        Duration::from_secs(5),
        "the silent endpoint tried",
        || async { (connections.load(Ordering::SeqCst) >= 1).then_some(()) },
    )
    .await;
    let asked = Instant::now();
    change(&api, "slow", "cancel").await;
    eventually(Duration::from_secs(15), "the cancel, live", || async {
        (received.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    let waited = asked.elapsed();
    // Well under the silent endpoint's 10 s send timeout, with room for a loaded machine.
    assert!(
        waited < Duration::from_secs(5),
        "the live endpoint waited {waited:?} for the silent one"
    );

    // A few more rounds: nothing is sent to the live endpoint again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (got, mut ids) = summary(&received);
    assert_eq!(got, pairs(&[("cancelled", "slow"), ("paused", "slow")]));
    ids.dedup();
    assert_eq!(ids.len(), 2, "an event was sent twice");
    // Only the live endpoint's two were delivered; the silent one's stay queued.
    let delivered = db
        .scalar_i64("SELECT count(*) FROM backfilld.deliveries WHERE delivered_at IS NOT NULL")
        .await;
    assert_eq!(delivered, 2);
    let undelivered = db
        .scalar_i64("SELECT count(*) FROM backfilld.deliveries WHERE delivered_at IS NULL")
        .await;
    assert!(undelivered >= 1, "{undelivered}");
    assert_no_secret(&daemon.log());
}

#[tokio::test]
async fn editing_the_events_keeps_the_backlog_and_drops_the_kinds_removed() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 500).await;
    let port = free_port();
    let jobs = jobs_dir(&db);

    // The receiver is down: a pause and a cancel are queued; the failure is not asked for.
    let before = Daemon::start(
        &db.url,
        &db.dir,
        &config(port, r#"["paused", "cancelled"]"#),
        &jobs,
    );
    let api = Api::new(&before, Some(ADMIN));
    running_slowly(&api, "a").await;
    change(&api, "a", "pause").await;
    change(&api, "a", "cancel").await;
    api.submit(broken("f")).await;
    api.wait_state("f", "failed", Duration::from_secs(30)).await;
    eventually(Duration::from_secs(10), "two deliveries queued", || async {
        let queued = db
            .scalar_i64("SELECT count(*) FROM backfilld.deliveries WHERE delivered_at IS NULL")
            .await;
        (queued == 2).then_some(())
    })
    .await;
    drop(before);
    common::wait_for_no_backfilld_sessions(&db).await;
    // The receiver comes back once the queued ones are due again. The daemon was killed just as
    // the cancel was queued, which is when its round claims what is due and sends it: a claim
    // it committed before dying keeps every replica off that delivery for a minute (seen in CI:
    // the pause not sent within 20 s), and the attempts while the receiver was down pushed the
    // next one back. That waiting is the retry policy's; here it is spent at once, so the test
    // waits only for what it is about.
    db.exec(
        "UPDATE backfilld.deliveries SET next_attempt_at = now(), claimed_until = NULL
          WHERE delivered_at IS NULL",
    )
    .await;

    // Now it listens, and the endpoint asks for pauses and failures instead.
    let (received, _server) = receiver(port).await;
    let after = Daemon::start(
        &db.url,
        &db.dir,
        &config(port, r#"["paused", "failed"]"#),
        &jobs,
    );
    let api = Api::new(&after, Some(ADMIN));
    eventually(Duration::from_secs(20), "the queued pause", || async {
        (!received.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    // A failure from now on is sent; the one before the edit is not (no history replayed).
    api.submit(broken("g")).await;
    api.wait_state("g", "failed", Duration::from_secs(30)).await;
    eventually(Duration::from_secs(10), "the new failure", || async {
        (received.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (got, _) = summary(&received);
    assert_eq!(got, pairs(&[("failed", "g"), ("paused", "a")]));
    let cancelled = db
        .scalar_i64(
            "SELECT count(*) FROM backfilld.deliveries d JOIN backfilld.events e ON e.id = d.event_id
              WHERE e.kind = 'cancelled'",
        )
        .await;
    assert_eq!(cancelled, 0, "the queued cancel was dropped");
    let log = after.log();
    assert!(log.contains("no longer asks for dropped"), "{log}");
    assert_no_secret(&log);
}

#[tokio::test]
async fn a_send_in_flight_does_not_stretch_the_shutdown_timeout() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 500).await;
    let port = free_port();
    let connections = silent(port).await;
    let config = format!(
        "shutdown_timeout = \"2s\"\n{}",
        config(port, r#"["paused"]"#)
    );
    let mut daemon = Daemon::start(&db.url, &db.dir, &config, &jobs_dir(&db));
    let api = Api::new(&daemon, Some(ADMIN));
    running_slowly(&api, "slow").await;
    change(&api, "slow", "pause").await;
    // A send that will not be answered for the 10 s send timeout is in flight.
    eventually(Duration::from_secs(5), "a send in flight", || async {
        (connections.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let asked = Instant::now();
    daemon.signal("TERM");
    let code = daemon.wait_exit(Duration::from_secs(20));
    let took = asked.elapsed();
    assert_eq!(code, Some(0), "{}", daemon.log());
    assert!(
        took < Duration::from_secs(4),
        "a 2 s shutdown_timeout took {took:?}\n{}",
        daemon.log()
    );
}
