//! Batch execution: every load runs concurrently over the compiled plan,
//! stages its output, and all commit together through one [`CommitGate`];
//! a batch run opens its sources at their resume point ([`BatchOpening`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::execution::context::SessionContext;

use crate::commit::CommitGate;
use crate::connector::{Mark, Registry, Sink, SinkReport, Source, WriteContext};
use crate::error::{Error, Result, StepRef};
use crate::plan::{build_sink, build_source, Load, Opening};
use crate::progress::{counted, RowCounter};
use crate::resume::{resume_with_log, OpenedSource, OpenedTable};
use crate::spec::{PipelineSpec, StepInfo, StepKind};

/// One line of the run summary.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step.
    pub step: StepRef,
    /// extract, transform or load.
    pub kind: StepKind,
    /// Rows written (loads) or cached (cached steps); `None` for steps that
    /// are fused into the plan of the loads that read them.
    pub rows: Option<u64>,
    /// Bytes written (loads).
    pub bytes: Option<u64>,
    /// Wall time of the step (loads).
    pub duration: Option<Duration>,
    /// A short note: table version, cache level, ...
    pub detail: String,
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Pipeline name.
    pub pipeline: String,
    /// One report per step, in config order.
    pub steps: Vec<StepReport>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Time from the commit point (every load staged) to the end of the
    /// run: the commits themselves. `None` when nothing reached it.
    pub commit: Option<Duration>,
}

/// How a batch run gets its sinks and sources: built for this run, each
/// source opened where its sinks (or its offset log) say it left off.
pub(crate) struct BatchOpening {
    /// `checkpointLocation`: the offset logs' directory.
    checkpoint: Option<String>,
}

impl BatchOpening {
    /// The opening of a batch run of `spec`.
    pub(crate) fn new(spec: &PipelineSpec) -> Self {
        BatchOpening {
            checkpoint: spec.checkpoint_location.clone(),
        }
    }
}

#[async_trait]
impl Opening for BatchOpening {
    fn sink(&mut self, info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Sink>> {
        build_sink(info, registry)
    }

    fn source(&mut self, info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Source>> {
        build_source(info, registry)
    }

    async fn open(
        &mut self,
        source: &OpenedSource,
        ctx: &SessionContext,
        sinks: &[Arc<dyn Sink>],
    ) -> Result<OpenedTable> {
        let checkpoint = self.checkpoint.as_deref();
        let (resume, log) = resume_with_log(source, sinks, checkpoint, &ctx.runtime_env()).await?;
        let mut table = source.open(ctx, resume).await?;
        table.offset_log = log;
        Ok(table)
    }
}

/// One load's outcome: its report and wall time; or its error, and whether
/// it was the first failure (the one that aborted the commit gate).
type LoadOutcome = std::result::Result<(SinkReport, Duration), (bool, Error)>;

/// Runs every load concurrently, each through its gate, recording `marks`
/// (and where the run read them from) where it can; all commit, or none if
/// any fails or `cancel` resolves before the commit point.
pub(crate) async fn write_loads(
    loads: &[Load],
    gates: &[CommitGate],
    marks: &[Mark],
    starts: &[Mark],
    progress: Option<&RowCounter>,
    cancel: impl Future<Output = ()>,
) -> Result<Vec<(SinkReport, Duration)>> {
    let writes = loads.iter().zip(gates).map(|(load, gate)| {
        let ctx = WriteContext {
            gate: gate.clone(),
            marks: marks.to_vec(),
            starts: starts.to_vec(),
            rewrite: load.rewrite.clone(),
        };
        write_load(load, ctx, progress)
    });
    let outcomes = unless_cancelled(futures::future::join_all(writes), gates, cancel).await?;
    first_failure(outcomes)
}

/// Runs one load: stages, waits at the gate, commits.
async fn write_load(load: &Load, ctx: WriteContext, progress: Option<&RowCounter>) -> LoadOutcome {
    let started = Instant::now();
    let gate = ctx.gate.clone();
    let input = match progress {
        Some(counter) => counted(load.input.clone(), counter)
            .map_err(|e| (gate.abort(), Error::step(&load.step, e)))?,
        None => load.input.clone(),
    };
    match load.sink.write(input, ctx).await {
        Ok(report) => {
            // A sink with nothing to stage (console) may never call
            // ready(); count it as ready so the others can commit.
            let _ = gate.ready().await;
            Ok((report, started.elapsed()))
        }
        Err(err) => {
            let first = gate.abort();
            Err((first, Error::from_connector(&load.step, err)))
        }
    }
}

/// How long a cancelled run waits for its loads to discard what they staged.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

/// Awaits `all`, unless `cancel` resolves before the commit point: then the
/// run's commits are aborted (and the loads get [`CLEANUP_LIMIT`] to clean
/// up). Once they began, they are let finish.
async fn unless_cancelled<T>(
    all: impl Future<Output = T>,
    gates: &[CommitGate],
    cancel: impl Future<Output = ()>,
) -> Result<T> {
    tokio::pin!(all);
    tokio::pin!(cancel);
    tokio::select! {
        results = &mut all => Ok(results),
        () = &mut cancel => {
            // The handles share one gate: aborting one aborts the run's
            // commits, unless they already began.
            gates.first().map(CommitGate::abort);
            if !gates.iter().any(CommitGate::is_open) {
                // The loads see the abort and discard what they staged.
                let _ = tokio::time::timeout(CLEANUP_LIMIT, all).await;
                return Err(Error::Cancelled);
            }
            tracing::warn!("interrupted during commit; letting the commits finish");
            Ok(all.await)
        }
    }
}

/// Every load's report, or the error that caused the run to fail.
fn first_failure(outcomes: Vec<LoadOutcome>) -> Result<Vec<(SinkReport, Duration)>> {
    let mut reports = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(done) => reports.push(done),
            Err(failure) => failures.push(failure),
        }
    }
    if failures.is_empty() {
        return Ok(reports);
    }
    // The first failure is the cause; the others were abandoned because of
    // it (or, past the commit point, failed on their own).
    let cause = failures.iter().position(|(first, _)| *first).unwrap_or(0);
    for (i, (_, err)) in failures.iter().enumerate() {
        if i != cause {
            tracing::debug!("also failed: {err}");
        }
    }
    Err(failures.swap_remove(cause).1)
}
