//! dataflow-connectors: the sources and sinks behind the pipeline methods.
//!
//! Each connector is one module with its typed config; [`registry`] is the
//! one place that maps method names to them.

mod classify;
mod console;
mod delta;
mod error;
mod files;
mod kafka;
mod postgres;
mod save_mode;
mod scan_exec;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;

use dataflow_engine::connector::Registry;
use deltalake::delta_datafusion::planner::DeltaExtensionPlanner;

pub use delta::upkeep;
pub use error::ConnectorError;

/// Every extract and load method, by name.
pub fn registry() -> Registry {
    Registry::new()
        .source("fromFiles", files::source)
        .source("fromDeltaLake", delta::source)
        .source("fromPostgres", postgres::source)
        .source("fromKafka", kafka::source)
        .sink("toFiles", files::sink)
        .sink("toDeltaLake", delta::sink)
        .sink("toKafka", kafka::sink)
        .sink("toConsole", console::sink)
        .extension_planner(DeltaExtensionPlanner::new())
        .error_classifier(classify::classify_link)
        .object_stores(storage::root_store)
}
