//! One run of a pipeline, batch or streaming: compile, run, retry transient
//! failures (batch), and record every attempt through one [`Recorder`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::connector::Registry;
use crate::error::{Error, Result};
use crate::ops::history::{History, RunCause, RunRecord};
use crate::ops::metrics::Metrics;
use crate::ops::record::Recorder;
use crate::ops::retry::{retry, RetryPolicy};
use crate::pipeline::Pipeline;
use crate::progress::RowCounter;
use crate::run::RunSummary;
use crate::spec::PipelineSpec;
use crate::stream::{run_stream, BatchReport, StreamSummary};

/// Runs pipelines, recording into one history and one set of metrics.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    registry: Registry,
    recorder: Recorder,
    progress: Option<RowCounter>,
}

impl Runner {
    /// A runner building connectors from `registry`.
    pub fn new(registry: Registry, history: History, metrics: Metrics) -> Self {
        let recorder = Recorder::new(history, metrics, registry.classifier().clone());
        Runner {
            registry,
            recorder,
            progress: None,
        }
    }

    /// Counts the rows each attempt passes to its loads in `counter` (reset
    /// at the start of every attempt), for a progress display.
    pub fn with_progress(mut self, counter: RowCounter) -> Self {
        self.progress = Some(counter);
        self
    }

    /// The history runs are recorded in.
    pub fn history(&self) -> &History {
        self.recorder.history()
    }

    /// Runs the batch pipeline `spec` once, retrying transient failures as
    /// its `retries` and `retryBackoff` say; `shutdown` cancels the attempt
    /// under way (before its commit point) or the wait before the next one.
    pub async fn run(
        &self,
        spec: &PipelineSpec,
        cause: RunCause,
        scheduled_for: Option<DateTime<Utc>>,
        shutdown: &CancellationToken,
    ) -> Result<RunSummary> {
        let policy = RetryPolicy {
            retries: spec.retries,
            backoff: spec.retry_backoff,
        };
        let run = RunRecord::begin(&spec.name, cause, scheduled_for);
        let attempt = |n: u32| {
            let record = RunRecord {
                attempt: n,
                cause: if n > 1 { RunCause::Retry } else { cause },
                start: Utc::now(),
                ..run.clone()
            };
            async move {
                let result = self.attempt(spec, shutdown).await;
                self.recorder.attempt_ended(record, &result);
                result
            }
        };
        let on_retry = |n: u32, err: &Error, delay: Duration| {
            tracing::warn!(
                pipeline = %spec.name,
                "attempt {n} failed ({err}); transient, retrying in {:.1}s",
                delay.as_secs_f64()
            );
            self.recorder.retried(&spec.name);
        };
        let classifier = self.registry.classifier();
        retry(&policy, classifier, shutdown, attempt, on_retry).await
    }

    async fn attempt(
        &self,
        spec: &PipelineSpec,
        shutdown: &CancellationToken,
    ) -> Result<RunSummary> {
        if let Some(counter) = &self.progress {
            counter.reset();
        }
        let pipeline = Pipeline::compile(spec, &self.registry).await?;
        pipeline
            .run_counted(shutdown.cancelled(), self.progress.as_ref())
            .await
    }

    /// Runs the streaming pipeline `spec` until its trigger ends it or
    /// `shutdown` fires, recording its start, progress and end in the
    /// history and every committed batch in the metrics; `on_batch` is told
    /// about every committed batch too.
    pub async fn stream(
        &self,
        spec: &PipelineSpec,
        shutdown: CancellationToken,
        mut on_batch: impl FnMut(&BatchReport),
    ) -> Result<StreamSummary> {
        let mut run = self.recorder.stream_started(spec);
        let result = run_stream(spec, &self.registry, shutdown, |batch| {
            run.batch(batch);
            on_batch(batch);
        })
        .await;
        run.finish(&result);
        result
    }

    /// Records a scheduled run of `pipeline` that could not start: its
    /// config did not load again (e.g. Vault unreachable).
    pub fn not_started(&self, pipeline: &str, slot: DateTime<Utc>, err: Error) {
        let record = RunRecord::begin(pipeline, RunCause::Schedule, Some(slot));
        self.recorder.attempt_ended(record, &Err(err));
    }

    /// Records a schedule slot skipped because the pipeline was busy.
    pub fn skipped(&self, pipeline: &str, slot: DateTime<Utc>) {
        self.recorder.skipped(pipeline, slot);
    }
}
