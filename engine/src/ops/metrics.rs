//! Run metrics: counts, gauges and duration histograms kept in memory,
//! exposed in the Prometheus (OpenMetrics) text format through
//! `prometheus-client`, and as JSON for `--metrics-file`.
//!
//! The counts live in plain maps (the JSON file reads them too) and are
//! encoded by a [`Collector`] at each scrape; the histograms are the
//! library's.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use crate::ops::history::Status;
use crate::run::RunSummary;
use crate::stream::BatchReport;

/// The HTTP `Content-Type` of [`Metrics::render_prometheus`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the step duration histogram buckets.
const STEP_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Upper bounds (seconds) of the streaming batch commit duration buckets.
const COMMIT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Durations: the histogram exposed, and its count and sum for the JSON
/// (the library keeps those to itself).
#[derive(Debug)]
struct Timings {
    histogram: Histogram,
    count: u64,
    sum: f64,
}

impl Timings {
    fn new(buckets: &[f64]) -> Self {
        Timings {
            histogram: Histogram::new(buckets.iter().copied()),
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, duration: Duration) {
        let secs = duration.as_secs_f64();
        self.histogram.observe(secs);
        self.count += 1;
        self.sum += secs;
    }
}

/// A load step, as metrics labels: pipeline, step index, method.
type StepKey = (String, usize, String);

#[derive(Debug)]
struct StepStats {
    rows: u64,
    bytes: u64,
    duration: Timings,
}

/// One streaming pipeline's batches.
#[derive(Debug)]
struct StreamStats {
    batches: u64,
    rows_in: i64,
    rows_out: u64,
    /// Rows found behind the watermark.
    late_rows: u64,
    /// The last commit, or the start of the run before the first one.
    last_commit: Instant,
    /// Lag after the last batch, per (source step, partition key).
    lag: BTreeMap<(String, String), i64>,
    commits: Timings,
}

#[derive(Debug, Default)]
struct State {
    runs: BTreeMap<(String, &'static str), u64>,
    last_run: BTreeMap<(String, &'static str), f64>,
    retries: BTreeMap<String, u64>,
    steps: BTreeMap<StepKey, StepStats>,
    streams: BTreeMap<String, StreamStats>,
}

/// The metrics of one `run-pipeline` process; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Mutex<State>>);

impl Metrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one attempt (or skipped slot) of `pipeline` ending in `status`.
    pub fn run_ended(&self, pipeline: &str, status: Status) {
        let mut state = self.state();
        let key = (pipeline.to_string(), status.as_str());
        *state.runs.entry(key.clone()).or_default() += 1;
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        state.last_run.insert(key, now);
    }

    /// Counts one retry of `pipeline`.
    pub fn retried(&self, pipeline: &str) {
        *self
            .state()
            .retries
            .entry(pipeline.to_string())
            .or_default() += 1;
    }

    /// Adds the rows, bytes and durations of a successful run's load steps.
    pub fn steps(&self, summary: &RunSummary) {
        let mut state = self.state();
        for report in &summary.steps {
            let Some(duration) = report.duration else {
                continue;
            };
            let key = (
                summary.pipeline.clone(),
                report.step.index,
                report.step.method.clone(),
            );
            let stats = state.steps.entry(key).or_insert_with(|| StepStats {
                rows: 0,
                bytes: 0,
                duration: Timings::new(&STEP_BUCKETS),
            });
            stats.rows += report.rows.unwrap_or(0);
            stats.bytes += report.bytes.unwrap_or(0);
            stats.duration.observe(duration);
        }
    }

    /// A streaming run of `pipeline` starts: its series appear, and the
    /// seconds since the last commit count from now until the first one.
    pub fn stream_started(&self, pipeline: &str) {
        self.stream(pipeline, |stats| stats.last_commit = Instant::now());
    }

    /// Counts a committed micro-batch of `pipeline`: batches, rows, the lag
    /// of every source partition after it, and the commit duration.
    pub fn stream_batch(&self, pipeline: &str, batch: &BatchReport) {
        self.stream(pipeline, |stats| {
            stats.batches += 1;
            stats.rows_in += batch.rows_in;
            stats.rows_out += batch.rows_out;
            stats.late_rows += batch.late_rows;
            stats.last_commit = Instant::now();
            for source in &batch.sources {
                for partition in &source.partitions {
                    let key = (source.step.clone(), partition.key.clone());
                    stats.lag.insert(key, partition.lag);
                }
            }
            if let Some(commit) = batch.commit {
                stats.commits.observe(commit);
            }
        });
    }

    fn stream(&self, pipeline: &str, update: impl FnOnce(&mut StreamStats)) {
        let mut state = self.state();
        let stats = state
            .streams
            .entry(pipeline.to_string())
            .or_insert_with(|| StreamStats {
                batches: 0,
                rows_in: 0,
                rows_out: 0,
                late_rows: 0,
                last_commit: Instant::now(),
                lag: BTreeMap::new(),
                commits: Timings::new(&COMMIT_BUCKETS),
            });
        update(stats);
    }

    /// The OpenMetrics text exposition (served as [`CONTENT_TYPE`]).
    pub fn render_prometheus(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String does not fail");
        text
    }

    /// The same metrics as JSON, for `--metrics-file`.
    pub fn to_json(&self) -> Value {
        let state = self.state();
        let runs: Vec<Value> = state
            .runs
            .iter()
            .map(|((pipeline, status), n)| json!({"pipeline": pipeline, "status": status, "count": n}))
            .collect();
        let retries: Vec<Value> = state
            .retries
            .iter()
            .map(|(pipeline, n)| json!({"pipeline": pipeline, "count": n}))
            .collect();
        let steps: Vec<Value> = state
            .steps
            .iter()
            .map(|((pipeline, step, method), stats)| {
                json!({
                    "pipeline": pipeline,
                    "step": step,
                    "method": method,
                    "runs": stats.duration.count,
                    "rowsWritten": stats.rows,
                    "bytesWritten": stats.bytes,
                    "durationSeconds": stats.duration.sum,
                })
            })
            .collect();
        let streams: Vec<Value> = state.streams.iter().map(stream_json).collect();
        json!({"runs": runs, "retries": retries, "steps": steps, "streams": streams})
    }
}

fn stream_json((pipeline, stats): (&String, &StreamStats)) -> Value {
    let lag: Vec<Value> = stats
        .lag
        .iter()
        .map(|((source, partition), lag)| {
            json!({"source": source, "partition": partition, "lag": lag})
        })
        .collect();
    json!({
        "pipeline": pipeline,
        "batches": stats.batches,
        "rowsIn": stats.rows_in,
        "rowsOut": stats.rows_out,
        "lateRows": stats.late_rows,
        "secondsSinceLastCommit": stats.last_commit.elapsed().as_secs_f64(),
        "commits": stats.commits.count,
        "commitSeconds": stats.commits.sum,
        "lag": lag,
    })
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = self.state();
        encode_runs(&mut encoder, &state)?;
        encode_steps(&mut encoder, &state.steps)?;
        encode_streams(&mut encoder, &state.streams)
    }
}

/// Run outcomes and retries.
fn encode_runs(out: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let run = |(pipeline, status): &(String, &str)| {
        [
            ("pipeline", pipeline.to_string()),
            ("status", status.to_string()),
        ]
    };
    family(
        out,
        "dataflow_runs",
        "Pipeline run attempts and skipped schedule slots, by outcome.",
        state
            .runs
            .iter()
            .map(|(k, n)| (run(k), ConstCounter::new(*n))),
    )?;
    family(
        out,
        "dataflow_last_run_timestamp_seconds",
        "Unix time of the last run attempt ending with each outcome.",
        state
            .last_run
            .iter()
            .map(|(k, t)| (run(k), ConstGauge::new(*t))),
    )?;
    family(
        out,
        "dataflow_retries",
        "Retries after transient failures.",
        state
            .retries
            .iter()
            .map(|(p, n)| (pipeline(p), ConstCounter::new(*n))),
    )
}

/// Rows, bytes and durations of load steps.
fn encode_steps(out: &mut DescriptorEncoder, steps: &BTreeMap<StepKey, StepStats>) -> fmt::Result {
    let step = |(pipeline, step, method): &StepKey| {
        [
            ("pipeline", pipeline.to_string()),
            ("step", step.to_string()),
            ("method", method.to_string()),
        ]
    };
    family(
        out,
        "dataflow_rows_written",
        "Rows written by load steps.",
        steps
            .iter()
            .map(|(k, s)| (step(k), ConstCounter::new(s.rows))),
    )?;
    family(
        out,
        "dataflow_bytes_written",
        "Bytes written by load steps.",
        steps
            .iter()
            .map(|(k, s)| (step(k), ConstCounter::new(s.bytes))),
    )?;
    family(
        out,
        "dataflow_step_duration_seconds",
        "Wall time of load steps.",
        steps
            .iter()
            .map(|(k, s)| (step(k), s.duration.histogram.clone())),
    )
}

/// Batches and rows of streaming runs.
fn encode_stream_counts(
    out: &mut DescriptorEncoder,
    streams: &BTreeMap<String, StreamStats>,
) -> fmt::Result {
    type Count = (&'static str, &'static str, fn(&StreamStats) -> u64);
    let counts: [Count; 4] = [
        (
            "dataflow_stream_batches",
            "Micro-batches committed by streaming pipelines.",
            |s| s.batches,
        ),
        (
            "dataflow_stream_rows_in",
            "Source positions (Kafka: records) consumed by committed micro-batches.",
            |s| u64::try_from(s.rows_in).unwrap_or(0),
        ),
        (
            "dataflow_stream_rows_out",
            "Rows written by committed micro-batches, summed over the loads.",
            |s| s.rows_out,
        ),
        (
            "dataflow_stream_late_rows",
            "Rows behind the watermark, set apart by stateful micro-batches (to lateDataPath when set).",
            |s| s.late_rows,
        ),
    ];
    for (name, help, value) in counts {
        let samples = streams
            .iter()
            .map(|(p, s)| (pipeline(p), ConstCounter::new(value(s))));
        family(out, name, help, samples)?;
    }
    Ok(())
}

/// The series of streaming runs.
fn encode_streams(
    out: &mut DescriptorEncoder,
    streams: &BTreeMap<String, StreamStats>,
) -> fmt::Result {
    encode_stream_counts(out, streams)?;
    let lags = streams.iter().flat_map(|(p, s)| {
        s.lag.iter().map(move |((source, partition), lag)| {
            let labels = [
                ("pipeline", p.to_string()),
                ("source", source.to_string()),
                ("partition", partition.to_string()),
            ];
            (labels, ConstGauge::new(*lag))
        })
    });
    family(
        out,
        "dataflow_stream_consumer_lag",
        "Positions (Kafka: records) available but not yet read after the last batch, per source partition.",
        lags,
    )?;
    family(
        out,
        "dataflow_stream_seconds_since_last_commit",
        "Seconds since the last micro-batch committed (since the start before the first).",
        streams.iter().map(|(p, s)| {
            let secs = s.last_commit.elapsed().as_secs_f64();
            (
                pipeline(p),
                ConstGauge::new((secs * 1000.0).round() / 1000.0),
            )
        }),
    )?;
    family(
        out,
        "dataflow_stream_commit_duration_seconds",
        "Time the sinks took to commit a micro-batch.",
        streams
            .iter()
            .map(|(p, s)| (pipeline(p), s.commits.histogram.clone())),
    )
}

/// Encodes one metric family, unless it has no samples.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (L, M)>,
) -> fmt::Result {
    let mut samples = samples.peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = out.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn pipeline(name: &str) -> [(&'static str, String); 1] {
    [("pipeline", name.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StepRef;
    use crate::run::StepReport;
    use crate::spec::StepKind;
    use crate::stream::{PartitionProgress, SourceProgress};

    fn summary(pipeline: &str, rows: u64, secs: f64) -> RunSummary {
        let step = |index, method: &str| StepRef {
            index,
            method: method.into(),
            name: None,
        };
        let report = |index, method: &str, kind, duration: Option<f64>| StepReport {
            step: step(index, method),
            kind,
            rows: duration.map(|_| rows),
            bytes: duration.map(|_| rows * 10),
            duration: duration.map(Duration::from_secs_f64),
            detail: String::new(),
        };
        RunSummary {
            pipeline: pipeline.into(),
            steps: vec![
                report(0, "fromFiles", StepKind::Extract, None),
                report(1, "toFiles", StepKind::Load, Some(secs)),
            ],
            elapsed: Duration::from_secs_f64(secs),
            commit: None,
        }
    }

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.run_ended("daily \"sales\"", Status::Succeeded);
        metrics.run_ended("p", Status::Succeeded);
        metrics.run_ended("p", Status::Failed);
        metrics.retried("p");
        metrics.steps(&summary("p", 5, 0.2));
        metrics.steps(&summary("p", 7, 3.0));
        let text = metrics.render_prometheus();
        assert_lines(
            &text,
            &[
                "# HELP dataflow_runs Pipeline run attempts and skipped schedule slots, by outcome.",
                "# TYPE dataflow_runs counter",
                r#"dataflow_runs_total{pipeline="daily \"sales\"",status="succeeded"} 1"#,
                r#"dataflow_runs_total{pipeline="p",status="failed"} 1"#,
                "# TYPE dataflow_last_run_timestamp_seconds gauge",
                r#"dataflow_retries_total{pipeline="p"} 1"#,
                r#"dataflow_rows_written_total{pipeline="p",step="1",method="toFiles"} 12"#,
                r#"dataflow_bytes_written_total{pipeline="p",step="1",method="toFiles"} 120"#,
                "# TYPE dataflow_step_duration_seconds histogram",
                r#"dataflow_step_duration_seconds_bucket{le="0.1",pipeline="p",step="1",method="toFiles"} 0"#,
                r#"dataflow_step_duration_seconds_bucket{le="0.25",pipeline="p",step="1",method="toFiles"} 1"#,
                r#"dataflow_step_duration_seconds_bucket{le="5.0",pipeline="p",step="1",method="toFiles"} 2"#,
                r#"dataflow_step_duration_seconds_bucket{le="+Inf",pipeline="p",step="1",method="toFiles"} 2"#,
                r#"dataflow_step_duration_seconds_sum{pipeline="p",step="1",method="toFiles"} 3.2"#,
                r#"dataflow_step_duration_seconds_count{pipeline="p",step="1",method="toFiles"} 2"#,
            ],
        );
        assert_eq!(text.lines().last(), Some("# EOF"));
        // Extract steps have no duration and no series; no stream, no
        // stream series.
        assert!(!text.contains("fromFiles") && !text.contains("stream"));
    }

    #[test]
    fn renders_stream_series() {
        let metrics = Metrics::default();
        metrics.stream_started("s");
        let partition = |key: &str, lag| PartitionProgress {
            key: key.into(),
            start: 0,
            end: 10,
            lag,
        };
        let batch = BatchReport {
            id: 1,
            rows_in: 20,
            rows_out: 7,
            sources: vec![SourceProgress {
                step: "steps[0] (fromKafka)".into(),
                partitions: vec![partition("t/0", 3), partition("t/1", 0)],
                lag: 3,
            }],
            duration: Duration::from_millis(50),
            commit: Some(Duration::from_millis(20)),
            late_rows: 4,
        };
        metrics.stream_batch("s", &batch);
        let text = metrics.render_prometheus();
        assert_lines(
            &text,
            &[
                "# TYPE dataflow_stream_batches counter",
                r#"dataflow_stream_batches_total{pipeline="s"} 1"#,
                r#"dataflow_stream_rows_in_total{pipeline="s"} 20"#,
                r#"dataflow_stream_rows_out_total{pipeline="s"} 7"#,
                r#"dataflow_stream_late_rows_total{pipeline="s"} 4"#,
                r#"dataflow_stream_consumer_lag{pipeline="s",source="steps[0] (fromKafka)",partition="t/0"} 3"#,
                r#"dataflow_stream_consumer_lag{pipeline="s",source="steps[0] (fromKafka)",partition="t/1"} 0"#,
                r#"dataflow_stream_commit_duration_seconds_bucket{le="0.01",pipeline="s"} 0"#,
                r#"dataflow_stream_commit_duration_seconds_bucket{le="0.025",pipeline="s"} 1"#,
                r#"dataflow_stream_commit_duration_seconds_count{pipeline="s"} 1"#,
                r#"dataflow_stream_commit_duration_seconds_sum{pipeline="s"} 0.02"#,
            ],
        );
        let json = metrics.to_json();
        let stream = &json["streams"][0];
        assert_eq!(
            (&stream["commits"], &stream["rowsIn"]),
            (&json!(1), &json!(20))
        );
        assert_eq!(stream["lag"][0]["lag"], 3);
    }

    #[test]
    fn json_has_runs_retries_and_steps() {
        let metrics = Metrics::default();
        metrics.run_ended("p", Status::Skipped);
        metrics.steps(&summary("p", 3, 0.5));
        metrics.steps(&summary("p", 4, 0.25));
        let json = metrics.to_json();
        assert_eq!(json["runs"][0]["status"], "skipped");
        assert_eq!(json["steps"][0]["rowsWritten"], 7);
        assert_eq!(json["steps"][0]["runs"], 2);
        assert_eq!(json["steps"][0]["durationSeconds"], 0.75);
        assert_eq!(json["retries"].as_array().unwrap().len(), 0);
    }
}
