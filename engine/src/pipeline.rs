//! A compiled pipeline and what can be done with it: run it once (every
//! load concurrently, all committing together), list the positions it
//! reaches, or explain its plans.

use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::displayable;

use crate::commit::CommitGate;
use crate::connector::{Mark, Registry, SinkReport};
use crate::error::{Result, StepRef};
use crate::plan::{compile, Cached, Load, Opening};
use crate::progress::RowCounter;
use crate::resume::OpenedSource;
use crate::run::{write_loads, BatchOpening, RunSummary, StepReport};
use crate::session::out_of_memory;
use crate::spec::{PipelineSpec, StepKind};

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

impl Pipeline {
    /// Validates and compiles `spec` for a batch run. Sources are opened to
    /// learn their schemas (a missing input fails here, exit 1); SQL and
    /// operators are planned (a bad query fails here, exit 2). Nothing is
    /// executed.
    pub async fn compile(spec: &PipelineSpec, registry: &Registry) -> Result<Pipeline> {
        Self::compile_with(spec, registry, &mut BatchOpening::new(spec)).await
    }

    /// [`compile`](Self::compile), with sinks and sources from `opening`
    /// (a stream's micro-batch reuses them).
    pub(crate) async fn compile_with(
        spec: &PipelineSpec,
        registry: &Registry,
        opening: &mut dyn Opening,
    ) -> Result<Pipeline> {
        // A config error about a value from the environment shows the
        // `${VAR}` written, not the value.
        let compiled = compile(spec, registry, opening)
            .await
            .map_err(|err| spec.env_values.redact_error(err))?;
        Ok(Pipeline {
            name: spec.name.clone(),
            steps: compiled.steps,
            loads: compiled.loads,
            caches: compiled.caches,
            sources: compiled.sources,
            ctx: compiled.ctx,
        })
    }

    /// Runs every load concurrently and commits all of them, or none if any
    /// fails or `cancel` resolves before the commit point.
    pub async fn run(&self, cancel: impl Future<Output = ()>) -> Result<RunSummary> {
        self.run_counted(cancel, None).await
    }

    /// [`run`](Self::run), counting the rows passed to the loads in
    /// `progress` as they go.
    pub async fn run_counted(
        &self,
        cancel: impl Future<Output = ()>,
        progress: Option<&RowCounter>,
    ) -> Result<RunSummary> {
        let started = Instant::now();
        let gates = CommitGate::for_participants(self.loads.len());
        let (marks, starts) = (self.marks(), self.starts());
        let reports = write_loads(&self.loads, &gates, &marks, &starts, progress, cancel)
            .await
            .map_err(|err| out_of_memory(&self.ctx, err))?;
        for source in &self.sources {
            source.committed().await?;
        }
        let mut summary = self.summarize(reports, started.elapsed());
        summary.commit = gates
            .first()
            .and_then(CommitGate::opened_at)
            .map(|t| t.elapsed());
        Ok(summary)
    }

    fn summarize(&self, loads: Vec<(SinkReport, Duration)>, elapsed: Duration) -> RunSummary {
        let steps = self
            .steps
            .iter()
            .map(|(step, kind)| {
                let mut report = StepReport {
                    step: step.clone(),
                    kind: *kind,
                    rows: None,
                    bytes: None,
                    duration: None,
                    detail: String::new(),
                };
                // A load step's sink, or the late rows of a watermark step.
                let load = self
                    .loads
                    .iter()
                    .zip(&loads)
                    .find(|(l, _)| l.step.index == step.index);
                if let Some((load, (sink, took))) = load {
                    report.rows = Some(sink.rows);
                    report.bytes = Some(sink.bytes);
                    report.duration = Some(*took);
                    report.detail = format!("from {}; {}", load.input_name, sink.detail);
                } else if let Some(cached) = self.caches.iter().find(|c| c.step == *step) {
                    report.rows = Some(cached.state.rows());
                    report.detail = format!(
                        "cached {} (computed {}x)",
                        cached.state.level(),
                        cached.state.computations()
                    );
                }
                report
            })
            .collect();
        RunSummary {
            pipeline: self.name.clone(),
            steps,
            elapsed,
            commit: None,
        }
    }

    /// Every position this run reaches, to be committed with the data.
    pub fn marks(&self) -> Vec<Mark> {
        self.sources
            .iter()
            .flat_map(OpenedSource::reached)
            .collect()
    }

    /// Where this run started reading each key of [`marks`](Self::marks)
    /// (keys read from the source's beginning are absent).
    pub fn starts(&self) -> Vec<Mark> {
        self.sources
            .iter()
            .flat_map(OpenedSource::started)
            .collect()
    }

    /// The session the pipeline runs in.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
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
