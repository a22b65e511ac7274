//! backfilld: long data backfills against a live PostgreSQL database, in keyset-paginated
//! batches, each checkpointed in its own transaction so nothing is lost or done twice.
//!
//! The modules are layers, each using only those listed before it (docs/architecture.md):
//! [`spec`] (what a job is), [`plumbing`] (config, connections, logging, signals), [`store`]
//! (the daemon's own tables), [`status`] (what is reported about a job, and the metrics),
//! [`engine`] (statement, batch, worker, scheduler), [`api`] (HTTP) and [`commands`] (the
//! command line). Start at [`commands::cli`] for the commands and the `engine::batch` module
//! for the transaction at the heart of it all.
//!
//! The public surface is deliberate and small: what the binary, the integration tests and the
//! benchmark drive — the job [`spec`], the [`store`], the engine's submission, scheduler,
//! worker and runtime (so tests can run a job step by step), the settings and connections of
//! [`plumbing`], the job view of [`status`] and the API's router. Everything else is
//! `pub(crate)`.

pub mod api;
pub mod commands;
pub mod engine;
pub mod plumbing;
pub mod spec;
pub mod status;
pub mod store;
