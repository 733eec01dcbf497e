//! Compiles a pipeline spec into one DataFusion plan DAG: every step becomes
//! a relation (registered as a view under its `registerAs` name), every load
//! step a sink fed by a logical plan over those relations.
//!
//! How sinks are built and sources opened is not decided here: a batch run
//! and a stream's micro-batches each supply their own [`Opening`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;

use crate::cache::{cached_table, CacheState};
use crate::connector::{LoadInput, Registry, Rewrite, Sink, Source};
use crate::error::{Error, Result, StepRef};
use crate::resume::{OpenedSource, OpenedTable};
use crate::session::{new_session, RuntimeOptions};
use crate::spec::StorageLevel;
use crate::spec::{Mode, OutputMode, PipelineSpec, StepInfo, StepKind};
use crate::state::aggregate::{
    inline_views, key_columns, reads_stream, stream_aggregates, StatefulAggregate,
};
use crate::state::dedup::{Expiry, StatefulDedup};
use crate::transform;
use crate::transform::{late_data_load, Watermark, DEDUPLICATE, WITH_WATERMARK};

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
    /// How the rows replace earlier ones (streaming aggregations).
    pub rewrite: Option<Rewrite>,
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

/// How a compile gets its sinks and opens its sources: a batch run builds
/// each once and resumes from the sinks or the offset log; a stream reuses
/// them from one micro-batch to the next.
#[async_trait]
pub(crate) trait Opening: Send {
    /// The sink of load step `info`.
    fn sink(&mut self, info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Sink>>;

    /// The source of extract step `info`.
    fn source(&mut self, info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Source>>;

    /// Opens `source` for this run; `sinks` are the loads after it, which
    /// may record where it left off.
    async fn open(
        &mut self,
        source: &OpenedSource,
        ctx: &SessionContext,
        sinks: &[Arc<dyn Sink>],
    ) -> Result<OpenedTable>;

    /// What `withWatermark` step `info` makes of `frame` (the rows it
    /// passes on, and the late rows for its `lateDataPath`): unchanged in a
    /// batch run. `sources` are the opened extract steps before it.
    async fn watermark(
        &mut self,
        info: &StepInfo,
        watermark: &Watermark,
        frame: DataFrame,
        sources: &[OpenedSource],
        ctx: &SessionContext,
    ) -> Result<(DataFrame, Option<DataFrame>)> {
        let _ = (info, watermark, sources, ctx);
        Ok((frame, None))
    }

    /// The rows a load writes when a stream's aggregation feeds it: the
    /// aggregation kept across micro-batches. `input` unchanged in a batch
    /// run.
    async fn stateful(
        &mut self,
        load: StatefulLoad<'_>,
        input: DataFrame,
        ctx: &SessionContext,
    ) -> Result<DataFrame> {
        let _ = (load, ctx);
        Ok(input)
    }

    /// The rows a stream's `deduplicate` passes on when its keys are kept
    /// across micro-batches, as a table of their own (`None`: `frame`
    /// unchanged, as in a batch run).
    async fn deduplicate(
        &mut self,
        step: DedupStep<'_>,
        frame: DataFrame,
        ctx: &SessionContext,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        let _ = (step, frame, ctx);
        Ok(None)
    }
}

/// A `deduplicate` step over a stream.
pub(crate) struct DedupStep<'a> {
    /// The step.
    pub info: &'a StepInfo,
    /// Its keys and when they expire.
    pub dedup: StatefulDedup,
    /// Every extract step opened for this run.
    pub sources: &'a [OpenedSource],
}

/// A load fed by an aggregation over a stream.
pub(crate) struct StatefulLoad<'a> {
    /// The load step.
    pub info: &'a StepInfo,
    /// The aggregation.
    pub aggregate: StatefulAggregate,
    /// Every extract step opened for this run.
    pub sources: &'a [OpenedSource],
    /// What each micro-batch writes.
    pub mode: OutputMode,
}

/// Builds the sink of load step `info` from the registry.
pub(crate) fn build_sink(info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Sink>> {
    let factory = registry
        .sink_factory(&info.step.method)
        .ok_or_else(|| unknown_method(info, &registry.sink_methods()))?;
    factory(info)
}

/// Builds the source of extract step `info` from the registry.
pub(crate) fn build_source(info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Source>> {
    let factory = registry
        .source_factory(&info.step.method)
        .ok_or_else(|| unknown_method(info, &registry.source_methods()))?;
    factory(info)
}

/// A compiled spec: the parts of a [`Pipeline`](crate::pipeline::Pipeline).
pub(crate) struct Compiled {
    /// Every step, in config order.
    pub steps: Vec<(StepRef, StepKind)>,
    /// The load steps, in config order.
    pub loads: Vec<Load>,
    /// The cached relations, in config order.
    pub caches: Vec<Cached>,
    /// The extract steps' sources, opened, in config order.
    pub sources: Vec<OpenedSource>,
    /// The session the plans belong to.
    pub ctx: SessionContext,
}

/// Compiles `spec`: sources are opened (through `opening`) to learn their
/// schemas, SQL and operators are planned; nothing is executed.
pub(crate) async fn compile(
    spec: &PipelineSpec,
    registry: &Registry,
    opening: &mut dyn Opening,
) -> Result<Compiled> {
    let runtime = RuntimeOptions {
        memory_limit: spec.memory_limit,
        spill_dir: spec.spill_dir.clone(),
        storage: spec.storage.clone(),
    };
    let ctx = new_session(registry, &runtime)?;
    // Sinks first: sources ask them where the last run left off.
    let sinks: Vec<(usize, Arc<dyn Sink>)> = spec
        .steps
        .iter()
        .filter(|info| info.kind == StepKind::Load)
        .map(|info| Ok((info.step.index, opening.sink(info, registry)?)))
        .collect::<Result<_>>()?;
    // The late rows of a watermark are a load too, recording positions.
    let mut late_sinks = HashMap::new();
    for info in &spec.steps {
        if let Some(late) = late_data_load(info)? {
            late_sinks.insert(
                info.step.index,
                (late.step.clone(), opening.sink(&late, registry)?),
            );
        }
    }
    let mut sinks = sinks;
    sinks.extend(
        late_sinks
            .iter()
            .map(|(index, (_, sink))| (*index, sink.clone())),
    );
    let mut compiler = Compiler {
        spec,
        registry,
        opening,
        sinks,
        late_sinks,
        registered: HashMap::new(),
        previous: None,
        unordered: Vec::new(),
        streams: Vec::new(),
        watermark: None,
        out: Compiled {
            steps: Vec::new(),
            loads: Vec::new(),
            caches: Vec::new(),
            sources: Vec::new(),
            ctx,
        },
    };
    for info in &spec.steps {
        compiler.step(info).await?;
    }
    Ok(compiler.out)
}

/// The state of a compile between steps.
struct Compiler<'a> {
    spec: &'a PipelineSpec,
    registry: &'a Registry,
    opening: &'a mut dyn Opening,
    /// Every load step's sink, by step index, in config order.
    sinks: Vec<(usize, Arc<dyn Sink>)>,
    /// The relations registered so far, by name.
    registered: HashMap<String, DataFrame>,
    /// The last step's relation and its label.
    previous: Option<(String, DataFrame)>,
    /// The tables of sources without a row order, with their step labels.
    unordered: Vec<(Arc<dyn TableProvider>, String)>,
    /// The tables of streaming sources.
    streams: Vec<Arc<dyn TableProvider>>,
    /// The sinks of late rows, by `withWatermark` step index.
    late_sinks: HashMap<usize, (StepRef, Arc<dyn Sink>)>,
    /// The pipeline's watermark, once its step is compiled.
    watermark: Option<Watermark>,
    out: Compiled,
}

impl Compiler<'_> {
    /// Adds step `info`: its relation, or its load.
    async fn step(&mut self, info: &StepInfo) -> Result<()> {
        self.out.steps.push((info.step.clone(), info.kind));
        let input = resolve_input(info, &self.registered, &self.previous)?;
        let (output, cache) = match info.kind {
            StepKind::Extract => (self.extract(info).await?, None),
            StepKind::Transform => {
                let out = transform::apply(&self.out.ctx, info, input.map(|(_, df)| df)).await?;
                let frame = self.watermark(info, out.frame).await?;
                (self.deduplicate(info, frame).await?, out.cache)
            }
            StepKind::Load => return self.load(info, input).await,
        };
        let output = self.cache(info, output, cache)?;
        self.register(info, output)
    }

    /// Opens the source of extract step `info`; its rows as a relation.
    async fn extract(&mut self, info: &StepInfo) -> Result<DataFrame> {
        let source = self.opening.source(info, self.registry)?;
        let mut opened = OpenedSource::new(info.step.clone(), source, &self.spec.name);
        let later_sinks: Vec<Arc<dyn Sink>> = self
            .sinks
            .iter()
            .filter(|(index, _)| *index > info.step.index)
            .map(|(_, sink)| sink.clone())
            .collect();
        let table = self
            .opening
            .open(&opened, &self.out.ctx, &later_sinks)
            .await?;
        let table = opened.opened(table);
        if !opened.source.ordered() {
            self.unordered.push((table.clone(), info.step.to_string()));
        }
        if opened.source.is_stream() {
            self.streams.push(table.clone());
        }
        self.out.sources.push(opened);
        Ok(self.out.ctx.read_table(table)?)
    }

    /// Adds load step `info`, writing `input`.
    async fn load(&mut self, info: &StepInfo, input: Option<(String, DataFrame)>) -> Result<()> {
        let sink = self
            .sinks
            .iter()
            .find(|(index, _)| *index == info.step.index)
            .map(|(_, sink)| sink.clone())
            .expect("every load step has a sink");
        let (input_name, input) = input.ok_or_else(|| {
            Error::config(
                format!("steps[{}].input", info.step.index),
                Some(info.step.clone()),
                "nothing to load: no step precedes this one; name one with \"input\"",
            )
        })?;
        let (input, rewrite) = self.stateful(info, input).await?;
        let checked = LoadInput {
            schema: input.schema().as_arrow(),
            unordered: reads_from(input.logical_plan(), &self.unordered),
            rewrite: rewrite.clone(),
        };
        sink.check_input(&checked).map_err(|error| {
            let path = match error.key {
                Some(key) => format!("steps[{}].config.{key}", info.step.index),
                None => format!("steps[{}]", info.step.index),
            };
            Error::config(path, Some(info.step.clone()), error.message)
        })?;
        self.out.loads.push(Load {
            step: info.step.clone(),
            input_name,
            sink,
            input,
            rewrite,
        });
        Ok(())
    }

    /// `frame`, as `withWatermark` step `info` passes it on (other steps:
    /// unchanged); its late rows become a load when it has a
    /// `lateDataPath`.
    async fn watermark(&mut self, info: &StepInfo, frame: DataFrame) -> Result<DataFrame> {
        if info.step.method != WITH_WATERMARK {
            return Ok(frame);
        }
        if self.watermark.is_some() {
            return Err(info.error(
                "column",
                "a pipeline has one watermark; remove the second withWatermark step",
            ));
        }
        let watermark = transform::watermark(info)?;
        let (frame, late) = self
            .opening
            .watermark(info, &watermark, frame, &self.out.sources, &self.out.ctx)
            .await?;
        self.watermark = Some(watermark);
        if let (Some(late), Some((step, sink))) = (late, self.late_sinks.get(&info.step.index)) {
            self.out.loads.push(Load {
                step: step.clone(),
                input_name: format!("the rows behind the watermark of {}", info.step),
                sink: sink.clone(),
                input: late,
                rewrite: None,
            });
        }
        Ok(frame)
    }

    /// `frame`, as `deduplicate` step `info` passes it on in a stream: its
    /// keys kept across micro-batches (other steps: unchanged).
    async fn deduplicate(&mut self, info: &StepInfo, frame: DataFrame) -> Result<DataFrame> {
        let over_stream = || -> Result<bool> {
            Ok(reads_stream(
                &inline_views(frame.logical_plan().clone())?,
                &self.streams,
            ))
        };
        if info.step.method != DEDUPLICATE || self.spec.mode != Mode::Streaming || !over_stream()? {
            return Ok(frame);
        }
        let settings = transform::dedup(info, &frame)?;
        let expiry = match (&self.watermark, settings.within_watermark) {
            (None, true) => return Err(info.error("withinWatermark", "withinWatermark forgets a key once the watermark passes it: add a withWatermark step before this one")),
            (Some(watermark), true) => {
                if frame.schema().field_with_unqualified_name(&watermark.column).is_err() {
                    return Err(info.error("withinWatermark", format!("the event-time column {} of the watermark is not among this step's input columns", watermark.column)));
                }
                let delay = i64::try_from(watermark.delay.as_micros()).unwrap_or(i64::MAX);
                Expiry::After(watermark.column.clone(), delay)
            }
            (Some(watermark), false) if settings.keys.contains(&watermark.column) => {
                Expiry::At(watermark.column.clone())
            }
            _ => Expiry::Never,
        };
        if self.spec.checkpoint_location.is_none() {
            return Err(Error::config("checkpointLocation", Some(info.step.clone()), "a stream's deduplicate keeps the keys it saw under checkpointLocation (as in Spark); set it"));
        }
        let step = DedupStep {
            info,
            dedup: StatefulDedup {
                keys: settings.keys,
                expiry,
            },
            sources: &self.out.sources,
        };
        let ctx = self.out.ctx.clone();
        match self.opening.deduplicate(step, frame.clone(), &ctx).await? {
            Some(table) => {
                self.streams.push(table.clone());
                Ok(ctx.read_table(table)?)
            }
            None => Ok(frame),
        }
    }

    /// `input` of load `info`, with a streaming aggregation it holds kept
    /// across micro-batches; how its rows replace earlier ones. Checks
    /// what `validate` can: the output mode, the watermark, the checkpoint.
    async fn stateful(
        &mut self,
        info: &StepInfo,
        input: DataFrame,
    ) -> Result<(DataFrame, Option<Rewrite>)> {
        if self.spec.mode != Mode::Streaming {
            return Ok((input, None));
        }
        let mode = self.spec.output_mode;
        let mut aggregates = stream_aggregates(input.logical_plan(), &self.streams)?;
        let error = |message: String| Error::config("outputMode", Some(info.step.clone()), message);
        if aggregates.len() > 1 {
            return Err(error("this load reads more than one aggregation of a stream; keep one GROUP BY over the stream per pipeline".into()));
        }
        let Some(aggregate) = aggregates.pop() else {
            if mode == OutputMode::Complete {
                return Err(error("outputMode complete needs an aggregation over the stream (GROUP BY): without one the whole result is the whole stream. Help: use append".into()));
            }
            return Ok((input, None));
        };
        let column = self.watermark.as_ref().map(|w| w.column.as_str());
        let aggregate = StatefulAggregate::new(aggregate, column).map_err(|e| Error::Plan {
            step: info.step.clone(),
            path: format!("steps[{}]", info.step.index),
            source: e,
        })?;
        if mode == OutputMode::Update && aggregate.session_key().is_some() {
            return Err(error("a session window's start moves as later rows join it, so outputMode update cannot merge it on its keys. Help: use append (a session is written once it closes) or complete".into()));
        }
        if mode == OutputMode::Append && !aggregate.has_event_time() {
            return Err(error("outputMode append writes each group once, when the watermark passes it: it needs withWatermark on the event-time column and GROUP BY window(...) (or the column) over it. Help: add them, or use outputMode update or complete".into()));
        }
        if self.spec.checkpoint_location.is_none() {
            return Err(Error::config("checkpointLocation", Some(info.step.clone()), "a streaming aggregation keeps its state under checkpointLocation (as in Spark); set it"));
        }
        let rewrite = match mode {
            OutputMode::Append => None,
            OutputMode::Complete => Some(Rewrite::Overwrite),
            OutputMode::Update => {
                let keys = key_columns(input.logical_plan(), &aggregate.aggregate)?;
                if keys.is_empty() {
                    return Err(error("outputMode update merges the changed groups on their keys: select every GROUP BY column (a window by window.start or window.end); on fewer keys the merge would fold groups together".into()));
                }
                Some(Rewrite::Merge(keys))
            }
        };
        let load = StatefulLoad {
            info,
            aggregate,
            sources: &self.out.sources,
            mode,
        };
        let input = self.opening.stateful(load, input, &self.out.ctx).await?;
        Ok((input, rewrite))
    }

    /// `output`, cached when the step or its method asks for it.
    fn cache(
        &mut self,
        info: &StepInfo,
        output: DataFrame,
        level: Option<StorageLevel>,
    ) -> Result<DataFrame> {
        let Some(level) = level.or(info.cache) else {
            return Ok(output);
        };
        let ctx = &self.out.ctx;
        let plan = output.logical_plan().clone();
        let (table, state) = cached_table(plan.clone(), ctx.state(), level)?;
        // The cache has the row order (or none) of what it holds.
        for label in reads_from(&plan, &self.unordered) {
            self.unordered.push((table.clone(), label));
        }
        self.out.caches.push(Cached {
            step: info.step.clone(),
            state,
            plan,
        });
        Ok(ctx.read_table(table)?)
    }

    /// Registers `output` under the step's name, if it has one; it is the
    /// next step's default input either way.
    fn register(&mut self, info: &StepInfo, output: DataFrame) -> Result<()> {
        let label = match &info.step.name {
            Some(name) => {
                let view = output.clone().into_view();
                self.out.ctx.register_table(name.as_str(), view)?;
                self.registered.insert(name.clone(), output.clone());
                name.clone()
            }
            None => format!("steps[{}]", info.step.index),
        };
        self.previous = Some((label, output));
        Ok(())
    }
}

/// The labels of the `sources` whose tables `plan` scans, through views.
fn reads_from(plan: &LogicalPlan, sources: &[(Arc<dyn TableProvider>, String)]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let mut labels: Vec<String> = sources
            .iter()
            .filter(|(table, _)| std::ptr::addr_eq(Arc::as_ptr(table), Arc::as_ptr(&provider)))
            .map(|(_, label)| label.clone())
            .collect();
        if let Some(view) = provider.get_logical_plan() {
            labels.extend(reads_from(&view, sources));
        }
        for label in labels {
            if !found.contains(&label) {
                found.push(label);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
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
