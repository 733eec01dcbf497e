//! Stateful streaming: event time and watermarks, aggregations kept across
//! micro-batches, and the snapshots that keep them consistent with the
//! sinks under `checkpointLocation`.

pub mod aggregate;
pub mod dedup;
pub mod event_time;
pub mod store;
