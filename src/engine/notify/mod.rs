//! Notifications: each event of a kind a `[[notify]]` endpoint asked for is POSTed to it as
//! JSON ([`message`]), from a task of its own that never touches a batch's path. The event log
//! is the source: every round queues the new events' deliveries in the database, claims the due
//! ones (so of several replicas exactly one sends each), sends them, and marks each delivered or
//! due again after [`backoff`]. A receiver that is down keeps its notifications, in a backlog
//! bounded by [`BACKLOG`], until it answers.
//!
//! A webhook URL is a secret (Slack's path, a query token, user info): logs, metric labels and
//! the database only ever see its `scheme://host[:port]` or a digest of it.

pub mod message;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::plumbing::config::NotifyTarget;
use crate::plumbing::db::{self, Db, Schema};
use crate::plumbing::retry::backoff;
use crate::status::metrics::METRICS;
use crate::store::deliveries::{self, Claimed};
use message::Notification;

/// How often the notifier looks for new events and due retries.
pub const POLL: Duration = Duration::from_secs(1);

/// Undelivered notifications queued per endpoint at most; later events wait in the event log.
pub const BACKLOG: i64 = 1000;

/// Notifications sent at once per round, over all endpoints.
const CLAIM_LIMIT: i64 = 16;

/// A receiver that has not answered by then has failed this attempt.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a claim keeps other replicas off a delivery: well past [`SEND_TIMEOUT`], so only a
/// replica that died mid-send leaves one to be sent again.
const CLAIM_TTL: Duration = Duration::from_secs(60);

/// Failures of one endpoint are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One configured endpoint.
struct Endpoint {
    /// A digest of the URL and the events asked for: the database's name for it. Another
    /// list of events is another endpoint, starting from now, so adding a kind does not send
    /// that kind's whole history.
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
        let identity = format!("{}\n{}", target.url, events.join(","));
        let digest = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
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
    endpoints: Vec<Endpoint>,
    http: reqwest::Client,
    /// The endpoints are in `notify_endpoints` (done once, retried until the database answers).
    registered: bool,
    /// When each endpoint's failure (or the database's) was last logged.
    logged: HashMap<String, Instant>,
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
        let endpoints: Vec<Endpoint> = targets.iter().map(Endpoint::new).collect();
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
            logged: HashMap::new(),
        })
    }

    /// Rounds every [`POLL`] until `stop`. A round in progress finishes first (its sends are
    /// bounded by [`SEND_TIMEOUT`]), so a notification sent is also marked sent.
    pub async fn run(mut self, stop: CancellationToken) {
        tracing::info!(
            endpoints = ?self.endpoints.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(),
            "notifications on"
        );
        while !stop.is_cancelled() {
            if let Err(e) = self.round().await {
                let message = db::message(&e);
                self.log_failure("database", |_| {
                    tracing::warn!(error = %message, "notifications wait for the database");
                });
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Makes the endpoints known to the database (once): each is told of the events after
    /// the first time it was registered.
    pub async fn register(&mut self) -> Result<(), sqlx::Error> {
        if !self.registered {
            for endpoint in &self.endpoints {
                deliveries::register(&self.pool, &self.schema, &endpoint.key).await?;
            }
            self.registered = true;
        }
        Ok(())
    }

    /// One round: queue the new events, claim what is due, send it, record the outcomes.
    /// Returns how many notifications were delivered.
    pub async fn round(&mut self) -> Result<usize, sqlx::Error> {
        self.register().await?;
        for endpoint in &self.endpoints {
            deliveries::enqueue(
                &self.pool,
                &self.schema,
                &endpoint.key,
                &endpoint.events,
                BACKLOG,
            )
            .await?;
        }
        let keys: Vec<String> = self.endpoints.iter().map(|e| e.key.clone()).collect();
        let token = Uuid::new_v4();
        let claimed = deliveries::claim(
            &self.pool,
            &self.schema,
            &keys,
            token,
            CLAIM_TTL,
            CLAIM_LIMIT,
        )
        .await?;
        let mut sends = JoinSet::new();
        for delivery in claimed {
            let Some(endpoint) = self.endpoints.iter().find(|e| e.key == delivery.endpoint) else {
                continue;
            };
            let (http, url) = (self.http.clone(), endpoint.url.clone());
            sends.spawn(async move {
                let outcome = send(&http, url, &Notification::of(&delivery)).await;
                (delivery, outcome)
            });
        }
        let mut delivered = 0;
        while let Some(joined) = sends.join_next().await {
            let Ok((delivery, outcome)) = joined else {
                continue; // a panicked send: its claim expires and it is sent again
            };
            match outcome {
                Ok(()) => {
                    deliveries::delivered(
                        &self.pool,
                        &self.schema,
                        delivery.event_id,
                        &delivery.endpoint,
                        token,
                    )
                    .await?;
                    METRICS
                        .notifications_sent
                        .with_label_values(&[&self.label_of(&delivery)])
                        .inc();
                    delivered += 1;
                }
                Err(error) => self.failed(&delivery, token, &error).await?,
            }
        }
        Ok(delivered)
    }

    async fn failed(
        &mut self,
        delivery: &Claimed,
        token: Uuid,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let label = self.label_of(delivery);
        METRICS
            .notifications_failed
            .with_label_values(&[&label])
            .inc();
        let delay = backoff(delivery.attempts.max(1) as u32);
        self.log_failure(&label, |label| {
            tracing::warn!(
                endpoint = %label,
                job = %delivery.job,
                event = %delivery.kind,
                attempt = delivery.attempts,
                retry_in = ?delay,
                error = %error,
                "notification not delivered; retrying (logged once a minute per endpoint)"
            );
        });
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

    fn label_of(&self, delivery: &Claimed) -> String {
        self.endpoints
            .iter()
            .find(|e| e.key == delivery.endpoint)
            .map_or_else(String::new, |e| e.label.clone())
    }

    /// Runs `log` unless `key` was logged within [`LOG_EVERY`]: a receiver that is down for an
    /// hour makes 60 lines, not one per retry.
    fn log_failure(&mut self, key: &str, log: impl FnOnce(&str)) {
        let now = Instant::now();
        let due = self
            .logged
            .get(key)
            .is_none_or(|last| now.duration_since(*last) >= LOG_EVERY);
        if due {
            self.logged.insert(key.to_string(), now);
            log(key);
        }
    }
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
