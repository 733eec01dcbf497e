//! Operating pipelines: retries with backoff for transient failures, run
//! history, metrics, cron schedules and clean shutdown.
//!
//! [`runner::Runner`] ties them together for one run (manual or scheduled);
//! [`schedule::run_schedules`] drives many pipelines on their cron schedules.

pub mod history;
pub mod metrics;
pub mod progress;
pub mod retry;
pub mod runner;
pub mod schedule;
pub mod shutdown;
