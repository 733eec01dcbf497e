//! The seams between the engine and connectors: sources, sinks and the
//! registry that maps method names to their constructors.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionState;
use datafusion::physical_planner::ExtensionPlanner;

use crate::commit::CommitGate;
use crate::error::Result;
use crate::spec::StepInfo;

/// Errors crossing the connector seam; the engine attaches the step.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A batch source: hands the engine a DataFusion table to plan over.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// Builds the table (schema inference and file listing happen here).
    async fn table_provider(
        &self,
        state: &SessionState,
    ) -> Result<Arc<dyn TableProvider>, BoxError>;
}

/// What a sink reports after a successful write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Rows written.
    pub rows: u64,
    /// Bytes written (data files), 0 where not meaningful.
    pub bytes: u64,
    /// A short note for the summary, e.g. `version 3` or `skipped: table exists`.
    pub detail: String,
}

/// A load target.
///
/// A sink computes and stages everything it writes, then calls
/// [`CommitGate::ready`] and makes its output visible only if that returns
/// `Ok`: this is how a run that fails anywhere leaves every target unchanged.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Writes `input` (a plan over the pipeline's session) and commits after
    /// the gate opens.
    async fn write(&self, input: DataFrame, gate: CommitGate) -> Result<SinkReport, BoxError>;
}

/// Builds a source from its step config (errors carry the JSON path).
pub type SourceFactory = fn(&StepInfo) -> Result<Arc<dyn Source>>;
/// Builds a sink from its step config (errors carry the JSON path).
pub type SinkFactory = fn(&StepInfo) -> Result<Arc<dyn Sink>>;

/// Method name → constructor, for every extract and load method; plus the
/// physical planner extensions connectors need. Built once by the connectors
/// crate; the engine names no connector anywhere else.
#[derive(Default, Clone)]
pub struct Registry {
    sources: BTreeMap<&'static str, SourceFactory>,
    sinks: BTreeMap<&'static str, SinkFactory>,
    extension_planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("sources", &self.sources.keys())
            .field("sinks", &self.sinks.keys())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an extract method.
    pub fn source(mut self, method: &'static str, factory: SourceFactory) -> Self {
        self.sources.insert(method, factory);
        self
    }

    /// Registers a load method.
    pub fn sink(mut self, method: &'static str, factory: SinkFactory) -> Self {
        self.sinks.insert(method, factory);
        self
    }

    /// Adds a physical planner extension (for connector-specific plan nodes).
    pub fn extension_planner(mut self, planner: Arc<dyn ExtensionPlanner + Send + Sync>) -> Self {
        self.extension_planners.push(planner);
        self
    }

    pub(crate) fn source_factory(&self, method: &str) -> Option<SourceFactory> {
        self.sources.get(method).copied()
    }

    pub(crate) fn sink_factory(&self, method: &str) -> Option<SinkFactory> {
        self.sinks.get(method).copied()
    }

    pub(crate) fn source_methods(&self) -> Vec<&'static str> {
        self.sources.keys().copied().collect()
    }

    pub(crate) fn sink_methods(&self) -> Vec<&'static str> {
        self.sinks.keys().copied().collect()
    }

    pub(crate) fn extension_planners(&self) -> &[Arc<dyn ExtensionPlanner + Send + Sync>] {
        &self.extension_planners
    }
}
