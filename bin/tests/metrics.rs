//! Metrics: the Prometheus endpoint is scraped and parsed; `--metrics-file`
//! holds the final metrics as JSON.

mod common;

use std::time::{Duration, Instant};

use common::{cli, run, write_config, Serving};

const TICK: &str = r#"{"name": "tick", "schedule": "* * * * * *", "steps": [
    {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/*.csv", "header": true}},
    {"type": "load", "method": "toFiles", "config": {"path": "${DATAFLOW_OUT}/copy", "format": "parquet", "saveMode": "overwrite"}}
]}"#;

#[test]
fn schedule_serves_prometheus_metrics() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let config = write_config(out.path(), "tick.json", TICK);
    let metrics_file = out.path().join("metrics.json");
    let mut cmd = cli(out.path());
    cmd.args(["schedule", &config])
        .args(["--state-dir", &state.display().to_string()])
        .args(["--metrics-file", &metrics_file.display().to_string()]);
    // Port 0: the process picks a free port and reports it.
    let server = Serving::start(cmd);

    let succeeded = r#"dataflow_runs_total{pipeline="tick",status="succeeded"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let samples = server.scrape();
        if samples.get(succeeded).copied().unwrap_or(0.0) >= 2.0 {
            break samples;
        }
        assert!(Instant::now() < deadline, "no two successful runs in 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (code, stderr) = server.stop();
    assert_eq!(code, Some(0), "{stderr}");

    let step = r#"pipeline="tick",step="1",method="toFiles""#;
    let rows = samples[&format!("dataflow_rows_written_total{{{step}}}")];
    assert!(rows > 0.0, "{rows}");
    let count = samples[&format!("dataflow_step_duration_seconds_count{{{step}}}")];
    let inf = samples[&format!("dataflow_step_duration_seconds_bucket{{{step},le=\"+Inf\"}}")];
    assert!(count >= 2.0 && inf == count, "{count} {inf}");
    assert!(samples[&format!("dataflow_step_duration_seconds_sum{{{step}}}")] > 0.0);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics_file).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert!(runs
        .iter()
        .any(|r| r["status"] == "succeeded" && r["count"].as_u64() >= Some(2)));
}

#[test]
fn run_writes_the_metrics_file() {
    let out = tempfile::tempdir().unwrap();
    let config = write_config(out.path(), "tick.json", TICK);
    let file = out.path().join("m.json");
    let result = run(
        out.path(),
        &[
            "run",
            &config,
            "--metrics-file",
            &file.display().to_string(),
        ],
    );
    result.assert_ok();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(json["runs"][0]["pipeline"], "tick");
    assert_eq!(json["runs"][0]["status"], "succeeded");
    assert_eq!(json["runs"][0]["count"], 1);
    assert_eq!(json["steps"][0]["method"], "toFiles");
    assert!(json["steps"][0]["rowsWritten"].as_u64().unwrap() > 0);
}
