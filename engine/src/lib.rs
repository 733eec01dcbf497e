//! dataflow-engine: turns a JSON pipeline config into one DataFusion plan and
//! runs it into sinks that commit all together.
//!
//! Data flows one way: config ([`spec`]) → plan ([`plan::Pipeline::compile`])
//! → execution ([`plan::Pipeline::run`]) → sinks ([`connector::Sink`]), which
//! commit through a shared [`commit::CommitGate`].

pub mod cache;
pub mod classify;
pub mod commit;
pub mod connector;
pub mod error;
pub mod ops;
pub mod plan;
pub mod run;
pub mod schema;
pub mod secret;
pub mod spec;
pub mod state_file;
pub mod stream;
mod transform;

pub use datafusion;
pub use error::{Error, Result, StepRef};
