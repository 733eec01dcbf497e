//! Micro-batch streaming: the same compiled steps run again and again, each
//! time over the data a streaming source (Kafka) received since the last
//! batch. A batch commits its rows and the source positions it reached
//! together (Delta `txn` actions; an offset log under `checkpointLocation`
//! for other sinks), so a restarted pipeline resumes exactly after the last
//! committed batch.

mod trigger;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;

pub use trigger::{parse_duration, Trigger};

use crate::connector::{Registry, Resume, Sink, Source};
use crate::error::{Error, Result};
use crate::ops::shutdown::Shutdown;
use crate::plan::{resume_point, OpenedSource, OpenedTable, Pipeline};
use crate::spec::PipelineSpec;
use crate::state_file::StateFile;

/// How long an idle stream waits before looking for new data again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// What a stream keeps from one micro-batch to the next.
#[derive(Default)]
pub(crate) struct StreamState {
    /// Sources by step index, built once.
    pub sources: HashMap<usize, Arc<dyn Source>>,
    /// Sinks by step index, built once.
    pub sinks: HashMap<usize, Arc<dyn Sink>>,
    /// Static sources' rows, read once.
    statics: HashMap<usize, Arc<dyn TableProvider>>,
    /// Per streaming source: where its next batch starts.
    positions: HashMap<usize, Resume>,
    /// Per streaming source: the positions not to read beyond (availableNow).
    until: HashMap<usize, HashMap<String, i64>>,
    /// Apply the sources' per-trigger limits.
    micro_batch: bool,
    /// Bound the stream by what is available at start.
    available_now: bool,
    /// The offset log directory for sinks that cannot record positions.
    checkpoint: Option<PathBuf>,
}

impl StreamState {
    /// Opens `source` for the next batch: a static source's rows are read
    /// into memory the first time; a streaming source resumes where the
    /// last batch ended (first: where the sinks or the offset log say).
    pub(crate) async fn open<'a>(
        &mut self,
        source: &OpenedSource,
        ctx: &SessionContext,
        sinks: impl Iterator<Item = &'a Arc<dyn Sink>>,
    ) -> Result<OpenedTable> {
        let index = source.step.index;
        if !source.source.is_stream() {
            if let Some(table) = self.statics.get(&index) {
                return Ok(OpenedTable {
                    table: table.clone(),
                    marks: Vec::new(),
                    start: HashMap::new(),
                });
            }
            let resume = resume_point(source, sinks).await?;
            let opened = source.open(ctx, resume).await?;
            let schema = opened.table.schema();
            let rows = ctx
                .read_table(opened.table)?
                .collect()
                .await
                .map_err(|e| Error::step(&source.step, e))?;
            let table: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema, vec![rows])?);
            self.statics.insert(index, table.clone());
            return Ok(OpenedTable {
                table,
                marks: Vec::new(),
                start: HashMap::new(),
            });
        }
        let (mut resume, catch_up) = match self.positions.get(&index) {
            Some(resume) => (resume.clone(), HashMap::new()),
            None => {
                let mut resume = resume_point(source, sinks).await?;
                // Sinks left apart by a stop between their commits: the
                // first batch reads exactly up to where the ones ahead are.
                let catch_up = std::mem::take(&mut resume.until);
                if !resume.recorded_by_sinks {
                    if let Some(dir) = &self.checkpoint {
                        resume.marks = StateFile::new(dir, source.scope())
                            .load()?
                            .into_iter()
                            .collect();
                    }
                }
                if self.available_now {
                    let latest = source
                        .source
                        .latest()
                        .await
                        .map_err(|e| Error::from_connector(&source.step, e))?;
                    self.until.insert(index, latest);
                }
                self.positions.insert(index, resume.clone());
                (resume, catch_up)
            }
        };
        resume.micro_batch = self.micro_batch;
        resume.until = self.until.get(&index).cloned().unwrap_or_default();
        if !catch_up.is_empty() {
            // No per-trigger limit: the catch-up batch must end exactly there.
            resume.micro_batch = false;
            for (key, bound) in catch_up {
                let until = resume.until.entry(key).or_insert(bound);
                *until = (*until).min(bound);
            }
        }
        source.open(ctx, resume).await
    }

    /// Records that `pipeline`'s batch committed: the next one starts where
    /// it ended; the offset log is updated when the sinks do not record
    /// positions themselves.
    fn advance(&mut self, pipeline: &Pipeline) -> Result<()> {
        for source in pipeline.sources.iter().filter(|s| s.source.is_stream()) {
            let Some(resume) = self.positions.get_mut(&source.step.index) else {
                continue;
            };
            resume.marks.extend(source.marks.iter().cloned());
            if let (false, Some(dir)) = (resume.recorded_by_sinks, &self.checkpoint) {
                StateFile::new(dir, source.scope()).store(&source.marks)?;
            }
        }
        Ok(())
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
}

impl fmt::Display for BatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch {}: {} rows in, {} rows out, {:.2}s",
            self.id,
            self.rows_in,
            self.rows_out,
            self.duration.as_secs_f64()
        )?;
        if let Some(commit) = self.commit {
            write!(f, " (commit {}ms)", commit.as_millis())?;
        }
        for source in &self.sources {
            let ranges: Vec<String> = source
                .partitions
                .iter()
                .filter(|p| p.start != p.end)
                .map(|p| format!("{}:{}-{}", p.key, p.start, p.end))
                .collect();
            write!(f, "; offsets {} lag {}", ranges.join(" "), source.lag)?;
        }
        Ok(())
    }
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

impl fmt::Display for StreamSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pipeline \"{}\" {} after {:.2}s: {} batches, {} rows in, {} rows out",
            self.pipeline,
            if self.interrupted {
                "stopped"
            } else {
                "finished"
            },
            self.elapsed.as_secs_f64(),
            self.batches,
            self.rows_in,
            self.rows_out
        )
    }
}

/// Runs a streaming pipeline until its trigger ends it (`once`,
/// `availableNow`) or `shutdown` fires: a batch in progress then is
/// abandoned before its commit point, so nothing is half-written.
/// `on_batch` is told about every committed batch.
pub async fn run_stream(
    spec: &PipelineSpec,
    registry: &Registry,
    shutdown: Shutdown,
    mut on_batch: impl FnMut(&BatchReport),
) -> Result<StreamSummary> {
    let settings = spec.stream_settings()?;
    let trigger = settings.trigger;
    let mut state = StreamState {
        micro_batch: trigger != Trigger::Once,
        available_now: trigger == Trigger::AvailableNow,
        checkpoint: settings.checkpoint_location.map(PathBuf::from),
        ..StreamState::default()
    };
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
        if shutdown.is_fired() {
            summary.interrupted = true;
            break;
        }
        let batch_started = Instant::now();
        let pipeline = Pipeline::compile_with(spec, registry, Some(&mut state)).await?;
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
        let new_data = streams
            .iter()
            .any(|s| s.marks.iter().any(|(k, v)| s.start.get(k) != Some(v)));
        if new_data {
            let run = match pipeline.run(shutdown.clone().wait()).await {
                Err(Error::Cancelled) => {
                    summary.interrupted = true;
                    break;
                }
                run => run?,
            };
            state.advance(&pipeline)?;
            summary.batches += 1;
            let mut report = BatchReport {
                id: summary.batches,
                rows_in: 0,
                rows_out: run.steps.iter().filter_map(|s| s.rows).sum(),
                sources: Vec::new(),
                duration: batch_started.elapsed(),
                commit: run.commit,
            };
            for source in streams {
                report.sources.push(progress(source).await?);
            }
            report.rows_in = report
                .sources
                .iter()
                .flat_map(|s| &s.partitions)
                .map(|p| p.end - p.start)
                .sum();
            summary.rows_in += report.rows_in;
            summary.rows_out += report.rows_out;
            on_batch(&report);
        }
        let wait = match trigger {
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
            _ = shutdown.clone().wait() => {}
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
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
