//! The seams between the engine and connectors: sources, sinks and the
//! registry that maps method names to their constructors.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionState;
use datafusion::physical_planner::ExtensionPlanner;

use crate::classify::{Classifier, LinkClassifier};
use crate::commit::CommitGate;
use crate::error::Result;
use crate::spec::StepInfo;
use crate::storage::StoreBuilder;

/// Errors crossing the connector seam; the engine attaches the step.
pub use crate::error::BoxError;

/// A position a source reached (a high-water mark, a Kafka offset),
/// recorded atomically with a sink's data: Delta's `txn` action, appId →
/// version. Versions only grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Globally unique name, `dataflow/<pipeline>/<step>/<source key>`.
    pub app_id: String,
    /// The position.
    pub version: i64,
}

/// Where a resumable source left off in the last successful run.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The source's keys (as in [`Source::resume_keys`]) → recorded version;
    /// a key is absent when nothing was recorded for it.
    pub marks: HashMap<String, i64>,
    /// False when no sink of the pipeline can record marks: `marks` then
    /// come from the source's offset log, if it has one (see
    /// [`Source::offset_log_dir`]).
    pub recorded_by_sinks: bool,
    /// `marks` come from an offset log (the source's own directory or the
    /// pipeline's `checkpointLocation`), which stores the positions this run
    /// reaches once its loads committed.
    pub offset_log: bool,
    /// A micro-batch of a streaming run: a streaming source reads at most
    /// its per-trigger limit. False for batch runs and trigger `once`.
    pub micro_batch: bool,
    /// Keys → positions not to read beyond (trigger `availableNow`: what was
    /// available at start); a key absent here is bounded by the source.
    pub until: HashMap<String, i64>,
}

/// A source opened for one run: its table and the positions the run reaches.
pub struct Opened {
    /// The table to plan over.
    pub provider: Arc<dyn TableProvider>,
    /// Source key → position this run reads up to; committed with the data.
    pub marks: Vec<(String, i64)>,
    /// Source key → position this run reads from, where it differs from the
    /// resumed one (e.g. a first run's starting offsets).
    pub start: HashMap<String, i64>,
}

impl Opened {
    /// A table read whole every run (no positions).
    pub fn table(provider: Arc<dyn TableProvider>) -> Self {
        Opened {
            provider,
            marks: Vec::new(),
            start: HashMap::new(),
        }
    }
}

/// A batch source: hands the engine a DataFusion table to plan over.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// Keys of the positions this source resumes from; empty (the default)
    /// for sources that read everything every run.
    async fn resume_keys(&self) -> Result<Vec<String>, BoxError> {
        Ok(Vec::new())
    }

    /// False for a source whose rows come in no defined order (a query's
    /// rows without `ORDER BY`): the last of several rows of one key is
    /// then undefined, and a merge needs a sequence to order them.
    fn ordered(&self) -> bool {
        true
    }

    /// True for an unbounded source (Kafka) that streaming pipelines read in
    /// micro-batches; other sources are static: read once per stream.
    fn is_stream(&self) -> bool {
        false
    }

    /// A streaming source's positions available now (key → end): the
    /// bound of trigger `availableNow`, and what lag is measured against.
    async fn latest(&self) -> Result<HashMap<String, i64>, BoxError> {
        Ok(HashMap::new())
    }

    /// Opens the source for a run that resumes at `resume` (schema inference
    /// and file listing happen here): the table, and the positions the run
    /// reaches.
    async fn open(&self, state: &SessionState, resume: &Resume) -> Result<Opened, BoxError>;

    /// The directory of this source's own offset log (e.g. fromPostgres's
    /// `stateDir`; a local path or an object-store URL), used instead of the
    /// pipeline's `checkpointLocation` when no sink records its positions;
    /// `None` (the default) for none.
    fn offset_log_dir(&self) -> Option<String> {
        None
    }

    /// Called after every sink committed, with the positions now durable.
    async fn committed(&self, marks: &[(String, i64)]) -> Result<(), BoxError> {
        let _ = marks;
        Ok(())
    }
}

/// What a sink is handed besides its rows.
#[derive(Debug, Clone)]
pub struct WriteContext {
    /// Wait here before making anything visible.
    pub gate: CommitGate,
    /// Positions to record atomically with the data, when the sink can.
    pub marks: Vec<Mark>,
    /// Where the run read each mark's key from (same app ids): the batch
    /// holds the positions from here up to the mark. A sink that records
    /// marks compares them with its own to skip a batch it already holds.
    pub starts: Vec<Mark>,
    /// How the rows replace earlier ones (a streaming aggregation's
    /// `outputMode` update or complete); `None`: they are new rows.
    pub rewrite: Option<Rewrite>,
}

/// How a streaming aggregation's rows replace the ones written before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// `outputMode` update: the rows are the changed groups; merge them on
    /// these columns (the group keys).
    Merge(Vec<String>),
    /// `outputMode` complete: the rows are the whole result; replace the
    /// target's contents.
    Overwrite,
}

/// What planning knows of a load step's rows.
#[derive(Debug, Clone)]
pub struct LoadInput<'a> {
    /// Their schema.
    pub schema: &'a Schema,
    /// The extract steps they come from whose rows have no defined order
    /// (see [`Source::ordered`]), e.g. `steps[0] (fromPostgres)`.
    pub unordered: Vec<String>,
    /// How the rows replace earlier ones, if they do.
    pub rewrite: Option<Rewrite>,
}

/// Why a sink cannot take a load step's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The step's config key the error is about, if any (e.g. `mergeKeys`).
    pub key: Option<&'static str>,
    /// What is wrong and what to do.
    pub message: String,
}

impl InputError {
    /// An error about config key `key`.
    pub fn at(key: &'static str, message: impl Into<String>) -> Self {
        InputError {
            key: Some(key),
            message: message.into(),
        }
    }
}

impl From<String> for InputError {
    fn from(message: String) -> Self {
        InputError { key: None, message }
    }
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
/// A sink that can commit atomically (Delta) records the run's [`Mark`]s in
/// the same commit, and reports them back through
/// [`recorded_marks`](Sink::recorded_marks) so sources resume there.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Writes `input` (a plan over the pipeline's session) and commits after
    /// the gate in `ctx` opens, recording `ctx.marks` if it can.
    async fn write(&self, input: DataFrame, ctx: WriteContext) -> Result<SinkReport, BoxError>;

    /// Checks, while planning (so that `validate` reports it), that the
    /// target can take `input`; the error names the column and what to
    /// do. Every input is fine by default.
    fn check_input(&self, input: &LoadInput<'_>) -> std::result::Result<(), InputError> {
        let _ = input;
        Ok(())
    }

    /// The versions this sink's target has recorded for `app_ids`; `None`
    /// (the default) when the sink cannot record marks.
    async fn recorded_marks(
        &self,
        app_ids: &[String],
    ) -> Result<Option<HashMap<String, i64>>, BoxError> {
        let _ = app_ids;
        Ok(None)
    }
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
    classifier: Classifier,
    store_builder: Option<StoreBuilder>,
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

    /// Adds a classifier for the connectors' own error types (their
    /// libraries' codes), asked about every link of a failure's chain.
    pub fn error_classifier(mut self, classify: LinkClassifier) -> Self {
        self.classifier = self.classifier.with(classify);
        self
    }

    /// Sets how object stores are built for URLs (local files need none).
    pub fn object_stores(mut self, build: StoreBuilder) -> Self {
        self.store_builder = Some(build);
        self
    }

    /// How object stores are built, if the connectors say.
    pub fn store_builder(&self) -> Option<StoreBuilder> {
        self.store_builder
    }

    /// Classifies failures with the engine's rules and the connectors'.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
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
