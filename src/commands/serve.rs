//! `backfilld serve`: the daemon. Applies migrations, loads the jobs directory, runs the worker
//! pool and serves the HTTP API until SIGTERM/SIGINT; then stops taking batches, lets the
//! in-flight ones commit, releases its leases and exits 0.
//!
//! The database may be down at start or go away later: the API keeps answering (`/readyz`
//! says 503 with the reason) and the daemon reconnects with backoff.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::server::{self, Limits};
use crate::api::{self, auth::Auth, AppState};
use crate::commands::error::CliError;
use crate::commands::fleet;
use crate::engine::fleet::Fleet;
use crate::engine::notify::Notifier;
use crate::engine::runtime::LocalJobs;
use crate::engine::scheduler::Scheduler;
use crate::plumbing::config::{NotifyTarget, Settings, DEFAULT_DATABASE};
use crate::plumbing::db::{self, Db, Schema};
use crate::plumbing::shutdown::Shutdown;

/// Recorded as the actor of what the daemon does on its own.
pub const ACTOR: &str = "daemon";

pub async fn execute(settings: &Settings) -> Result<i32, CliError> {
    let shutdown = Shutdown::install().map_err(|e| CliError::Other(e.into()))?;
    let url = settings.require_database_url().map_err(CliError::invalid)?;
    let notify = settings.notify_targets().map_err(CliError::invalid)?;
    let budget = settings
        .budget(true)
        .map_err(|m| CliError::invalid(format!("config: max_connections: {m}")))?;
    // The same options as every other connection, TLS included; a bad URL or certificate
    // file is a configuration error now, not a retry loop later.
    let options = db::connect_options(url).map_err(CliError::invalid)?;
    // Both connect on first use, so the daemon starts (and answers `/healthz`) while the
    // database is still away.
    let pool = Db::lazy(options, budget.engine, settings.pool_mode);
    let api_pool = pool.sibling(budget.api);
    tracing::info!(pool_mode = ?settings.pool_mode, "{budget}");
    let schema = Schema::new(&settings.schema);
    let local = LocalJobs::default();
    let fleet = fleet::build(settings, &budget, &pool, &api_pool, &local)?;
    let http_stop = CancellationToken::new();
    let http = start_http(
        settings,
        fleet.clone(),
        schema.clone(),
        http_stop.clone(),
        true,
    )
    .await?;
    // Tests and scripts read this line for the address, scheme included.
    println!("backfilld listening on {}", http.url());

    let root = shutdown.token();
    // When the shutdown began: the whole of it, batches and HTTP clients, fits in
    // `shutdown_timeout` from then.
    let signalled = Arc::new(OnceLock::new());
    tokio::spawn({
        let (root, signalled) = (root.clone(), signalled.clone());
        async move {
            root.cancelled().await;
            let _ = signalled.set(Instant::now());
        }
    });
    let mut notifier = None;
    // The other targets migrate (each retrying on its own) and start their schedulers while
    // the daemon's own database is still being waited for.
    let others = fleet::start_others(
        &fleet,
        &schema,
        settings,
        budget.workers as usize,
        &root,
        ACTOR,
    );
    if fleet::migrate_with_backoff(&pool, &schema, &root, DEFAULT_DATABASE).await {
        super::refuse_undeclared_pooler(settings, &pool).await?;
        // Its endpoints start from the events after this point, before the jobs directory's.
        notifier = start_notifier(&pool, &schema, &notify, &root).await;
        others.wait_migrated().await;
        crate::commands::jobs_dir::load(&fleet, &schema, &settings.jobs_dir, ACTOR).await;
        http.loading.store(false, Ordering::Release);
        let mut scheduler = Scheduler::new(
            pool.clone(),
            schema.clone(),
            settings.lease_ttl,
            budget.workers as usize,
            ACTOR,
        )
        .register_in(local);
        if fleet.is_several() {
            scheduler = scheduler.in_fleet(others.shares.clone(), DEFAULT_DATABASE);
        }
        let mut running = tokio::spawn(others.join_with(scheduler.run(root.clone())));
        let drained = tokio::select! {
            result = &mut running => Some(result),
            _ = async {
                root.cancelled().await;
                tokio::time::sleep(settings.shutdown_timeout).await;
            } => None,
        };
        match drained {
            Some(Ok(Ok(_))) => tracing::info!("every in-flight batch committed; leases released"),
            Some(Ok(Err(e))) => {
                tracing::error!(error = %e, "the worker pool stopped on a database error")
            }
            Some(Err(e)) => tracing::error!(error = %e, "the worker pool panicked"),
            None => {
                // Whatever was in flight rolls back with its connection: nothing is lost, and
                // the leases expire for the other replicas.
                tracing::warn!(
                    timeout = ?settings.shutdown_timeout,
                    "shutdown timeout reached before the in-flight batches finished; exiting"
                );
                running.abort();
            }
        }
    } else {
        others.abort();
    }
    // What is left of `shutdown_timeout`, for the notifier and then the HTTP clients.
    let left = || {
        signalled
            .get()
            .map_or(settings.shutdown_timeout, |at: &Instant| {
                settings.shutdown_timeout.saturating_sub(at.elapsed())
            })
    };
    if let Some(mut notifier) = notifier {
        // Its sends in flight finish within the time left, so what it sent is also marked
        // sent; one cut short is sent again later (its claim expires).
        if tokio::time::timeout(left(), &mut notifier).await.is_err() {
            notifier.abort();
        }
    }
    http_stop.cancel();
    http.join(left().max(Duration::from_secs(1))).await;
    for target in fleet.targets() {
        target.pool.close().await;
        target.api_pool.close().await;
    }
    tracing::info!("stopped");
    Ok(0)
}

/// Starts the `[[notify]]` deliveries in a task of their own, off every batch's path, once
/// their endpoints are registered (or the database did not take that yet: the first round
/// retries it). `None` without endpoints.
async fn start_notifier(
    pool: &Db,
    schema: &Schema,
    targets: &[NotifyTarget],
    stop: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let mut notifier = Notifier::new(pool.clone(), schema.clone(), targets)?;
    if let Err(e) = notifier.register().await {
        tracing::warn!(error = %db::message(&e), "notification endpoints not registered yet");
    }
    Some(tokio::spawn(notifier.run(stop.clone())))
}

/// The API running in the background, with the rate sampler its job views read.
pub struct Http {
    pub address: SocketAddr,
    /// Served over HTTPS (`tls_cert` and `tls_key` are set).
    pub tls: bool,
    /// Cleared once `serve` has submitted its jobs directory (`/readyz` says 503 until then).
    pub loading: Arc<AtomicBool>,
    server: JoinHandle<std::io::Result<()>>,
    /// One per target database.
    samplers: Vec<JoinHandle<()>>,
}

impl Http {
    /// Where clients reach it: `https://ADDR` or `http://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// Waits for both to finish (after the `stop` token given to [`start_http`] fires), the
    /// server at most `within`: clients that are still connected then are dropped.
    pub async fn join(mut self, within: Duration) {
        if tokio::time::timeout(within, &mut self.server)
            .await
            .is_err()
        {
            tracing::warn!("HTTP clients kept the server from stopping; closing them");
            self.server.abort();
        }
        for sampler in self.samplers {
            let _ = sampler.await;
        }
    }
}

/// Binds the API (refusing a non-loopback address when no tokens are configured) and serves it
/// in the background until `stop`, over HTTPS when `tls_cert` and `tls_key` are set, sampling
/// job rates meanwhile.
pub async fn start_http(
    settings: &Settings,
    fleet: Fleet,
    schema: Schema,
    stop: CancellationToken,
    loads_jobs_dir: bool,
) -> Result<Http, CliError> {
    let auth = Auth::from_config(&settings.tokens).map_err(CliError::invalid)?;
    let tls = settings.server_tls().map_err(CliError::invalid)?;
    let address: SocketAddr = settings.listen_address().map_err(CliError::invalid)?;
    if auth.is_open() {
        if !address.ip().is_loopback() {
            return Err(CliError::invalid(format!(
                "listen: {address} is not a loopback address, and no API tokens are configured; add [[tokens]] to the config, or listen on 127.0.0.1"
            )));
        }
        tracing::warn!(%address, "no API tokens configured: the API is open to this machine only (loopback)");
    }
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| CliError::invalid(format!("listen: cannot bind {address}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::Other(e.into()))?;
    // Only `serve` loads a jobs directory; a foreground run's API is ready at once.
    let loading = Arc::new(AtomicBool::new(loads_jobs_dir));
    let samplers = (fleet.targets().iter())
        .map(|target| {
            let rates = target.rates.clone();
            tokio::spawn(rates.sample(target.api_pool.clone(), schema.clone(), stop.clone()))
        })
        .collect();
    let home = fleet.targets().first().cloned().ok_or_else(|| {
        CliError::invalid("database_url: not set (see --database-url or DATABASE_URL)")
    })?;
    let router = api::router(AppState {
        pool: home.api_pool,
        schema,
        auth,
        rates: home.rates,
        local: home.local,
        fleet,
        listen: Some(bound),
        loading: loading.clone(),
    });
    let limits = Limits::for_this_process();
    Ok(Http {
        address: bound,
        tls: tls.is_some(),
        loading,
        server: tokio::spawn(server::serve(
            listener,
            router,
            stop,
            limits,
            settings.shutdown_timeout,
            tls,
        )),
        samplers,
    })
}
