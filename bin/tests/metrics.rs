//! Metrics: the Prometheus endpoint is scraped and parsed; `--metrics-file`
//! holds the final metrics as JSON.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{cli, kill, run, write_config};

const TICK: &str = r#"{"name": "tick", "schedule": "* * * * * *", "steps": [
    {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/*.csv", "header": true}},
    {"type": "load", "method": "toFiles", "config": {"path": "${DATAFLOW_OUT}/copy", "format": "parquet", "saveMode": "overwrite"}}
]}"#;

/// GET /metrics, or `None` while nothing listens yet.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(body.to_string())
}

/// Parses the text exposition into `series → value`, checking every line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split(' ');
            assert!(matches!(words.next(), Some("HELP" | "TYPE")), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(series.starts_with("dataflow_"), "{line}");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn schedule_serves_prometheus_metrics() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let config = write_config(out.path(), "tick.json", TICK);
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let metrics_file = out.path().join("metrics.json");
    let child = cli(out.path())
        .args(["schedule", &config, "--metrics-addr", &addr])
        .args(["--state-dir", &state.display().to_string()])
        .args(["--metrics-file", &metrics_file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let succeeded = r#"dataflow_runs_total{pipeline="tick",status="succeeded"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let samples = scrape(&addr).map(|text| parse(&text));
        if let Some(samples) = samples.filter(|s| s.get(succeeded).copied().unwrap_or(0.0) >= 2.0) {
            break samples;
        }
        assert!(Instant::now() < deadline, "no two successful runs in 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    kill("-TERM", child.id());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

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
