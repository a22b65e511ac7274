//! Turns SIGINT/SIGTERM into the root cancellation token, remembering which signal came so
//! `run` can exit 130 or 143. A second signal exits at once: batches are transactions, so even
//! that loses nothing, it only skips waiting for the in-flight batch.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

impl Shutdown {
    /// Installs the handlers; must be called inside the runtime.
    pub fn install() -> std::io::Result<Shutdown> {
        let shutdown = Shutdown {
            token: CancellationToken::new(),
            signal: Arc::new(AtomicI32::new(0)),
        };
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let handle = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = interrupt.recv() => SIGINT,
                    _ = terminate.recv() => SIGTERM,
                };
                if handle.token.is_cancelled() {
                    tracing::warn!("second signal: exiting now; the in-flight batch rolls back");
                    std::process::exit(128 + received);
                }
                handle.signal.store(received, Ordering::SeqCst);
                tracing::info!(
                    signal = if received == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    },
                    "stopping after the batches in flight commit"
                );
                handle.token.cancel();
            }
        });
        Ok(shutdown)
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The signal that started the shutdown, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}
