//! The operator console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver) against a real `serve` and database: it lists the
//! jobs with their progress, pauses within one batch, resumes, re-tunes the rate, cancels after
//! a confirmation, shows a read token no buttons, works without tokens on loopback, and renders
//! hostile job text as text without running it.
//!
//! `BACKFILLD_CONSOLE_SCREENSHOT=docs/console.png cargo test --test console` saves the
//! README's screenshot.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use common::api::{hits_job, jobs_dir, Api, ADMIN, TOKENS};
use common::{eventually, free_port, hits_table, Daemon, TestDb};

const OPERATE: &str = "operate-token-123";
const READ: &str = "read-token-123";
const HOSTILE: &str = r#"<img src=x onerror="window.__pwned=1">"#;

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session through a chromedriver this test starts.
async fn browser() -> (Driver, Client) {
    let chromedriver = common::on_path("chromedriver").expect(
        "chromedriver is missing: install Debian's chromium and chromium-driver (.ci/run does)",
    );
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1100,1000"]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// The element `css` once it exists (bounded).
async fn find(page: &Client, css: &str) -> fantoccini::elements::Element {
    eventually(Duration::from_secs(10), css, || async {
        page.find(Locator::Css(css)).await.ok()
    })
    .await
}

/// Waits until `css`'s text contains `text` (its DOM text: the style sheet upper-cases some).
async fn wait_text(page: &Client, css: &str, text: &str) -> String {
    eventually(
        Duration::from_secs(10),
        &format!("{css} to say {text:?}"),
        || async {
            let element = page.find(Locator::Css(css)).await.ok()?;
            let shown = element.prop("textContent").await.ok()??;
            shown.contains(text).then_some(shown)
        },
    )
    .await
}

async fn state_in_db(db: &TestDb, job: &str) -> String {
    db.scalar_string(&format!(
        "SELECT state FROM backfilld.jobs WHERE name = '{job}'"
    ))
    .await
    .unwrap()
}

async fn scanned_in_db(db: &TestDb, job: &str) -> i64 {
    db.scalar_i64(&format!(
        "SELECT coalesce(sum(p.rows_scanned), 0)::int8 FROM backfilld.progress p
           JOIN backfilld.jobs j ON j.id = p.job_id WHERE j.name = '{job}'"
    ))
    .await
}

async fn wait_state_in_db(db: &TestDb, job: &str, state: &str) {
    eventually(
        Duration::from_secs(5),
        &format!("{job} {state}"),
        || async { (state_in_db(db, job).await == state).then_some(()) },
    )
    .await
}

async fn click(page: &Client, css: &str) {
    find(page, css).await.click().await.unwrap();
}

/// Puts `token` in the console's token field (shown while it has none or a refused one).
async fn sign_in(page: &Client, token: &str) {
    let field = find(page, "#token").await;
    field.send_keys(token).await.unwrap();
    click(page, "#token-use").await;
}

#[tokio::test]
async fn the_console_drives_jobs_with_an_operate_token_and_only_shows_a_read_token() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 20_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, TOKENS, &jobs_dir(&db));
    let admin = Api::new(&daemon, Some(ADMIN));
    // Slow on purpose: one partition, 10 keys a batch, 40 keys a second.
    admin
        .submit(hits_job(
            "slow",
            json!({"batch_size": 10, "rows_per_second": 40, "partitions": 1}),
        ))
        .await;
    let set = format!("(CASE WHEN id > 0 THEN '{HOSTILE}' ELSE '1' END)::int");
    admin
        .submit(hits_job("broken", json!({"set": {"hits": set}})))
        .await;
    admin
        .wait_state("broken", "failed", Duration::from_secs(20))
        .await;
    eventually(Duration::from_secs(10), "slow to make progress", || async {
        (scanned_in_db(&db, "slow").await > 0).then_some(())
    })
    .await;

    let (_driver, page) = browser().await;
    page.goto(&daemon.base).await.unwrap();
    // A refused token is said plainly, with the daemon's answer.
    sign_in(&page, "not-a-token-at-all").await;
    wait_text(&page, "#error", "401").await;
    sign_in(&page, OPERATE).await;
    wait_text(&page, "#who", "oncall (operate)").await;

    // Both jobs, with their progress.
    find(&page, "section.job[data-job='broken']").await;
    let slow = "section.job[data-job='slow']";
    wait_text(&page, &format!("{slow} .state"), "running").await;
    eventually(
        Duration::from_secs(10),
        "a progress bar above 0",
        || async {
            let script = format!("return document.querySelector(\"{slow} progress\").value");
            let value = page.execute(&script, vec![]).await.ok()?.as_f64()?;
            (value > 0.0).then_some(())
        },
    )
    .await;
    wait_text(&page, &format!("{slow} .facts"), "of 40 limit").await;

    // The hostile error text is there, as text; nothing of it ran or became an element.
    wait_text(&page, "section.job[data-job='broken'] .error-text", HOSTILE).await;
    click(
        &page,
        "section.job[data-job='broken'] details.events summary",
    )
    .await;
    wait_text(&page, "section.job[data-job='broken'] .events", HOSTILE).await;
    let verdict = page
        .execute(
            "return [typeof window.__pwned, document.images.length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        verdict,
        json!(["undefined", 0]),
        "the job's text ran as markup"
    );

    if let Ok(path) = std::env::var("BACKFILLD_CONSOLE_SCREENSHOT") {
        std::fs::write(path, page.screenshot().await.unwrap()).unwrap();
    }

    // Pause: the database says paused at once, and at most the batch in flight commits after.
    click(&page, &format!("{slow} button.pause")).await;
    wait_state_in_db(&db, "slow", "paused").await;
    let at_pause = scanned_in_db(&db, "slow").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // six batches' time at 40 keys/s
    let after = scanned_in_db(&db, "slow").await;
    assert!(
        after - at_pause <= 10,
        "{} keys walked after the pause",
        after - at_pause
    );
    wait_text(&page, &format!("{slow} .state"), "paused").await;

    // Resume: running again, from the checkpoint.
    click(&page, &format!("{slow} button.resume")).await;
    wait_state_in_db(&db, "slow", "running").await;
    eventually(
        Duration::from_secs(10),
        "progress after the resume",
        || async { (scanned_in_db(&db, "slow").await > after).then_some(()) },
    )
    .await;

    // The rate field PATCHes the limit.
    let field = find(&page, &format!("{slow} .rate-input")).await;
    field.clear().await.unwrap();
    field.send_keys("25").await.unwrap();
    click(&page, &format!("{slow} .set-rate")).await;
    eventually(Duration::from_secs(5), "the new limit", || async {
        let limit = db
            .scalar_i64(
                "SELECT coalesce(rows_per_second, 0)::int8 FROM backfilld.jobs WHERE name = 'slow'",
            )
            .await;
        (limit == 25).then_some(())
    })
    .await;
    assert_eq!(admin.job("slow").await["rate_limit_rows_per_second"], 25);
    wait_text(&page, &format!("{slow} .facts"), "of 25 limit").await;

    // Cancel asks first: dismissed, nothing happens; accepted, the job is cancelled.
    click(&page, &format!("{slow} button.cancel")).await;
    let question = page.get_alert_text().await.unwrap();
    assert!(question.contains("Cancel job slow"), "{question}");
    page.dismiss_alert().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_in_db(&db, "slow").await, "running");
    click(&page, &format!("{slow} button.cancel")).await;
    page.accept_alert().await.unwrap();
    wait_state_in_db(&db, "slow", "cancelled").await;
    let events = admin.events("slow").await;
    let actors: Vec<(&Value, &Value)> = events.iter().map(|e| (&e["kind"], &e["actor"])).collect();
    for kind in ["paused", "running", "retuned", "cancelled"] {
        assert!(
            actors.contains(&(&json!(kind), &json!("oncall"))),
            "{kind} by oncall: {events:?}"
        );
    }

    // A read token: the same page, no buttons and no rate field.
    click(&page, "#token-forget").await;
    sign_in(&page, READ).await;
    wait_text(&page, "#who", "viewer (read)").await;
    find(&page, "section.job[data-job='slow']").await;
    let controls = page
        .find_all(Locator::Css("section.job button, section.job input"))
        .await
        .unwrap();
    assert!(controls.is_empty(), "a read token sees controls");
    // The token lives in the tab's session storage, never in a cookie.
    let stored = page
        .execute(
            "return [sessionStorage.getItem('backfilld.token'), document.cookie]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!([READ, ""]));
    page.close().await.unwrap();
}

#[tokio::test]
async fn without_tokens_the_console_works_on_loopback() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 5_000).await;
    let daemon = Daemon::start(&db.url, &db.dir, "", &jobs_dir(&db));
    Api::new(&daemon, None)
        .submit(hits_job(
            "open",
            json!({"batch_size": 10, "rows_per_second": 50}),
        ))
        .await;
    let (_driver, page) = browser().await;
    page.goto(&daemon.base).await.unwrap();
    wait_text(&page, "#who", "no API tokens configured").await;
    let job = "section.job[data-job='open']";
    wait_text(&page, &format!("{job} .state"), "running").await;
    let form_hidden = page
        .execute(
            "return document.getElementById('token-form').hidden",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(form_hidden, json!(true));

    // A page of another site (another port is another origin) in the same browser tries to
    // pause the job: JSON needs a CORS preflight, which the daemon refuses; a simple text/plain
    // POST reaches it and is refused as cross-site.
    let evil = cross_site_page(&daemon.base).await;
    page.goto(&evil).await.unwrap();
    let tried = eventually(
        Duration::from_secs(10),
        "the other site's attempts",
        || async {
            let results = page.execute("return window.results", vec![]).await.ok()?;
            (results.as_array()?.len() == 2).then_some(results)
        },
    )
    .await;
    assert_eq!(tried[0], "json: blocked", "{tried}");
    assert_eq!(state_in_db(&db, "open").await, "running");
    assert!(daemon.log().contains("a web page could have forged"));

    page.goto(&daemon.base).await.unwrap();
    click(&page, &format!("{job} button.pause")).await;
    wait_state_in_db(&db, "open", "paused").await;
    let events = Api::new(&daemon, None).events("open").await;
    assert!(events
        .iter()
        .any(|e| e["kind"] == "paused" && e["actor"] == "anonymous"));
    page.close().await.unwrap();
}

/// Serves, from another origin, a page whose script tries to pause job `open` on `daemon`
/// and records what happened in `window.results`; returns its address.
async fn cross_site_page(daemon: &str) -> String {
    let html = format!(
        r#"<!doctype html><title>elsewhere</title><script>
window.results = [];
const url = "{daemon}/api/v1/jobs/open/pause";
(async () => {{
  try {{
    await fetch(url, {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: "{{}}"}});
    results.push("json: sent");
  }} catch (e) {{ results.push("json: blocked"); }}
  try {{
    await fetch(url, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}});
    results.push("plain: sent");
  }} catch (e) {{ results.push("plain: failed"); }}
}})();
</script>"#
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/")
}
