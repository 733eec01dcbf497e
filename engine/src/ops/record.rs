//! Bookkeeping of runs, batch and streaming alike: what goes into the run
//! history and the metrics when an attempt ends, a schedule slot is skipped,
//! a run is retried, and when a streaming run starts, commits a batch and
//! stops.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::classify::Classifier;
use crate::error::{Error, Result, StepRef};
use crate::ops::history::{History, RunCause, RunRecord, Status, StepRecord, StreamProgress};
use crate::ops::metrics::Metrics;
use crate::run::RunSummary;
use crate::spec::{PipelineSpec, StepKind};
use crate::stream::{BatchReport, StreamSummary};

/// A progress record of a running stream is written after this many batches
/// since the last record...
pub const STREAM_RECORD_BATCHES: u64 = 100;
/// ... or at the first batch this long after it, whichever comes first.
pub const STREAM_RECORD_INTERVAL: Duration = Duration::from_secs(60);

/// Records runs into one history and one set of metrics. Failing to write a
/// history record is logged, never fatal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    history: History,
    metrics: Metrics,
    classifier: Classifier,
}

impl Recorder {
    /// A recorder writing to `history` and `metrics`, classifying errors
    /// with `classifier`.
    pub fn new(history: History, metrics: Metrics, classifier: Classifier) -> Self {
        Recorder {
            history,
            metrics,
            classifier,
        }
    }

    /// The history runs are recorded in.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Completes `record` (an attempt of a batch run) with its outcome and
    /// stores it; counts it, and a successful one's steps, in the metrics.
    ///
    /// A manual run whose config does not validate (exit 2: bad key, bad
    /// SQL) ran nothing and is not recorded: its error is on the console,
    /// and the history stays a record of runs. A scheduled slot that fails
    /// to plan (a source's schema changed under its SQL) is recorded: no
    /// one may be watching the scheduler's console.
    pub fn attempt_ended(&self, mut record: RunRecord, result: &Result<RunSummary>) {
        if let Err(err) = result {
            if record.cause == RunCause::Manual && err.exit_code() == 2 {
                tracing::info!(pipeline = %record.pipeline, "invalid config, not recorded: {err}");
                return;
            }
        }
        record.end = Utc::now();
        match result {
            Ok(summary) => {
                record.status = Status::Succeeded;
                record.steps = step_records(summary);
                self.metrics.steps(summary);
                tracing::info!(pipeline = %record.pipeline, "run succeeded");
            }
            Err(err) => {
                self.failed(&mut record, err, Status::Cancelled);
                tracing::info!(pipeline = %record.pipeline, "run {}: {err}", record.status.as_str());
            }
        }
        self.ended(&record);
    }

    /// Counts a retry of `pipeline`.
    pub fn retried(&self, pipeline: &str) {
        self.metrics.retried(pipeline);
    }

    /// Records a schedule slot skipped because the pipeline was busy.
    pub fn skipped(&self, pipeline: &str, slot: DateTime<Utc>) {
        tracing::warn!(
            pipeline,
            "still running; skipping the run scheduled for {slot}"
        );
        let record = RunRecord {
            status: Status::Skipped,
            ..RunRecord::begin(pipeline, RunCause::Schedule, Some(slot))
        };
        self.ended(&record);
    }

    /// Records the start of a streaming run of `spec` (cause `manual`).
    pub fn stream_started(&self, spec: &PipelineSpec) -> StreamRun {
        self.metrics.stream_started(&spec.name);
        let run = StreamRun {
            recorder: self.clone(),
            record: RunRecord::begin(&spec.name, RunCause::Manual, None),
            progress: StreamProgress::default(),
            read: BTreeMap::new(),
            steps: stream_steps(spec),
            last_record: Instant::now(),
            batches_at_last_record: 0,
        };
        run.recorder.append(&run.record());
        run
    }

    /// Sets the status of a run that ended with `err`: `cancelled` (the
    /// status given) when a signal stopped it, else `failed` with the error
    /// and its class.
    fn failed(&self, record: &mut RunRecord, err: &Error, cancelled: Status) {
        if let Error::Cancelled = err {
            record.status = cancelled;
            return;
        }
        record.status = Status::Failed;
        record.error = Some(err.to_string());
        record.error_class = Some(self.classifier.classify(err));
    }

    /// Counts the end of `record` in the metrics and stores it.
    fn ended(&self, record: &RunRecord) {
        self.metrics.run_ended(&record.pipeline, record.status);
        self.append(record);
    }

    fn append(&self, record: &RunRecord) {
        if let Err(err) = self.history.append(record) {
            tracing::warn!("run history not recorded: {err}");
        }
    }
}

fn step_records(summary: &RunSummary) -> Vec<StepRecord> {
    summary
        .steps
        .iter()
        .map(|s| StepRecord {
            index: s.step.index,
            method: s.step.method.clone(),
            name: s.step.name.clone(),
            kind: s.kind.to_string(),
            rows: s.rows,
            bytes: s.bytes,
            duration_ms: s.duration.map(|d| d.as_millis() as u64),
        })
        .collect()
}

/// The extract and load steps of a streaming `spec`, without counts.
fn stream_steps(spec: &PipelineSpec) -> Vec<StepRecord> {
    spec.steps
        .iter()
        .filter(|i| i.kind != StepKind::Transform)
        .map(|i| StepRecord {
            index: i.step.index,
            method: i.step.method.clone(),
            name: i.step.name.clone(),
            kind: i.kind.to_string(),
            rows: None,
            bytes: None,
            duration_ms: None,
        })
        .collect()
}

/// The bookkeeping of one streaming run: a `running` record at its start,
/// one with the counts so far every [`STREAM_RECORD_BATCHES`] batches or
/// [`STREAM_RECORD_INTERVAL`] (checked when a batch commits), and one when it
/// ends (`succeeded`: the trigger ended it; `stopped`: a signal; `failed`),
/// all under one run id; and every committed batch in the metrics.
#[derive(Debug)]
pub struct StreamRun {
    recorder: Recorder,
    record: RunRecord,
    progress: StreamProgress,
    /// Positions consumed per streaming source step (its display name).
    read: BTreeMap<String, i64>,
    /// Index, method, name and kind of the extract and load steps.
    steps: Vec<StepRecord>,
    last_record: Instant,
    batches_at_last_record: u64,
}

impl StreamRun {
    /// Counts a committed batch; writes a progress record when one is due.
    pub fn batch(&mut self, batch: &BatchReport) {
        self.recorder
            .metrics
            .stream_batch(&self.record.pipeline, batch);
        self.progress.batches += 1;
        self.progress.rows_in += batch.rows_in;
        self.progress.rows_out += batch.rows_out;
        self.progress.late_rows += batch.late_rows;
        for source in &batch.sources {
            let read: i64 = source.partitions.iter().map(|p| p.end - p.start).sum();
            *self.read.entry(source.step.clone()).or_default() += read;
        }
        if self.progress.batches - self.batches_at_last_record >= STREAM_RECORD_BATCHES
            || self.last_record.elapsed() >= STREAM_RECORD_INTERVAL
        {
            self.recorder.append(&self.record());
            self.last_record = Instant::now();
            self.batches_at_last_record = self.progress.batches;
        }
    }

    /// Records how the run ended: `succeeded` when its trigger ended it,
    /// `stopped` on a signal, `failed` on an error.
    pub fn finish(mut self, result: &Result<StreamSummary>) {
        match result {
            Ok(summary) if summary.interrupted => self.record.status = Status::Stopped,
            Ok(_) => self.record.status = Status::Succeeded,
            Err(err) => self.recorder.failed(&mut self.record, err, Status::Stopped),
        }
        self.recorder.ended(&self.record());
    }

    /// The record of the run so far, ending now.
    fn record(&self) -> RunRecord {
        let loads = self.steps.iter().filter(|s| s.kind == "load").count();
        // Per-step rows: each streaming source's positions read; the rows
        // written when there is one load (several loads: only their sum,
        // `rowsOut`, is known).
        let steps = self
            .steps
            .iter()
            .filter_map(|step| {
                let mut step = step.clone();
                if step.kind == "load" {
                    step.rows = (loads == 1).then_some(self.progress.rows_out);
                } else {
                    let name = StepRef {
                        index: step.index,
                        method: step.method.clone(),
                        name: step.name.clone(),
                    };
                    let read = *self.read.get(&name.to_string())?;
                    step.rows = Some(u64::try_from(read).unwrap_or(0));
                }
                Some(step)
            })
            .collect();
        RunRecord {
            end: Utc::now(),
            steps,
            stream: Some(self.progress),
            ..self.record.clone()
        }
    }
}
