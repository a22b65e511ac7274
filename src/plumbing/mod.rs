//! What every layer above leans on and none of it is about backfills: configuration,
//! connections and their errors, TLS, logging, and shutdown signals.

pub mod config;
pub mod db;
pub mod pool;
pub(crate) mod retry;
pub(crate) mod shutdown;
pub(crate) mod telemetry;
pub mod tls;
