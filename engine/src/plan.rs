//! Compiles a pipeline spec into one DataFusion plan DAG: every step becomes
//! a relation (registered as a view under its `registerAs` name), every load
//! step a sink fed by a logical plan over those relations.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::dataframe::DataFrame;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::{QueryPlanner, SessionConfig, SessionContext};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::cache::{cached_table, CacheState, StorageLevel};
use crate::connector::{Mark, Registry, Resume, Sink, Source};
use crate::error::{Error, Result, StepRef};
use crate::spec::{PipelineSpec, StepInfo, StepKind};
use crate::state_file::StateFile;
use crate::stream::StreamState;
use crate::transform;

/// A load step ready to run: its sink and the plan that feeds it.
#[derive(Debug)]
pub struct Load {
    /// Which step this is.
    pub step: StepRef,
    /// The relation it writes (a name, or the previous step).
    pub input_name: String,
    /// The sink built from the step's config.
    pub sink: Arc<dyn Sink>,
    /// The plan producing the rows to write.
    pub input: DataFrame,
}

/// A cached relation and the step that asked for it.
#[derive(Debug)]
pub struct Cached {
    /// The step whose output is cached.
    pub step: StepRef,
    /// Shared state: computation count, rows.
    pub state: Arc<CacheState>,
    /// The plan computed into the cache.
    pub plan: LogicalPlan,
}

/// An opened source and the positions this run will reach in it.
#[derive(Debug)]
pub struct OpenedSource {
    /// The extract step.
    pub step: StepRef,
    /// The source.
    pub source: Arc<dyn Source>,
    /// Prefix of this source's mark app ids.
    app_id_prefix: String,
    /// Source key → position reached by this run.
    pub marks: Vec<(String, i64)>,
    /// Source key → position this run started from (absent: the start).
    pub start: HashMap<String, i64>,
    /// A batch run's offset log under `checkpointLocation`, when no sink
    /// records this source's positions: stored after the loads commit.
    pub(crate) offset_log: Option<StateFile>,
}

/// A source's table for one run, and the positions it reads between.
pub(crate) struct OpenedTable {
    /// The table.
    pub table: Arc<dyn TableProvider>,
    /// Key → position reached.
    pub marks: Vec<(String, i64)>,
    /// Key → position started from.
    pub start: HashMap<String, i64>,
}

impl OpenedSource {
    /// The globally unique app id of one of this source's keys.
    pub(crate) fn app_id(&self, key: &str) -> String {
        format!("{}/{key}", self.app_id_prefix)
    }

    /// The prefix of this source's app ids.
    pub(crate) fn scope(&self) -> &str {
        &self.app_id_prefix
    }

    /// Opens the source at `resume`.
    pub(crate) async fn open(&self, ctx: &SessionContext, resume: Resume) -> Result<OpenedTable> {
        let opened = self
            .source
            .open(&ctx.state(), &resume)
            .await
            .map_err(|e| Error::from_connector(&self.step, e))?;
        let mut start = resume.marks;
        start.extend(opened.start);
        Ok(OpenedTable {
            table: opened.provider,
            marks: opened.marks,
            start,
        })
    }
}

/// A compiled pipeline: nothing has run, nothing has been written.
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// Every step, in config order.
    pub steps: Vec<(StepRef, StepKind)>,
    /// The load steps, in config order.
    pub loads: Vec<Load>,
    /// The cached relations, in config order.
    pub caches: Vec<Cached>,
    /// The extract steps' sources, in config order.
    pub sources: Vec<OpenedSource>,
    ctx: SessionContext,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .field("loads", &self.loads)
            .field("caches", &self.caches)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
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
/// `DATAFUSION_EXECUTION_TARGET_PARTITIONS=8`).
pub fn new_session(registry: &Registry) -> Result<SessionContext> {
    let mut config = SessionConfig::from_env()?
        .with_information_schema(true)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let writers_set = std::env::var_os("DATAFUSION_EXECUTION_MINIMUM_PARALLEL_OUTPUT_FILES")
        .is_some()
        || std::env::var_os("DATAFUSION_EXECUTION_PARQUET_ALLOW_SINGLE_FILE_PARALLELISM").is_some();
    if !writers_set {
        // One Parquet writer per core beats DataFusion's default of column-
        // parallel writers on few cores: faster and less memory.
        let cores = config.target_partitions().to_string();
        let options = config.options_mut();
        options.set("datafusion.execution.minimum_parallel_output_files", &cores)?;
        options.execution.parquet.allow_single_file_parallelism = false;
    }
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_query_planner(Arc::new(PipelinePlanner {
            extensions: registry.extension_planners().to_vec(),
        }))
        .build();
    Ok(SessionContext::new_with_state(state))
}

impl Pipeline {
    /// Validates and compiles `spec`. Sources are opened to learn their
    /// schemas (a missing input fails here, exit 1); SQL and operators are
    /// planned (a bad query fails here, exit 2). Nothing is executed.
    pub async fn compile(spec: &PipelineSpec, registry: &Registry) -> Result<Pipeline> {
        Self::compile_with(spec, registry, None).await
    }

    /// [`compile`](Self::compile), for one micro-batch of a stream when
    /// `stream` is given: its sources and sinks are reused, static sources
    /// read once, and streaming sources resume where the last batch ended.
    pub(crate) async fn compile_with(
        spec: &PipelineSpec,
        registry: &Registry,
        stream: Option<&mut StreamState>,
    ) -> Result<Pipeline> {
        // A config error about a value from the environment shows the
        // `${VAR}` written, not the value.
        Self::compile_inner(spec, registry, stream)
            .await
            .map_err(|err| spec.env_values.redact_error(err))
    }

    async fn compile_inner(
        spec: &PipelineSpec,
        registry: &Registry,
        mut stream: Option<&mut StreamState>,
    ) -> Result<Pipeline> {
        let ctx = new_session(registry)?;
        let infos = spec.step_infos()?;
        let checkpoint_location = spec.stream_settings()?.checkpoint_location;
        let mut registered: HashMap<String, DataFrame> = HashMap::new();
        let mut previous: Option<(String, DataFrame)> = None;
        let mut steps = Vec::new();
        let mut loads = Vec::new();
        let mut caches = Vec::new();
        let mut sources = Vec::new();
        // Sinks first: sources ask them where the last run left off.
        let mut sinks = HashMap::new();
        for info in infos.iter().filter(|i| i.kind == StepKind::Load) {
            let index = info.step.index;
            let built = stream.as_ref().and_then(|s| s.sinks.get(&index).cloned());
            let sink = match built {
                Some(sink) => sink,
                None => {
                    let factory = registry
                        .sink_factory(&info.step.method)
                        .ok_or_else(|| unknown_method(info, &registry.sink_methods()))?;
                    let sink = factory(info)?;
                    if let Some(stream) = stream.as_mut() {
                        stream.sinks.insert(index, sink.clone());
                    }
                    sink
                }
            };
            sinks.insert(index, sink);
        }

        for info in infos {
            steps.push((info.step.clone(), info.kind));
            let input = resolve_input(&info, &registered, &previous)?;
            let (output, cache) = match info.kind {
                StepKind::Extract => {
                    let index = info.step.index;
                    let built = stream.as_ref().and_then(|s| s.sources.get(&index).cloned());
                    let source = match built {
                        Some(source) => source,
                        None => {
                            let factory = registry
                                .source_factory(&info.step.method)
                                .ok_or_else(|| unknown_method(&info, &registry.source_methods()))?;
                            let source = factory(&info)?;
                            if let Some(stream) = stream.as_mut() {
                                stream.sources.insert(index, source.clone());
                            }
                            source
                        }
                    };
                    let label = info
                        .step
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("steps[{index}]"));
                    let mut opened = OpenedSource {
                        step: info.step.clone(),
                        source,
                        app_id_prefix: format!("dataflow/{}/{label}", spec.name),
                        marks: Vec::new(),
                        start: HashMap::new(),
                        offset_log: None,
                    };
                    let provider = match stream.as_mut() {
                        Some(stream) => stream.open(&opened, &ctx, sinks.values()).await?,
                        None => {
                            let mut resume = resume_point(&opened, sinks.values()).await?;
                            if let (false, Some(dir)) =
                                (resume.recorded_by_sinks, &checkpoint_location)
                            {
                                let log = StateFile::new(Path::new(dir), opened.scope());
                                resume.marks = log.load()?.into_iter().collect();
                                opened.offset_log = Some(log);
                            }
                            opened.open(&ctx, resume).await?
                        }
                    };
                    opened.marks = provider.marks;
                    opened.start = provider.start;
                    sources.push(opened);
                    (ctx.read_table(provider.table)?, None)
                }
                StepKind::Transform => {
                    let out = transform::apply(&ctx, &info, input.map(|(_, df)| df)).await?;
                    (out.frame, out.cache)
                }
                StepKind::Load => {
                    let sink = sinks
                        .remove(&info.step.index)
                        .expect("every load step has a sink");
                    let (input_name, input) = input.ok_or_else(|| {
                        Error::config(
                            format!("steps[{}].input", info.step.index),
                            Some(info.step.clone()),
                            "nothing to load: no step precedes this one; name one with \"input\"",
                        )
                    })?;
                    loads.push(Load {
                        step: info.step.clone(),
                        input_name,
                        sink,
                        input,
                    });
                    continue;
                }
            };
            let level = cache.or(info.cache.then_some(StorageLevel::Memory));
            let output = match level {
                Some(level) => {
                    let plan = output.logical_plan().clone();
                    let (table, state) = cached_table(plan.clone(), ctx.state(), level)?;
                    caches.push(Cached {
                        step: info.step.clone(),
                        state,
                        plan,
                    });
                    ctx.read_table(table)?
                }
                None => output,
            };
            let label = match &info.step.name {
                Some(name) => {
                    ctx.register_table(name.as_str(), output.clone().into_view())?;
                    registered.insert(name.clone(), output.clone());
                    name.clone()
                }
                None => format!("steps[{}]", info.step.index),
            };
            previous = Some((label, output));
        }
        Ok(Pipeline {
            name: spec.name.clone(),
            steps,
            loads,
            caches,
            sources,
            ctx,
        })
    }

    /// Every position this run reaches, to be committed with the data.
    pub fn marks(&self) -> Vec<Mark> {
        self.sources
            .iter()
            .flat_map(|s| {
                s.marks.iter().map(|(key, version)| Mark {
                    app_id: s.app_id(key),
                    version: *version,
                })
            })
            .collect()
    }

    /// Where this run started reading each key of [`marks`](Self::marks)
    /// (keys read from the source's beginning are absent).
    pub fn starts(&self) -> Vec<Mark> {
        self.sources
            .iter()
            .flat_map(|s| {
                s.marks.iter().filter_map(|(key, _)| {
                    Some(Mark {
                        app_id: s.app_id(key),
                        version: *s.start.get(key)?,
                    })
                })
            })
            .collect()
    }

    /// The session the pipeline runs in.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// The state of the session, for physical planning.
    pub fn state(&self) -> SessionState {
        self.ctx.state()
    }

    /// Renders the optimized logical plan and the physical plan of every
    /// load (and every cached relation), as `run-pipeline explain` prints.
    pub async fn explain(&self) -> Result<String> {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pipeline \"{}\": {} steps, {} load(s), {} cached relation(s)",
            self.name,
            self.steps.len(),
            self.loads.len(),
            self.caches.len()
        );
        for cached in &self.caches {
            let _ = writeln!(
                out,
                "\n== {} cache {} ==",
                cached.step,
                cached.state.level()
            );
            self.explain_plan(&mut out, &cached.plan).await?;
        }
        for load in &self.loads {
            let _ = writeln!(out, "\n== {} <- {} ==", load.step, load.input_name);
            self.explain_plan(&mut out, load.input.logical_plan())
                .await?;
        }
        Ok(out)
    }

    async fn explain_plan(&self, out: &mut String, plan: &LogicalPlan) -> Result<()> {
        let state = self.ctx.state();
        let optimized = state.optimize(plan)?;
        let physical = state.create_physical_plan(&optimized).await?;
        let _ = writeln!(out, "Logical plan:\n{}", optimized.display_indent());
        let _ = write!(
            out,
            "Physical plan:\n{}",
            displayable(physical.as_ref()).indent(true)
        );
        Ok(())
    }
}

/// Asks every sink where `source` left off: per key, the lowest version any
/// mark-recording sink holds (so no sink misses data); a key some such sink
/// lacks is absent (start from the beginning). When the sinks disagree,
/// `until` bounds the run to the next recorded position (see below).
pub(crate) async fn resume_point<'a>(
    source: &OpenedSource,
    sinks: impl Iterator<Item = &'a Arc<dyn Sink>>,
) -> Result<Resume> {
    let keys = source
        .source
        .resume_keys()
        .await
        .map_err(|e| Error::from_connector(&source.step, e))?;
    let mut resume = Resume {
        scope: source.app_id_prefix.clone(),
        ..Resume::default()
    };
    if keys.is_empty() {
        return Ok(resume);
    }
    let app_ids: Vec<String> = keys.iter().map(|k| source.app_id(k)).collect();
    // Per key, what each mark-recording sink holds (None: nothing).
    let mut recorded_by: HashMap<String, Vec<Option<i64>>> = HashMap::new();
    for sink in sinks {
        let recorded = sink
            .recorded_marks(&app_ids)
            .await
            .map_err(|e| Error::from_connector(&source.step, e))?;
        let Some(recorded) = recorded else { continue };
        resume.recorded_by_sinks = true;
        for (key, app_id) in keys.iter().zip(&app_ids) {
            recorded_by
                .entry(key.clone())
                .or_default()
                .push(recorded.get(app_id).copied());
        }
    }
    let lowest = |versions: &[Option<i64>]| -> Option<i64> {
        versions
            .iter()
            .copied()
            .collect::<Option<Vec<i64>>>()?
            .into_iter()
            .min()
    };
    resume.marks = recorded_by
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), lowest(v)?)))
        .collect();
    // Sinks commit one after another: a run that died between two commits
    // leaves some sinks a batch ahead. Then this run reads exactly up to the
    // next position some sink recorded (the batch the sinks ahead hold, which
    // they skip) and no further, so each sink either holds all of it or none.
    let diverged = recorded_by
        .values()
        .any(|v| v.iter().any(|version| *version != v[0]));
    if diverged {
        for (key, versions) in &recorded_by {
            let low = lowest(versions);
            let next = versions
                .iter()
                .flatten()
                .copied()
                .filter(|v| low.is_none_or(|low| *v > low))
                .min();
            if let Some(bound) = next.or(low) {
                resume.until.insert(key.clone(), bound);
            }
        }
        tracing::info!(
            "{}: its sinks recorded different positions (a run stopped between their commits); this run catches up the sinks behind, reading up to {:?}",
            source.step,
            resume.until
        );
    }
    Ok(resume)
}

fn resolve_input(
    info: &StepInfo,
    registered: &HashMap<String, DataFrame>,
    previous: &Option<(String, DataFrame)>,
) -> Result<Option<(String, DataFrame)>> {
    match &info.input {
        Some(name) => match registered.get(name) {
            Some(df) => Ok(Some((name.clone(), df.clone()))),
            None => {
                let mut known: Vec<&str> = registered.keys().map(String::as_str).collect();
                known.sort_unstable();
                Err(Error::config(
                    format!("steps[{}].input", info.step.index),
                    Some(info.step.clone()),
                    format!(
                        "no earlier step is registered as \"{name}\"; registered before this step: {}",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                ))
            }
        },
        None => Ok(previous.clone()),
    }
}

fn unknown_method(info: &StepInfo, known: &[&str]) -> Error {
    Error::config(
        format!("steps[{}].method", info.step.index),
        Some(info.step.clone()),
        format!(
            "unknown {} method \"{}\"; known: {}",
            info.kind,
            info.step.method,
            known.join(", ")
        ),
    )
}
