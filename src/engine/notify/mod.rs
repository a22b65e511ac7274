//! Notifications: each event of a kind a `[[notify]]` endpoint asked for is POSTed to it as
//! JSON ([`message`]), from tasks of their own that never touch a batch's path. The event log
//! is the source. Each endpoint has a task of its own (so one that is down or never answers
//! holds up no other), whose every round queues the new events' deliveries in the database,
//! claims its due ones (so of several replicas exactly one sends each), sends them, and marks
//! each delivered or due again after a backoff of up to [`RETRY_CAP`]. A receiver that is
//! down keeps its notifications, in a backlog bounded by [`BACKLOG`], until it answers.
//!
//! A webhook URL is a secret (Slack's path, a query token, user info): logs, metric labels and
//! the database only ever see its `scheme://host[:port]` or a digest of it.

pub mod message;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::plumbing::config::NotifyTarget;
use crate::plumbing::db::{self, Db, Schema};
use crate::plumbing::retry::backoff_up_to;
use crate::status::metrics::METRICS;
use crate::store::deliveries::{self, Claimed};
use message::Notification;

/// How often each endpoint's task looks for new events and due retries.
pub const POLL: Duration = Duration::from_secs(1);

/// Undelivered notifications queued per endpoint at most; later events wait in the event log.
pub const BACKLOG: i64 = 1000;

/// The longest wait between two attempts at one notification: attempts never stop while the
/// backlog is bounded, but a receiver that is down for a day is knocked on every few minutes,
/// not every few seconds.
pub const RETRY_CAP: Duration = Duration::from_secs(180);

/// Notifications one endpoint sends at once per round.
const CLAIM_LIMIT: i64 = 8;

/// A receiver that has not answered by then has failed this attempt.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a claim keeps other replicas off a delivery: well past [`SEND_TIMEOUT`] (a round's
/// sends go at once), so only a replica that died mid-send leaves one to be sent again.
const CLAIM_TTL: Duration = Duration::from_secs(60);

/// Failures of one endpoint are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One configured endpoint.
struct Endpoint {
    /// A digest of the URL alone: the database's name for it. Editing the `events` it asks
    /// for keeps it, and its backlog; each kind has its own start (see
    /// [`deliveries::register`]).
    key: String,
    /// `scheme://host[:port]`, for logs and the metric's label.
    label: String,
    url: url::Url,
    events: Vec<String>,
}

impl Endpoint {
    fn new(target: &NotifyTarget) -> Endpoint {
        let mut events = target.events.clone();
        events.sort();
        events.dedup();
        let digest = ring::digest::digest(&ring::digest::SHA256, target.url.as_str().as_bytes());
        let key = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Endpoint {
            key,
            label: target.redacted(),
            url: target.url.clone(),
            events,
        }
    }
}

pub struct Notifier {
    pool: Db,
    schema: Schema,
    endpoints: Vec<Arc<Endpoint>>,
    http: reqwest::Client,
    /// The endpoints are in the database (done once, retried until the database answers).
    registered: bool,
}

impl Notifier {
    /// A notifier for `targets`; `None` when there are none.
    pub fn new(pool: Db, schema: Schema, targets: &[NotifyTarget]) -> Option<Notifier> {
        if targets.is_empty() {
            return None;
        }
        crate::plumbing::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            // A redirect could carry the body somewhere the config does not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client with the process's crypto provider builds");
        let endpoints: Vec<Arc<Endpoint>> =
            targets.iter().map(|t| Arc::new(Endpoint::new(t))).collect();
        for endpoint in &endpoints {
            METRICS
                .notifications_failed
                .with_label_values(&[&endpoint.label]);
            METRICS
                .notifications_sent
                .with_label_values(&[&endpoint.label]);
        }
        Some(Notifier {
            pool,
            schema,
            endpoints,
            http,
            registered: false,
        })
    }

    /// Registers the endpoints (retrying every [`POLL`] until the database answers), then runs
    /// one task per endpoint until `stop`. Each finishes the round it is in first (its sends
    /// are bounded by [`SEND_TIMEOUT`]), so a notification sent is also marked sent.
    pub async fn run(mut self, stop: CancellationToken) {
        tracing::info!(
            endpoints = ?self.endpoints.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(),
            "notifications on"
        );
        let mut database_logged = None;
        while !stop.is_cancelled() {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    if due(&mut database_logged) {
                        tracing::warn!(error = %db::message(&e), "notifications wait for the database");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        let mut tasks = JoinSet::new();
        for endpoint in &self.endpoints {
            let sender = Sender {
                pool: self.pool.clone(),
                schema: self.schema.clone(),
                http: self.http.clone(),
                endpoint: endpoint.clone(),
                logged: None,
            };
            tasks.spawn(sender.run(stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Makes the endpoints and the kinds they ask for known to the database (once): each kind
    /// is told of the events after the first time it was registered. Deliveries already
    /// queued of a kind an endpoint no longer asks for are dropped, and logged.
    pub async fn register(&mut self) -> Result<(), sqlx::Error> {
        if !self.registered {
            for endpoint in &self.endpoints {
                let dropped =
                    deliveries::register(&self.pool, &self.schema, &endpoint.key, &endpoint.events)
                        .await?;
                if dropped > 0 {
                    tracing::info!(
                        endpoint = %endpoint.label,
                        dropped,
                        "undelivered notifications of kinds the endpoint no longer asks for dropped"
                    );
                }
            }
            self.registered = true;
        }
        Ok(())
    }
}

/// One endpoint's deliveries, in a task of its own.
struct Sender {
    pool: Db,
    schema: Schema,
    http: reqwest::Client,
    endpoint: Arc<Endpoint>,
    /// When this endpoint's failure (or the database's) was last logged.
    logged: Option<Instant>,
}

impl Sender {
    async fn run(mut self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            if let Err(e) = self.round().await {
                if due(&mut self.logged) {
                    tracing::warn!(
                        endpoint = %self.endpoint.label,
                        error = %db::message(&e),
                        "notifications wait for the database"
                    );
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// One round: queue the new events, claim what is due, send it all at once, record every
    /// outcome. A database error marking one outcome does not skip marking the others (a
    /// notification sent and not marked is sent again once its claim expires); the first such
    /// error is returned after all were tried. Returns how many notifications were delivered.
    async fn round(&mut self) -> Result<usize, sqlx::Error> {
        let endpoint = self.endpoint.clone();
        deliveries::enqueue(
            &self.pool,
            &self.schema,
            &endpoint.key,
            &endpoint.events,
            BACKLOG,
        )
        .await?;
        let token = Uuid::new_v4();
        let claimed = deliveries::claim(
            &self.pool,
            &self.schema,
            &endpoint.key,
            token,
            CLAIM_TTL,
            CLAIM_LIMIT,
        )
        .await?;
        let mut sends = JoinSet::new();
        for delivery in claimed {
            let (http, url) = (self.http.clone(), endpoint.url.clone());
            sends.spawn(async move {
                let outcome = send(&http, url, &Notification::of(&delivery)).await;
                (delivery, outcome)
            });
        }
        let mut delivered = 0;
        let mut first_error = None;
        while let Some(joined) = sends.join_next().await {
            let Ok((delivery, outcome)) = joined else {
                continue; // a panicked send: its claim expires and it is sent again
            };
            let marked = match outcome {
                Ok(()) => {
                    METRICS
                        .notifications_sent
                        .with_label_values(&[&endpoint.label])
                        .inc();
                    delivered += 1;
                    deliveries::delivered(
                        &self.pool,
                        &self.schema,
                        delivery.event_id,
                        &delivery.endpoint,
                        token,
                    )
                    .await
                    .map(drop)
                }
                Err(error) => self.failed(&delivery, token, &error).await,
            };
            if let Err(e) = marked {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(delivered), Err)
    }

    async fn failed(
        &mut self,
        delivery: &Claimed,
        token: Uuid,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let label = &self.endpoint.label;
        METRICS
            .notifications_failed
            .with_label_values(&[label])
            .inc();
        let delay = backoff_up_to(delivery.attempts.max(1) as u32, RETRY_CAP);
        if due(&mut self.logged) {
            tracing::warn!(
                endpoint = %label,
                job = %delivery.job,
                event = %delivery.kind,
                attempt = delivery.attempts,
                retry_in = ?delay,
                error = %error,
                "notification not delivered; retrying (logged once a minute per endpoint)"
            );
        }
        deliveries::retry_later(
            &self.pool,
            &self.schema,
            delivery.event_id,
            &delivery.endpoint,
            token,
            delay,
            error,
        )
        .await
    }
}

/// Whether to log now, given when the last line was: not within [`LOG_EVERY`], so a receiver
/// that is down for an hour makes 60 lines, not one per retry.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    let due = last.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
    if due {
        *last = Some(now);
    }
    due
}

/// POSTs one notification; any 2xx is delivered. The error never holds the URL: reqwest's
/// message names it, and it may hold a secret.
async fn send(
    http: &reqwest::Client,
    url: url::Url,
    notification: &Notification,
) -> Result<(), String> {
    let response = http
        .post(url)
        .json(notification)
        .send()
        .await
        .map_err(|e| words(&e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {status}"))
    }
}

/// An error with its causes ("error sending request: client error (Connect): tcp connect
/// error: Connection refused"): reqwest's own message alone does not say what went wrong.
fn words(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
