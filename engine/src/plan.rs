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
use crate::connector::{LoadInput, Registry, Sink, Source};
use crate::error::{Error, Result, StepRef};
use crate::resume::{OpenedSource, OpenedTable};
use crate::session::{new_session, RuntimeOptions};
use crate::spec::StorageLevel;
use crate::spec::{PipelineSpec, StepInfo, StepKind};
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
    let mut compiler = Compiler {
        spec,
        registry,
        opening,
        sinks,
        registered: HashMap::new(),
        previous: None,
        unordered: Vec::new(),
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
                (out.frame, out.cache)
            }
            StepKind::Load => return self.load(info, input),
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
        self.out.sources.push(opened);
        Ok(self.out.ctx.read_table(table)?)
    }

    /// Adds load step `info`, writing `input`.
    fn load(&mut self, info: &StepInfo, input: Option<(String, DataFrame)>) -> Result<()> {
        let (_, sink) = self
            .sinks
            .iter()
            .find(|(index, _)| *index == info.step.index)
            .expect("every load step has a sink");
        let (input_name, input) = input.ok_or_else(|| {
            Error::config(
                format!("steps[{}].input", info.step.index),
                Some(info.step.clone()),
                "nothing to load: no step precedes this one; name one with \"input\"",
            )
        })?;
        let checked = LoadInput {
            schema: input.schema().as_arrow(),
            unordered: reads_from(input.logical_plan(), &self.unordered),
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
            sink: sink.clone(),
            input,
        });
        Ok(())
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
