//! backfilld: long data backfills against a live PostgreSQL database, in keyset-paginated
//! batches, each checkpointed in its own transaction so nothing is lost or done twice.
//!
//! The modules are layers, each using only those listed before it (docs/architecture.md):
//! [`spec`] (what a job is), [`plumbing`] (config, connections, logging, signals), [`store`]
//! (the daemon's own tables), [`status`] (what is reported about a job, and the metrics),
//! [`engine`] (statement, batch, worker, scheduler), [`api`] (HTTP) and [`commands`] (the
//! command line). Start at [`commands::cli`] for the commands and [`engine::batch`] for the
//! transaction at the heart of it all.

pub mod api;
pub mod commands;
pub mod engine;
pub mod plumbing;
pub mod spec;
pub mod status;
pub mod store;
