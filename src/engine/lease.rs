//! This process's claim on partitions: a presence session whose existence proves the process is
//! alive, and a heartbeat that extends the leases it holds until they are released. Through a
//! transaction pooler there is no session of ours to point at, so there the leases' expiry
//! alone tells a dead holder from a live one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::plumbing::db::{self, Db, PoolMode, Schema};
use crate::store::progress::{self, Holder};

/// A dedicated connection held open for the life of the process. Other processes treat a lease
/// whose presence session is gone as free at once, so a crashed `run` can be re-run immediately
/// instead of waiting out its lease.
pub struct Presence {
    /// The pool's connect options (TLS included), so this session is opened like the others;
    /// `None` when sessions do not outlive transactions (`pool_mode = "transaction"`).
    options: Option<PgConnectOptions>,
    owner: String,
    /// The open session and who it is; replaced when the connection drops.
    session: tokio::sync::Mutex<Option<(PgConnection, Holder)>>,
}

impl Presence {
    pub fn new(options: &PgConnectOptions, mode: PoolMode) -> Presence {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let owner = format!(
            "{host}:{}:{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Presence {
            options: mode.keeps_sessions().then(|| options.clone()),
            owner,
            session: tokio::sync::Mutex::new(None),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The holder identity, reconnecting the presence session if it was lost.
    pub async fn holder(&self) -> Result<Holder, sqlx::Error> {
        let Some(options) = &self.options else {
            return Ok(Holder {
                owner: self.owner.clone(),
                backend_pid: None,
                backend_start: None,
            });
        };
        let mut session = self.session.lock().await;
        if let Some((conn, holder)) = session.as_mut() {
            if conn.ping().await.is_ok() {
                return Ok(holder.clone());
            }
        }
        let mut conn = PgConnection::connect_with(options).await?;
        let (pid, started): (i32, DateTime<Utc>) = db::query_as(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        let holder = Holder {
            owner: self.owner.clone(),
            backend_pid: Some(pid),
            backend_start: Some(started),
        };
        *session = Some((conn, holder.clone()));
        Ok(holder)
    }

    pub async fn close(&self) {
        if let Some((conn, _)) = self.session.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// The lease tokens this process holds, renewed together by the heartbeat.
#[derive(Default, Clone)]
pub struct HeldLeases(Arc<Mutex<HashSet<Uuid>>>);

impl HeldLeases {
    pub fn insert(&self, token: Uuid) {
        self.0.lock().expect("leases lock poisoned").insert(token);
    }
    pub fn remove(&self, token: &Uuid) {
        self.0.lock().expect("leases lock poisoned").remove(token);
    }
    pub fn tokens(&self) -> Vec<Uuid> {
        self.0
            .lock()
            .expect("leases lock poisoned")
            .iter()
            .copied()
            .collect()
    }
}

/// Renews held leases every third of the TTL until `stop` fires.
pub async fn heartbeat(
    pool: Db,
    schema: Schema,
    presence: Arc<Presence>,
    held: HeldLeases,
    ttl: Duration,
    stop: CancellationToken,
) {
    let period = ttl / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let tokens = held.tokens();
        if tokens.is_empty() {
            continue;
        }
        let renewed = match presence.holder().await {
            Ok(holder) => progress::renew(&pool, &schema, &holder, &tokens, ttl).await,
            Err(e) => Err(e),
        };
        match renewed {
            Ok(n) if n < tokens.len() as i64 => tracing::warn!(
                held = tokens.len(),
                renewed = n,
                "some leases were taken over; their workers stop at their next batch"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %db::message(&e), "could not renew leases; retrying"),
        }
    }
}
