//! What is known about a job, computed once: [`view`] builds the status the API serializes,
//! the metrics export and the terminal shows; [`metrics`] defines the Prometheus series.

pub mod metrics;
pub mod view;
