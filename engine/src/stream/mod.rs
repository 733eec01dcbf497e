//! Micro-batch streaming: the same compiled steps run again and again, each
//! time over the data a streaming source (Kafka) received since the last
//! batch. A batch commits its rows and the source positions it reached
//! together (Delta `txn` actions; an offset log under `checkpointLocation`
//! for other sinks), so a restarted pipeline resumes exactly after the last
//! committed batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use tokio_util::sync::CancellationToken;

use crate::connector::Mark;
use crate::connector::{Registry, Resume, Sink, Source};
use crate::error::StepRef;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::plan::{build_sink, build_source, DedupStep, Opening, StatefulLoad};
use crate::resume::{resume_with_log, OffsetLog, OpenedSource, OpenedTable};
use crate::run::RunSummary;
use crate::spec::{PipelineSpec, StepInfo, StepKind, Trigger};
use crate::state::aggregate::{empty_state, replace_aggregate, state_table};
use crate::state::event_time::{late, on_time, Tracker};
use crate::state::store::{Snapshot, StateStore};
use crate::transform::{Watermark, DEDUPLICATE, LATE_REASON};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{col, lit, LogicalPlan};

/// How long an idle stream waits before looking for new data again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// What a stream keeps from one micro-batch to the next.
#[derive(Default)]
struct StreamState {
    /// Sources by step index, built once.
    sources: HashMap<usize, Arc<dyn Source>>,
    /// Sinks by step index, built once.
    sinks: HashMap<usize, Arc<dyn Sink>>,
    /// Static sources' rows, read once.
    statics: HashMap<usize, Arc<dyn TableProvider>>,
    /// Per streaming source: where its next batch starts.
    positions: HashMap<usize, Position>,
    /// Per streaming source: the positions not to read beyond (availableNow).
    until: HashMap<usize, HashMap<String, i64>>,
    /// Apply the sources' per-trigger limits.
    micro_batch: bool,
    /// Bound the stream by what is available at start.
    available_now: bool,
    /// The offset log directory for sinks that cannot record positions,
    /// and where stateful streams keep their state.
    checkpoint: Option<String>,
    /// The stateful part: watermark and aggregation state.
    state: KeptState,
}

/// What a stateful stream keeps between micro-batches.
#[derive(Default)]
struct KeptState {
    /// The names of the stream's stateful operators' parts (see
    /// [`part_names`]).
    names: Vec<String>,
    /// The parts, by name, loaded from the checkpoint on the first batch
    /// with new data.
    parts: Option<HashMap<String, Part>>,
    /// The watermark the committed batches reached (µs).
    watermark: Option<i64>,
    /// The watermark's delay.
    delay: Duration,
    /// This batch's view of event time, when the pipeline has a watermark.
    tracker: Option<Arc<Tracker>>,
}

/// One stateful operator's state: its snapshots and the state as of the
/// last committed batch.
struct Part {
    store: StateStore,
    /// The state as of the last committed batch.
    committed: Option<Snapshot>,
    /// The state once this batch commits.
    pending: Option<Snapshot>,
}

impl Part {
    /// The committed state as a table of `schema`.
    fn kept(&self, schema: SchemaRef) -> Result<Arc<MemTable>> {
        Ok(match &self.committed {
            Some(snapshot) => state_table(schema, snapshot.batches.clone())?,
            None => empty_state(schema)?,
        })
    }

    /// Writes the state after this batch (before any sink commits).
    async fn stage(
        &mut self,
        state: DataFrame,
        sources: &[OpenedSource],
        watermark: Option<i64>,
        step: &StepRef,
    ) -> Result<()> {
        let schema = Arc::new(state.schema().as_arrow().clone());
        let batches = state.collect().await.map_err(|e| Error::step(step, e))?;
        let snapshot = Snapshot {
            sequence: self.committed.as_ref().map_or(0, |s| s.sequence) + 1,
            marks: streaming(sources)
                .flat_map(OpenedSource::reached)
                .map(|m| (m.app_id, m.version))
                .collect(),
            watermark,
            batches,
            schema,
        };
        self.store.write(&snapshot).await?;
        self.pending = Some(snapshot);
        Ok(())
    }
}

/// The state parts a stream of `spec` may have: one per load (its
/// aggregation) and one per `deduplicate` step.
fn part_names(spec: &PipelineSpec) -> Vec<String> {
    spec.steps
        .iter()
        .filter_map(|info| match info.kind {
            StepKind::Load => Some(format!("aggregate-{}", info.step.index)),
            StepKind::Transform if info.step.method == DEDUPLICATE => {
                Some(format!("deduplicate-{}", info.step.index))
            }
            _ => None,
        })
        .collect()
}

impl KeptState {
    /// Loads the state that matches where `sources` resume, once.
    async fn load(
        &mut self,
        checkpoint: Option<&str>,
        sources: &[OpenedSource],
        ctx: &SessionContext,
    ) -> Result<()> {
        let (None, Some(dir)) = (&self.parts, checkpoint) else {
            return Ok(());
        };
        // Where every key resumes (the sinks' or the offset log's positions).
        let starts: Vec<Mark> = streaming(sources)
            .flat_map(|s| {
                s.start.iter().map(|(key, version)| Mark {
                    app_id: s.app_id(key),
                    version: *version,
                })
            })
            .collect();
        let mut parts = HashMap::new();
        for name in &self.names {
            let store = StateStore::new(&ctx.runtime_env(), dir, name)?;
            let committed = store.load(&starts).await?;
            if let Some(watermark) = committed.as_ref().and_then(|s| s.watermark) {
                self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
            }
            let part = Part {
                store,
                committed,
                pending: None,
            };
            parts.insert(name.clone(), part);
        }
        self.parts = Some(parts);
        Ok(())
    }

    /// The loaded part `name`.
    fn part(&mut self, name: &str) -> &mut Part {
        self.parts
            .as_mut()
            .and_then(|parts| parts.get_mut(name))
            .expect("parts are loaded before use, one per stateful step")
    }

    /// The watermark after this batch: the greatest event time seen less
    /// the delay, never going back.
    fn watermark_after(&self) -> Option<i64> {
        let tracker = self.tracker.as_ref()?;
        let delay = i64::try_from(self.delay.as_micros()).unwrap_or(i64::MAX);
        let seen = tracker.max_seen().map(|m| m.saturating_sub(delay));
        match (self.watermark, seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Rows behind the watermark are late from now on: a stateful
    /// operator reads them.
    fn activate(&self) {
        if let Some(tracker) = &self.tracker {
            tracker.activate();
        }
    }

    /// Runs `load`'s aggregation over this batch and the kept state; writes
    /// the new state's snapshot (before any sink commits) and returns the
    /// rows the output mode writes, in place of the aggregation.
    async fn aggregate(
        &mut self,
        load: &StatefulLoad<'_>,
        input: &DataFrame,
        ctx: &SessionContext,
    ) -> Result<LogicalPlan> {
        self.activate();
        let aggregate = &load.aggregate;
        let partial = aggregate.partial()?;
        let schema = Arc::new(partial.schema().as_arrow().clone());
        let part = format!("aggregate-{}", load.info.step.index);
        let kept = self.part(&part).kept(schema)?;
        let merged = DataFrame::new(ctx.state(), aggregate.merged(partial, kept)?);
        let merged = collected(merged, &load.info.step).await?;
        let watermark = self.watermark_after();
        let (written, kept) = aggregate.split(ctx, merged, load.mode, watermark)?;
        let kept = DataFrame::new(ctx.state(), kept);
        self.part(&part)
            .stage(kept, load.sources, watermark, &load.info.step)
            .await?;
        Ok(replace_aggregate(
            input.logical_plan(),
            &aggregate.aggregate,
            written,
        )?)
    }

    /// Runs `step`'s deduplication of this batch's `frame` against the
    /// kept keys; writes the new state's snapshot and returns the rows it
    /// passes on.
    async fn deduplicate(
        &mut self,
        step: &DedupStep<'_>,
        frame: DataFrame,
        ctx: &SessionContext,
    ) -> Result<Arc<MemTable>> {
        self.activate();
        let dedup = &step.dedup;
        let schema = dedup.state_schema(frame.schema().as_arrow())?;
        let part = format!("deduplicate-{}", step.info.step.index);
        let kept = self.part(&part).kept(schema)?;
        let rows = dedup.new_rows(ctx, frame, kept.clone())?;
        let rows = collected(rows, &step.info.step).await?;
        let watermark = self.watermark_after();
        let state = dedup.new_state(ctx, kept, ctx.read_table(rows.clone())?, watermark)?;
        self.part(&part)
            .stage(state, step.sources, watermark, &step.info.step)
            .await?;
        Ok(rows)
    }

    /// The batch committed: its state is the state.
    fn advance(&mut self) {
        for part in self.parts.iter_mut().flat_map(|parts| parts.values_mut()) {
            if let Some(snapshot) = part.pending.take() {
                self.watermark = self.watermark.max(snapshot.watermark);
                part.committed = Some(snapshot);
            }
        }
    }

    /// Rows this batch found behind the watermark.
    fn late_rows(&self) -> u64 {
        self.tracker.as_ref().map_or(0, |t| t.late_rows())
    }
}

/// `frame`'s rows, computed now, as a table.
async fn collected(frame: DataFrame, step: &StepRef) -> Result<Arc<MemTable>> {
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(|e| Error::step(step, e))?;
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

/// The streaming ones of `sources`.
fn streaming(sources: &[OpenedSource]) -> impl Iterator<Item = &OpenedSource> {
    sources.iter().filter(|s| s.source.is_stream())
}

/// Where a streaming source's next batch starts, and the offset log its
/// batches are recorded in when the sinks do not record them.
struct Position {
    resume: Resume,
    log: Option<OffsetLog>,
}

#[async_trait]
impl Opening for StreamState {
    fn sink(&mut self, info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Sink>> {
        built_once(&mut self.sinks, info, || build_sink(info, registry))
    }

    fn source(&mut self, info: &StepInfo, registry: &Registry) -> Result<Arc<dyn Source>> {
        built_once(&mut self.sources, info, || build_source(info, registry))
    }

    /// A static source's rows are read into memory the first time; a
    /// streaming source resumes where the last batch ended (first: where
    /// the sinks or the offset log say).
    async fn open(
        &mut self,
        source: &OpenedSource,
        ctx: &SessionContext,
        sinks: &[Arc<dyn Sink>],
    ) -> Result<OpenedTable> {
        if source.source.is_stream() {
            self.open_stream(source, ctx, sinks).await
        } else {
            self.open_static(source, ctx, sinks).await
        }
    }

    /// Rows behind the watermark are set apart (once a stateful operator
    /// reads them): `frame` keeps the others; the late ones get a reason.
    async fn watermark(
        &mut self,
        _info: &StepInfo,
        watermark: &Watermark,
        frame: DataFrame,
        sources: &[OpenedSource],
        ctx: &SessionContext,
    ) -> Result<(DataFrame, Option<DataFrame>)> {
        let state = &mut self.state;
        state.load(self.checkpoint.as_deref(), sources, ctx).await?;
        let tracker = Tracker::new(state.watermark);
        state.tracker = Some(tracker.clone());
        state.delay = watermark.delay;
        let ts = col(Column::from_name(&watermark.column));
        let reason = format!(
            "{} behind the watermark {} (the greatest event time seen less {:?})",
            watermark.column,
            state.watermark.map_or("(none)".to_string(), show_micros),
            watermark.delay
        );
        let late = frame
            .clone()
            .filter(late(&tracker, ts.clone()))?
            .with_column(LATE_REASON, lit(reason))?;
        Ok((frame.filter(on_time(&tracker, ts))?, Some(late)))
    }

    /// A batch with new data runs the aggregation with the kept state.
    async fn stateful(
        &mut self,
        load: StatefulLoad<'_>,
        input: DataFrame,
        ctx: &SessionContext,
    ) -> Result<DataFrame> {
        if !has_new_data(load.sources) {
            return Ok(input);
        }
        self.state
            .load(self.checkpoint.as_deref(), load.sources, ctx)
            .await?;
        let plan = self.state.aggregate(&load, &input, ctx).await?;
        Ok(DataFrame::new(ctx.state(), plan))
    }

    /// A batch with new data drops the rows whose keys were seen before.
    async fn deduplicate(
        &mut self,
        step: DedupStep<'_>,
        frame: DataFrame,
        ctx: &SessionContext,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if !has_new_data(step.sources) {
            return Ok(None);
        }
        self.state
            .load(self.checkpoint.as_deref(), step.sources, ctx)
            .await?;
        Ok(Some(self.state.deduplicate(&step, frame, ctx).await?))
    }
}

/// Whether a streaming one of `sources` has rows beyond where it starts.
fn has_new_data(sources: &[OpenedSource]) -> bool {
    streaming(sources).any(|s| s.marks.iter().any(|(k, v)| s.start.get(k) != Some(v)))
}

/// µs since the epoch as an RFC 3339 time.
fn show_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map_or_else(|| micros.to_string(), |t| t.to_rfc3339())
}

/// The value kept for `info`'s step in `built`, built the first time.
fn built_once<T: Clone>(
    built: &mut HashMap<usize, T>,
    info: &StepInfo,
    build: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if let Some(value) = built.get(&info.step.index) {
        return Ok(value.clone());
    }
    let value = build()?;
    built.insert(info.step.index, value.clone());
    Ok(value)
}

impl StreamState {
    /// The state of a stream of `spec`, before its first batch.
    fn new(spec: &PipelineSpec) -> Self {
        StreamState {
            micro_batch: spec.trigger != Trigger::Once,
            available_now: spec.trigger == Trigger::AvailableNow,
            checkpoint: spec.checkpoint_location.clone(),
            state: KeptState {
                names: part_names(spec),
                ..KeptState::default()
            },
            ..StreamState::default()
        }
    }

    /// A static source, read whole into memory on the first batch.
    async fn open_static(
        &mut self,
        source: &OpenedSource,
        ctx: &SessionContext,
        sinks: &[Arc<dyn Sink>],
    ) -> Result<OpenedTable> {
        let index = source.step.index;
        if let Some(table) = self.statics.get(&index) {
            return Ok(OpenedTable::whole(table.clone()));
        }
        // Read once: its positions are never stored.
        let (resume, _) = resume_with_log(source, sinks, None, &ctx.runtime_env()).await?;
        let opened = source.open(ctx, resume).await?;
        let schema = opened.table.schema();
        let rows = ctx
            .read_table(opened.table)?
            .collect()
            .await
            .map_err(|e| Error::step(&source.step, e))?;
        let table: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema, vec![rows])?);
        self.statics.insert(index, table.clone());
        Ok(OpenedTable::whole(table))
    }

    /// A streaming source, from where the last batch ended.
    async fn open_stream(
        &mut self,
        source: &OpenedSource,
        ctx: &SessionContext,
        sinks: &[Arc<dyn Sink>],
    ) -> Result<OpenedTable> {
        let index = source.step.index;
        let catch_up = if self.positions.contains_key(&index) {
            HashMap::new()
        } else {
            self.first_position(source, sinks, ctx).await?
        };
        let position = &self.positions[&index];
        let mut resume = position.resume.clone();
        resume.micro_batch = self.micro_batch;
        resume.until = self.until.get(&index).cloned().unwrap_or_default();
        if !catch_up.is_empty() {
            // No per-trigger limit and no other key (a file stream's new
            // files): the catch-up batch must end exactly there.
            resume.micro_batch = false;
            let bounds = std::mem::take(&mut resume.until);
            resume.until = catch_up
                .into_iter()
                .map(|(key, bound)| {
                    let until = bounds.get(&key).map_or(bound, |b| (*b).min(bound));
                    (key, until)
                })
                .collect();
        }
        let log = position.log.clone();
        let mut table = source.open(ctx, resume).await?;
        table.offset_log = log;
        Ok(table)
    }

    /// Where a streaming source's first batch starts: where the sinks or
    /// the offset log say. Returns the bounds of a catch-up batch (sinks
    /// left apart by a stop between their commits: the first batch reads
    /// exactly up to where the ones ahead are).
    async fn first_position(
        &mut self,
        source: &OpenedSource,
        sinks: &[Arc<dyn Sink>],
        ctx: &SessionContext,
    ) -> Result<HashMap<String, i64>> {
        let index = source.step.index;
        let checkpoint = self.checkpoint.as_deref();
        let (mut resume, log) =
            resume_with_log(source, sinks, checkpoint, &ctx.runtime_env()).await?;
        let catch_up = std::mem::take(&mut resume.until);
        if self.available_now {
            let latest = source
                .source
                .latest()
                .await
                .map_err(|e| Error::from_connector(&source.step, e))?;
            self.until.insert(index, latest);
        }
        self.positions.insert(index, Position { resume, log });
        Ok(catch_up)
    }

    /// Records that `pipeline`'s batch committed (its offset logs already
    /// stored): the next one starts where it ended.
    fn advance(&mut self, pipeline: &Pipeline) {
        self.state.advance();
        for source in pipeline.sources.iter().filter(|s| s.source.is_stream()) {
            if let Some(position) = self.positions.get_mut(&source.step.index) {
                position.resume.marks.extend(source.marks.iter().cloned());
            }
        }
    }
}

/// One partition's (source key's) part of a batch.
#[derive(Debug, Clone)]
pub struct PartitionProgress {
    /// Source key, e.g. `events/0`.
    pub key: String,
    /// Position the batch read from.
    pub start: i64,
    /// Position the batch read up to (exclusive).
    pub end: i64,
    /// Positions available but not yet read after the batch.
    pub lag: i64,
}

/// One streaming source's part of a batch.
#[derive(Debug, Clone)]
pub struct SourceProgress {
    /// The extract step, e.g. `steps[0] (fromKafka as "events")`.
    pub step: String,
    /// Per key, sorted.
    pub partitions: Vec<PartitionProgress>,
    /// Positions available but not yet read after the batch, in all.
    pub lag: i64,
}

/// What one micro-batch did.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// 1, 2, ... within this run of the pipeline.
    pub id: u64,
    /// Positions consumed (Kafka: offsets, i.e. records read).
    pub rows_in: i64,
    /// Rows written, summed over the loads.
    pub rows_out: u64,
    /// Per streaming source: ranges and lag.
    pub sources: Vec<SourceProgress>,
    /// Wall time of the batch, commit included.
    pub duration: Duration,
    /// Time the sinks took to commit, once everything was staged.
    pub commit: Option<Duration>,
    /// Rows behind the watermark (set apart: to `lateDataPath` if set).
    pub late_rows: u64,
}

/// How a streaming run ended.
#[derive(Debug, Clone)]
pub struct StreamSummary {
    /// Pipeline name.
    pub pipeline: String,
    /// Batches committed.
    pub batches: u64,
    /// Positions consumed over all batches.
    pub rows_in: i64,
    /// Rows written over all batches.
    pub rows_out: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Stopped by a signal (as opposed to the trigger's end).
    pub interrupted: bool,
}

/// Runs a streaming pipeline until its trigger ends it (`once`,
/// `availableNow`) or `shutdown` fires: a batch in progress then is
/// abandoned before its commit point, so nothing is half-written.
/// `on_batch` is told about every committed batch.
pub async fn run_stream(
    spec: &PipelineSpec,
    registry: &Registry,
    shutdown: CancellationToken,
    mut on_batch: impl FnMut(&BatchReport),
) -> Result<StreamSummary> {
    let mut state = StreamState::new(spec);
    let started = Instant::now();
    let mut summary = StreamSummary {
        pipeline: spec.name.clone(),
        batches: 0,
        rows_in: 0,
        rows_out: 0,
        elapsed: Duration::ZERO,
        interrupted: false,
    };
    loop {
        if shutdown.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        let batch_started = Instant::now();
        let pipeline = Pipeline::compile_with(spec, registry, &mut state).await?;
        let streams = streaming_sources(&pipeline)?;
        let new_data = streams
            .iter()
            .any(|s| s.marks.iter().any(|(k, v)| s.start.get(k) != Some(v)));
        if new_data {
            let run = match pipeline.run(shutdown.cancelled()).await {
                Err(Error::Cancelled) => {
                    summary.interrupted = true;
                    break;
                }
                run => run?,
            };
            state.advance(&pipeline);
            summary.batches += 1;
            let mut report = batch_report(summary.batches, &run, &streams, batch_started).await?;
            report.late_rows = state.state.late_rows();
            summary.rows_in += report.rows_in;
            summary.rows_out += report.rows_out;
            on_batch(&report);
        }
        let wait = match spec.trigger {
            Trigger::Once => break,
            Trigger::AvailableNow if new_data => continue,
            Trigger::AvailableNow => break,
            Trigger::ProcessingTime(interval) => {
                let wait = interval.saturating_sub(batch_started.elapsed());
                if new_data {
                    wait
                } else {
                    wait.max(IDLE_POLL)
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The pipeline's streaming sources; an error if it has none.
fn streaming_sources(pipeline: &Pipeline) -> Result<Vec<&OpenedSource>> {
    let streams: Vec<&OpenedSource> = pipeline
        .sources
        .iter()
        .filter(|s| s.source.is_stream())
        .collect();
    if streams.is_empty() {
        return Err(Error::config(
            "mode",
            None,
            "a streaming pipeline needs a streaming extract step (fromKafka); use \"mode\": \"batch\" for the others",
        ));
    }
    Ok(streams)
}

/// What committed batch `id` (`run`, started at `started`) did.
async fn batch_report(
    id: u64,
    run: &RunSummary,
    streams: &[&OpenedSource],
    started: Instant,
) -> Result<BatchReport> {
    // The batch ends at its commit; measuring the lag is not part of it.
    let duration = started.elapsed();
    let mut sources = Vec::with_capacity(streams.len());
    for source in streams {
        sources.push(progress(source).await?);
    }
    Ok(BatchReport {
        id,
        rows_in: sources
            .iter()
            .flat_map(|s| &s.partitions)
            .map(|p| p.end - p.start)
            .sum(),
        rows_out: run
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::Load)
            .filter_map(|s| s.rows)
            .sum(),
        sources,
        duration,
        commit: run.commit,
        late_rows: 0,
    })
}

/// The ranges a committed batch read from `source`, and the lag after it.
async fn progress(source: &OpenedSource) -> Result<SourceProgress> {
    let latest = source
        .source
        .latest()
        .await
        .map_err(|e| Error::from_connector(&source.step, e))?;
    let mut partitions: Vec<PartitionProgress> = source
        .marks
        .iter()
        .map(|(key, end)| PartitionProgress {
            key: key.clone(),
            start: source.start.get(key).copied().unwrap_or(*end).min(*end),
            end: *end,
            lag: latest.get(key).map_or(0, |l| (l - end).max(0)),
        })
        .collect();
    partitions.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(SourceProgress {
        step: source.step.to_string(),
        lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    })
}
