//! Serving the API over TCP with the limits a daemon on a shared host needs, which
//! `axum::serve` does not set: a client must send a request's headers within
//! [`HEADER_READ_TIMEOUT`] (so half-open and idle keep-alive connections are closed), at most
//! [`Limits::max_connections`] are open at once — and when the limit is reached the longest
//! idle connection makes room, so `/healthz` still answers a liveness probe under a flood —
//! and a shutdown waits at most its grace period for clients, however they behave.
//!
//! With a TLS configuration each accepted stream is wrapped with tokio-rustls before HTTP is
//! spoken on it. The handshake runs inside the connection's own task and slot, bounded by
//! [`HANDSHAKE_TIMEOUT`] and evictable like an idle connection, so clients that connect and
//! never finish a handshake are limited exactly as those that never send headers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A client has this long to send a request's headers, on a new connection and between the
/// requests of a kept-alive one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A client has this long to complete a TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// File descriptors kept for everything but HTTP clients: database connections (the pool,
/// each worker's own, the presence session), logs, the listener.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The most connections served at once when the descriptor limit allows more.
const MAX_CONNECTIONS: u64 = 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
}

impl Limits {
    /// Raises this process's soft limit on open files to its hard limit (the default soft
    /// limit is often 1024, far below what the kernel allows), and sizes the connection limit
    /// to leave room for the daemon's own descriptors.
    pub fn for_this_process() -> Limits {
        let soft = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(soft) => soft,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or raise the open-files limit");
                1024
            }
        };
        let max_connections = soft
            .saturating_sub(RESERVED_DESCRIPTORS)
            .clamp(16, MAX_CONNECTIONS);
        tracing::debug!(open_files = soft, max_connections, "HTTP limits");
        Limits {
            max_connections: max_connections as usize,
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Slot {
    /// When it last started or finished a request (or was accepted).
    last_active: Arc<Mutex<Instant>>,
    /// Requests being handled now: a connection with one is never evicted.
    busy: Arc<AtomicUsize>,
    /// Closes it at once, to make room.
    evict: CancellationToken,
}

type Slots = Arc<Mutex<HashMap<u64, Slot>>>;

/// Serves `router` until `stop` fires; then stops accepting, asks every connection to finish
/// its request in flight, and returns after at most `grace` (dropping whatever is left).
/// With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    limits: Limits,
    grace: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let tls = tls.map(TlsAcceptor::from);
    let slots: Slots = Arc::default();
    let next_id = AtomicU64::new(0);
    let shutdown = CancellationToken::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors (EMFILE) or a transient error: make room and
                        // try again shortly rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        evict_longest_idle(&slots);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let full = slots.lock().expect("slots lock poisoned").len() >= limits.max_connections;
                if full && !evict_longest_idle(&slots) {
                    // Every connection is busy with a request: refuse this one.
                    drop(stream);
                    continue;
                }
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let slot = Slot {
                    last_active: Arc::new(Mutex::new(Instant::now())),
                    busy: Arc::default(),
                    evict: CancellationToken::new(),
                };
                let task = connection(stream, tls.clone(), router.clone(), &slot, shutdown.clone());
                slots.lock().expect("slots lock poisoned").insert(id, slot);
                let slots = slots.clone();
                connections.spawn(async move {
                    task.await;
                    slots.lock().expect("slots lock poisoned").remove(&id);
                });
            }
        }
    }
    drop(listener);
    shutdown.cancel();
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTP clients still connected after the shutdown grace period; closing them"
        );
    }
    // Dropping the set aborts what is left.
    Ok(())
}

/// Evicts the connection idle the longest (no request in flight); false when all are busy.
fn evict_longest_idle(slots: &Slots) -> bool {
    let slots = slots.lock().expect("slots lock poisoned");
    let idle = slots
        .values()
        .filter(|s| s.busy.load(Ordering::Relaxed) == 0 && !s.evict.is_cancelled())
        .min_by_key(|s| *s.last_active.lock().expect("activity lock poisoned"));
    match idle {
        Some(slot) => {
            slot.evict.cancel();
            true
        }
        None => false,
    }
}

/// What HTTP is spoken over: the TCP stream itself, or the TLS session on it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Serves one connection until it ends, is evicted, or the server shuts down (then it may
/// finish the request in flight). A TLS handshake comes first; one that fails, times out, or
/// is still under way at eviction or shutdown closes the connection.
fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    router: Router,
    slot: &Slot,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (busy, last_active, evict) = (
        slot.busy.clone(),
        slot.last_active.clone(),
        slot.evict.clone(),
    );
    let service = tower::service_fn(move |request: hyper::Request<Incoming>| {
        let (router, busy, last_active) = (router.clone(), busy.clone(), last_active.clone());
        async move {
            busy.fetch_add(1, Ordering::Relaxed);
            let response = router.oneshot(request.map(Body::new)).await;
            busy.fetch_sub(1, Ordering::Relaxed);
            *last_active.lock().expect("activity lock poisoned") = Instant::now();
            response
        }
    });
    async move {
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(stream),
            Some(acceptor) => {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(session)) => Box::new(session),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    },
                    _ = evict.cancelled() => return,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(HEADER_READ_TIMEOUT);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = evict.cancelled() => {}
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = evict.cancelled() => {}
                }
            }
        }
    }
}
