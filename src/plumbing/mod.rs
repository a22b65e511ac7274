//! What every layer above leans on and none of it is about backfills: configuration,
//! connections and their errors, logging, and shutdown signals.

pub mod config;
pub mod db;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
