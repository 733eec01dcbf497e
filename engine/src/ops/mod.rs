//! Operating pipelines: retries with backoff for transient failures, run
//! history, metrics, cron schedules.
//!
//! [`runner::Runner`] ties them together for one run (manual or scheduled,
//! batch or streaming) and [`record::Recorder`] keeps its history and
//! metrics; [`schedule::run_schedules`] drives many pipelines on their cron
//! schedules. Shutdown is a `tokio_util` `CancellationToken` throughout.

pub mod history;
pub mod metrics;
pub mod record;
pub mod retry;
pub mod runner;
pub mod schedule;
