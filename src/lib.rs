//! backfilld: long data backfills against a live PostgreSQL database, in keyset-paginated
//! batches, each checkpointed in its own transaction so nothing is lost or done twice.
//!
//! Start at [`cli`] for the commands, [`scheduler`] and [`worker`] for the engine, [`batch`] for
//! the transaction at its heart.

pub mod api;
pub mod batch;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod db;
pub mod display;
pub mod health;
pub mod jobs_dir;
pub mod lease;
pub mod limiter;
pub mod metrics;
pub mod migrate;
pub mod partition;
pub mod rates;
pub mod scheduler;
pub mod shutdown;
pub mod sizer;
pub mod spec;
pub mod statement;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod worker;
