//! Streaming runs are observed like batch runs: history records at start,
//! every so often and at the end (one run id), and streaming metrics (batches,
//! rows, consumer lag per partition, seconds since the last commit, commit
//! durations) on `--metrics-addr` and in `--metrics-file`; against a real
//! Kafka-compatible broker (tansu).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use dataflow_connectors::testing::KafkaBroker;
use serde_json::Value;

fn broker() -> &'static KafkaBroker {
    KafkaBroker::shared()
}

/// A fresh topic with `partitions` partitions and `events` JSON events
/// `{"id": i, "kind": purchase|view, "amount": i/2}` spread over them.
fn topic_with_events(name: &str, partitions: i32, events: std::ops::Range<i64>) -> String {
    let topic = format!("{name}-{}", std::process::id());
    broker().create_topic(&topic, partitions).unwrap();
    let values: Vec<(i32, String)> = events
        .map(|i| {
            let kind = if i % 3 == 0 { "purchase" } else { "view" };
            let value = format!(
                r#"{{"id": {i}, "kind": "{kind}", "amount": {}}}"#,
                i as f64 / 2.0
            );
            ((i % i64::from(partitions)) as i32, value)
        })
        .collect();
    let records: Vec<_> = values
        .iter()
        .map(|(p, v)| (*p, None, v.as_bytes()))
        .collect();
    broker().produce(&topic, &records).unwrap();
    topic
}

/// Kafka (json, at most `max` records per batch) → purchases → Delta, as a
/// streaming config file with `trigger`; `query` selects from `events`.
fn stream_pipeline(dir: &Path, topic: &str, trigger: &str, max: u32, query: &str) -> String {
    let config = format!(
        r#"{{"name": "observed-{topic}", "mode": "streaming", "trigger": "{trigger}", "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
          "format": "json", "schema": "id BIGINT, kind VARCHAR, amount DOUBLE", "maxOffsetsPerTrigger": {max},
          "registerAs": "events"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "{query}"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/purchases", "saveMode": "append"}}}}
    ]}}"#,
        broker().bootstrap()
    );
    write_config(dir, "stream.json", &config)
}

const PURCHASES: &str = "SELECT id, amount FROM events WHERE kind = 'purchase'";

/// The raw lines of `history.jsonl` in `state` for `pipeline`.
fn history_lines(state: &Path, pipeline: &str) -> Vec<Value> {
    std::fs::read_to_string(state.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|r| r["pipeline"] == pipeline)
        .collect()
}

/// The records `run-pipeline history --json` shows for `pipeline`.
fn shown(state: &Path, pipeline: &str) -> Vec<Value> {
    history(state)
        .into_iter()
        .filter(|r| r["pipeline"] == pipeline)
        .collect()
}

/// The rows of the load step and of the Kafka step in a shown record.
fn step_rows(record: &Value) -> (u64, u64) {
    let steps = record["steps"].as_array().unwrap();
    let rows = |kind: &str| {
        steps
            .iter()
            .find(|s| s["kind"] == kind)
            .and_then(|s| s["rows"].as_u64())
            .unwrap_or_else(|| panic!("no {kind} rows in {record}"))
    };
    (rows("load"), rows("extract"))
}

/// From `run`'s stderr: the run's seconds ("finished after 1.23s") and the
/// sum of its batches' ("batch 1: ..., 0.35s ...").
fn run_and_batch_seconds(stderr: &str) -> (f64, f64) {
    let secs = |text: &str| -> f64 {
        let number = text.split('s').next().unwrap();
        number.parse().unwrap_or_else(|_| panic!("{text}"))
    };
    let (_, run) = stderr.split_once("finished after ").unwrap();
    let batches = stderr
        .lines()
        .filter(|l| l.starts_with("batch "))
        .map(|l| secs(l.split(", ").nth(2).unwrap()))
        .sum();
    (secs(run), batches)
}

#[test]
fn available_now_run_is_recorded_and_measured() {
    let topic = topic_with_events("obs-drain", 4, 0..1000);
    let pipeline = format!("observed-{topic}");
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let metrics_file = out.path().join("metrics.json");
    let file = stream_pipeline(out.path(), &topic, "availableNow", 300, PURCHASES);
    let result = run(
        out.path(),
        &[
            "run",
            &file,
            "--state-dir",
            &state.display().to_string(),
            "--metrics-file",
            &metrics_file.display().to_string(),
        ],
    );
    result.assert_ok();
    // The per-batch lines and the summary are still printed.
    let batch_lines = result.stderr.lines().filter(|l| l.starts_with("batch "));
    assert_eq!(batch_lines.count(), 4, "{}", result.stderr);
    assert!(
        result.stderr.contains("finished after")
            && result
                .stderr
                .contains("4 batches, 1000 rows in, 334 rows out"),
        "{}",
        result.stderr
    );

    // History: a start record and an end record of one run.
    let records = shown(&state, &pipeline);
    assert!(records.len() >= 2, "{records:?}");
    let (first, last) = (&records[0], &records[records.len() - 1]);
    assert_eq!(first["status"], "running", "{first}");
    assert_eq!(last["status"], "succeeded", "{last}");
    for record in &records {
        assert_eq!(record["runId"], first["runId"], "{record}");
        assert_eq!(record["trigger"], "manual", "{record}");
        assert_eq!(record["attempt"], 1, "{record}");
        assert!(record.get("error").is_none(), "{record}");
    }
    assert_eq!(step_rows(last), (334, 1000), "{last}");
    assert_eq!(last["batches"], 4, "{last}");
    assert!(last["end"].as_str() >= first["start"].as_str());
    // The file has the batch counts beside the usual fields.
    let lines = history_lines(&state, &pipeline);
    assert_eq!(lines.len(), records.len());
    assert_eq!(lines[0]["batches"], 0, "{}", lines[0]);
    let end = &lines[lines.len() - 1];
    assert_eq!(
        (&end["batches"], &end["rowsIn"], &end["rowsOut"]),
        (&Value::from(4), &Value::from(1000), &Value::from(334)),
        "{end}"
    );
    // And the table shows both records, the end one with its rows out.
    let table = run(
        out.path(),
        &[
            "history",
            &pipeline,
            "--state-dir",
            &state.display().to_string(),
        ],
    );
    table.assert_ok();
    let rows: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(rows.len(), records.len() + 1, "{}", table.stdout);
    assert!(rows[1].contains("running"), "{}", table.stdout);
    assert!(
        rows[rows.len() - 1].contains("succeeded") && rows[rows.len() - 1].contains(" 334"),
        "{}",
        table.stdout
    );

    // Metrics file: batches, rows, commits, and the lag of every partition.
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics_file).unwrap()).unwrap();
    let stream = &json["streams"][0];
    assert_eq!(stream["pipeline"], pipeline.as_str(), "{json}");
    assert_eq!(stream["batches"], 4, "{json}");
    assert_eq!(stream["rowsIn"], 1000, "{json}");
    assert_eq!(stream["rowsOut"], 334, "{json}");
    assert_eq!(stream["commits"], 4, "{json}");
    // Counted from the last commit, not from the start: at most the run's
    // time minus its batches' (printed to 10 ms; the file is written a few
    // ms after the run ends).
    let since = stream["secondsSinceLastCommit"].as_f64().unwrap();
    let (elapsed, batches) = run_and_batch_seconds(&result.stderr);
    assert!(
        since > 0.0 && since <= elapsed - batches + 0.05,
        "{since}s since the last commit; run {elapsed}s, batches {batches}s"
    );
    let lag = stream["lag"].as_array().unwrap();
    let partitions: Vec<&str> = lag
        .iter()
        .map(|l| l["partition"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..4).map(|p| format!("{topic}/{p}")).collect();
    assert_eq!(partitions, expected, "{json}");
    for l in lag {
        assert_eq!(l["lag"], 0, "drained: {json}");
        assert_eq!(l["source"], r#"steps[0] (fromKafka as "events")"#, "{json}");
    }
    assert!(
        json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["pipeline"] == pipeline.as_str()
                && r["status"] == "succeeded"
                && r["count"] == 1),
        "{json}"
    );
}

#[test]
fn processing_time_run_serves_stream_metrics_and_stops_on_sigterm() {
    let topic = topic_with_events("obs-live", 2, 0..200);
    let pipeline = format!("observed-{topic}");
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let file = stream_pipeline(out.path(), &topic, "processingTime=200ms", 50, PURCHASES);
    let started = Instant::now();
    let mut cmd = cli(out.path());
    cmd.args(["run", &file])
        .args(["--state-dir", &state.display().to_string()]);
    let server = Serving::start(cmd);

    // 200 records, 50 per batch: 4 batches, then idle polls.
    let p = format!(r#"pipeline="{pipeline}""#);
    let batches = format!("dataflow_stream_batches_total{{{p}}}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (scraped, samples) = loop {
        let scraped = Instant::now();
        let samples = server.scrape();
        if samples.get(&batches).copied().unwrap_or(0.0) >= 4.0 {
            break (scraped, samples);
        }
        assert!(
            Instant::now() < deadline,
            "no 4 batches in 120 s; last scrape: {samples:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // No batch commits after the 4th: the seconds since the last commit grow
    // with the wall clock between two scrapes.
    let since = format!("dataflow_stream_seconds_since_last_commit{{{p}}}");
    std::thread::sleep(Duration::from_millis(600));
    let later = server.scrape();
    let between = scraped.elapsed().as_secs_f64();
    // Still running while scraped: the history has the start record.
    let running = shown(&state, &pipeline);
    assert_eq!(running[0]["status"], "running", "{running:?}");

    let (code, stderr) = server.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("batch 4: 50 rows in"), "{stderr}");
    assert!(stderr.contains("stopped after"), "{stderr}");

    assert_eq!(samples[&batches], 4.0, "{samples:?}");
    assert_eq!(
        samples[&format!("dataflow_stream_rows_in_total{{{p}}}")],
        200.0
    );
    // Every third event is a purchase: 67 of the 200.
    assert_eq!(
        samples[&format!("dataflow_stream_rows_out_total{{{p}}}")],
        67.0
    );
    let source = r#"source="steps[0] (fromKafka as \"events\")""#;
    for partition in 0..2 {
        let lag = format!(
            "dataflow_stream_consumer_lag{{{p},{source},partition=\"{topic}/{partition}\"}}"
        );
        assert_eq!(samples.get(&lag), Some(&0.0), "{lag} in {samples:?}");
    }
    // Within the test's own wall time, and growing by the time between the
    // scrapes: at least the sleep, at most the time from the start of the
    // first to the end of the second (values are rounded to 1 ms).
    let (first, second) = (samples[&since], later[&since]);
    assert!(second < started.elapsed().as_secs_f64(), "{first} {second}");
    let grew = second - first;
    assert!(
        grew >= 0.6 - 0.002 && grew <= between + 0.002,
        "grew {grew}s in {between}s"
    );
    let name = "dataflow_stream_commit_duration_seconds";
    let count = samples[&format!("{name}_count{{{p}}}")];
    let inf = samples[&format!("{name}_bucket{{{p},le=\"+Inf\"}}")];
    assert!(count == 4.0 && inf == count, "{count} {inf}");
    assert!(samples[&format!("{name}_sum{{{p}}}")] > 0.0);

    // The end record: stopped by the signal, with the counts.
    let records = shown(&state, &pipeline);
    let last = &records[records.len() - 1];
    assert_eq!(last["status"], "stopped", "{records:?}");
    assert_eq!(last["runId"], records[0]["runId"]);
    assert_eq!(step_rows(last).1, 200, "{last}");
    let lines = history_lines(&state, &pipeline);
    assert_eq!(lines[lines.len() - 1]["batches"], 4);
}

#[test]
fn a_failing_stream_records_the_error() {
    let topic = topic_with_events("obs-fail", 1, 0..10);
    let pipeline = format!("observed-{topic}");
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let file = stream_pipeline(
        out.path(),
        &topic,
        "availableNow",
        5,
        "SELECT nope FROM events",
    );
    let result = run(
        out.path(),
        &["run", &file, "--state-dir", &state.display().to_string()],
    );
    assert_eq!(result.code, 2, "{}", result.stderr);
    let records = shown(&state, &pipeline);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["status"], "running");
    assert_eq!(records[1]["status"], "failed");
    assert_eq!(records[1]["errorClass"], "permanent");
    assert!(
        records[1]["error"].as_str().unwrap().contains("nope"),
        "{records:?}"
    );
}

#[test]
fn long_streams_write_progress_records() {
    // 1 record per batch: batch 100 writes a progress record.
    let topic = topic_with_events("obs-progress", 1, 0..105);
    let pipeline = format!("observed-{topic}");
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let file = stream_pipeline(out.path(), &topic, "availableNow", 1, PURCHASES);
    let result = run(
        out.path(),
        &[
            "run",
            "-q",
            &file,
            "--state-dir",
            &state.display().to_string(),
        ],
    );
    result.assert_ok();
    let lines = history_lines(&state, &pipeline);
    let statuses: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"running"), "{lines:?}");
    assert_eq!(statuses.last(), Some(&"succeeded"), "{lines:?}");
    // At least the start and the one at batch 100 (more if batches are slow
    // enough for the 60 s interval to come first).
    let progress: Vec<&Value> = lines[1..lines.len() - 1].iter().collect();
    assert!(!progress.is_empty(), "{lines:?}");
    for record in &progress {
        assert_eq!(record["status"], "running");
        assert_eq!(record["runId"], lines[0]["runId"]);
        let batches = record["batches"].as_u64().unwrap();
        assert!((1..=105).contains(&batches), "{record}");
        assert_eq!(record["rowsIn"].as_u64(), Some(batches), "{record}");
    }
    let end = &lines[lines.len() - 1];
    assert_eq!(end["batches"], 105, "{end}");
}
