//! One run of a pipeline: compile, run, retry transient failures, and record
//! every attempt in the history and the metrics.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::connector::Registry;
use crate::error::{Error, Result};
use crate::ops::history::{History, RunRecord, Status, StepRecord};
use crate::ops::metrics::Metrics;
use crate::ops::progress::RowCounter;
use crate::ops::retry::{retry, RetryPolicy};
use crate::ops::shutdown::Shutdown;
use crate::pipeline::Pipeline;
use crate::run::RunSummary;
use crate::spec::PipelineSpec;

pub use crate::ops::history::Trigger;

/// Runs pipelines with retries, recording into one history and one set of
/// metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    registry: Registry,
    history: History,
    metrics: Metrics,
    progress: Option<RowCounter>,
}

impl Runner {
    /// A runner building connectors from `registry`.
    pub fn new(registry: Registry, history: History, metrics: Metrics) -> Self {
        Runner {
            registry,
            history,
            metrics,
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
        &self.history
    }

    /// Runs `spec` once, retrying transient failures as its `retries` and
    /// `retryBackoff` say; `shutdown` cancels the attempt under way (before
    /// its commit point) or the wait before the next one.
    pub async fn run(
        &self,
        spec: &PipelineSpec,
        trigger: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        shutdown: Shutdown,
    ) -> Result<RunSummary> {
        let policy = RetryPolicy {
            retries: spec.retries,
            backoff: spec.retry_backoff,
        };
        let run_id = uuid::Uuid::new_v4().to_string();
        let attempt = |n: u32| {
            let record = RunRecord {
                pipeline: spec.name.clone(),
                run_id: run_id.clone(),
                attempt: n,
                trigger: if n > 1 { Trigger::Retry } else { trigger },
                scheduled_for,
                start: Utc::now(),
                end: Utc::now(),
                status: Status::Succeeded,
                error: None,
                error_class: None,
                steps: Vec::new(),
                stream: None,
            };
            let shutdown = shutdown.clone();
            async move {
                let result = async {
                    if let Some(counter) = &self.progress {
                        counter.reset();
                    }
                    let pipeline = Pipeline::compile(spec, &self.registry).await?;
                    pipeline
                        .run_counted(shutdown.wait(), self.progress.as_ref())
                        .await
                }
                .await;
                self.record(record, &result);
                result
            }
        };
        let on_retry = |n: u32, err: &Error, delay: Duration| {
            tracing::warn!(
                pipeline = %spec.name,
                "attempt {n} failed ({err}); transient, retrying in {:.1}s",
                delay.as_secs_f64()
            );
            self.metrics.retried(&spec.name);
        };
        retry(
            &policy,
            self.registry.classifier(),
            &shutdown,
            attempt,
            on_retry,
        )
        .await
    }

    /// Records a schedule slot skipped because the pipeline was busy.
    pub fn skipped(&self, pipeline: &str, slot: DateTime<Utc>) {
        tracing::warn!(
            pipeline,
            "still running; skipping the run scheduled for {slot}"
        );
        let now = Utc::now();
        let record = RunRecord {
            pipeline: pipeline.to_string(),
            run_id: uuid::Uuid::new_v4().to_string(),
            attempt: 1,
            trigger: Trigger::Schedule,
            scheduled_for: Some(slot),
            start: now,
            end: now,
            status: Status::Skipped,
            error: None,
            error_class: None,
            steps: Vec::new(),
            stream: None,
        };
        self.metrics.run_ended(pipeline, Status::Skipped);
        self.append(&record);
    }

    /// Completes `record` with the outcome of its attempt and stores it.
    ///
    /// A manual run whose config does not validate (exit 2: bad key, bad
    /// SQL) ran nothing and is not recorded: its error is on the console,
    /// and the history stays a record of runs. A scheduled slot that fails
    /// to plan (a source's schema changed under its SQL) is recorded: no
    /// one may be watching the scheduler's console.
    fn record(&self, mut record: RunRecord, result: &Result<RunSummary>) {
        if let Err(err) = result {
            if record.trigger == Trigger::Manual && err.exit_code() == 2 {
                tracing::info!(pipeline = %record.pipeline, "invalid config, not recorded: {err}");
                return;
            }
        }
        record.end = Utc::now();
        match result {
            Ok(summary) => {
                record.steps = step_records(summary);
                self.metrics.steps(summary);
                tracing::info!(pipeline = %record.pipeline, "run succeeded");
            }
            Err(Error::Cancelled) => record.status = Status::Cancelled,
            Err(err) => {
                record.status = Status::Failed;
                record.error = Some(err.to_string());
                record.error_class = Some(self.registry.classifier().classify(err));
                tracing::info!(pipeline = %record.pipeline, "run failed: {err}");
            }
        }
        self.metrics.run_ended(&record.pipeline, record.status);
        self.append(&record);
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
