//! The engine: from a checked job to committed batches. [`catalog`] binds a spec to the
//! database, [`submit`] plans and stores it, [`scheduler`] claims partitions and runs a
//! [`worker`] for each, which runs batches (`batch`) built by [`statement`], under the rate
//! `limiter`, the adaptive `sizer` and the `throttle` signals.

pub(crate) mod batch;
pub mod catalog;
pub mod completion;
pub mod fleet;
pub mod lease;
pub(crate) mod limiter;
pub mod notify;
pub(crate) mod partition;
pub(crate) mod rates;
pub mod runtime;
pub mod scheduler;
pub(crate) mod sizer;
pub mod statement;
pub mod submit;
pub mod sync;
pub(crate) mod throttle;
pub mod verify;
pub mod worker;
