//! dataflow-engine: turns a JSON pipeline config into one DataFusion plan and
//! runs it into sinks that commit all together.
//!
//! Data flows one way: config ([`spec`]) → plan
//! ([`pipeline::Pipeline::compile`]) → execution ([`pipeline::Pipeline::run`],
//! or [`stream`]'s micro-batches) → sinks ([`connector::Sink`]), which commit
//! through a shared [`commit::CommitGate`]; sources resume where the last run
//! left off ([`resume`]).

pub mod cache;
pub mod classify;
pub mod commit;
pub mod connector;
pub mod error;
pub mod ops;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod resume;
pub mod run;
mod scan_statistics;
pub mod schema;
pub mod secret;
pub mod session;
pub mod spec;
mod spillable_join;
pub mod state;
pub mod storage;
pub mod stream;
mod transform;
pub mod window;

pub use datafusion;
pub use error::{Error, Result, StepRef};
