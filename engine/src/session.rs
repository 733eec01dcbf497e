//! The DataFusion session and runtime a pipeline runs in, built in one place
//! (as datafusion-cli does): session settings, the memory pool that bounds a
//! run's memory, the disk manager operators spill to, and the out-of-memory
//! error a run gets when even spilling is not enough.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::{QueryPlanner, SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryLimit as PoolLimit, MemoryPool, TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::connector::{BoxError, Registry};
use crate::error::{Error, Result};
use crate::scan_statistics;
use crate::spec::{MemoryLimit, StorageOptions};
use crate::spillable_join::SpillableJoins;
use crate::storage::Stores;
use crate::window::window_functions;

/// The share of the machine's memory a run may use when neither
/// `--memory-limit` nor `"memoryLimit"` says otherwise, in percent.
pub const DEFAULT_MEMORY_PERCENT: u64 = 75;

/// How many of the largest memory consumers an out-of-memory error names.
const TOP_CONSUMERS: usize = 5;

/// A sort keeps at most 1/this of the limit back for merging its spills.
const SORT_MERGE_SHARE: u64 = 64;

/// What a run's runtime is built from, besides the connectors.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// The memory limit; `None`: [`DEFAULT_MEMORY_PERCENT`] of the machine's.
    pub memory_limit: Option<MemoryLimit>,
    /// Where operators spill; `None`: the system temp dir.
    pub spill_dir: Option<PathBuf>,
    /// The pipeline's object-store options.
    pub storage: StorageOptions,
}

impl RuntimeOptions {
    /// The limit in force: the one given, else the machine default (`None`
    /// when the machine's memory cannot be read: no limit).
    pub fn effective_limit(&self) -> Option<MemoryLimit> {
        self.memory_limit.or_else(default_memory_limit)
    }
}

/// [`DEFAULT_MEMORY_PERCENT`] of the machine's memory: the physical memory,
/// or the cgroup's limit when the process runs in a smaller container.
pub fn default_memory_limit() -> Option<MemoryLimit> {
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| meminfo_total(&text));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let total = match (physical, cgroup) {
        (Some(p), Some(c)) => p.min(c),
        (p, c) => p.or(c)?,
    };
    Some(MemoryLimit::from_bytes(
        total / 100 * DEFAULT_MEMORY_PERCENT,
    ))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The physical planner: DataFusion's, plus connectors' extension nodes.
struct PipelinePlanner {
    extensions: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>,
}

impl std::fmt::Debug for PipelinePlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PipelinePlanner({} extension planners)",
            self.extensions.len()
        )
    }
}

#[async_trait]
impl QueryPlanner for PipelinePlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(self.extensions.clone())
            .create_physical_plan(plan, session)
            .await
    }
}

/// The DataFusion session every pipeline runs in. Identifiers are
/// case-sensitive as written (no lower-casing), matching column names in
/// files and tables the way Spark users expect. DataFusion settings can be
/// tuned through `DATAFUSION_*` environment variables (e.g.
/// `DATAFUSION_EXECUTION_TARGET_PARTITIONS=8`). The run's memory is bounded
/// by `options`' limit: joins, sorts and aggregations spill to its spill
/// directory beyond it.
pub fn new_session(registry: &Registry, options: &RuntimeOptions) -> Result<SessionContext> {
    let limit = options.effective_limit();
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(session_config(limit)?)
        .with_runtime_env(runtime(registry, options, limit)?)
        .with_statistics_registry(scan_statistics::registry())
        .with_physical_optimizer_rules(optimizer_rules(limit))
        .with_query_planner(Arc::new(PipelinePlanner {
            extensions: registry.extension_planners().to_vec(),
        }))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for function in window_functions() {
        ctx.register_udf(function);
    }
    Ok(ctx)
}

/// The settings: ours, then `DATAFUSION_*` variables, which win.
fn session_config(limit: Option<MemoryLimit>) -> Result<SessionConfig> {
    let mut config = SessionConfig::from_env()?
        .with_information_schema(true)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let unset = |name: &str| std::env::var_os(name).is_none();
    if unset("DATAFUSION_EXECUTION_MINIMUM_PARALLEL_OUTPUT_FILES")
        && unset("DATAFUSION_EXECUTION_PARQUET_ALLOW_SINGLE_FILE_PARALLELISM")
    {
        // One Parquet writer per core beats DataFusion's default of column-
        // parallel writers on few cores: faster and less memory.
        let cores = config.target_partitions().to_string();
        let options = config.options_mut();
        options.set("datafusion.execution.minimum_parallel_output_files", &cores)?;
        options.execution.parquet.allow_single_file_parallelism = false;
    }
    if unset("DATAFUSION_OPTIMIZER_SUBSET_REPARTITION_THRESHOLD") {
        // An input already hash-partitioned on some of the grouping (or
        // join) keys across every target partition is used as it is, as
        // DataFusion does from 4 partitions on: on fewer cores it would
        // otherwise repartition a join's output before aggregating it, and
        // lose the order a sort-merge join produces (for the join + group
        // by benchmark, 1.4-1.7x the time).
        let partitions = config.target_partitions();
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.subset_repartition_threshold =
            optimizer.subset_repartition_threshold.min(partitions);
    }
    if unset("DATAFUSION_OPTIMIZER_USE_STATISTICS_REGISTRY") {
        // Join planning sees CSV/JSON scan sizes (see `scan_statistics`).
        config.options_mut().optimizer.use_statistics_registry = true;
    }
    if let (Some(limit), true) = (
        limit,
        unset("DATAFUSION_EXECUTION_SORT_SPILL_RESERVATION_BYTES"),
    ) {
        // What each sort holds back to merge its spills: DataFusion's 10 MB
        // would not leave a small limit anything to sort with.
        let execution = &mut config.options_mut().execution;
        let share = usize::try_from(limit.bytes() / SORT_MERGE_SHARE).unwrap_or(usize::MAX);
        execution.sort_spill_reservation_bytes = execution.sort_spill_reservation_bytes.min(share);
    }
    Ok(config)
}

/// DataFusion's physical optimizer rules, plus [`SpillableJoins`] under a
/// memory limit.
fn optimizer_rules(
    limit: Option<MemoryLimit>,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = PhysicalOptimizer::new().rules;
    if let Some(limit) = limit {
        let bytes = usize::try_from(limit.bytes()).unwrap_or(usize::MAX);
        let after = rules.iter().position(|r| r.name() == "join_selection");
        let joins = SpillableJoins::new(bytes, scan_statistics::registry());
        rules.insert(after.map_or(0, |i| i + 1), Arc::new(joins));
    }
    rules
}

/// The runtime: a fair spilling memory pool of `limit` (which names its
/// largest consumers when exhausted), a disk manager in the spill dir, and
/// the object stores the connectors build from the `storage` options.
fn runtime(
    registry: &Registry,
    options: &RuntimeOptions,
    limit: Option<MemoryLimit>,
) -> Result<Arc<RuntimeEnv>> {
    let mode = match &options.spill_dir {
        Some(dir) => DiskManagerMode::Directories(vec![dir.clone()]),
        None => DiskManagerMode::OsTmpDirectory,
    };
    let stores = Stores::new(options.storage.clone(), registry.store_builder());
    let mut builder = RuntimeEnvBuilder::new()
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(mode))
        .with_object_store_registry(Arc::new(stores));
    if let Some(limit) = limit {
        let bytes = usize::try_from(limit.bytes()).unwrap_or(usize::MAX);
        let top = NonZeroUsize::new(TOP_CONSUMERS).expect("non-zero");
        let pool: Arc<dyn MemoryPool> =
            Arc::new(TrackConsumersPool::new(FairSpillPool::new(bytes), top));
        builder = builder.with_memory_pool(pool);
    }
    builder.build_arc().map_err(|err| match &options.spill_dir {
        Some(dir) => spill_dir_error(dir, err),
        None => err.into(),
    })
}

fn spill_dir_error(dir: &Path, err: DataFusionError) -> Error {
    Error::config(
        "--spill-dir",
        None,
        format!(
            "cannot use {} as the spill directory: {}",
            dir.display(),
            err.find_root()
        ),
    )
}

/// A run that needed more memory than its limit, even when spilling: the
/// cause of a step's error, naming the limit and DataFusion's account of
/// the largest consumers.
#[derive(Debug)]
pub struct OutOfMemory {
    /// The limit, as shown (`1.0 GiB`).
    limit: String,
    /// DataFusion's error.
    cause: BoxError,
}

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let detail = resources_exhausted(self.cause.as_ref()).unwrap_or_default();
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        write!(
            f,
            "out of memory: the run needs more than the memory limit of {} \
             (--memory-limit / \"memoryLimit\") even when spilling to disk; {detail}. \
             Help: raise the limit, or reduce what must be held at once (e.g. the build side of a join)",
            self.limit
        )
    }
}

impl std::error::Error for OutOfMemory {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause.as_ref())
    }
}

/// `err`, or when it is a step failing because the memory pool of `ctx`
/// was exhausted, that step failing with [`OutOfMemory`].
pub(crate) fn out_of_memory(ctx: &SessionContext, err: Error) -> Error {
    match err {
        Error::Step { step, source } if resources_exhausted(source.as_ref()).is_some() => {
            let limit = match ctx.runtime_env().memory_pool.memory_limit() {
                PoolLimit::Finite(bytes) => MemoryLimit::from_bytes(bytes as u64).to_string(),
                PoolLimit::Infinite | PoolLimit::Unknown => "no limit".to_string(),
            };
            let cause = OutOfMemory {
                limit,
                cause: source,
            };
            Error::step(&step, cause)
        }
        other => other,
    }
}

/// DataFusion's explanation when `err` (or an error it wraps) is an
/// exhausted memory pool.
fn resources_exhausted(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(err) = next {
        let df = err
            .downcast_ref::<DataFusionError>()
            .or_else(|| err.downcast_ref::<Arc<DataFusionError>>().map(Arc::as_ref));
        if let Some(DataFusionError::ResourcesExhausted(detail)) = df.map(|e| e.find_root()) {
            return Some(detail.clone());
        }
        next = err.source();
    }
    // Wrappers that display their cause but do not expose it as `source()`.
    const PREFIX: &str = "Resources exhausted: ";
    let text = err.to_string();
    text.find(PREFIX)
        .map(|at| text[at + PREFIX.len()..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_total_memory() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(meminfo_total(text), Some(24_576_000 * 1024));
        assert_eq!(meminfo_total("MemFree: 1 kB"), None);
    }

    #[test]
    fn finds_exhausted_pool_inside_wrappers() {
        let oom = DataFusionError::ResourcesExhausted("HashJoinInput needs 1 MB".into());
        let wrapped = DataFusionError::Shared(Arc::new(oom.context("joining")));
        let external = DataFusionError::External(Box::new(wrapped));
        assert_eq!(
            resources_exhausted(&external).as_deref(),
            Some("HashJoinInput needs 1 MB")
        );
        let other = DataFusionError::Execution("bad row".into());
        assert_eq!(resources_exhausted(&other), None);
    }
}
