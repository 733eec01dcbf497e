//! Run metrics: counters and a duration histogram kept in memory, exposed in
//! the Prometheus text format over a minimal HTTP responder and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};
use crate::ops::history::Status;
use crate::run::RunSummary;
use crate::stream::BatchReport;

/// Upper bounds (seconds) of the step duration histogram buckets.
const BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A step, as metrics labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct StepKey {
    pipeline: String,
    step: usize,
    method: String,
}

#[derive(Debug, Default)]
struct StepStats {
    rows: u64,
    bytes: u64,
    /// Observations per bucket of [`BUCKETS`] (not cumulative).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Upper bounds (seconds) of the streaming batch commit duration buckets.
const COMMIT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// One streaming pipeline's batches.
#[derive(Debug)]
struct StreamStats {
    batches: u64,
    rows_in: i64,
    rows_out: u64,
    /// The last commit, or the start of the run before the first one.
    last_commit: Instant,
    /// Lag after the last batch, per (source step, partition key).
    lag: BTreeMap<(String, String), i64>,
    /// Commit durations: observations per bucket of [`COMMIT_BUCKETS`] (not
    /// cumulative), count and sum.
    commit_buckets: [u64; COMMIT_BUCKETS.len()],
    commit_count: u64,
    commit_sum: f64,
}

impl StreamStats {
    fn new() -> Self {
        StreamStats {
            batches: 0,
            rows_in: 0,
            rows_out: 0,
            last_commit: Instant::now(),
            lag: BTreeMap::new(),
            commit_buckets: [0; COMMIT_BUCKETS.len()],
            commit_count: 0,
            commit_sum: 0.0,
        }
    }
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
            let key = StepKey {
                pipeline: summary.pipeline.clone(),
                step: report.step.index,
                method: report.step.method.clone(),
            };
            let stats = state.steps.entry(key).or_default();
            stats.rows += report.rows.unwrap_or(0);
            stats.bytes += report.bytes.unwrap_or(0);
            observe(stats, duration);
        }
    }

    /// A streaming run of `pipeline` starts: its series appear, and the
    /// seconds since the last commit count from now until the first one.
    pub fn stream_started(&self, pipeline: &str) {
        let mut state = self.state();
        let stats = state
            .streams
            .entry(pipeline.to_string())
            .or_insert_with(StreamStats::new);
        stats.last_commit = Instant::now();
    }

    /// Counts a committed micro-batch of `pipeline`: batches, rows, the lag
    /// of every source partition after it, and the commit duration.
    pub fn stream_batch(&self, pipeline: &str, batch: &BatchReport) {
        let mut state = self.state();
        let stats = state
            .streams
            .entry(pipeline.to_string())
            .or_insert_with(StreamStats::new);
        stats.batches += 1;
        stats.rows_in += batch.rows_in;
        stats.rows_out += batch.rows_out;
        stats.last_commit = Instant::now();
        for source in &batch.sources {
            for partition in &source.partitions {
                stats
                    .lag
                    .insert((source.step.clone(), partition.key.clone()), partition.lag);
            }
        }
        if let Some(commit) = batch.commit {
            let secs = commit.as_secs_f64();
            if let Some(i) = COMMIT_BUCKETS.iter().position(|bound| secs <= *bound) {
                stats.commit_buckets[i] += 1;
            }
            stats.commit_count += 1;
            stats.commit_sum += secs;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let state = self.state();
        let mut out = String::new();
        header(
            &mut out,
            "dataflow_runs_total",
            "counter",
            "Pipeline run attempts and skipped schedule slots, by outcome.",
        );
        for ((pipeline, status), n) in &state.runs {
            sample(
                &mut out,
                "dataflow_runs_total",
                &vec![
                    ("pipeline", pipeline.clone()),
                    ("status", status.to_string()),
                ],
                *n as f64,
            );
        }
        header(
            &mut out,
            "dataflow_last_run_timestamp_seconds",
            "gauge",
            "Unix time of the last run attempt ending with each outcome.",
        );
        for ((pipeline, status), t) in &state.last_run {
            sample(
                &mut out,
                "dataflow_last_run_timestamp_seconds",
                &vec![
                    ("pipeline", pipeline.clone()),
                    ("status", status.to_string()),
                ],
                *t,
            );
        }
        header(
            &mut out,
            "dataflow_retries_total",
            "counter",
            "Retries after transient failures.",
        );
        for (pipeline, n) in &state.retries {
            sample(
                &mut out,
                "dataflow_retries_total",
                &vec![("pipeline", pipeline.clone())],
                *n as f64,
            );
        }
        header(
            &mut out,
            "dataflow_rows_written_total",
            "counter",
            "Rows written by load steps.",
        );
        for (key, stats) in &state.steps {
            sample(
                &mut out,
                "dataflow_rows_written_total",
                &key.labels(),
                stats.rows as f64,
            );
        }
        header(
            &mut out,
            "dataflow_bytes_written_total",
            "counter",
            "Bytes written by load steps.",
        );
        for (key, stats) in &state.steps {
            sample(
                &mut out,
                "dataflow_bytes_written_total",
                &key.labels(),
                stats.bytes as f64,
            );
        }
        let name = "dataflow_step_duration_seconds";
        header(&mut out, name, "histogram", "Wall time of load steps.");
        for (key, stats) in &state.steps {
            let labels = key.labels();
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(stats.buckets) {
                cumulative += n;
                let le = bound.to_string();
                sample(
                    &mut out,
                    &format!("{name}_bucket"),
                    &with_le(&labels, &le),
                    cumulative as f64,
                );
            }
            sample(
                &mut out,
                &format!("{name}_bucket"),
                &with_le(&labels, "+Inf"),
                stats.count as f64,
            );
            sample(&mut out, &format!("{name}_sum"), &labels, stats.sum);
            sample(
                &mut out,
                &format!("{name}_count"),
                &labels,
                stats.count as f64,
            );
        }
        render_streams(&mut out, &state.streams);
        out
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
            .map(|(key, stats)| {
                json!({
                    "pipeline": key.pipeline,
                    "step": key.step,
                    "method": key.method,
                    "runs": stats.count,
                    "rowsWritten": stats.rows,
                    "bytesWritten": stats.bytes,
                    "durationSeconds": stats.sum,
                })
            })
            .collect();
        let streams: Vec<Value> = state
            .streams
            .iter()
            .map(|(pipeline, stats)| {
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
                    "secondsSinceLastCommit": stats.last_commit.elapsed().as_secs_f64(),
                    "commits": stats.commit_count,
                    "commitSeconds": stats.commit_sum,
                    "lag": lag,
                })
            })
            .collect();
        json!({"runs": runs, "retries": retries, "steps": steps, "streams": streams})
    }

    /// Serves [`render_prometheus`](Self::render_prometheus) at `/metrics`
    /// on `addr` until the returned task is aborted.
    pub async fn serve(&self, addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
            context: format!("cannot serve metrics on {addr}"),
            source,
        })?;
        tracing::info!("serving metrics on http://{addr}/metrics");
        let metrics = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let metrics = metrics.clone();
                        tokio::spawn(async move {
                            if let Err(err) = metrics.respond(stream).await {
                                tracing::debug!("metrics request failed: {err}");
                            }
                        });
                    }
                    Err(err) => tracing::warn!("metrics listener: {err}"),
                }
            }
        }))
    }

    /// Answers one HTTP/1.x request and closes the connection.
    async fn respond(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        let read_head = async {
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            std::io::Result::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(5), read_head)
            .await
            .map_err(std::io::Error::other)??;
        let line = String::from_utf8_lossy(&request);
        let mut parts = line.split_whitespace();
        let (status, body) = match (parts.next(), parts.next()) {
            (Some("GET"), Some("/metrics" | "/")) => ("200 OK", self.render_prometheus()),
            (Some("GET"), _) => ("404 Not Found", "not found; try /metrics\n".to_string()),
            _ => ("405 Method Not Allowed", "only GET\n".to_string()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }
}

impl StepKey {
    fn labels(&self) -> Labels {
        vec![
            ("pipeline", self.pipeline.clone()),
            ("step", self.step.to_string()),
            ("method", self.method.clone()),
        ]
    }
}

/// The series of streaming runs, when there are any.
fn render_streams(out: &mut String, streams: &BTreeMap<String, StreamStats>) {
    if streams.is_empty() {
        return;
    }
    let pipeline = |name: &String| vec![("pipeline", name.clone())];
    type Counter = (&'static str, &'static str, fn(&StreamStats) -> f64);
    let counters: [Counter; 3] = [
        (
            "dataflow_stream_batches_total",
            "Micro-batches committed by streaming pipelines.",
            |s| s.batches as f64,
        ),
        (
            "dataflow_stream_rows_in_total",
            "Source positions (Kafka: records) consumed by committed micro-batches.",
            |s| s.rows_in as f64,
        ),
        (
            "dataflow_stream_rows_out_total",
            "Rows written by committed micro-batches, summed over the loads.",
            |s| s.rows_out as f64,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, "counter", help);
        for (key, stats) in streams {
            sample(out, name, &pipeline(key), value(stats));
        }
    }
    let name = "dataflow_stream_consumer_lag";
    header(
        out,
        name,
        "gauge",
        "Positions (Kafka: records) available but not yet read after the last batch, per source partition.",
    );
    for (key, stats) in streams {
        for ((source, partition), lag) in &stats.lag {
            let labels = vec![
                ("pipeline", key.clone()),
                ("source", source.clone()),
                ("partition", partition.clone()),
            ];
            sample(out, name, &labels, *lag as f64);
        }
    }
    let name = "dataflow_stream_seconds_since_last_commit";
    header(
        out,
        name,
        "gauge",
        "Seconds since the last micro-batch committed (since the start before the first).",
    );
    for (key, stats) in streams {
        let secs = stats.last_commit.elapsed().as_secs_f64();
        sample(out, name, &pipeline(key), (secs * 1000.0).round() / 1000.0);
    }
    let name = "dataflow_stream_commit_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Time the sinks took to commit a micro-batch.",
    );
    for (key, stats) in streams {
        let labels = pipeline(key);
        let mut cumulative = 0;
        for (bound, n) in COMMIT_BUCKETS.iter().zip(stats.commit_buckets) {
            cumulative += n;
            let le = bound.to_string();
            sample(
                out,
                &format!("{name}_bucket"),
                &with_le(&labels, &le),
                cumulative as f64,
            );
        }
        let count = stats.commit_count as f64;
        sample(
            out,
            &format!("{name}_bucket"),
            &with_le(&labels, "+Inf"),
            count,
        );
        sample(out, &format!("{name}_sum"), &labels, stats.commit_sum);
        sample(out, &format!("{name}_count"), &labels, count);
    }
}

fn observe(stats: &mut StepStats, duration: Duration) {
    let secs = duration.as_secs_f64();
    if let Some(i) = BUCKETS.iter().position(|bound| secs <= *bound) {
        stats.buckets[i] += 1;
    }
    stats.count += 1;
    stats.sum += secs;
}

type Labels = Vec<(&'static str, String)>;

fn with_le(labels: &Labels, le: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push(("le", le.to_string()));
    labels
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &Labels, value: f64) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StepRef;
    use crate::run::StepReport;
    use crate::spec::StepKind;

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
        for line in [
            "# TYPE dataflow_runs_total counter",
            r#"dataflow_runs_total{pipeline="daily \"sales\"",status="succeeded"} 1"#,
            r#"dataflow_runs_total{pipeline="p",status="failed"} 1"#,
            r#"dataflow_retries_total{pipeline="p"} 1"#,
            r#"dataflow_rows_written_total{pipeline="p",step="1",method="toFiles"} 12"#,
            r#"dataflow_bytes_written_total{pipeline="p",step="1",method="toFiles"} 120"#,
            "# TYPE dataflow_step_duration_seconds histogram",
            r#"dataflow_step_duration_seconds_bucket{pipeline="p",step="1",method="toFiles",le="0.1"} 0"#,
            r#"dataflow_step_duration_seconds_bucket{pipeline="p",step="1",method="toFiles",le="0.25"} 1"#,
            r#"dataflow_step_duration_seconds_bucket{pipeline="p",step="1",method="toFiles",le="5"} 2"#,
            r#"dataflow_step_duration_seconds_bucket{pipeline="p",step="1",method="toFiles",le="+Inf"} 2"#,
            r#"dataflow_step_duration_seconds_sum{pipeline="p",step="1",method="toFiles"} 3.2"#,
            r#"dataflow_step_duration_seconds_count{pipeline="p",step="1",method="toFiles"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        // Extract steps have no duration and no series.
        assert!(!text.contains("fromFiles"));
    }

    #[test]
    fn json_has_runs_retries_and_steps() {
        let metrics = Metrics::default();
        metrics.run_ended("p", Status::Skipped);
        metrics.steps(&summary("p", 3, 0.5));
        let json = metrics.to_json();
        assert_eq!(json["runs"][0]["status"], "skipped");
        assert_eq!(json["steps"][0]["rowsWritten"], 3);
        assert_eq!(json["retries"].as_array().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn serves_over_http() {
        let metrics = Metrics::default();
        metrics.run_ended("p", Status::Succeeded);
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let server = metrics.serve(port).await.unwrap();
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(port).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains(r#"dataflow_runs_total{pipeline="p",status="succeeded"} 1"#));
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
